"""`once`: across processes exactly one caller runs the factory and every caller gets its
result; a winner killed mid-factory hands its turn to another caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ephemeral_broker_client import ONCE_LOCK_SUFFIX, AsyncBrokerClient, BrokerClient
from tests.support.brokers import BrokerProcess
from tests.support.clients import Clients
from tests.support.waiting import wait_until

TTL = 60_000
PROCESSES = 16


def test_once_runs_the_factory_once_and_stores_its_result(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    calls: list[int] = []

    def factory() -> dict[str, Any]:
        calls.append(1)
        return {"schema": "test_7", "tables": (1, 2)}

    first = b.once(ns + "schema", factory, TTL)
    second = b.once(ns + "schema", factory, TTL)
    assert first == second == {"schema": "test_7", "tables": [1, 2]}  # as decoded from JSON
    assert calls == [1]
    assert b.get(ns + "schema") == first
    assert b.get(ns + "schema" + ONCE_LOCK_SUFFIX, None) is None  # the lock is gone


def test_a_failing_factory_frees_the_turn_at_once(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)

    def broken() -> str:
        raise RuntimeError("set-up failed")

    with pytest.raises(RuntimeError, match="set-up failed"):
        b.once(ns + "k", broken, TTL)
    assert b.get(ns + "k" + ONCE_LOCK_SUFFIX, None) is None
    assert b.once(ns + "k", lambda: "second try", TTL) == "second try"


def test_a_result_that_is_not_json_raises_type_error_naming_the_key(
    shared_broker: BrokerProcess, clients: Clients, ns: str
) -> None:
    b = clients.open(shared_broker.socket)
    with pytest.raises(TypeError, match=f"key '{ns}k'"):
        b.once(ns + "k", object, TTL)
    assert b.get(ns + "k" + ONCE_LOCK_SUFFIX, None) is None
    with pytest.raises(ValueError, match="ttl_ms"):
        b.once(ns + "k", lambda: 1, 0)


@pytest.mark.anyio
async def test_the_async_factory_may_be_a_coroutine(shared_broker: BrokerProcess, ns: str) -> None:
    async def build() -> str:
        return "built"

    async with AsyncBrokerClient(shared_broker.socket) as b:
        assert await b.once(ns + "k", build, TTL) == "built"
        assert await b.once(ns + "k", lambda: "not called", TTL) == "built"


WORKER = textwrap.dedent(
    """
    import os, sys, time
    import orjson
    from ephemeral_broker_client import BrokerClient

    key, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]

    def factory():
        with open(log, "a") as out:
            first = out.tell() == 0
            out.write(f"started {os.getpid()}\\n")
        if mode == "kill-first" and first:
            time.sleep(600)  # the test kills this winner mid-factory
        time.sleep(0.5)
        with open(log, "a") as out:
            out.write(f"done {os.getpid()}\\n")
        return {"by": os.getpid()}

    with BrokerClient(timeout=30) as broker:
        result = broker.once(key, factory, 60_000, lock_ttl_ms=1000)
    print(orjson.dumps(result).decode(), flush=True)
    """
)


def _run_workers(
    broker: BrokerProcess, tmp: Path, key: str, mode: str
) -> tuple[list[str], list[Any]]:
    """Run 16 worker processes calling once(key); their factory log lines and results."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    log = tmp / f"{mode}.log"
    env = {**os.environ, "EPHEMERAL_PIPE": str(broker.socket)}
    argv = [sys.executable, str(script), key, str(log), mode]
    workers = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) for _ in range(PROCESSES)
    ]
    try:
        if mode == "kill-first":
            wait_until(
                lambda: log.exists() and log.read_text().startswith("started"),
                60,
                "the first winner to start its factory",
            )
            winner = int(log.read_text().split()[1])
            os.kill(winner, signal.SIGKILL)
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=90)
            if worker.returncode == 0:
                results.append(orjson.loads(out))
            else:
                assert worker.returncode == -signal.SIGKILL, out
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
    return log.read_text().splitlines(), results


def test_once_with_16_processes_runs_the_factory_exactly_once(
    shared_broker: BrokerProcess, short_tmp: Path, ns: str
) -> None:
    lines, results = _run_workers(shared_broker, short_tmp, ns + "setup", "plain")
    started = [line for line in lines if line.startswith("started")]
    assert len(started) == 1, lines
    assert len(results) == PROCESSES
    winner = int(started[0].split()[1])
    assert all(result == {"by": winner} for result in results), results


def test_once_when_the_winner_is_killed_mid_factory_another_caller_completes_it(
    shared_broker: BrokerProcess, short_tmp: Path, ns: str
) -> None:
    started_at = time.monotonic()
    lines, results = _run_workers(shared_broker, short_tmp, ns + "setup", "kill-first")
    started = [int(line.split()[1]) for line in lines if line.startswith("started")]
    done = [int(line.split()[1]) for line in lines if line.startswith("done")]
    killed, successor = started[0], started[1]
    assert len(started) == 2, lines  # the killed winner, and exactly one successor
    assert done == [successor]
    assert len(results) == PROCESSES - 1  # everyone but the killed winner
    assert all(result == {"by": successor} for result in results), results
    assert killed != successor
    assert time.monotonic() - started_at < 90
    with BrokerClient(shared_broker.socket) as b:
        assert b.get(ns + "setup") == {"by": successor}
