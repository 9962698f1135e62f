"""Auth: a Bearer token or an HMAC signature on every route but the probes.

Called by BrokerMiddleware (after the request id and the drain gate, before the body limits
and Content-Encoding decoding), for every path but the probes:

- A Bearer request is decided from its headers alone: a wrong token is refused before a byte of
  its body is read.
- A signed request is checked in two steps. Its headers first (timestamp format and window,
  signature format), so a malformed or stale request is refused before its body is read; then
  the body, read exactly as it came off the wire (the signature covers the bytes as sent, before
  any Content-Encoding is decoded) and never more than max_request_size of it, is hashed and the
  signature verified. Only then does the request reach the app, with the body replayed.

Every comparison with the secret is constant-time: `hmac.compare_digest` over two SHA-256
digests, so not even the length of a Bearer token is compared directly. Every malformed
header, whatever its size or content, is a 401 `auth_failed`, never a 500 (defect 13 of the
design notes).
Neither the secret nor what the client sent appears in a response or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from starlette.types import Message, Receive, Scope, Send

from ephemeral_broker.api.limits import declared_too_large, streamed_too_large
from ephemeral_broker.clock import Clock
from ephemeral_broker.errors import BrokerError, request_id_of, send_problem
from ephemeral_broker.logs import logger
from ephemeral_broker.signing import (
    MAX_SKEW_MS,
    MAX_TIMESTAMP_DIGITS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    body_digest,
    verify,
)

_SIGNATURE: Final = re.compile(rb"[0-9A-Fa-f]{64}")
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="ephemeral-broker"'}
_HOW: Final = (
    f"send Authorization: Bearer <secret>, or {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} "
    "(HMAC-SHA256, see the README's Security section)"
)


class _Refused(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Authenticator:
    """Decides whether a request may reach the app: called by BrokerMiddleware with the
    headers it already picked out of the request, for every path but the probes."""

    def __init__(self, *, secret: str, max_request_size: int, clock: Clock) -> None:
        self._secret = secret
        self._bearer_digest = hashlib.sha256(secret.encode()).digest()
        self._limit = max_request_size
        self._clock = clock

    async def admit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        authorization: bytes | None,
        timestamp: bytes | None,
        signature: bytes | None,
        length: bytes | None,
        chunked: bool,
    ) -> Receive | None:
        """The receive the app should read the body from, or None once the request has been
        answered here (refused, or its client went away while its body was read)."""
        has_body = chunked or (length is not None and length.strip(b"0 \t") != b"")

        bearer = _bearer_token(authorization)
        if bearer is not None and hmac.compare_digest(
            hashlib.sha256(bearer).digest(), self._bearer_digest
        ):
            return receive
        try:
            if timestamp is None or signature is None:
                if bearer is not None:
                    raise _Refused("the bearer token is not the broker's secret")
                raise _Refused(f"authentication required: {_HOW}")
            self._check_signature_headers(timestamp, signature)
        except _Refused as refused:
            await self._refuse(scope, send, refused.detail, body_unread=has_body)
            return None

        if has_body:
            if length is not None and length.isdigit() and int(length) > self._limit:
                await send_problem(scope, send, declared_too_large(int(length), self._limit))
                return None
            body = await self._read_body(receive)
            if body is None:
                return None  # the client went away; nobody to answer
            if isinstance(body, BrokerError):
                await send_problem(scope, send, body)
                return None
        else:
            body = b""

        target = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        if query:
            target = target + b"?" + query
        valid = verify(
            self._secret,
            timestamp.decode("latin-1"),
            signature.decode("latin-1"),
            scope["method"],
            target.decode("latin-1"),
            body_digest(body),
            self._clock.now_ms(),
        )
        if not valid:
            await self._refuse(
                scope,
                send,
                f"{SIGNATURE_HEADER} does not match this request (method, target and body) "
                "signed with the broker's secret",
                body_unread=False,
            )
            return None
        return _Replay(body, receive) if has_body else receive

    def _check_signature_headers(self, timestamp: bytes, signature: bytes) -> None:
        if not (0 < len(timestamp) <= MAX_TIMESTAMP_DIGITS and timestamp.isdigit()):
            raise _Refused(
                f"{TIMESTAMP_HEADER} must be the time of the request in Unix epoch milliseconds"
            )
        skew = int(timestamp) - self._clock.now_ms()
        if abs(skew) > MAX_SKEW_MS:
            direction = "ahead of" if skew > 0 else "behind"
            raise _Refused(
                f"{TIMESTAMP_HEADER} is {abs(skew)} ms {direction} the broker's clock; signed "
                f"requests are accepted within ±{MAX_SKEW_MS} ms"
            )
        if not _SIGNATURE.fullmatch(signature):
            raise _Refused(f"{SIGNATURE_HEADER} must be 64 hex digits (HMAC-SHA256)")

    async def _read_body(self, receive: Receive) -> bytes | BrokerError | None:
        """The whole body as sent, or an error past max_request_size, or None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                return streamed_too_large(self._limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, detail: str, *, body_unread: bool) -> None:
        # The detail names the failed check, never what was sent: safe to log.
        logger.debug(
            "request refused: auth_failed",
            extra={"fields": {"request_id": request_id_of(scope), "detail": detail}},
        )
        headers = dict(_CHALLENGE)
        if body_unread:
            # Whatever the client still sends is not worth reading: close after answering.
            headers["Connection"] = "close"
        await send_problem(scope, send, BrokerError("auth_failed", detail, headers=headers))


def _bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.lstrip(b" ")


class _Replay:
    """Hands the app the body auth already read, then passes through (a disconnect, say)."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        body, self._body = self._body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()
