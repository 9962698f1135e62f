"""Store limits for tests that build a store directly, and values encoded as the API stores
them."""

from __future__ import annotations

from typing import Any

import orjson

from ephemeral_broker.store import StoreLimits


def limits(**overrides: Any) -> StoreLimits:
    base: dict[str, Any] = {
        "max_items": 10_000,
        "max_value_size": 262_144,
        "max_key_length": 512,
        "max_ttl": 86_400_000,
        "default_ttl": 1_800_000,
        "require_ttl": True,
        "compression_threshold": 1024,
        "refresh_ttl_on_get": False,
    }
    base.update(overrides)
    return StoreLimits(**base)


def enc(value: Any) -> bytes:
    return orjson.dumps(value)
