"""The benchmark harness runs and reports every field. No timing is asserted here: speed and
memory targets are read from `python -m bench` runs, never checked in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.__main__ import missing_fields
from tests.support.commands import run_module
from tests.support.paths import ROOT


@pytest.mark.timeout(900)
def test_quick_run_writes_json_with_every_field(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_module("bench", "--quick", "--json", str(out), timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    results = orjson.loads(out.read_bytes())
    assert missing_fields(results) == []
    assert results["meta"]["quick"] is True
    # Every measured number is a real, positive measurement.
    for mode in ("sync", "async"):
        for row in results["sequential"][mode].values():
            assert all(value > 0 for value in row.values()), row
    assert results["baseline"]["cpu_ratio"] > 0
    assert "CPU per operation" in result.stdout


@pytest.mark.timeout(600)
def test_the_clients_section_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPHEMERAL_BENCH_NODE_ORIGINAL", raising=False)  # read by the child
    out = tmp_path / "clients.json"
    result = run_module("bench", "--only", "clients", "--quick", "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = orjson.loads(out.read_bytes())
    assert missing_fields(results, ("clients",)) == []
    assert set(results) == {"meta", "clients"}
    clients = results["clients"]
    assert clients["floor"]["client_cpu_us"] > 0
    assert set(clients["rows"]) >= {
        "sync, own transport",
        "sync, httpx transport",
        "async, own transport",
        "async, httpx transport",
    }
    for row in clients["rows"].values():
        assert all(value > 0 for value in row.values()), row
    assert clients["processes"]["16"]["ops_per_s"] > 0
    # Without a checkout of the Node.js original it is not measured, and the output says why.
    assert clients["node_original"]["measured"] is False
    assert "the Node.js original was not measured" in result.stdout
    assert "raw-socket floor" in result.stdout


def test_profile_attributes_the_brokers_cpu_to_packages_and_names_our_routes() -> None:
    result = run_module("bench.profile", "--requests", "100", "--top", "40", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "broker CPU under 100 GETs, by package (cProfile, thread CPU clock):"
    shares = {}
    for line in lines[1:]:
        if not line.endswith(" %"):
            break
        group, _, share = line.strip().rpartition("  ")
        shares[group.strip()] = float(share.removesuffix(" %"))
    assert {"our code (app/)", "fastapi", "uvicorn"} <= shares.keys(), shares
    assert abs(sum(shares.values()) - 100) < 1, shares
    # The profile covers serving GETs, not start-up: the keys route is among the functions.
    assert "api/routes/keys.py" in result.stdout and "(get_key)" in result.stdout


def test_soak_reports_ops_errors_and_the_brokers_resources(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = run_module(
        "bench.soak", "--procs", "2", "--seconds", "2", "--json", str(out), timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    soak = orjson.loads(out.read_bytes())
    assert soak["ops"] > 0 and soak["ops"] == sum(soak["outcomes"].values()) + sum(
        soak["errors"].values()
    )
    assert soak["errors"] == {}, soak["errors"]
    assert set(soak["broker"]) == {"start", "middle", "end", "after_expiry"}
    for row in soak["broker"].values():
        assert row["rss_bytes"] > 0 and row["fds"] > 0
    # Everything the soak wrote had a short TTL: after it, nothing is left.
    assert (soak["broker"]["after_expiry"]["items"], soak["broker"]["after_expiry"]["leases"]) == (
        0,
        0,
    )
    assert "p50" in result.stdout and "after_expiry" in result.stdout


@pytest.mark.timeout(300)
def test_only_the_floor_section_reports_each_operation_against_its_floor(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    result = run_module("bench", "--quick", "--only", "floor", "--json", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = orjson.loads(out.read_bytes())
    assert missing_fields(results, ("floor",)) == []
    assert set(results) == {"meta", "floor"}
    floor = results["floor"]
    # Pinned to one CPU (the figures at the top), and, where this process may use more than
    # one, again with the servers and the client on different CPUs, and with the scheduler
    # free to place the processes.
    several_cpus = len(os.sched_getaffinity(0)) > 1
    assert (floor["pinned_cpu"] is not None) == several_cpus
    tables = [floor, floor["split"], floor["unpinned"]] if several_cpus else [floor]
    for operation in ("get", "put", "delete", "incr", "ping"):
        for table in tables:
            row = table[operation]
            assert row["broker_cpu_us"] > 0 and row["floor_cpu_us"] > 0 and row["ratio"] > 0
        assert result.stdout.count(f"\n{operation} ") >= len(tables)
    assert "against the floor" in result.stdout
    assert ("the scheduler free to place them" in result.stdout) == several_cpus
    assert ("every request wakes the server's CPU" in result.stdout) == several_cpus
    if several_cpus:
        assert floor["split"]["client_cpu"] != floor["pinned_cpu"]
    if several_cpus:
        # Free, beside the floor: the same floor in a process of the broker's size.
        for operation in ("get", "put", "delete", "incr", "ping"):
            row = floor["unpinned"][operation]
            assert row["loaded_floor_cpu_us"] > 0 and row["ratio_to_loaded"] > 0, row


def test_the_floor_process_loads_no_web_framework() -> None:
    """The floor is a bare ASGI server: its process must not carry FastAPI or Starlette, whose
    mere presence (a bigger process) raises a request's cost when the scheduler moves it between
    CPUs (bench/floor.py). `--loaded` is the one floor that builds the broker's app on purpose."""
    probe = (
        "import sys, bench.baseline; "
        "print(sorted(m for m in ('fastapi', 'starlette') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
