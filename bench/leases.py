"""Store-level benchmark of a lease grant: does its cost stay flat as a pool fills up?

A pool holds `holders` leases, values 0..holders-1. Each sample releases the lease of one
holder picked at random (so the free value may sit anywhere, up to the top) and times the grant
that follows, which must hand that value out again as the lowest free one. A grant that scanned
for the lowest free value (defect 9 of the design notes) would cost O(holders) here; ours
pops a heap.

    python -m bench.leases [--samples N]

prints the median cost with 100 and with 100,000 holders and their ratio (the issue's bound:
under 3). `compare()` returns the same figures for the harness (`python -m bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ephemeral_broker.clock import FakeClock
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store import MemoryStore, StoreLimits

SMALL_POOL: Final = 100
LARGE_POOL: Final = 100_000
DEFAULT_SAMPLES: Final = 5_001
MAX_RATIO: Final = 3.0
_POOL: Final = "bench"
_TTL_MS: Final = 3_600_000  # the fake clock never moves: nothing expires while measuring


@dataclass(frozen=True, slots=True)
class GrantCost:
    holders: int
    samples: int
    grant_ns: float  # median of one grant (acquire of the freed value)
    cycle_ns: float  # median of a release plus the grant after it


@dataclass(frozen=True, slots=True)
class GrantComparison:
    small: GrantCost
    large: GrantCost

    @property
    def ratio(self) -> float:
        """Median grant cost with the large pool over the small one."""
        return self.large.grant_ns / self.small.grant_ns


async def _measure(holders: int, samples: int, seed: int) -> GrantCost:
    settings = BrokerSettings(max_leases=0)  # unlimited: the large pool must fit
    store = MemoryStore(StoreLimits.from_settings(settings), FakeClock())
    holder_of = [f"w{value}" for value in range(holders)]
    for worker in holder_of:
        await store.acquire_lease(_POOL, worker, _TTL_MS)
    rng = random.Random(seed)
    perf = time.perf_counter_ns
    grants: list[int] = []
    cycles: list[int] = []
    gc.collect()
    gc.disable()  # a collection of 100,000 leases in one sample is not the grant's cost
    try:
        for sample in range(samples):
            value = rng.randrange(holders)
            worker = f"n{sample}"
            started = perf()
            await store.release_lease(_POOL, holder_of[value])
            released = perf()
            grant = await store.acquire_lease(_POOL, worker, _TTL_MS)
            granted = perf()
            if grant.value != value:
                raise AssertionError(f"granted {grant.value}, expected the freed value {value}")
            holder_of[value] = worker
            grants.append(granted - released)
            cycles.append(granted - started)
    finally:
        gc.enable()
    return GrantCost(holders, samples, statistics.median(grants), statistics.median(cycles))


def measure_grant(holders: int, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> GrantCost:
    """Median cost of one grant in a pool of `holders` leases (store level, fake clock)."""
    if holders < 1 or samples < 1:
        raise ValueError("holders and samples must be at least 1")
    return asyncio.run(_measure(holders, samples, seed))


def compare(
    small: int = SMALL_POOL, large: int = LARGE_POOL, samples: int = DEFAULT_SAMPLES
) -> GrantComparison:
    """Grant cost with a small and a large pool; `ratio` should stay under MAX_RATIO."""
    return GrantComparison(measure_grant(small, samples), measure_grant(large, samples))


def format_report(result: GrantComparison) -> str:
    lines = [f"lease grant, store level, median of {result.small.samples} samples:"]
    for cost in (result.small, result.large):
        lines.append(
            f"  {cost.holders:>7,} holders: {cost.grant_ns / 1000:6.2f} µs per grant "
            f"({cost.cycle_ns / 1000:.2f} µs with the release before it)"
        )
    verdict = "ok" if result.ratio < MAX_RATIO else f"over the bound of {MAX_RATIO:g}"
    lines.append(
        f"  ratio {result.large.holders:,} / {result.small.holders:,} holders: "
        f"{result.ratio:.2f} ({verdict})"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leases", description=__doc__)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    args = parser.parse_args(argv)
    result = compare(samples=args.samples)
    print(format_report(result))
    return 0 if result.ratio < MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
