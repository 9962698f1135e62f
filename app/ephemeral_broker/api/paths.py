"""Names in paths and queries: one path segment each, decoded strictly as UTF-8.

Keys, pool names and worker ids are UTF-8 text without `/`. The HTTP server decodes a path's
percent-escapes leniently (an invalid sequence becomes U+FFFD, so `%FF`, `%C0` and `%EF%BF%BD`
would all address one key) and routes on the decoded path (an encoded `/` would split a name
in two). So `strict_names` looks at the raw request target before routing: a segment under
`/v1/keys/` or `/v1/leases/`, or a `prefix` / `worker_id` query parameter, whose escapes decode
to invalid UTF-8 (overlongs, surrogates, lone continuation bytes, truncated sequences) or to a
`/` is refused with `422 invalid_key`, saying which. Everything else about a name (length,
whitespace, control characters, `.` and `..`) is the name rules' job once the route has it.

The `name` path convertor matches exactly one segment, so a route never takes a `/`: for
`PUT /v1/keys/0/touch` the path is the touch route's, and the answer is `405` with `Allow:
POST`, not a key named `0/touch`. (Starlette's `path` convertor has a trap this one avoids:
`$` also matches before a final newline; `[^/]+` includes newlines, so `a\\n` is captured
whole and refused by the name rules.)
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor

from ephemeral_broker.errors import BrokerError

# `%` as a byte value: `PERCENT in raw` is one scan, where `b"%" in raw` first tries the
# needle as an integer, and raises and clears a TypeError (with its formatted message) before
# it scans: about 25 times the cost, on every request.
PERCENT: Final = ord("%")
_NAME_PATHS: Final = (b"/v1/keys/", b"/v1/leases/")
_NAME_QUERY: Final = frozenset({b"prefix", b"worker_id"})
_SHOWN_BYTES: Final = 40


class NameConvertor(Convertor[str]):
    regex = "[^/]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("name", NameConvertor())


def _problem(raw: bytes, decoded: bytes) -> str | None:
    if b"/" in decoded:
        return "contains '/' (sent as %2F); names may not contain '/'"
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = decoded[exc.start : exc.end].hex(" ").upper()
        return f"is not valid UTF-8 (bytes {bad}); names are UTF-8 text"
    return None


def _shown(raw: bytes) -> str:
    text = raw.decode("ascii", "replace")
    return repr(text if len(text) <= _SHOWN_BYTES else text[:_SHOWN_BYTES] + "…")


def strict_names(scope: MutableMapping[str, Any]) -> BrokerError | None:
    """`invalid_key` for a name in the path or query that is not strict UTF-8 or hides a `/`;
    None otherwise. Costs one `in` test per request without percent-escapes."""
    raw_path: bytes = scope.get("raw_path") or b""
    if PERCENT in raw_path and raw_path.startswith(_NAME_PATHS):
        for segment in raw_path.split(b"/")[3:]:
            if PERCENT in segment:
                problem = _problem(segment, unquote_to_bytes(segment))
                if problem is not None:
                    return BrokerError(
                        "invalid_key", f"the name {_shown(segment)} in the path {problem}"
                    )
    query: bytes = scope.get("query_string") or b""
    if PERCENT in query:
        for pair in query.split(b"&"):
            field, _, value = pair.partition(b"=")
            if field in _NAME_QUERY and PERCENT in value:
                decoded = unquote_to_bytes(value.replace(b"+", b" "))
                problem = _problem(value, decoded)
                if problem is not None:
                    return BrokerError(
                        "invalid_key",
                        f"query parameter {field.decode()!r} ({_shown(value)}) {problem}",
                    )
    return None
