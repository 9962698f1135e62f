"""`python -m bench.instructions` counts the instructions of the broker's and the floor's request
paths under valgrind. No count is asserted (they are for reading, like every benchmark figure):
only that it runs and reports a real, positive count for each side."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.commands import run_module


def _require_valgrind() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        message = "no `valgrind` on PATH (Debian package `valgrind`)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must install it (.ci/install-services)")
        pytest.skip(message)


@pytest.mark.timeout(600)
def test_instructions_per_request_are_counted_for_both_sides() -> None:
    _require_valgrind()
    result = run_module("bench.instructions", "--requests", "100", "get", "ping", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in ("get", "ping"):
            rows[fields[0]] = fields
    assert set(rows) == {"get", "ping"}, result.stdout
    for name, (_, broker, floor, ratio) in rows.items():
        assert int(broker) > int(floor) > 0, (name, result.stdout)
        assert float(ratio.rstrip("x")) > 1, (name, result.stdout)
