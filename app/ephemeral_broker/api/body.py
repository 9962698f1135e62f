"""Reading a JSON request body: parsed with orjson whatever the Content-Type says, so that
`curl -d '{...}'` works, and validated against a request model with errors mapped to codes."""

from __future__ import annotations

import difflib
import functools
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from ephemeral_broker.api.schemas import (
    INT64_MAX,
    INT64_MIN,
    IncrRequest,
    SetKeyRequest,
    TouchRequest,
)
from ephemeral_broker.errors import BrokerError, ErrorCode

MAX_JSON_DEPTH: Final = 64
# orjson reads integers beyond 64 bits as floats, silently losing digits, and the document
# (JSON Schema) counts any number with no fractional part as an integer, however it is written:
# 1e20 is the integer 100000000000000000000, outside the 64-bit range like its digits. Either
# kind parses to a float of magnitude 2^63 or more, so only a body holding such a float is read
# again, exactly, to decide.
_WIDE_FLOAT: Final = 2.0**63
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1
ModelT = TypeVar("ModelT", bound=BaseModel)


# The types of JSON values that are neither containers nor floats, as orjson returns them.
_FLAT_TYPES: Final = frozenset({str, int, bool, type(None)})
# What _scan finds in parsed JSON, as bits.
_TOO_DEEP: Final = 1  # a container nested deeper than MAX_JSON_DEPTH
_WIDE: Final = 2  # a float of magnitude 2^63 or more (see _WIDE_FLOAT)


def _scan(node: Any, depth: int) -> int:
    """_TOO_DEEP and _WIDE bits for a container from orjson at `depth` (a body's top-level
    object or array is at 1).

    One walk over the parsed value answers both questions with the types orjson returns, in
    about the time a C-level scan of the body's bytes took for each; only a body with a wide
    float is read again as text (_has_wide_integer).
    """
    if depth > MAX_JSON_DEPTH:
        return _TOO_DEEP
    found = 0
    for child in node.values() if type(node) is dict else node:
        kind = type(child)
        if kind is float:
            if not -_WIDE_FLOAT < child < _WIDE_FLOAT:
                found |= _WIDE
        elif kind is dict or kind is list:
            found |= _scan(child, depth + 1)
            if found & _TOO_DEEP:
                return found
    return found


def _exact_int(text: str) -> int:
    number = int(text)
    if not _INT_MIN <= number <= _UINT_MAX:
        raise ValueError(text)
    return number


def _exact_float(text: str) -> float:
    number = Decimal(text)
    if number == number.to_integral_value() and not _INT_MIN <= number <= _UINT_MAX:
        raise ValueError(text)
    return 0.0  # the value itself is not kept


def _has_wide_integer(body: bytes) -> bool:
    """Whether the body has an integer outside -2^63..2^64-1, written with digits only or
    as a number with no fractional part (1e20, 2.5e30), read exactly from its text."""
    try:
        json.loads(body, parse_int=_exact_int, parse_float=_exact_float)
    except ValueError:
        return True
    return False


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def parse_json(body: bytes) -> Any:
    """Parse strict JSON (no NaN/Infinity), at most 64 levels deep, or raise invalid_json."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's messages name a position, never the body's content.
        raise BrokerError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    # The common body, an object whose values are strings, integers, booleans or nulls, has
    # neither a nested container nor a float: one C-level pass over its values' types says so.
    if type(data) is dict and _FLAT_TYPES.issuperset(map(type, data.values())):
        return data
    # Scanned as the one child of a container at depth 0, so that a top-level scalar (a wide
    # float) is looked at by the same test as one inside an object.
    found = _scan((data,), 0)
    if found & _TOO_DEEP:
        raise BrokerError(
            "invalid_json", f"the request body's JSON nests deeper than {MAX_JSON_DEPTH} levels"
        )
    if found & _WIDE and _has_wide_integer(body):
        raise BrokerError(
            "invalid_json",
            "the request body has a JSON integer outside the 64-bit range (a number with no "
            "fractional part counts, however it is written, e.g. 1e20), which would lose "
            "digits; send such numbers as strings",
        )
    return data


# Error bodies are bounded whatever the input: a body of 100,000 unknown fields gets the first
# MAX_ERROR_ENTRIES entries and a count of the rest, and a sentence of the first few.
MAX_ERROR_ENTRIES: Final = 20
MAX_SENTENCE_ENTRIES: Final = 3
MAX_NAME_CHARS: Final = 60
MAX_MESSAGE_CHARS: Final = 200
# Where a parameter was, in the words of an HTTP user.
_PLACES: Final = {"query": "query parameter", "header": "header", "path": "path parameter"}


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _loc_part(part: Any) -> Any:
    return _short(part, MAX_NAME_CHARS) if isinstance(part, str) else part


def error_entries(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `errors` member of a problem: where, what and which kind of each failure, for at
    most MAX_ERROR_ENTRIES of them, names and messages shortened.

    Only these three: never "input", which may be a large value, and values do not belong in
    error bodies.
    """
    return [
        {
            "loc": [_loc_part(part) for part in item.get("loc", ())],
            "msg": _short(str(item.get("msg", "")), MAX_MESSAGE_CHARS),
            "type": item.get("type", ""),
        }
        for item in itertools.islice(errors, MAX_ERROR_ENTRIES)
    ]


def _phrase(entry: Mapping[str, Any]) -> str:
    """One entry in a user's words: `unknown field 'ttl' (did you mean 'ttl_ms'?)`."""
    loc = [str(part) for part in entry["loc"]]
    if loc and loc[0] in _PLACES:
        where = f"{_PLACES[loc[0]]} {'.'.join(loc[1:])!r}"
    elif loc:
        where = f"field {'.'.join(loc)!r}"
    else:
        where = "the body"
    if entry["type"] == "extra_forbidden":
        hint = f" ({entry['msg']})" if entry["msg"].startswith("did you mean") else ""
        return f"unknown {where}{hint}"
    if entry["type"] == "missing":
        return f"missing {where}"
    return f"{where}: {entry['msg']}"


def error_sentence(entries: Sequence[Mapping[str, Any]], total: int | None = None) -> str:
    """The first few entries as one sentence for `detail`, and how many more there are."""
    total = len(entries) if total is None else total
    sentence = "; ".join(_phrase(entry) for entry in entries[:MAX_SENTENCE_ENTRIES])
    rest = total - min(len(entries), MAX_SENTENCE_ENTRIES)
    return sentence + (f"; and {rest} more" if rest > 0 else "")


def _failure(
    code: ErrorCode, what: str, errors: Sequence[Mapping[str, Any]], total: int
) -> BrokerError:
    entries = error_entries(errors)
    detail = f"invalid {what}: {error_sentence(entries, total)}"
    return BrokerError(code, detail, errors=entries, more_errors=total - len(entries))


def request_validation_failure(errors: Sequence[Mapping[str, Any]]) -> BrokerError:
    """Invalid path, query or header parameters (bodies: `validation_failure`)."""
    return _failure("validation_error", "request", errors, len(errors))


def validation_failure(
    errors: Sequence[Mapping[str, Any]], total: int, what: str = "request body"
) -> BrokerError:
    """Map pydantic failures to the most specific stable code (the error table's order);
    `errors` may be the first few of `total`."""
    first = errors[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    code: ErrorCode
    if field == "ttl_ms":
        code = "ttl_required" if first["type"] == "missing" else "invalid_ttl"
    elif field == "worker_id" and first["type"] != "missing":
        code = "invalid_key"
    else:
        code = "validation_error"
    return _failure(code, what, errors, total)


def _unknown_field_errors(names: Iterable[str], known: Sequence[str]) -> list[dict[str, Any]]:
    """Entries for the first unknown fields, each with a suggestion where one is close."""
    errors: list[dict[str, Any]] = []
    for name in itertools.islice(names, MAX_ERROR_ENTRIES):
        msg = "unknown field"
        close = difflib.get_close_matches(name[:MAX_NAME_CHARS], known, n=1, cutoff=0.6)
        if close:
            msg = f"did you mean {close[0]!r}?"
        errors.append({"loc": (name,), "msg": msg, "type": "extra_forbidden"})
    return errors


@functools.cache
def _field_names(model: type[BaseModel]) -> tuple[str, ...]:
    # Once per model: `model.model_fields` is a property that builds its answer on each read.
    return tuple(model.model_fields)


def validate_object(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """Validate a parsed JSON object against `model`, with bounded errors.

    Unknown fields are found by a set lookup per field before pydantic runs, and pydantic sees
    only the known ones: a body of 100,000 unknown fields costs a pass over its keys, not
    100,000 pydantic errors (half a second of the event loop, and a 12 MB answer).
    """
    fields = _field_names(model)
    unknown = [name for name in data if name not in fields]
    known = {name: value for name, value in data.items() if name in fields} if unknown else data
    field_errors: list[Mapping[str, Any]] = []
    try:
        validated = model.model_validate(known)
    except ValidationError as exc:
        field_errors = list(
            exc.errors(include_url=False, include_input=False, include_context=False)
        )
    if not field_errors and not unknown:
        return validated
    # Only the entries that will be shown are built: the rest are counted.
    shown = [*field_errors[:MAX_ERROR_ENTRIES], *_unknown_field_errors(unknown, fields)]
    raise validation_failure(shown, len(field_errors) + len(unknown))


async def read_body(request: Request) -> bytes:
    """The whole request body, read straight from `receive`.

    What Starlette's `Request.body()` does (a disconnect raises ClientDisconnect, other
    messages are skipped) without the async generator it reads through, which cost more than
    the rest of reading a small body. BrokerMiddleware has put its limits on `receive`.
    """
    receive = request.receive
    chunks: list[bytes] = []
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)
        elif kind == "http.disconnect":
            raise ClientDisconnect()


async def read_model(
    request: Request, model: type[ModelT], *, empty_is: str | None = None
) -> ModelT:
    """Read, parse and validate the body. `empty_is`: the JSON an empty body stands for."""
    return validate_object(model, _object_of(await read_body(request), empty_is))


async def read_fields(
    request: Request, model: type[BaseModel], *, empty_is: str | None = None
) -> dict[str, Any]:
    """Read, parse and validate the body like `read_model`, and return its fields by name
    (defaults filled in) instead of a model instance.

    A body in the model's plain shape (PLAIN_SHAPES: known fields only, each of a type the
    model takes as it is) is checked here by hand, which is exact for that shape and costs a
    fraction of pydantic's validation and of building a model instance. Anything else, which
    includes every body the model refuses, is validated by the model itself, so what passes
    and every error are the same either way.
    """
    data = _object_of(await read_body(request), empty_is)
    shape = PLAIN_SHAPES[model]
    if shape.takes(data):
        return {**shape.defaults, **data}
    validated = validate_object(model, data)
    return {name: getattr(validated, name) for name in _field_names(model)}


def _object_of(body: bytes, empty_is: str | None) -> dict[str, Any]:
    """The body parsed as a JSON object, or why not (`empty_is`: what an empty body means)."""
    if not body:
        if empty_is is None:
            raise BrokerError(
                "invalid_json",
                "the request body is empty; expected a JSON object",
            )
        body = empty_is.encode()
    data = parse_json(body)
    if not isinstance(data, dict):
        raise BrokerError(
            "validation_error",
            f"the request body must be a JSON object, not a JSON {_json_type(data)}",
        )
    return data


def _any(value: Any) -> bool:
    return True


def _int(value: Any) -> bool:
    # `type() is int`: a bool is an int to isinstance, and never a JSON integer here.
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def _int_or_null(value: Any) -> bool:
    return value is None or _int(value)


@dataclass(frozen=True)
class PlainShape:
    """The bodies a model takes exactly as they are: only these fields, each passing its check,
    the required ones present. `defaults`: the value of each optional field when absent."""

    checks: Mapping[str, Callable[[Any], bool]]
    required: frozenset[str]
    defaults: Mapping[str, Any]

    def takes(self, data: dict[str, Any]) -> bool:
        checks = self.checks
        for name, value in data.items():
            check = checks.get(name)
            # `_any` takes every value: no call needed to know it.
            if check is None or (check is not _any and not check(value)):
                return False
        return self.required.issubset(data)


# Per request model, its plain shape. A JSON integer (JsonInt) is taken as it is when it is a
# 64-bit integer: orjson returns larger ones only as floats, which go to the model (that is
# where 100.0 becomes 100 and 1.5 is refused); ranges narrower than 64 bits (ttl_ms within
# max_ttl, a lease size) are the store's and the routes' checks either way, not the model's.
# tests/test_body_shapes.py holds each shape to its model's own verdicts.
PLAIN_SHAPES: Final[Mapping[type[BaseModel], PlainShape]] = {
    SetKeyRequest: PlainShape(
        {"value": _any, "ttl_ms": _int_or_null}, frozenset({"value"}), {"ttl_ms": None}
    ),
    IncrRequest: PlainShape(
        {"by": _int, "ttl_ms": _int_or_null}, frozenset(), {"by": 1, "ttl_ms": None}
    ),
    TouchRequest: PlainShape({"ttl_ms": _int}, frozenset({"ttl_ms"}), {}),
}


def openapi_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON request body (routes parse it themselves)."""
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
