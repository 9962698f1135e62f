"""The HMAC scheme of SPEC section 5, against the canonical string written out by hand."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ephemeral_broker.signing import canonical_string, sign, signature_headers, verify

SECRET = "correct horse battery staple"
NOW = 1_767_225_600_000


def test_signature_is_hmac_sha256_of_the_spec_canonical_string() -> None:
    body = b'{"value":1,"ttl_ms":1000}'
    target = "/v1/keys/a%20b?wait_ms=10"
    by_hand = f"{NOW}\nPUT\n{target}\n{hashlib.sha256(body).hexdigest()}".encode()
    assert canonical_string(NOW, "put", target, hashlib.sha256(body).hexdigest()) == by_hand
    expected = hmac.new(SECRET.encode(), by_hand, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, "PUT", target, body) == expected


def test_empty_body_hashes_the_empty_string() -> None:
    by_hand = f"{NOW}\nGET\n/v1/ping\n{hashlib.sha256(b'').hexdigest()}".encode()
    assert sign(SECRET, NOW, "GET", "/v1/ping") == (
        hmac.new(SECRET.encode(), by_hand, hashlib.sha256).hexdigest()
    )


def test_verify_accepts_a_fresh_signature_within_the_window() -> None:
    headers = signature_headers(SECRET, NOW, "GET", "/v1/ping")
    digest = hashlib.sha256(b"").hexdigest()
    for skew in (-30_000, 0, 30_000):
        assert verify(
            SECRET,
            headers["X-Broker-Timestamp"],
            headers["X-Broker-Signature"],
            "GET",
            "/v1/ping",
            digest,
            NOW + skew,
        )


@pytest.mark.defect(13)
def test_malformed_signatures_are_false_never_an_exception() -> None:
    """Defect 13: non-hex or odd-length HMACs crashed the Node broker's comparison."""
    digest = hashlib.sha256(b"").hexdigest()
    good = sign(SECRET, NOW, "GET", "/v1/ping")
    cases = [
        (str(NOW), None),
        (None, good),
        (str(NOW), "zz" * 32),  # right length, not hex
        (str(NOW), good[:-1]),  # odd length
        (str(NOW), good + "00"),  # too long
        (str(NOW), "é" * 64),  # non-ASCII
        (str(NOW), "x" * 100_000),  # huge
        ("not-a-number", good),
        ("-5", good),
        ("9" * 400, good),  # a number far too long to be a time
        (str(NOW + 30_001), sign(SECRET, NOW + 30_001, "GET", "/v1/ping")),  # stale
        (str(NOW), sign("wrong secret", NOW, "GET", "/v1/ping")),
        (str(NOW), sign(SECRET, NOW, "POST", "/v1/ping")),  # other method
        (str(NOW), sign(SECRET, NOW, "GET", "/v1/stats")),  # other target
    ]
    for timestamp, signature in cases:
        assert not verify(SECRET, timestamp, signature, "GET", "/v1/ping", digest, NOW)
