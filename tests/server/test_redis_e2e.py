"""Several brokers, one Redis: real `ephemeral-broker serve` processes on their own sockets,
sharing a namespace on a real redis-server, and what happens when Redis fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ephemeral_broker_client import BrokerClient
from tests.support.brokers import BROKER_EXE, BrokerFactory, BrokerProcess
from tests.support.paths import ROOT
from tests.support.redis_server import RedisServer, fresh_namespace
from tests.support.responses import assert_problem


@pytest.fixture
def own_redis(short_tmp: Path, redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of this test alone (the fault tests stop and restart it)."""
    server = RedisServer(redis_server.exe, short_tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pair(start_broker: BrokerFactory, url: str, *flags: str) -> tuple[BrokerProcess, ...]:
    namespace = fresh_namespace()
    return tuple(start_broker("--store", url, "--namespace", namespace, *flags) for _ in range(2))


def test_a_write_on_one_broker_wakes_a_waiter_on_the_other(
    start_broker: BrokerFactory, redis_url: str
) -> None:
    one, two = pair(start_broker, redis_url)
    with one.client() as a, two.client(timeout=30) as b, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(b.get, "/v1/keys/greeting", params={"wait_ms": 20_000})
        time.sleep(0.3)  # let the GET park on broker two
        started = time.monotonic()
        assert a.put("/v1/keys/greeting", json={"value": "hi", "ttl_ms": 60_000}).is_success
        answer = waiting.result(timeout=20)
        woke_after = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["value"] == "hi"
    assert woke_after < 5, f"woken {woke_after:.3f} s after the write, not by the write"


def test_32_workers_on_two_brokers_share_one_pool_of_8(
    start_broker: BrokerFactory, redis_url: str
) -> None:
    one, two = pair(start_broker, redis_url)
    held: dict[int, str] = {}
    lock = threading.Lock()
    overlaps: list[str] = []
    grants = [0]

    def worker(index: int) -> None:
        broker = (one, two)[index % 2]
        name = f"w{index}"
        with broker.client(timeout=60) as client:
            for _ in range(3):
                response = client.post(
                    "/v1/leases/accounts",
                    json={"worker_id": name, "ttl_ms": 30_000, "size": 8, "wait_ms": 60_000},
                )
                assert response.status_code == 201, response.text
                value = response.json()["value"]
                with lock:
                    if value in held:
                        overlaps.append(f"{value} held by {held[value]} and {name}")
                    held[value] = name
                    grants[0] += 1
                time.sleep(0.005)
                with lock:
                    del held[value]
                released = client.delete(f"/v1/leases/accounts/{name}")
                assert released.is_success, released.text

    with ThreadPoolExecutor(32) as pool:
        for future in [pool.submit(worker, i) for i in range(32)]:
            future.result(timeout=120)
    assert overlaps == []
    assert grants[0] == 96
    with one.client() as a:
        assert a.get("/v1/leases/accounts").json()["leases"] == []


def test_once_across_brokers_runs_the_factory_once(
    start_broker: BrokerFactory, redis_url: str
) -> None:
    one, two = pair(start_broker, redis_url)
    calls: list[int] = []
    lock = threading.Lock()

    def factory() -> dict[str, int]:
        with lock:
            calls.append(1)
        time.sleep(0.3)
        return {"db": 42}

    def caller(index: int) -> object:
        broker = (one, two)[index % 2]
        with BrokerClient(str(broker.socket)) as client:
            return client.once("setup", factory, 60_000)

    with ThreadPoolExecutor(8) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(caller, i) for i in range(8)]]
    assert results == [{"db": 42}] * 8
    assert len(calls) == 1


def test_a_key_expires_for_both_brokers_at_the_same_moment(
    start_broker: BrokerFactory, redis_url: str
) -> None:
    one, two = pair(start_broker, redis_url)
    with one.client() as a, two.client() as b:
        assert a.put("/v1/keys/k", json={"value": 1, "ttl_ms": 600}).is_success
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            first = a.get("/v1/keys/k").status_code
            second = b.get("/v1/keys/k").status_code
            seen.append((first, second))
            if first == 404:
                break
        # Redis's clock decides for both: once one broker has seen it expire, the other,
        # asked right after, has too.
        assert seen[-1] == (404, 404), seen[-5:]
        assert seen[0] == (200, 200)


def test_sigkill_of_a_broker_with_waiters_leaves_the_other_correct(
    start_broker: BrokerFactory, redis_url: str
) -> None:
    one, two = pair(start_broker, redis_url)
    with one.client(timeout=30) as a, two.client(timeout=30) as b, ThreadPoolExecutor(4) as pool:
        body = {"worker_id": "holder", "ttl_ms": 60_000, "size": 1}
        assert a.post("/v1/leases/solo", json=body).status_code == 201
        doomed = [
            pool.submit(
                b.post,
                "/v1/leases/solo",
                json={"worker_id": "doomed", "ttl_ms": 60_000, "size": 1, "wait_ms": 60_000},
            ),
            pool.submit(b.get, "/v1/keys/never", params={"wait_ms": 60_000}),
        ]
        time.sleep(0.5)  # both requests park on broker two
        two.stop(signal.SIGKILL)
        for future in doomed:
            with pytest.raises(httpx.TransportError):
                future.result(timeout=10)
        survivor = pool.submit(
            a.post,
            "/v1/leases/solo",
            json={"worker_id": "survivor", "ttl_ms": 60_000, "size": 1, "wait_ms": 30_000},
        )
        time.sleep(0.3)
        assert a.delete("/v1/leases/solo/holder").is_success
        granted = survivor.result(timeout=30)
        assert granted.status_code == 201, granted.text
        assert granted.json()["value"] == 0
        leases = a.get("/v1/leases/solo").json()["leases"]
        assert [lease["worker_id"] for lease in leases] == ["survivor"]
        assert a.put("/v1/keys/k", json={"value": 1, "ttl_ms": 1000}).is_success


def test_redis_paused_then_back_gives_503_then_recovers(
    start_broker: BrokerFactory, own_redis: RedisServer
) -> None:
    (broker,) = (start_broker("--store", own_redis.url, "--namespace", "paused"),)
    assert own_redis.proc is not None
    with broker.client(timeout=30) as client:
        assert client.put("/v1/keys/k", json={"value": 1, "ttl_ms": 60_000}).is_success
        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # Redis stops answering: timeouts
        try:
            response = client.post("/v1/keys/k/incr", json={"by": 1})
            problem = assert_problem(response, 503, "store_unavailable")
            assert response.headers["retry-after"]
            assert "not retried" in problem["detail"]
            ready = client.get("/readyz")
            assert_problem(ready, 503, "store_unavailable")
            health = client.get("/healthz")
            assert health.status_code == 200
            assert health.json()["store"]["available"] is False
            assert "unreachable or timed out" in health.json()["store"]["reason"]
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert client.get("/readyz").status_code == 200
        # The incr that timed out was never sent again: at most one increment happened.
        value = client.get("/v1/keys/k").json()["value"]
        assert value in (1, 2)
        assert client.post("/v1/keys/k/incr", json={"by": 1}).json()["value"] == value + 1
        assert client.get("/v1/health").json()["store"]["resets"] == 0


def test_redis_restarted_empty_is_detected_and_reuses_no_version_or_token(
    start_broker: BrokerFactory, own_redis: RedisServer
) -> None:
    (broker,) = (start_broker("--store", own_redis.url, "--namespace", "lost"),)
    with broker.client(timeout=30) as client:
        before = client.put("/v1/keys/k", json={"value": 1, "ttl_ms": 60_000})
        version_before = int(before.headers["etag"].strip('"'))
        lease = client.post("/v1/leases/p", json={"worker_id": "w", "ttl_ms": 60_000}).json()
        own_redis.stop()
        response = client.put("/v1/keys/k", json={"value": 2, "ttl_ms": 60_000})
        assert_problem(response, 503, "store_unavailable")
        assert_problem(client.get("/readyz"), 503, "store_unavailable")
        own_redis.start()  # no persistence: it comes back empty
        assert client.get("/readyz").status_code == 200
        health = client.get("/v1/health").json()
        assert health["store"]["kind"] == "redis" and health["store"]["resets"] == 1
        assert health["store"]["last_reset_ms"] is not None
        assert client.get("/readyz").json()["store"]["resets"] == 1
        assert client.get("/v1/keys/k").status_code == 404  # the data is gone, and says so
        after = client.put("/v1/keys/k", json={"value": 3, "ttl_ms": 60_000})
        assert int(after.headers["etag"].strip('"')) > version_before
        again = client.post("/v1/leases/p", json={"worker_id": "w2", "ttl_ms": 60_000}).json()
        assert again["token"] > lease["token"]
        stats = client.get("/v1/stats").json()
        assert stats["store"] == "redis"
        assert "broker_store_resets_total 1.0" in client.get("/metrics").text


def test_a_broker_that_disagrees_with_its_namespace_refuses_to_start(
    start_broker: BrokerFactory, redis_url: str, short_tmp: Path
) -> None:
    namespace = fresh_namespace()
    start_broker("--store", redis_url, "--namespace", namespace, "--max-items", "100")
    result = subprocess.run(
        [
            BROKER_EXE,
            "serve",
            "--socket",
            str(short_tmp / "other.sock"),
            "--store",
            redis_url,
            "--namespace",
            namespace,
            "--max-items",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "max_items" in result.stderr and "--max-items" in result.stderr
    assert not (short_tmp / "other.sock").exists()


def test_a_broker_that_cannot_reach_redis_refuses_to_start(short_tmp: Path) -> None:
    result = subprocess.run(
        [
            BROKER_EXE,
            "serve",
            "--socket",
            str(short_tmp / "b.sock"),
            "--store",
            f"unix://{short_tmp}/nothing.sock",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot use store unix://" in result.stderr
    # A password in the URL is never shown (nothing listens on loopback port 1).
    secret = subprocess.run(
        [
            BROKER_EXE,
            "serve",
            "--socket",
            str(short_tmp / "b.sock"),
            "--store",
            "redis://user:hunter2@127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert secret.returncode == 2, secret.stderr
    assert "redis://***@127.0.0.1:1/0" in secret.stderr and "hunter2" not in secret.stderr


def test_bad_store_and_namespace_settings_are_refused(short_tmp: Path) -> None:
    for flags, words in (
        (["--store", "mysql://x"], "store must be memory, or a Redis URL"),
        (["--namespace", "a{b}"], "may not contain '{'"),
    ):
        result = subprocess.run(
            [BROKER_EXE, "serve", "--socket", str(short_tmp / "b.sock"), *flags],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2 and words in result.stderr, result.stderr


def test_without_redis_server_the_tests_skip_naming_it_but_fail_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ROOT
    pytester.makeconftest(
        "import pytest\n"
        "from tests.support.redis_server import run_redis_server\n"
        "redis_server = pytest.fixture(scope='session')(run_redis_server)\n"
    )
    pytester.makepyfile("def test_needs_redis(redis_server):\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("REDIS_SERVER", raising=False)
    monkeypatch.delenv("CI", raising=False)
    skipped = pytester.runpytest_subprocess("-rs", "-p", "no:ephemeral_broker")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["*redis-server not found on PATH*"])
    monkeypatch.setenv("CI", "true")
    failed = pytester.runpytest_subprocess("-p", "no:ephemeral_broker")
    failed.assert_outcomes(errors=1)
    failed.stdout.fnmatch_lines(["*CI=true: a missing Redis fails the run*"])


def test_run_with_a_redis_store_leaves_the_namespace_to_the_other_brokers(
    start_broker: BrokerFactory, redis_url: str
) -> None:
    namespace = fresh_namespace()
    (other,) = (start_broker("--store", redis_url, "--namespace", namespace),)
    script = (
        "from ephemeral_broker_client import BrokerClient\n"
        "with BrokerClient() as broker:\n"
        "    broker.set('made-by-run', 'kept', ttl_ms=60_000)\n"
        "    broker.lease('pool', 'run-worker', ttl_ms=60_000)\n"
    )
    result = subprocess.run(
        [
            BROKER_EXE,
            "run",
            "--store",
            redis_url,
            "--namespace",
            namespace,
            "--",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with other.client() as client:
        assert client.get("/v1/keys/made-by-run").json()["value"] == "kept"
        leases = client.get("/v1/leases/pool").json()["leases"]
        assert [lease["worker_id"] for lease in leases] == ["run-worker"]
