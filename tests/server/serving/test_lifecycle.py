"""SPEC section 6: drain on SIGTERM/SIGINT, the second signal, idle timeout, heartbeat, and the
one signal dispatcher per process. Real `serve` processes unless a test says otherwise."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.logs import logger as broker_logger
from ephemeral_broker.serving.lifecycle import seconds_until_idle
from ephemeral_broker.serving.server import run_in_new_loop, serve
from ephemeral_broker.serving.signals import SIGNALS
from ephemeral_broker.settings import BrokerSettings
from tests.support.brokers import BrokerFactory, BrokerProcess
from tests.support.slow_upload import SlowUpload
from tests.support.waiting import wait_until

# ---- helpers -------------------------------------------------------------------------------

LOAD_CLIENTS = 8

# One load client: PUTs unique keys as fast as it can until the broker is gone, and reports
# what it saw. Half the clients keep one connection alive, half open one per request
# (Connection: close), so both idle keep-alive connections and fresh connects meet the drain.
LOAD_CLIENT = r"""
import json, os, sys, time, httpx
sock, name, keep_alive = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
CONNECTION_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                     httpx.WriteError)
def connect():
    return httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://localhost",
                        timeout=20)
seen = {"created": 0, "draining": 0, "connection_error": 0, "other": []}
headers = {} if keep_alive else {"Connection": "close"}
client = connect()
deadline = time.monotonic() + 60
n = 0
while time.monotonic() < deadline:
    n += 1
    try:
        response = client.put(f"/v1/keys/{name}-{n}", json={"value": n, "ttl_ms": 600000},
                              headers=headers)
    except CONNECTION_ERRORS:
        seen["connection_error"] += 1
        client.close()
        if not os.path.exists(sock):
            break  # the broker has exited and removed its socket
        client = connect()
        continue
    if response.status_code == 201:
        seen["created"] += 1
    elif (response.status_code == 503 and response.json()["code"] == "draining"
          and response.headers.get("retry-after")):
        seen["draining"] += 1
    else:
        seen["other"].append([response.status_code, response.text[:300]])
print(json.dumps(seen), flush=True)
"""


def stopped_line(stderr: str) -> dict[str, str]:
    """The fields of the broker's final "broker stopped" line (text format)."""
    for line in stderr.splitlines():
        if " broker stopped " in line:
            return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
    raise AssertionError(f"no 'broker stopped' line in:\n{stderr}")


@pytest.fixture
def slow_uploads() -> Iterator[list[SlowUpload]]:
    opened: list[SlowUpload] = []
    yield opened
    for upload in opened:
        upload.close()


def wait_for_log(broker: BrokerProcess, text: str, timeout: float = 30.0) -> None:
    wait_until(lambda: text in broker.stderr(), timeout, what=f"{text!r} in the broker log")


def wait_for_in_flight(broker: BrokerProcess, count: int) -> None:
    def reached() -> bool:
        with broker.client(timeout=30) as client:
            return bool(client.get("/v1/health").json()["connections"]["in_flight"] > count)

    # The /v1/health request itself is in flight while it counts.
    wait_until(reached, timeout=30, what=f"{count} request(s) in flight")


# ---- drain ---------------------------------------------------------------------------------


def test_sigterm_under_load_loses_no_answered_request(
    start_broker: BrokerFactory, short_tmp: Path
) -> None:
    """8 client processes write as fast as they can; SIGTERM mid-stream. Every 201 was applied
    (the broker's final item count is exactly the number of 201s, so no answered write was
    lost and no unanswered one was applied: a connection error always came before the request
    was taken in); everything else is 503 draining with Retry-After or a connection error; the
    broker exits 0 within drain_timeout."""
    # drain_timeout 10 s: the bound asserted below, with room for a machine under load.
    broker = start_broker("--max-items", "0", "--drain-timeout", "10000")
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_CLIENT, str(broker.socket), f"c{i}", str(i % 2)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(LOAD_CLIENTS)
    ]
    try:
        with broker.client(timeout=30) as probe:
            wait_until(
                lambda: probe.get("/v1/stats").json()["items"] >= 300,
                timeout=30,
                what="load to build up",
            )
        signalled = time.monotonic()
        os.kill(broker.pid, signal.SIGTERM)
        code = broker.proc.wait(timeout=30)
        elapsed = time.monotonic() - signalled
        reports = [json.loads(client.communicate(timeout=60)[0]) for client in clients]
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert code == 0
    assert elapsed < 10.0, f"exit took {elapsed:.2f} s; drain_timeout is 10 s"
    assert not broker.socket.exists()
    assert all(report["other"] == [] for report in reports), reports
    created = sum(report["created"] for report in reports)
    assert created >= 300
    final = stopped_line(broker.stderr())
    assert int(final["items"]) == created, (final, reports)
    assert final["forced"] == "false"


def test_a_request_received_before_the_signal_is_answered(
    start_broker: BrokerFactory, slow_uploads: list[SlowUpload]
) -> None:
    broker = start_broker("--drain-timeout", "30000")  # ample: this test is not about time
    upload = SlowUpload(broker.socket)
    slow_uploads.append(upload)
    wait_for_in_flight(broker, 1)
    os.kill(broker.pid, signal.SIGTERM)
    wait_for_log(broker, "shutting down")
    # The listener is closed now: nothing new gets in...
    wait_until(lambda: _refused(broker.socket), timeout=30, what="the listener to close")
    # ...but the request it already had is finished and answered.
    upload.finish()
    status, headers, body = upload.response()
    assert status == 201, body
    assert headers["connection"] == "close"
    assert broker.proc.wait(timeout=15) == 0
    assert not broker.socket.exists()
    assert stopped_line(broker.stderr())["items"] == "1"


def _refused(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX)
    try:
        return probe.connect_ex(str(path)) != 0
    finally:
        probe.close()


def test_drain_timeout_bounds_the_shutdown(
    start_broker: BrokerFactory, slow_uploads: list[SlowUpload]
) -> None:
    """A request that never completes holds the shutdown for drain_timeout, no longer; it is
    then answered 503 draining (not a 500), and the broker still exits 0."""
    broker = start_broker("--drain-timeout", "1000")
    upload = SlowUpload(broker.socket)
    slow_uploads.append(upload)
    wait_for_in_flight(broker, 1)
    signalled = time.monotonic()
    os.kill(broker.pid, signal.SIGTERM)
    status, headers, body = upload.response()
    assert broker.proc.wait(timeout=15) == 0
    elapsed = time.monotonic() - signalled
    assert 0.9 <= elapsed < 10.0, elapsed  # waited for the request, then no longer
    assert status == 503
    assert json.loads(body)["code"] == "draining"
    assert headers["retry-after"]
    assert not broker.socket.exists()


def test_second_signal_exits_at_once(
    start_broker: BrokerFactory, slow_uploads: list[SlowUpload]
) -> None:
    broker = start_broker("--drain-timeout", "60000")
    upload = SlowUpload(broker.socket)
    slow_uploads.append(upload)
    wait_for_in_flight(broker, 1)
    os.kill(broker.pid, signal.SIGTERM)
    wait_for_log(broker, "shutting down")
    signalled = time.monotonic()
    os.kill(broker.pid, signal.SIGINT)
    assert broker.proc.wait(timeout=15) == 1
    assert time.monotonic() - signalled < 10.0  # the drain would have taken 60 s
    assert not broker.socket.exists()
    assert stopped_line(broker.stderr())["forced"] == "true"


def test_sigint_drains_like_sigterm(start_broker: BrokerFactory) -> None:
    broker = start_broker()
    assert broker.stop(signal.SIGINT) == 0
    assert stopped_line(broker.stderr())["reason"] == "SIGINT"
    assert not broker.socket.exists()


@pytest.mark.anyio
async def test_draining_turns_readyz_503_and_refuses_new_requests() -> None:
    app = create_app(BrokerSettings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        assert (await client.get("/readyz")).status_code == 200
        app.state.runtime.begin_drain()
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["code"] == "draining"
        refused = await client.put("/v1/keys/k", json={"value": 1, "ttl_ms": 1000})
        assert refused.status_code == 503
        assert refused.json()["code"] == "draining"
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert (await client.get("/healthz")).status_code == 200  # still alive while draining
        assert (await client.get("/v1/health")).json()["code"] == "draining"


# ---- one dispatcher per process ------------------------------------------------------------


@pytest.mark.defect(3)
def test_signal_handlers_are_installed_once_however_often_brokers_start(
    short_tmp: Path,
) -> None:
    """Defect 3: brokers started and stopped in one process stacked signal handlers.
    Here four brokers in turn are each stopped by a real SIGTERM to this process: each drains
    and exits 0, and the process has one handler, installed once, with no listener left."""
    for round_ in range(4):
        path = short_tmp / f"r{round_}.sock"
        settings = BrokerSettings(socket=path)
        app = create_app(settings)

        def stop_me(_: Path) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

        assert run_in_new_loop(serve(settings, app, on_ready=stop_me)) == 0
        assert app.state.runtime.draining
        assert not path.exists()
        assert SIGNALS.installations == 1
        assert SIGNALS.listener_count == 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            assert signal.getsignal(sig) == SIGNALS._dispatch


# ---- idle timeout --------------------------------------------------------------------------


def test_idle_timeout_is_a_clean_exit_and_probes_do_not_keep_it_alive(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker("--idle-timeout", "600")
    with broker.client(timeout=30) as client:
        assert client.put("/v1/keys/k", json={"value": 1, "ttl_ms": 60000}).status_code == 201

        def probed_until_gone() -> bool:
            try:
                client.get("/healthz")
                client.get("/readyz")
            except httpx.TransportError:
                pass
            return broker.proc.poll() is not None

        wait_until(probed_until_gone, timeout=20, what="the idle exit despite probes")
    assert broker.proc.returncode == 0
    assert not broker.socket.exists()
    stderr = broker.stderr()
    assert "idle timeout reached" in stderr
    assert stopped_line(stderr)["reason"] == '"idle timeout"'


def test_idle_clock_counts_requests_in_flight_and_from_their_end() -> None:
    # Idle for 0.4 s of a 1 s timeout: look again in 0.6 s.
    assert seconds_until_idle(10.0, 0, 1.0, 10.4) == pytest.approx(0.6)
    # Past the timeout with nothing in flight: idle now.
    assert seconds_until_idle(10.0, 0, 1.0, 11.0) is None
    # A request in flight (a long waiting read, say) is activity, however old the last one.
    wait = seconds_until_idle(10.0, 1, 1.0, 99.0)
    assert wait is not None and 0 < wait <= 1.0


@pytest.mark.anyio
async def test_requests_move_the_idle_clock_and_probes_do_not() -> None:
    app = create_app(BrokerSettings())
    runtime = app.state.runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        runtime.last_activity = 0.0
        for probe in ("/healthz", "/readyz"):
            await client.get(probe)
        assert runtime.last_activity == 0.0
        before = time.monotonic()
        await client.get("/v1/ping")
        assert runtime.last_activity >= before
        runtime.last_activity = 0.0
        await client.get("/no/such/route")  # any request is activity, even a 404
        assert runtime.last_activity >= before


# ---- heartbeat -----------------------------------------------------------------------------


def test_heartbeat_logs_one_json_line_with_the_status(start_broker: BrokerFactory) -> None:
    broker = start_broker("--heartbeat-interval", "100", "--log-format", "json")
    with broker.client(timeout=30) as client:
        client.put("/v1/keys/k", json={"value": 1, "ttl_ms": 60000})
        client.post("/v1/leases/slots", json={"worker_id": "w1"})

    def beats() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in broker.stderr().splitlines() if line]
        return [
            line
            for line in lines
            if line["message"] == "heartbeat" and line["items"] == 1 and line["leases"] == 1
        ]

    wait_until(lambda: bool(beats()), timeout=30, what="a heartbeat line counting the key")
    beat = beats()[0]
    assert beat["level"] == "info"
    assert beat["max_items"] == 10000
    assert beat["pools"] == 1
    assert isinstance(beat["in_flight"], int)
    assert isinstance(beat["uptime_ms"], int) and beat["uptime_ms"] > 0
    assert isinstance(beat["rss_bytes"], int) and beat["rss_bytes"] > 0
    assert beat["draining"] is False
    assert broker.stop() == 0


# ---- capacity warnings ---------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def broker_records() -> Iterator[list[logging.LogRecord]]:
    handler = _Records()
    level = broker_logger.level
    broker_logger.addHandler(handler)
    broker_logger.setLevel(logging.DEBUG)
    yield handler.records
    broker_logger.removeHandler(handler)
    broker_logger.setLevel(level)


@pytest.mark.anyio
async def test_capacity_warning_once_per_crossing_of_90_percent(
    broker_records: list[logging.LogRecord],
) -> None:
    app = create_app(BrokerSettings(max_items=10))
    transport = httpx.ASGITransport(app=app)

    def capacity_lines() -> list[tuple[str, int]]:
        return [
            (record.levelname, record.fields["items"])  # type: ignore[attr-defined]
            for record in broker_records
            if record.getMessage().startswith("store is ")
        ]

    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:

        async def put(i: int) -> None:
            response = await client.put(f"/v1/keys/k{i}", json={"value": i, "ttl_ms": 60000})
            assert response.status_code in (200, 201)

        for i in range(8):
            await put(i)
        assert capacity_lines() == []
        await put(8)  # 9 of 10: 90 %
        assert capacity_lines() == [("WARNING", 9)]
        await put(8)  # an overwrite: the count does not change, nothing more is said
        await client.delete("/v1/keys/k0")  # 8: back below
        await put(0)  # 9 again: said again
        await put(9)  # 10: full
        await client.put("/v1/keys/k10", json={"value": 1, "ttl_ms": 60000})  # refused 507
        await client.delete("/v1/keys/k9")  # 9: still near, not below: nothing
        await put(9)  # full again without having dropped below 90 %: nothing
        assert capacity_lines() == [
            ("WARNING", 9),
            ("INFO", 8),
            ("WARNING", 9),
            ("WARNING", 10),
        ]
