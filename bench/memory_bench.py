"""Memory: the broker's RSS growth per live key, for several value shapes."""

from __future__ import annotations

import random
import string

import orjson

from bench.harness import start_broker
from bench.http_bench import fill

_RNG = random.Random(42)
# Incompressible: random letters and digits. Compressible: a repeating JSON-like record.
RANDOM_10K = "".join(_RNG.choices(string.ascii_letters + string.digits, k=10_238))
COMPRESSIBLE_10K = ('{"user": "worker-7", "role": "admin", "ok": true} ' * 250)[:10_238]
SMALL_100B = "v" * 98

SCENARIOS = {
    "100B": (SMALL_100B, ()),
    "10KB_random": (RANDOM_10K, ()),
    "10KB_compressible_compression_on": (COMPRESSIBLE_10K, ()),
    "10KB_compressible_compression_off": (COMPRESSIBLE_10K, ("--compression-threshold", "0")),
}


def rss_per_key(scenario: str, keys: int) -> dict[str, float]:
    value, flags = SCENARIOS[scenario]
    value_bytes = len(orjson.dumps(value))
    with start_broker("--max-items", "0", "--max-value-size", "100000", *flags) as broker:
        # Warm up the app's code paths with small requests only: freeing value-sized blocks
        # here would let the fill reuse them and hide their cost from the RSS reading.
        with broker.client() as client:
            for i in range(300):
                client.put(f"/v1/keys/warm{i % 10}", json={"value": i, "ttl_ms": 60_000})
                client.get(f"/v1/keys/warm{i % 10}")
        before = broker.rss()
        fill(broker, keys, value)
        after = broker.rss()
    per_key = (after - before) / keys
    return {
        "keys": keys,
        "value_bytes": value_bytes,
        "rss_growth_bytes": after - before,
        "rss_per_key_bytes": round(per_key, 1),
        "overhead_per_key_bytes": round(per_key - value_bytes, 1),
    }
