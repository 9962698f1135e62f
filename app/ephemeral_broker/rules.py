"""Rules every store applies to names and TTLs.

They live apart from any store so that a second store implementation enforces exactly the
same rules, and so the error sentences are written once.
"""

from __future__ import annotations

import re
import zlib
from typing import Final

from ephemeral_broker.errors import BrokerError, quote_name

# Whitespace (Unicode-aware \s), '/', C0 and C1 control characters, and lone surrogates
# (which cannot be encoded as UTF-8 at all).
_FORBIDDEN: Final = re.compile(r"[\s/\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# The names nearly every caller uses: printable ASCII other than space and '/', and not '.' or
# '..'. A few str tests accept them (together half the cost of one regex match); every other
# name gets the checks below, which alone decide what is refused and say why.
_DOT_NAMES: Final = frozenset({".", ".."})


def check_name(name: str, max_bytes: int, what: str = "key") -> None:
    """Raise `invalid_key` unless `name` is 1..max_bytes bytes of UTF-8 with no forbidden char."""
    if (
        0 < len(name) <= max_bytes
        and name.isascii()
        and name.isprintable()  # for ASCII: no control character (space passes, tested next)
        and " " not in name
        and "/" not in name
        and name not in _DOT_NAMES
    ):
        return
    check_name_fully(name, max_bytes, what)


def check_name_fully(name: str, max_bytes: int, what: str = "key") -> None:
    """The name rules, each checked and named: what check_name does for any name its quick
    test does not accept (tests hold the two to the same verdicts)."""
    size = len(name) if name.isascii() else len(name.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise BrokerError("invalid_key", f"the {what} is empty; it must be 1 to {max_bytes} bytes")
    if size > max_bytes:
        raise BrokerError(
            "invalid_key",
            f"{what} {quote_name(name)} is {size} bytes of UTF-8, over the limit of {max_bytes} "
            "(max_key_length)",
        )
    bad = _FORBIDDEN.search(name)
    if bad is not None:
        char = bad.group()
        kind = "'/'" if char == "/" else f"the character {char!r}"
        raise BrokerError(
            "invalid_key",
            f"{what} {quote_name(name)} contains {kind}; names may not contain '/', whitespace "
            "or control characters",
        )
    if name in (".", ".."):
        raise BrokerError("invalid_key", f"{what} {name!r} is reserved; '.' and '..' are not names")


def resolve_ttl(
    ttl_ms: int | None,
    *,
    default_ms: int,
    max_ms: int,
    required: bool,
    subject: str,
) -> int:
    """The TTL to apply. Zero or a negative TTL is always refused: it never means "default"."""
    if ttl_ms is None:
        if required:
            raise BrokerError(
                "ttl_required",
                f"{subject} needs ttl_ms: this broker requires a TTL on every value "
                "(require_ttl is on)",
            )
        return default_ms
    # bool is an int in Python; a JSON true must never pass as a TTL of 1 ms.
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int):
        raise BrokerError("invalid_ttl", f"ttl_ms of {subject} must be an integer, not {ttl_ms!r}")
    if ttl_ms <= 0:
        raise BrokerError(
            "invalid_ttl",
            f"ttl_ms of {subject} is {ttl_ms}; it must be a positive number of milliseconds "
            "(0 never means 'no expiry' or 'default')",
        )
    if ttl_ms > max_ms:
        raise BrokerError(
            "invalid_ttl", f"ttl_ms of {subject} is {ttl_ms}, above max_ttl of {max_ms} ms"
        )
    return ttl_ms


# Bounds of the lease `size` and of every wait (`wait_ms` of a lease or a waiting GET).
MAX_POOL_SIZE: Final = 1_000_000
MAX_WAIT_MS: Final = 300_000


def check_wait_ms(wait_ms: int, what: str, name: str) -> None:
    """Raise `validation_error` unless `wait_ms` is an integer in 0..MAX_WAIT_MS.

    `what` and `name` make the sentence ("the lease in pool", "accounts"); it is only built
    when the check fails.
    """
    if type(wait_ms) is not int or not 0 <= wait_ms <= MAX_WAIT_MS:
        raise BrokerError(
            "validation_error",
            f"wait_ms of {what} {quote_name(name)} is {wait_ms!r}; it must be an integer from 0 "
            f"to {MAX_WAIT_MS}",
        )


MAX_NAMESPACE_BYTES: Final = 64


def check_namespace(namespace: str) -> None:
    """A namespace (of a Redis store) is a name by the key rules, 1 to 64 bytes, without
    braces: it becomes the Redis Cluster hash tag `{namespace}`. Raises ValueError."""
    try:
        check_name(namespace, MAX_NAMESPACE_BYTES, what="namespace")
    except BrokerError as exc:
        raise ValueError(exc.detail) from None
    if "{" in namespace or "}" in namespace:
        raise ValueError(
            f"namespace {namespace!r} contains a brace; it may not contain '{{' or '}}'"
        )


def redact_url(url: str) -> str:
    """A store URL as logs, errors and health output show it: without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


# zlib level 1: most of the ratio on JSON-like text at a fraction of level 6's CPU.
ZLIB_LEVEL: Final = 1


def pack_value(
    key: str, value: bytes, max_value_size: int, compression_threshold: int
) -> tuple[bytes, bool]:
    """Refuse a value over max_value_size (`too_large`); otherwise the bytes to keep and
    whether they are zlib-compressed (only when at least `compression_threshold` bytes and
    compression makes them smaller; a threshold of 0 never compresses)."""
    size = len(value)
    if size > max_value_size:
        raise BrokerError(
            "too_large",
            f"value of key {quote_name(key)} is {size} bytes of JSON, over max_value_size of "
            f"{max_value_size} bytes",
        )
    if compression_threshold and size >= compression_threshold:
        packed = zlib.compress(value, ZLIB_LEVEL)
        if len(packed) < size:
            return packed, True
    return value, False
