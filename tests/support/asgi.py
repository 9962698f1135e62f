"""The app in-process: an httpx client over ASGI (the `make_api` fixture's type), and direct
ASGI calls with exact paths and bodies in chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import orjson

# What the `make_api` fixture returns: `async with make_api(max_items=3) as api:`.
AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@dataclass
class AsgiResult:
    status: int
    headers: dict[str, str]
    body: bytes
    receive_calls: int

    def json(self) -> Any:
        return orjson.loads(self.body)


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


Headers = Sequence[tuple[str | bytes, str | bytes]]


def http_scope(method: str, path: str, headers: Headers = ()) -> dict[str, Any]:
    """An ASGI HTTP scope for `path` exactly as given (percent-encoded, query included)."""
    raw_path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(_bytes(k).lower(), _bytes(v)) for k, v in headers],
        "client": ("test", 0),
        "server": ("localhost", 80),
    }


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    *,
    chunks: tuple[bytes, ...] = (),
    headers: Headers = (),
    receive: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> AsgiResult:
    """Call an ASGI app directly: exact paths (no client normalisation), the body in `chunks`
    (or from your own `receive`), and a count of how many times the app asked for body."""
    calls = 0
    pending = list(chunks)

    async def from_chunks() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    source = receive or from_chunks

    async def counting_receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return await source()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(http_scope(method, path, headers), counting_receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return AsgiResult(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        body,
        calls,
    )
