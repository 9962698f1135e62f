"""The TCP metrics listener (`--metrics-listen`): Prometheus and HTTP probes on a port, and
nothing else; `epb metrics --broker-only` for a textfile collector."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.cli.client_commands import broker_series_only
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.metrics import BrokerMetrics
from ephemeral_broker.serving.listen_address import (
    ListenAddress,
    MetricsListenError,
    parse_listen_address,
)
from ephemeral_broker.serving.metrics_listener import MetricsEndpoints
from ephemeral_broker.store.memory import MemoryStore
from tests.support.asgi import asgi_call
from tests.support.brokers import BROKER_EXE, BrokerFactory, uds_client
from tests.support.net import free_port
from tests.support.responses import assert_problem
from tests.support.store import limits


def metric_values(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9464", ListenAddress("127.0.0.1", 9464)),
        (":9464", ListenAddress("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ListenAddress("0.0.0.0", 9464)),  # noqa: S104 (parsed, never bound)
        ("localhost:1", ListenAddress("localhost", 1)),
        ("[::1]:65535", ListenAddress("::1", 65535)),
        (" 127.0.0.1:0 ", ListenAddress("127.0.0.1", 0)),
    ],
)
def test_listen_addresses_accepted(text: str, expected: ListenAddress) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not empty"),
        ("127.0.0.1", "port must be a number"),
        ("host:", "port must be a number"),
        ("host:65536", "port must be a number"),
        ("host:-1", "port must be a number"),
        ("::1:9464", "[ADDR]:PORT"),
        ("[::1]9464", "[ADDR]:PORT"),
        ("bad host:9464", "'bad host' is not an IP address or a host name"),
        ("exa_mple:9464", "is not an IP address or a host name"),
    ],
)
def test_listen_addresses_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(MetricsListenError) as caught:
        parse_listen_address(text)
    assert says in str(caught.value)
    assert "metrics_listen" in str(caught.value)


def test_an_invalid_address_stops_start_up_with_one_line(short_tmp: Path) -> None:
    result = subprocess.run(
        [BROKER_EXE, "serve", "--socket", str(short_tmp / "b.sock"), "--metrics-listen", "x:y"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line
    assert "metrics_listen='x:y' (BROKER_METRICS_LISTEN or --metrics-listen)" in line
    assert not (short_tmp / "b.sock").exists()


def test_a_taken_port_stops_start_up_before_the_socket_exists(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                BROKER_EXE,
                "serve",
                "--socket",
                str(short_tmp / "b.sock"),
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ephemeral-broker: cannot listen for metrics on 127.0.0.1:{port} (--metrics-listen): "
        "the port is already in use"
    )
    assert not (short_tmp / "b.sock").exists()


def test_prometheus_scrapes_over_tcp_what_the_socket_changed(start_broker: BrokerFactory) -> None:
    port = free_port()
    broker = start_broker("--metrics-listen", f"127.0.0.1:{port}")
    assert f"metrics=127.0.0.1:{port}" in broker.stderr()
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as tcp,
        broker.client(timeout=10) as unix,
    ):
        before = metric_values(tcp.get("/metrics").text)
        assert before["ephemeral_broker_items"] == 0
        for n in range(3):
            unix.put(f"/v1/keys/k{n}", json={"value": n, "ttl_ms": 60_000}).raise_for_status()
        response = tcp.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        after = metric_values(response.text)
        assert after["ephemeral_broker_items"] == 3
        assert "process_resident_memory_bytes" in after
        # Scrapes are not broker requests: they neither count nor show as in flight.
        assert after["ephemeral_broker_requests_in_flight"] == 0
        assert tcp.get("/healthz").json() == {"status": "ok"}
        assert tcp.get("/readyz").json() == {"status": "ready"}
        head = tcp.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""


def test_the_tcp_listener_serves_nothing_that_reads_or_changes_state(
    start_broker: BrokerFactory,
) -> None:
    port = free_port()
    broker = start_broker("--metrics-listen", str(port))
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as tcp,
        broker.client(timeout=10) as unix,
    ):
        unix.put("/v1/keys/secret", json={"value": "v", "ttl_ms": 60_000}).raise_for_status()
        for method, path in [
            ("GET", "/v1/keys/secret"),
            ("GET", "/v1/keys"),
            ("PUT", "/v1/keys/other"),
            ("DELETE", "/v1/keys/secret"),
            ("POST", "/v1/leases/pool"),
            ("GET", "/v1/stats"),
            ("GET", "/docs"),
        ]:
            problem = assert_problem(
                tcp.request(method, path, json={"value": 1, "ttl_ms": 1000}),
                404,
                "route_not_found",
            )
            assert "/metrics, /healthz, /readyz" in problem["detail"]
        for method in ("POST", "PUT", "DELETE"):
            response = tcp.request(method, "/metrics")
            assert_problem(response, 405, "method_not_allowed")
            assert response.headers["allow"] == "GET, HEAD"
        assert unix.get("/v1/keys/secret").json()["value"] == "v"
        assert unix.get("/v1/keys/other").status_code == 404


def test_with_auth_on_the_port_needs_no_credential_and_the_socket_still_does(
    start_broker: BrokerFactory,
) -> None:
    port = free_port()
    broker = start_broker(
        "--metrics-listen", f"127.0.0.1:{port}", env={"BROKER_SECRET": "s3cr3t-value"}
    )
    with httpx.Client(timeout=10) as tcp, uds_client(broker.socket, timeout=10) as unix:
        assert tcp.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        assert_problem(unix.get("/metrics"), 401, "auth_failed")


def test_the_port_is_released_when_the_broker_stops(start_broker: BrokerFactory) -> None:
    port = free_port()
    broker = start_broker("--metrics-listen", f"127.0.0.1:{port}")
    with httpx.Client(timeout=10) as tcp:
        assert tcp.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    assert broker.stop() == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


@pytest.mark.anyio
async def test_readyz_on_the_port_turns_503_while_draining(clock: FakeClock) -> None:
    runtime = Runtime(version="test")
    store = MemoryStore(limits(), clock)
    endpoints = MetricsEndpoints(store, runtime, BrokerMetrics("test"))
    ready = await asgi_call(endpoints, "GET", "/readyz")
    assert ready.status == 200
    runtime.begin_drain()
    draining = await asgi_call(endpoints, "GET", "/readyz")
    assert draining.status == 503
    assert draining.json()["code"] == "draining"
    assert draining.headers["retry-after"] == "1"
    alive = await asgi_call(endpoints, "GET", "/healthz")
    assert alive.status == 200
    scrape = await asgi_call(endpoints, "GET", "/metrics")
    assert metric_values(scrape.body.decode())["ephemeral_broker_draining"] == 1


def test_broker_only_keeps_the_broker_families_for_a_textfile_collector(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker()
    result = subprocess.run(
        [BROKER_EXE, "metrics", "--broker-only", "--socket", str(broker.socket)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    families = {family.name for family in text_string_to_metric_families(result.stdout)}
    assert "ephemeral_broker_items" in families
    assert "ephemeral_broker_operations" in families
    assert all(name.startswith("ephemeral_broker_") for name in families), families
    full = subprocess.run(
        [BROKER_EXE, "metrics", "--socket", str(broker.socket)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert any(
        family.name.startswith("process_") for family in text_string_to_metric_families(full.stdout)
    )


def test_broker_only_filter_reads_help_type_and_samples_by_family() -> None:
    text = (
        "# HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 1.5\n"
        "# HELP ephemeral_broker_items Live keys.\n# TYPE ephemeral_broker_items gauge\n"
        "ephemeral_broker_items 2.0\n"
        '# HELP ephemeral_broker_errors_total Errors.\nephemeral_broker_errors_total{code="x"} 1\n'
        "# a free comment\n"
    )
    assert broker_series_only(text) == (
        "# HELP ephemeral_broker_items Live keys.\n# TYPE ephemeral_broker_items gauge\n"
        "ephemeral_broker_items 2.0\n"
        '# HELP ephemeral_broker_errors_total Errors.\nephemeral_broker_errors_total{code="x"} 1\n'
    )


def test_the_environment_sets_it_and_a_bare_port_means_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ephemeral_broker.settings import BrokerSettings

    monkeypatch.setenv("BROKER_METRICS_LISTEN", "9464")
    settings = BrokerSettings()
    assert settings.metrics_listen == "127.0.0.1:9464"
    assert settings.metrics_address == ListenAddress("127.0.0.1", 9464)
    assert BrokerSettings(metrics_listen="[::1]:80").metrics_listen == "[::1]:80"
