"""The HMAC request signature, shared by the broker and the clients.

    message   = "<timestamp>\\n<METHOD>\\n<path?query>\\n<hex sha256 of body>"
    signature = hex(HMAC-SHA256(secret, message))

`<path?query>` is the request target exactly as sent on the request line (still
percent-encoded); the body is hashed exactly as sent on the wire (before any Content-Encoding
is decoded). Verification never raises: a malformed header is simply not a valid credential.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

TIMESTAMP_HEADER: Final = "X-Broker-Timestamp"
SIGNATURE_HEADER: Final = "X-Broker-Signature"
MAX_SKEW_MS: Final = 30_000
_SIGNATURE_HEX_LENGTH: Final = 64  # SHA-256
MAX_TIMESTAMP_DIGITS: Final = 16  # epoch ms has 13 digits until the year 2286
EMPTY_BODY_SHA256: Final = hashlib.sha256(b"").hexdigest()


def canonical_string(timestamp_ms: int, method: str, target: str, body_sha256_hex: str) -> bytes:
    return f"{timestamp_ms}\n{method.upper()}\n{target}\n{body_sha256_hex}".encode()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256


def sign(secret: str, timestamp_ms: int, method: str, target: str, body: bytes = b"") -> str:
    """The hex signature a client sends in X-Broker-Signature."""
    message = canonical_string(timestamp_ms, method, target, body_digest(body))
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(
    secret: str, timestamp_ms: int, method: str, target: str, body: bytes = b""
) -> dict[str, str]:
    return {
        TIMESTAMP_HEADER: str(timestamp_ms),
        SIGNATURE_HEADER: sign(secret, timestamp_ms, method, target, body),
    }


def verify(
    secret: str,
    timestamp_header: str | None,
    signature_header: str | None,
    method: str,
    target: str,
    body_sha256_hex: str,
    now_ms: int,
) -> bool:
    """Whether the signature headers are valid for this request; False for anything malformed."""
    if timestamp_header is None or signature_header is None:
        return False
    if not (
        0 < len(timestamp_header) <= MAX_TIMESTAMP_DIGITS
        and timestamp_header.isascii()
        and timestamp_header.isdigit()
    ):
        return False
    timestamp = int(timestamp_header)
    if abs(now_ms - timestamp) > MAX_SKEW_MS:
        return False
    if len(signature_header) != _SIGNATURE_HEX_LENGTH or not signature_header.isascii():
        return False
    expected = hmac.new(
        secret.encode(),
        canonical_string(timestamp, method, target, body_sha256_hex),
        hashlib.sha256,
    ).hexdigest()
    # Both sides are 64 ASCII characters here, so compare_digest cannot raise; a non-hex
    # character simply fails to match.
    return hmac.compare_digest(expected, signature_header.lower())
