"""Request body limits and Content-Encoding, enforced before and while a body is read.

- A Content-Length over max_request_size is refused before a byte of the body is read.
- A chunked body (no Content-Length) is counted as it streams and refused the moment it passes.
- A gzip or deflate body is inflated chunk by chunk, never past max_request_size, and the app
  sees the decoded bytes (the Content-Encoding and Content-Length headers are dropped).
Every refusal closes the connection after the answer: the rest of the body may be on its way.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Final

from starlette.types import Message, Receive, Scope

from ephemeral_broker.errors import BrokerError, ErrorCode

_CODINGS: Final[Mapping[bytes, str]] = {
    b"": "identity",
    b"identity": "identity",
    b"gzip": "gzip",
    b"x-gzip": "gzip",
    b"deflate": "deflate",
}


def _closing(code: ErrorCode, detail: str) -> BrokerError:
    # The rest of the body may still be on its way: close the connection after answering,
    # instead of reading (or parsing as a next request) what the client still sends.
    return BrokerError(code, detail, headers={"Connection": "close"})


def declared_too_large(declared: int, limit: int) -> BrokerError:
    """A Content-Length over max_request_size (here, and in auth before it reads a body)."""
    return _closing(
        "too_large",
        f"request body of {declared} bytes (Content-Length) is over max_request_size of "
        f"{limit} bytes",
    )


def streamed_too_large(limit: int) -> BrokerError:
    """A body that passed max_request_size while it streamed (here, and in auth)."""
    return _closing(
        "too_large", f"request body passed max_request_size of {limit} bytes while streaming"
    )


class _CountingReceive:
    """Passes body chunks through, refusing the request once they pass the limit."""

    __slots__ = ("_limit", "_receive", "_seen")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise streamed_too_large(self._limit)
        return message


class _DecodingReceive:
    """Inflates a gzip or deflate body chunk by chunk, never past the limit.

    `decompress(data, max_length)` never produces more than `max_length` bytes, so a small
    compressed bomb costs at most `limit + 1` bytes of memory before it is refused.
    """

    __slots__ = ("_coding", "_decoder", "_limit", "_out", "_raw", "_receive")

    def __init__(self, receive: Receive, limit: int, coding: str) -> None:
        self._receive = receive
        self._limit = limit
        self._coding = coding
        self._decoder: Any = None
        self._raw = 0
        self._out = 0

    def _invalid(self, why: str) -> BrokerError:
        return _closing(
            "invalid_json",
            f"the request body is not valid {self._coding} data (Content-Encoding: "
            f"{self._coding}): {why}",
        )

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        self._raw += len(chunk)
        if self._raw > self._limit:
            raise _closing(
                "too_large",
                f"compressed request body passed max_request_size of {self._limit} bytes",
            )
        if self._decoder is None and chunk:
            self._decoder = zlib.decompressobj(self._wbits(chunk))
        out = b""
        if self._decoder is not None and chunk:
            room = self._limit - self._out
            try:
                out = self._decoder.decompress(chunk, room + 1)
            except zlib.error as exc:
                raise self._invalid(str(exc)) from None
            if len(out) > room:
                raise _closing(
                    "too_large",
                    f"decoded request body passed max_request_size of {self._limit} bytes",
                )
            self._out += len(out)
        if not more:
            if self._decoder is None or not self._decoder.eof:
                raise self._invalid("the compressed stream is truncated")
            if self._decoder.unused_data:
                raise self._invalid("there is data after the end of the compressed stream")
        return {"type": "http.request", "body": out, "more_body": more}

    def _wbits(self, first: bytes) -> int:
        if self._coding == "gzip":
            return 16 + zlib.MAX_WBITS
        # HTTP "deflate" is the zlib format, but many clients send a raw deflate stream:
        # a zlib stream starts with a header whose 16-bit value is a multiple of 31.
        if len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0:
            return zlib.MAX_WBITS
        return -zlib.MAX_WBITS


def guard_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    length: bytes | None,
    encoding: bytes,
    chunked: bool,
) -> tuple[Scope, Receive] | BrokerError:
    """The scope and receive the app should use for this request's body, or why it is refused.

    `length`: the Content-Length header as sent; `encoding`: Content-Encoding (b"" if none);
    `chunked`: a Transfer-Encoding header was sent.
    """
    declared = 0
    if length is not None:
        # uvicorn's HTTP parser refuses a malformed Content-Length before we run; this guards
        # other ASGI servers and in-process transports.
        declared = int(length) if length.isdigit() else -1
        if declared < 0:
            return _closing(
                "invalid_json", "the Content-Length header is not a non-negative integer"
            )
        if declared > limit:
            return declared_too_large(declared, limit)
    if declared == 0 and not chunked:
        return scope, receive  # no body: nothing to guard
    encoding = encoding.strip().lower()
    coding = _CODINGS.get(encoding)
    if coding is None:
        return _closing(
            "unsupported_encoding",
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send "
            "identity, gzip or deflate",
        )
    if coding == "identity":
        if length is not None and not chunked:
            # Within the limit as declared, and an HTTP server delivers exactly the declared
            # bytes as the body (uvicorn's parser reads any more as the next request): nothing
            # to count. A chunked body has no such bound, so it is counted as it arrives.
            return scope, receive
        return scope, _CountingReceive(receive, limit)
    headers = [
        (n, v) for n, v in scope["headers"] if n not in (b"content-encoding", b"content-length")
    ]
    return {**scope, "headers": headers}, _DecodingReceive(receive, limit, coding)
