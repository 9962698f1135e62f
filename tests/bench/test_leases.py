"""The lease benchmark runs and returns sane figures (no timing is asserted: see bench/)."""

from __future__ import annotations

import pytest

from bench.leases import GrantComparison, compare, format_report, measure_grant


def test_measure_grant_returns_positive_medians() -> None:
    cost = measure_grant(holders=50, samples=21)
    assert (cost.holders, cost.samples) == (50, 21)
    assert 0 < cost.grant_ns <= cost.cycle_ns


def test_compare_reports_both_pools_and_their_ratio() -> None:
    result = compare(small=10, large=200, samples=11)
    assert isinstance(result, GrantComparison)
    assert (result.small.holders, result.large.holders) == (10, 200)
    assert result.ratio > 0
    report = format_report(result)
    assert "10 holders" in report and "200 holders" in report and "ratio" in report


def test_measure_grant_refuses_an_empty_pool() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        measure_grant(holders=0)
