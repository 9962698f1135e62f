"""Leases and waiting reads through a real `ephemeral-broker serve` on a real socket: worker
processes racing, taking turns in a bounded pool, waits woken by writes and expiries, waits
ended by shutdown, and curl."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.brokers import BrokerFactory, BrokerProcess, read_first_line
from tests.support.waiting import wait_until

WORKER = Path(__file__).resolve().parents[1] / "support" / "lease_worker.py"


def run_workers(broker: BrokerProcess, argvs: list[list[str]]) -> list[dict[str, Any]]:
    """Start one worker per argv, let them all connect, then release them at once."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for argv in argvs:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-S", str(WORKER), str(broker.socket), *argv],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert read_first_line(proc, 60) == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
            results.append(json.loads(out))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def in_flight(client: httpx.Client) -> int:
    """Requests the broker is serving, not counting the scrape that asks."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "ephemeral_broker_requests_in_flight":
                return int(sample.value) - 1
    raise AssertionError("no in-flight gauge")


def test_64_worker_processes_racing_for_leases_get_distinct_values(broker: BrokerProcess) -> None:
    results = run_workers(broker, [["race", f"w{n}"] for n in range(64)])
    assert [r["status"] for r in results] == [201] * 64
    grants = [r["grant"] for r in results]
    assert sorted(g["value"] for g in grants) == list(range(64))
    assert len({g["token"] for g in grants}) == 64
    with broker.client() as client:
        listing = client.get("/v1/leases/race").json()["leases"]
        stats = client.get("/v1/stats").json()
    assert [x["value"] for x in listing] == list(range(64))
    assert {x["worker_id"]: x["value"] for x in listing} == {
        g["worker_id"]: g["value"] for g in grants
    }
    assert (stats["leases"], stats["pools"]) == (64, 1)


def test_32_workers_take_turns_in_a_pool_of_8_without_overlap(broker: BrokerProcess) -> None:
    workers = [f"w{n}" for n in range(32)]
    results = run_workers(broker, [["turns", name, "8", "120000", "40"] for name in workers])
    # Every worker got a turn, below size, and released exactly its own lease.
    assert [r["status"] for r in results] == [201] * 32
    assert sorted(r["grant"]["worker_id"] for r in results) == sorted(workers)
    assert all(0 <= r["grant"]["value"] < 8 for r in results)
    assert all(r["released"] == [200, {"released": True}] for r in results)
    by_value: dict[int, list[tuple[int, int, str]]] = {}
    for r in results:
        by_value.setdefault(r["grant"]["value"], []).append(
            (r["start"], r["end"], r["grant"]["worker_id"])
        )
    for value, intervals in by_value.items():
        intervals.sort()
        for (_, end, before), (start, _, after) in itertools.pairwise(intervals):
            assert start >= end, f"value {value}: {after} started before {before} had released"
    # 32 turns on 8 values: some values were used several times, so workers really waited.
    assert max(len(intervals) for intervals in by_value.values()) >= 4
    with broker.client() as client:
        assert client.get("/v1/leases/turns").json()["leases"] == []


def test_an_expiring_lease_wakes_a_waiter_without_the_sweeper(start_broker: BrokerFactory) -> None:
    # The sweeper would run in ten minutes: only the expiry timer can hand the value over.
    broker = start_broker("--sweeper-interval", "600000")
    with broker.client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder = client.post(
            "/v1/leases/slot", json={"worker_id": "holder", "size": 1, "ttl_ms": 3000}
        ).json()

        def wait_for_slot() -> httpx.Response:
            with broker.client(timeout=60) as waiter:
                return waiter.post(
                    "/v1/leases/slot", json={"worker_id": "waiter", "size": 1, "wait_ms": 60000}
                )

        waiting = pool.submit(wait_for_slot)
        wait_until(lambda: in_flight(client) == 1, what="the lease request to wait")
        parked_at = client.get("/v1/ping").json()["pong"]
        response = waiting.result(timeout=60)
    assert parked_at < holder["expires_at"], "the waiter parked only after the expiry"
    assert response.status_code == 201
    grant = response.json()
    assert (grant["value"], grant["worker_id"]) == (holder["value"], "waiter")
    assert grant["token"] > holder["token"]
    granted_at = grant["expires_at"] - grant["ttl_ms"]
    assert granted_at >= holder["expires_at"]  # the hand-over came from the expiry


def test_waiting_get_over_the_socket_wakes_on_the_write(broker: BrokerProcess) -> None:
    order: list[str] = []
    with broker.client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:

        def read() -> httpx.Response:
            with broker.client(timeout=60) as reader:
                response = reader.get("/v1/keys/config", params={"wait_ms": 60000})
            order.append("read answered")
            return response

        reading = pool.submit(read)
        wait_until(lambda: in_flight(client) == 1, what="the GET to wait")
        order.append("write")
        put = client.put("/v1/keys/config", json={"value": {"port": 5432}, "ttl_ms": 60000})
        response = reading.result(timeout=60)
    assert order == ["write", "read answered"]
    assert response.status_code == 200
    assert response.json()["value"] == {"port": 5432}
    assert response.json()["version"] == put.json()["version"]


@pytest.mark.anyio
async def test_200_waiting_gets_over_the_socket_wake_on_one_write(broker: BrokerProcess) -> None:
    transport = httpx.AsyncHTTPTransport(
        uds=str(broker.socket), limits=httpx.Limits(max_connections=256)
    )
    async with httpx.AsyncClient(
        transport=transport, base_url="http://localhost", timeout=60
    ) as client:
        readers = [
            asyncio.ensure_future(client.get("/v1/keys/barrier", params={"wait_ms": 60000}))
            for _ in range(200)
        ]
        with broker.client() as probe:
            for _ in range(6000):
                if in_flight(probe) == 200:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the 200 GETs never all parked")
            put = probe.put("/v1/keys/barrier", json={"value": "go", "ttl_ms": 60000}).json()
        responses = await asyncio.gather(*readers)
    assert {(r.status_code, r.json()["version"]) for r in responses} == {(200, put["version"])}


def test_waits_end_with_503_draining_on_sigterm(start_broker: BrokerFactory) -> None:
    broker = start_broker()
    with broker.client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        client.post("/v1/leases/one", json={"worker_id": "holder", "size": 1})

        def read() -> httpx.Response:
            with broker.client(timeout=60) as reader:
                return reader.get("/v1/keys/never-written", params={"wait_ms": 300000})

        def lease() -> httpx.Response:
            with broker.client(timeout=60) as waiter:
                return waiter.post(
                    "/v1/leases/one", json={"worker_id": "late", "size": 1, "wait_ms": 300000}
                )

        reading, leasing = pool.submit(read), pool.submit(lease)
        wait_until(lambda: in_flight(client) == 2, what="both requests to wait")
        started = time.monotonic()
        os.kill(broker.pid, signal.SIGTERM)
        responses = [reading.result(timeout=60), leasing.result(timeout=60)]
    for response in responses:
        assert response.status_code == 503
        assert response.json()["code"] == "draining"
        assert response.headers["retry-after"] == "1"
    assert broker.proc.wait(timeout=30) == 0
    assert not broker.socket.exists()
    # Not a timing claim about the waits: only that shutdown did not sit out wait_ms (300 s).
    assert time.monotonic() - started < 60


def curl(socket: Path, *args: str) -> tuple[int, Any]:
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(socket), "-w", "\n%{http_code}", *args],
        capture_output=True,
        timeout=60,
        check=True,
        text=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body) if body else None


def test_curl_walks_through_the_lease_endpoints(broker: BrokerProcess) -> None:
    sock, url = broker.socket, "http://localhost/v1/leases"
    status, first = curl(sock, "-X", "POST", f"{url}/accounts", "-d", '{"worker_id": "gw0"}')
    assert (status, first["value"]) == (201, 0)
    status, again = curl(sock, "-X", "POST", f"{url}/accounts", "-d", '{"worker_id": "gw0"}')
    assert (status, again["token"]) == (200, first["token"])
    status, second = curl(sock, "-X", "POST", f"{url}/accounts", "-d", '{"worker_id": "gw1"}')
    assert (status, second["value"]) == (201, 1)
    status, renewed = curl(
        sock, "-X", "POST", f"{url}/accounts/gw1/renew", "-d", '{"ttl_ms": 120000}'
    )
    assert (status, renewed["ttl_ms"]) == (200, 120000)
    status, full = curl(
        sock, "-X", "POST", f"{url}/accounts", "-d", '{"worker_id": "gw2", "size": 2}'
    )
    assert (status, full["code"]) == (409, "pool_exhausted")
    status, listing = curl(sock, url)
    assert [x["worker_id"] for x in listing["pools"][0]["leases"]] == ["gw0", "gw1"]
    status, wrong = curl(sock, "-X", "DELETE", f"{url}/accounts/gw0?token={first['token'] + 99}")
    assert (status, wrong["code"]) == (412, "precondition_failed")
    status, released = curl(sock, "-X", "DELETE", f"{url}/accounts/gw0?token={first['token']}")
    assert (status, released) == (200, {"released": True})
    status, all_of = curl(sock, "-X", "DELETE", f"{url}?worker_id=gw1")
    assert (status, all_of) == (200, {"released": 1})
    status, key = curl(
        sock, "-X", "PUT", "http://localhost/v1/keys/ready", "-d", '{"value": 1, "ttl_ms": 60000}'
    )
    status, waited = curl(
        sock, f"http://localhost/v1/keys/ready?wait_ms=1000&after_version={key['version'] - 1}"
    )
    assert (status, waited["value"]) == (200, 1)
    status, body = curl(
        sock, f"http://localhost/v1/keys/ready?wait_ms=50&after_version={key['version']}"
    )
    assert (status, body) == (304, None)
