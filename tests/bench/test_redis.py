"""The Redis benchmark (`python -m bench.redis_bench`) runs and reports every figure. No
timing is asserted: its figures are read from runs, never checked in tests."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.redis_bench import OPERATIONS
from tests.support.commands import run_module


@pytest.mark.timeout(600)
def test_quick_redis_run_reports_broker_and_redis_cpu_for_both_stores(
    tmp_path: Path, redis_server: object
) -> None:
    out = tmp_path / "redis.json"
    result = run_module("bench.redis_bench", "--quick", "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = orjson.loads(out.read_bytes())
    assert set(report["operations"]) == set(OPERATIONS)
    for summary in report["operations"].values():
        for store in ("memory", "redis"):
            row = summary[store]
            assert row["broker_cpu_us"] > 0 and row["calls_per_s"] > 0, row
        assert summary["redis"]["redis_cpu_us"] > 0
        assert summary["broker_cpu_ratio"] > 0
    assert "broker CPU redis/memory" in result.stdout
