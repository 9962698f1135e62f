"""`ephemeral-broker serve` as a real subprocess on a real socket, reached with curl and httpx."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BROKER_EXE, BrokerFactory, BrokerProcess, read_first_line, wait_until


def curl(socket: Path, *args: str) -> tuple[int, dict[str, str], str]:
    """Run curl over the socket; returns (status, lower-cased headers, body)."""
    # Bytes, not text=True: universal newlines would turn the \r\n framing into \n.
    out = subprocess.run(
        ["curl", "-sS", "-i", "--unix-socket", str(socket), *args],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return float(sample.value)
    raise KeyError(name)


def test_curl_walks_through_every_key_endpoint(broker: BrokerProcess) -> None:
    sock = broker.socket
    url = "http://localhost/v1/keys"
    status, headers, body = curl(
        sock, "-X", "PUT", f"{url}/db-token", "-d", '{"value": {"token": "abc"}, "ttl_ms": 60000}'
    )
    assert status == 201
    created = json.loads(body)
    assert headers["etag"] == f'"{created["version"]}"'
    assert headers["x-request-id"]

    status, headers, body = curl(sock, f"{url}/db-token")
    assert status == 200
    assert json.loads(body)["value"] == {"token": "abc"}

    status, _, body = curl(sock, f"{url}?prefix=db-")
    assert [k["key"] for k in json.loads(body)["keys"]] == ["db-token"]

    status, _, body = curl(sock, "-X", "POST", f"{url}/hits/incr", "-d", '{"ttl_ms": 60000}')
    assert (status, json.loads(body)["value"]) == (200, 1)

    status, _, body = curl(sock, "-X", "POST", f"{url}/db-token/touch", "-d", '{"ttl_ms": 5000}')
    assert status == 200 and json.loads(body)["version"] == created["version"]

    status, _, body = curl(sock, "-X", "DELETE", f"{url}/db-token")
    assert (status, json.loads(body)) == (200, {"deleted": True})

    status, headers, body = curl(sock, f"{url}/db-token")
    assert status == 404
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "not_found"


def test_curl_system_endpoints(broker: BrokerProcess) -> None:
    for path, expected in [("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})]:
        status, _, body = curl(broker.socket, f"http://localhost{path}")
        assert (status, json.loads(body)) == (200, expected)
    for path in ("/v1/health", "/v1/stats", "/v1/ping"):
        status, _, _ = curl(broker.socket, f"http://localhost{path}")
        assert status == 200


def test_httpx_client_and_request_id_round_trip(broker: BrokerProcess) -> None:
    with broker.client() as client:
        response = client.put("/v1/keys/k", json={"value": [1, 2, 3], "ttl_ms": 1000})
        assert response.status_code == 201
        response = client.get("/v1/keys/k", headers={"X-Request-ID": "worker-3:req.17"})
        assert response.headers["x-request-id"] == "worker-3:req.17"
        assert response.json()["value"] == [1, 2, 3]


def test_metrics_parse_and_gauges_move_without_other_calls(broker: BrokerProcess) -> None:
    with broker.client() as client:
        before = metric_value(client.get("/metrics").text, "ephemeral_broker_items")
        for i in range(5):
            client.put(f"/v1/keys/m{i}", json={"value": i, "ttl_ms": 60000})
        # The scrape alone brings the gauge up to date: no /v1/stats or /v1/health first.
        text = client.get("/metrics").text
    assert metric_value(text, "ephemeral_broker_items") == before + 5
    assert metric_value(text, "ephemeral_broker_capacity_utilization") == pytest.approx(5 / 10000)
    assert metric_value(text, "ephemeral_broker_build_info")
    assert metric_value(text, "process_resident_memory_bytes") > 0
    sets = metric_value(
        text, "ephemeral_broker_operations_total", {"operation": "keys.set", "result": "created"}
    )
    assert sets == 5


def test_sigterm_exits_zero_and_removes_socket(start_broker: BrokerFactory) -> None:
    broker = start_broker()
    assert stat.S_ISSOCK(os.lstat(broker.socket).st_mode)
    assert broker.stop(signal.SIGTERM) == 0
    assert not broker.socket.exists()


def test_default_socket_lives_in_a_private_directory_that_is_removed(short_tmp: Path) -> None:
    env = {**os.environ, "TMPDIR": str(short_tmp)}
    proc = subprocess.Popen(
        [BROKER_EXE, "serve"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        line = read_first_line(proc, 20)
        path = Path(line.strip().removeprefix("EPHEMERAL_PIPE="))
        assert path.name == "broker.sock"
        assert path.parent.parent == short_tmp
        assert path.parent.name.startswith("ephemeral-broker-")
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        wait_until(lambda: not path.parent.exists(), what="private dir removed")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
