"""Reading a JSON request body: parsed with orjson whatever the Content-Type says, so that
`curl -d '{...}'` works, and validated against a request model with errors mapped to codes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from ephemeral_broker.errors import BrokerError, ErrorCode

MAX_JSON_DEPTH: Final = 64
# orjson reads integers beyond 64 bits as floats, silently losing digits. Any such integer has
# at least 20 digits, so only bodies with a run of 20 digits are checked exactly.
_LONG_DIGITS: Final = re.compile(rb"\d{20}")
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1
ModelT = TypeVar("ModelT", bound=BaseModel)


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _exact_int(text: str) -> int:
    number = int(text)
    if not _INT_MIN <= number <= _UINT_MAX:
        raise ValueError(text)
    return number


def _has_huge_integer(body: bytes) -> bool:
    try:
        json.loads(body, parse_int=_exact_int)
    except ValueError:
        return True
    return False


def parse_json(body: bytes) -> Any:
    """Parse strict JSON (no NaN/Infinity), at most 64 levels deep, or raise invalid_json."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's messages name a position, never the body's content.
        raise BrokerError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    # Counting brackets is a fast C-level bound: only a body with more than 64 of them can nest
    # that deep, so the exact walk runs only for those.
    if (
        isinstance(data, dict | list)
        and body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
        and _deeper_than(data, MAX_JSON_DEPTH)
    ):
        raise BrokerError(
            "invalid_json", f"the request body's JSON nests deeper than {MAX_JSON_DEPTH} levels"
        )
    if _LONG_DIGITS.search(body) is not None and _has_huge_integer(body):
        raise BrokerError(
            "invalid_json",
            "the request body has a JSON integer outside the 64-bit range, which would lose "
            "digits; send such numbers as strings",
        )
    return data


def error_entries(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `errors` member of a problem: where, what and which kind of each failure.

    Only these three: never "input", which may be a large value, and values do not belong in
    error bodies.
    """
    return [
        {"loc": list(item.get("loc", ())), "msg": item.get("msg", ""), "type": item.get("type", "")}
        for item in errors
    ]


def error_sentence(entries: Iterable[Mapping[str, Any]]) -> str:
    """The entries as one sentence for `detail`: `loc: msg; loc: msg`."""
    return "; ".join(
        f"{'.'.join(map(str, entry['loc'])) or 'body'}: {entry['msg']}" for entry in entries
    )


def request_validation_failure(errors: Iterable[Mapping[str, Any]]) -> BrokerError:
    """Invalid path, query or header parameters (bodies: `validation_failure`)."""
    entries = error_entries(errors)
    return BrokerError(
        "validation_error", f"invalid request: {error_sentence(entries)}", errors=entries
    )


def validation_failure(exc: ValidationError, what: str) -> BrokerError:
    """Map a pydantic failure to the most specific stable code (SPEC section 3 error table)."""
    entries = error_entries(
        exc.errors(include_url=False, include_input=False, include_context=False)
    )
    first = entries[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    sentence = error_sentence(entries)
    code: ErrorCode
    if field == "ttl_ms":
        code = "ttl_required" if first["type"] == "missing" else "invalid_ttl"
    elif field == "worker_id" and first["type"] != "missing":
        code = "invalid_key"
    else:
        code = "validation_error"
    return BrokerError(code, f"invalid {what}: {sentence}", errors=entries)


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
    body = await read_body(request)
    if not body:
        if empty_is is None:
            raise BrokerError(
                "invalid_json",
                f"the request body is empty; expected a JSON object ({model.__name__})",
            )
        body = empty_is.encode()
    data = parse_json(body)
    if not isinstance(data, dict):
        raise BrokerError(
            "validation_error",
            f"the request body must be a JSON object ({model.__name__}), not a JSON "
            f"{type(data).__name__}",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failure(exc, f"{model.__name__} body") from None


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
