"""The client commands' error lines, in the command line's words.

The broker's problem details are written for an HTTP client: they name headers (`If-Match`),
body fields (`ttl_ms`) and settings. A person at a shell typed `epb set KEY VALUE --if-absent`,
so the line names the key or pool, says what happened in terms of the command and its flags,
and, where there is one, what to do next. Every code the broker can answer with (errors.py
ERRORS) and the client's own (`unavailable`, `timeout`, `invalid_response`) has a sentence here.

Some sentences need the key's current state, which no error detail carries in a stable form:
the version a compare-and-set met, the value `incr` refused. They ask for it through `lookup`
after the failure (one more request, on the error path only); the state may have moved on since,
so the sentence says "is" of the state it saw, and goes without it when the lookup fails.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ephemeral_broker import __version__
from ephemeral_broker.errors import quote_name

# The key's current state for a sentence: (found, value, version); found False if it is absent.
Lookup = Callable[[str], "tuple[bool, Any, int] | None"]

# Request fields and query parameters, as the broker names them, and the flags that set them.
FLAGS: Final = {
    "ttl_ms": "--ttl",
    "wait_ms": "--wait",
    "by": "--by",
    "size": "--size",
    "limit": "--limit",
    "prefix": "--prefix",
    "worker_id": "--worker",
}

_FIELD: Final = re.compile(r"(?:query parameter|field) '(\w+)': (.+)")
_CLOCK_SKEW: Final = re.compile(r"is (\d+) ms (ahead of|behind) the broker's clock")
_OVER_MAX_TTL: Final = re.compile(r"above max_ttl of (\d+) ms")
_OVER_MAX_SIZE: Final = re.compile(r"is (\d+) bytes of JSON, over max_value_size of (\d+) bytes")
_OVER_KEY_LENGTH: Final = re.compile(r"over the limit of (\d+) \(max_key_length\)")


@dataclass(frozen=True)
class Failure:
    """A failed client command: the error as the client reported it, and the command."""

    code: str
    detail: str
    request_id: str | None
    args: argparse.Namespace
    prog: str
    socket: str
    secret_set: bool

    def flag(self, name: str) -> Any:
        return getattr(self.args, name, None)

    @property
    def key(self) -> str:
        return str(self.args.key)

    @property
    def shown_key(self) -> str:
        return f"key {quote_name(self.key)}"

    @property
    def pool(self) -> str:
        return quote_name(str(self.args.pool))

    @property
    def worker(self) -> str:
        return quote_name(str(self.args.worker_id))

    @property
    def subject(self) -> str:
        """What the command was about: "key 'k'", "pool 'p'", or the command's name."""
        if self.flag("key") is not None:
            return self.shown_key
        if self.flag("pool") is not None:
            return f"pool {self.pool}"
        return f"the {self.args.command} command"

    def command_line(self, *words: str) -> str:
        """A command to run next, quoted for a POSIX shell."""
        return " ".join([self.prog, *(shlex.quote(word) for word in words)])


def _json_text(value: Any, limit: int = 60) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    return "array" if isinstance(value, list) else "object"


def describe(failure: Failure, lookup: Lookup) -> str:
    """The error line (without the program name) for a failed client command."""
    render = _BY_CODE.get(failure.code)
    needs = _NEEDS.get(failure.code)
    if render is None or (needs is not None and failure.flag(needs) is None):
        # A code this version does not know (a newer broker), or one the command's request
        # cannot cause (a key's error to a lease command): the broker's sentence is all there is.
        return f"{failure.subject}: {failure.detail}"
    return render(failure, lookup)


# ---- keys and leases ---------------------------------------------------------------------------


def _not_found(failure: Failure, lookup: Lookup) -> str:
    wait = failure.flag("wait")
    if failure.args.command == "get" and wait:
        return f"{failure.shown_key} did not appear within --wait {wait} ms"
    if failure.args.command == "touch":
        again = failure.command_line("set", failure.key, "VALUE", "--ttl", "MS")
        return (
            f"{failure.shown_key} does not exist or has expired: touch only extends a live key; "
            f"set it again ({again})"
        )
    return f"{failure.shown_key} does not exist or has expired"


def _lease_not_found(failure: Failure, lookup: Lookup) -> str:
    again = failure.command_line("lease", failure.args.pool, "--worker", failure.args.worker_id)
    return (
        f"worker {failure.worker} holds no lease in pool {failure.pool} (it expired or was "
        f"released): take a new one ({again})"
    )


def _precondition_failed(failure: Failure, lookup: Lookup) -> str:
    state = lookup(failure.key) if failure.flag("key") is not None else None
    if failure.flag("if_absent"):
        version = f" (at version {state[2]})" if state is not None and state[0] else ""
        return (
            f"{failure.shown_key} already exists{version}: --if-absent only creates a key; "
            f"delete it first ({failure.command_line('del', failure.key)}) or leave out "
            "--if-absent"
        )
    expected = failure.flag("if_version")
    if expected is not None:
        if state is not None and not state[0]:
            return (
                f"{failure.shown_key} does not exist (any more), so it is not at version "
                f"{expected}: nothing was set; create it without --if-version"
            )
        found = (
            f"is at version {state[2]}, not {expected}"
            if state is not None
            else (f"is not at version {expected}")
        )
        read = failure.command_line("get", failure.key, "--json")
        return (
            f"{failure.shown_key} {found}: it changed since that version was read, and nothing "
            f"was set; read it again ({read}) and redo the change against the new version"
        )
    return f"the condition on {failure.subject} does not hold; nothing was changed"


def _not_an_integer(failure: Failure, lookup: Lookup) -> str:
    state = lookup(failure.key)
    if state is None or not state[0]:
        return (
            f"cannot incr {failure.shown_key}: its value is not an integer (incr works on "
            "integers only)"
        )
    value = state[1]
    if type(value) is int:
        # The key holds an integer: the sum left the signed 64-bit range.
        return (
            f"cannot incr {failure.shown_key} (at {value}) by {failure.flag('by')}: the result "
            "leaves the signed 64-bit integer range"
        )
    shown = quote_name(failure.key)
    if isinstance(value, str):
        stored = f"value of {shown} is the string {_json_text(value)}, not an integer"
        if re.fullmatch(r"-?[0-9]+", value.strip()):
            again = failure.command_line("set", failure.key, value.strip(), "--json-value")
            return f"{stored}: set it with --json-value ({again})"
        return f"{stored}: incr works on integers only"
    again = failure.command_line("set", failure.key, "0", "--json-value")
    return (
        f"value of {shown} is a JSON {_json_type(value)}, not an integer: incr works on "
        f"integers only (start a counter with {again})"
    )


def _pool_exhausted(failure: Failure, lookup: Lookup) -> str:
    wait = failure.flag("wait")
    waited = f" within --wait {wait} ms" if wait else ""
    size = failure.flag("size")
    release = failure.command_line("release", failure.args.pool, "--worker", "ID")
    return (
        f"pool {failure.pool} has no free value below --size {size}{waited}: release one "
        f"({release}), raise --size, or wait for one with --wait MS"
    )


def _too_large(failure: Failure, lookup: Lookup) -> str:
    sizes = _OVER_MAX_SIZE.search(failure.detail)
    if sizes is not None and failure.flag("key") is not None:
        return (
            f"the value for {failure.shown_key} is {sizes[1]} bytes as JSON, over the broker's "
            f"--max-value-size of {sizes[2]} bytes: store a smaller value"
        )
    return f"the request for {failure.subject} is too large for the broker: {failure.detail}"


def _max_items(failure: Failure, lookup: Lookup) -> str:
    return (
        f"cannot add {failure.shown_key}: the broker holds as many keys as its --max-items "
        f"allows; delete some ({failure.command_line('del', 'KEY')}) or start the broker with "
        "a higher --max-items"
    )


def _max_leases(failure: Failure, lookup: Lookup) -> str:
    release = failure.command_line("release", "POOL", "--worker", "ID")
    return (
        f"cannot lease in pool {failure.pool}: the broker holds as many leases as its "
        f"--max-leases allows; release some ({release}) or start the broker with a higher "
        "--max-leases"
    )


# ---- what the command sent ----------------------------------------------------------------------


def _ttl_required(failure: Failure, lookup: Lookup) -> str:
    creates = "incr creates " if failure.args.command == "incr" else ""
    needs = ", which needs" if creates else " needs"
    return (
        f"{creates}{failure.shown_key}{needs} a TTL: pass --ttl MS (this broker requires one "
        "on every value)"
    )


def _invalid_ttl(failure: Failure, lookup: Lookup) -> str:
    ttl = failure.flag("ttl")
    over = _OVER_MAX_TTL.search(failure.detail)
    if over is not None:
        why = f"it is above the broker's --max-ttl of {over[1]} ms"
    elif isinstance(ttl, int) and ttl <= 0:
        why = "it must be a positive number of milliseconds (0 never means 'no expiry')"
    else:
        why = failure.detail
    return f"--ttl {ttl} for {failure.subject} is not a valid TTL: {why}"


def _invalid_key(failure: Failure, lookup: Lookup) -> str:
    # The broker's sentence names the key, pool or worker and what is wrong with the name, in
    # plain words already ("key 'a b' contains the character ' '; names may not contain …"),
    # but for the limit, which it names by its setting.
    if (
        failure.detail.startswith("the name ") and " in the path " in failure.detail
    ) or failure.detail.startswith("query parameter "):
        # Refused while routing, where the broker sees the name as sent ('a%2Fb'), not as typed.
        return _unroutable_name(failure)
    detail = _OVER_KEY_LENGTH.sub(r"over the broker's --max-key-length of \1", failure.detail)
    return f"{detail}: choose another name"


def _unroutable_name(failure: Failure) -> str:
    return name_problem(failure.args) or f"{failure.detail}: choose another name"


def name_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the command's key, pool or worker id that a name in a request path
    cannot carry: a '/', or bytes of the command line that are not UTF-8; None if neither."""
    names = (("key", "key"), ("pool", "pool"), ("worker id", "worker_id"), ("--prefix", "prefix"))
    for what, attribute in names:
        name = getattr(args, attribute, None)
        if not isinstance(name, str):
            continue
        if "/" in name:
            return (
                f"{what} {quote_name(name)} contains '/'; names may not contain '/', whitespace "
                "or control characters: choose another name"
            )
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # the command line's bytes, kept as surrogates by Python
            return f"{what} {quote_name(name)} is not UTF-8 text: choose another name"
    return None


def _validation_error(failure: Failure, lookup: Lookup) -> str:
    field = _FIELD.search(failure.detail)
    if field is not None and field[1] in FLAGS:
        flag = FLAGS[field[1]]
        given = failure.flag(flag.removeprefix("--").replace("-", "_"))
        shown = f"{flag} {given}" if given is not None else flag
        reason = field[2][0].lower() + field[2][1:]
        return f"{shown} for {failure.subject} is out of range: {reason}"
    return f"the broker refused the request for {failure.subject}: {failure.detail}"


def _version_mismatch(failure: Failure, lookup: Lookup) -> str:
    # The command line sends only requests the broker of its own version understands: a
    # refusal of the request's form means a broker of another version, or something between.
    return (
        f"the broker at {failure.socket} does not understand this {failure.args.command} "
        f"request ({failure.detail}); is it another version than this {failure.prog} "
        f"{__version__}? (see {failure.prog} health)"
    )


def _headers_too_large(failure: Failure, lookup: Lookup) -> str:
    return (
        f"the request for {failure.subject} is too large for the broker to read (a name this "
        "long passes its limit on a request's head): use a shorter name"
    )


def _auth_failed(failure: Failure, lookup: Lookup) -> str:
    if not failure.secret_set:
        return (
            f"the broker at {failure.socket} requires a secret: set EPHEMERAL_SECRET to the "
            "secret it was started with"
        )
    skew = _CLOCK_SKEW.search(failure.detail)
    if skew is not None:
        return (
            f"this machine's clock is {skew[1]} ms {skew[2]} the broker's, too far for a signed "
            "request: synchronise the clocks"
        )
    return (
        f"the broker at {failure.socket} refused EPHEMERAL_SECRET: it is not the secret the "
        "broker was started with"
    )


# ---- the broker's state ------------------------------------------------------------------------


def _draining(failure: Failure, lookup: Lookup) -> str:
    return (
        f"the broker at {failure.socket} is shutting down and takes no new requests; nothing "
        f"was done for {failure.subject}"
    )


def _too_many_connections(failure: Failure, lookup: Lookup) -> str:
    return (
        f"the broker at {failure.socket} has as many open connections as its "
        "--max-connections allows; try again when its other clients are done"
    )


def _request_timeout(failure: Failure, lookup: Lookup) -> str:
    return (
        f"the broker at {failure.socket} gave up waiting for the rest of the request for "
        f"{failure.subject}; try again"
    )


def _internal_error(failure: Failure, lookup: Lookup) -> str:
    rid = f" (request id {failure.request_id})" if failure.request_id else ""
    return (
        f"the broker failed while handling {failure.subject}{rid}; its log has the reason, "
        "under that request id"
    )


def _store_unavailable(failure: Failure, lookup: Lookup) -> str:
    return (
        f"the broker's shared store (Redis) did not answer: the {failure.args.command} of "
        f"{failure.subject} may or may not have been applied; check it, then try again"
    )


def _client_side(failure: Failure, lookup: Lookup) -> str:
    # `unavailable`, `timeout`, `invalid_response`: sentences of the client's own, naming the
    # socket, the operation and the key, with no HTTP words in them.
    return failure.detail


# The codes whose sentence is about the command's key or pool, and which of the two.
_NEEDS: Final = {
    "not_found": "key",
    "precondition_failed": "key",
    "not_an_integer": "key",
    "ttl_required": "key",
    "max_items": "key",
    "lease_not_found": "pool",
    "pool_exhausted": "pool",
    "max_leases": "pool",
}

_BY_CODE: Final[dict[str, Callable[[Failure, Lookup], str]]] = {
    "bad_request": _version_mismatch,
    "invalid_json": _version_mismatch,
    "unsupported_encoding": _version_mismatch,
    "route_not_found": _version_mismatch,
    "method_not_allowed": _version_mismatch,
    "headers_too_large": _headers_too_large,
    "auth_failed": _auth_failed,
    "not_found": _not_found,
    "lease_not_found": _lease_not_found,
    "pool_exhausted": _pool_exhausted,
    "not_an_integer": _not_an_integer,
    "precondition_failed": _precondition_failed,
    "too_large": _too_large,
    "ttl_required": _ttl_required,
    "invalid_ttl": _invalid_ttl,
    "invalid_key": _invalid_key,
    "validation_error": _validation_error,
    "draining": _draining,
    "too_many_connections": _too_many_connections,
    "request_timeout": _request_timeout,
    "max_items": _max_items,
    "max_leases": _max_leases,
    "internal_error": _internal_error,
    "store_unavailable": _store_unavailable,
    "unavailable": _client_side,
    "timeout": _client_side,
    "invalid_response": _client_side,
}
