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

from tests.support.brokers import BROKER_EXE, BrokerFactory, BrokerProcess, read_first_line
from tests.support.waiting import wait_until


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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_exchange(sock_path: Path, request: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes over the socket and read until the broker closes or 5 s pass."""
    import socket as socketlib

    conn = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    conn.settimeout(5)
    conn.connect(str(sock_path))
    try:
        conn.sendall(request)
        if half_close:
            conn.shutdown(socketlib.SHUT_WR)
        received = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return received
    finally:
        conn.close()


def test_gzip_bomb_over_the_socket_does_not_grow_the_broker(broker: BrokerProcess) -> None:
    import gzip

    bomb = gzip.compress(b"\0" * 10_000_000, compresslevel=9)
    with broker.client() as client:
        for _ in range(3):  # warm up allocator pools so the comparison is fair
            client.put("/v1/keys/w", json={"value": "x" * 100_000, "ttl_ms": 1000})
        before = rss_kib(broker.pid)
        for _ in range(5):
            response = client.put(
                "/v1/keys/bomb", content=bomb, headers={"Content-Encoding": "gzip"}
            )
            assert response.status_code == 413
            assert response.json()["code"] == "too_large"
        after = rss_kib(broker.pid)
        assert client.get("/healthz").status_code == 200
    # Five 10 MB bombs; growth stays far below even one of them inflated.
    assert after - before < 4 * 1024, (before, after)


def stream_until_refused(
    sock_path: Path, head: bytes, piece: bytes, most: int
) -> tuple[int, bytes]:
    """Send `head`, then `piece` again and again (up to `most` bytes) until the broker answers
    or stops reading; returns how many bytes of pieces were sent and the answer's bytes."""
    import select
    import socket as socketlib

    conn = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(sock_path))
    sent = 0
    answer = b""
    try:
        conn.sendall(head)
        while sent < most:
            if select.select([conn], [], [], 0)[0]:
                break  # the broker answered before we were done
            try:
                conn.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # it stopped reading: the answer is waiting
            sent += len(piece)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        conn.close()
    return sent, answer


def test_chunked_body_is_cut_off_while_it_streams(broker: BrokerProcess) -> None:
    chunk = b"x" * 65536
    sent, answer = stream_until_refused(
        broker.socket,
        b"PUT /v1/keys/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"%x\r\n%s\r\n" % (len(chunk), chunk),
        8 * 1024 * 1024,
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"too_large" in answer or b"problem+json" in answer
    assert sent < 8 * 1024 * 1024  # refused long before the client finished sending
    with broker.client() as client:
        assert client.get("/v1/keys/big").status_code == 404


def test_bodies_that_lie_about_their_length(broker: BrokerProcess) -> None:
    # Shorter than declared, then the client stops sending: nobody is left to answer, the
    # broker frees the connection and keeps serving.
    short = raw_exchange(
        broker.socket,
        b'PUT /v1/keys/liar HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"value": 1',
        half_close=True,
    )
    assert b" 500 " not in short
    # Longer than declared: the declared bytes are the body, the rest is a bad next request.
    long = raw_exchange(
        broker.socket,
        b"PUT /v1/keys/liar HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
        b'{"value": 1, "ttl_ms": 100}',
    )
    # The parser refuses the stream (it reads the overrun as a next request) before the first
    # request is answered: one problem+json 400, then the connection closes.
    assert long.startswith(b"HTTP/1.1 400"), long[:200]
    head, _, body = long.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head
    assert json.loads(body)["code"] == "bad_request"
    with broker.client() as client:
        assert client.get("/v1/keys/liar").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_curl_path_as_is_dot_keys_are_invalid(broker: BrokerProcess) -> None:
    for path in ("/v1/keys/.", "/v1/keys/..", "/v1/keys/%2e%2e"):
        status, _, body = curl(broker.socket, "--path-as-is", f"http://localhost{path}")
        assert (status, json.loads(body)["code"]) == (422, "invalid_key"), path


def test_many_concurrent_clients_are_all_answered(broker: BrokerProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def worker(n: int) -> int:
        with broker.client() as client:
            for i in range(25):
                client.put(f"/v1/keys/w{n}-{i}", json={"value": i, "ttl_ms": 60_000})
            return sum(client.get(f"/v1/keys/w{n}-{i}").json()["value"] for i in range(25))

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(worker, range(16))) == [sum(range(25))] * 16
    with broker.client() as client:
        assert client.get("/v1/stats").json()["items"] == 16 * 25


def test_huge_headers_are_refused_as_they_arrive(broker: BrokerProcess) -> None:
    before = rss_kib(broker.pid)
    sent, answer = stream_until_refused(
        broker.socket,
        b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Huge: ",
        b"a" * 65536,
        20 * 1024 * 1024,
    )
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    _, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body)["code"] == "headers_too_large"
    assert sent < 20 * 1024 * 1024  # the broker stopped reading long before 20 MB
    assert rss_kib(broker.pid) - before < 4 * 1024
    with broker.client() as client:  # normal headers still work, on a new connection
        ok = client.get("/v1/ping", headers={"X-Fine": "b" * 8000})
        assert ok.status_code == 200
