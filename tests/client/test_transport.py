"""`UnixTransport` and `AsyncUnixTransport` against real servers on real sockets: a raw server
written here sends what a broker never would (chunked bodies, gzip, `Connection: close`,
garbage, answers that never come), and the broker covers the rest."""

from __future__ import annotations

import asyncio
import gc
import gzip
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ephemeral_broker_client import (
    AsyncBrokerClient,
    AsyncUnixTransport,
    BrokerClient,
    BrokerTimeout,
    BrokerUnavailable,
    InvalidResponse,
    ResponseTooLarge,
    UnixTransport,
)
from tests.support.brokers import BrokerProcess
from tests.support.raw_server import http_answer, read_requests

OK = http_answer(200, b'{"pong":1}')


class Peer:
    """One accepted connection of `ScriptServer`: its socket and the client's pid."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid = struct.unpack("3i", creds)[0]
        self.requests: list[bytes] = []


# Given the connection and the request just read, answer it (or not); False closes.
Handler = Callable[[Peer, bytes], bool]


class ScriptServer:
    """A Unix-socket HTTP server in threads whose every answer is written by the test."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.peers: list[Peer] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            peer = Peer(conn)
            self.peers.append(peer)
            threading.Thread(target=self._connection, args=(peer,), daemon=True).start()

    def _connection(self, peer: Peer) -> None:
        with peer.conn:
            for request in read_requests(peer.conn):
                peer.requests.append(request)
                try:
                    if not self.handler(peer, request):
                        return
                except OSError:
                    return

    def close(self) -> None:
        self.listener.close()
        for peer in self.peers:
            peer.conn.close()


@pytest.fixture
def serve(short_tmp: Path) -> Iterator[Callable[[Handler], ScriptServer]]:
    servers: list[ScriptServer] = []

    def start(handler: Handler) -> ScriptServer:
        server = ScriptServer(short_tmp / f"s{len(servers)}.sock", handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def answer(body: bytes | None = None, *extra: str) -> Handler:
    """A handler that sends the same answer to every request and keeps the connection."""
    data = OK if body is None else http_answer(200, body, "application/json", *extra)

    def handler(peer: Peer, request: bytes) -> bool:
        peer.conn.sendall(data)
        return True

    return handler


def sync_get(transport: UnixTransport, path: str = "/x", **kwargs: object) -> httpx.Response:
    # Not closed: closing an httpx.Client closes its transport, and the tests reuse it.
    client = httpx.Client(transport=transport, base_url="http://localhost")
    return client.get(path, **kwargs)  # type: ignore[arg-type]


async def async_get(
    transport: AsyncUnixTransport, path: str = "/x", timeout: float = 5.0
) -> httpx.Response:
    client = httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=timeout)
    return await client.get(path)


# ---- on their own, with httpx's clients ----------------------------------------------------


def test_the_transports_serve_httpx_clients_against_the_broker(
    shared_broker: BrokerProcess,
) -> None:
    sock = shared_broker.socket
    with httpx.Client(transport=UnixTransport(sock), base_url="http://localhost") as client:
        put = client.put("/v1/keys/tr-a", json={"value": [1, "é"], "ttl_ms": 60_000})
        assert put.status_code in (200, 201)
        got = client.get("/v1/keys/tr-a")
        assert (got.status_code, got.json()["value"]) == (200, [1, "é"])
        assert got.headers["content-type"].startswith("application/json")
        assert client.get("/v1/keys/tr-absent").json()["code"] == "not_found"
        # A request body httpx streams (no Content-Length) goes out chunked.
        streamed = client.put(
            "/v1/keys/tr-b", content=iter([b'{"value": 7, ', b'"ttl_ms": 60000}'])
        )
        assert streamed.status_code in (200, 201), streamed.text
        assert client.get("/v1/keys/tr-b").json()["value"] == 7

    async def main() -> None:
        transport = AsyncUnixTransport(sock)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            got = await client.get("/v1/keys/tr-a")
            assert got.json()["value"] == [1, "é"]
            results = await asyncio.gather(*(client.get("/v1/ping") for _ in range(20)))
            assert {r.status_code for r in results} == {200}
            put = await client.put("/v1/keys/tr-c", json={"value": 1, "ttl_ms": 60_000})
            assert put.status_code in (200, 201)

    asyncio.run(main())


def test_chunked_and_gzip_and_until_close_bodies(serve: Callable[[Handler], ScriptServer]) -> None:
    body = b'{"value":"' + b"z" * 5000 + b'"}'
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:4000], body[4000:])
    )
    packed = gzip.compress(body)
    answers = {
        b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + chunked
        + b"0\r\n\r\n",
        b"/gzip": http_answer(200, packed, "application/json", "content-encoding: gzip"),
        # Neither Content-Length nor chunked: the body runs until the server closes.
        b"/until-close": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + body,
    }

    def handler(peer: Peer, request: bytes) -> bool:
        target = request.split(b" ")[1]
        peer.conn.sendall(answers[target])
        return answers[target] is not answers[b"/until-close"]

    server = serve(handler)
    transport = UnixTransport(server.path)
    for target in ("/chunked", "/gzip", "/until-close", "/chunked"):
        assert sync_get(transport, target).content == body, target
    transport.close()
    # The kept-alive connection carried /chunked and /gzip; /until-close needed its own.
    assert [len(peer.requests) for peer in server.peers] == [3, 1]

    async def main() -> None:
        transport = AsyncUnixTransport(server.path)
        for target in ("/chunked", "/gzip", "/until-close", "/chunked"):
            assert (await async_get(transport, target)).content == body, target
        await transport.aclose()

    asyncio.run(main())
    # Through the clients, with the raw path (no httpx Response): the same bodies.
    for kind in (b"/gzip", b"/chunked", b"/until-close"):
        answers[b"/v1/keys/k"] = answers[kind]
        with BrokerClient(server.path) as client:
            assert client.get("k") == "z" * 5000

        async def via_async() -> object:
            async with AsyncBrokerClient(server.path) as client:
                return await client.get("k")

        assert asyncio.run(via_async()) == "z" * 5000


def test_a_response_to_head_has_no_body(serve: Callable[[Handler], ScriptServer]) -> None:
    server = serve(answer())  # a Content-Length of 10 and, for HEAD too, the 10 bytes
    transport = UnixTransport(server.path)
    with httpx.Client(transport=transport, base_url="http://localhost") as client:
        head = client.head("/x")
        assert (head.status_code, head.headers["content-length"], head.content) == (
            200,
            "10",
            b"",
        )
        assert client.get("/x").json() == {"pong": 1}  # on a new connection, in step

    async def main() -> None:
        async with httpx.AsyncClient(
            transport=AsyncUnixTransport(server.path), base_url="http://localhost"
        ) as client:
            assert (await client.head("/x")).content == b""
            assert (await client.get("/x")).json() == {"pong": 1}

    asyncio.run(main())
    assert [len(peer.requests) for peer in server.peers] == [1, 1, 1, 1]


def test_connection_close_and_keep_alive(serve: Callable[[Handler], ScriptServer]) -> None:
    def handler(peer: Peer, request: bytes) -> bool:
        close = b"/close" in request.split(b"\r\n")[0]
        peer.conn.sendall(OK if not close else http_answer(200, b"{}", "a/b", "connection: close"))
        return not close

    server = serve(handler)
    transport = UnixTransport(server.path)
    for target in ("/a", "/b", "/close", "/c", "/d"):
        assert sync_get(transport, target).status_code == 200
    transport.close()
    assert [len(peer.requests) for peer in server.peers] == [3, 2]

    async def main() -> None:
        transport = AsyncUnixTransport(server.path)
        for target in ("/a", "/close", "/b", "/c"):
            assert (await async_get(transport, target)).status_code == 200
        await transport.aclose()

    asyncio.run(main())
    assert [len(peer.requests) for peer in server.peers[2:]] == [2, 2]


def test_an_idle_connection_the_server_closed_is_not_reused(
    serve: Callable[[Handler], ScriptServer],
) -> None:
    # Answers as if keeping the connection, then closes it once the client is idle.
    def handler(peer: Peer, request: bytes) -> bool:
        peer.conn.sendall(OK)
        time.sleep(0.05)
        return False

    server = serve(handler)
    transport = UnixTransport(server.path)
    with BrokerClient(server.path, transport=transport) as client:
        for _ in range(3):
            assert client.ping() >= 0
            time.sleep(0.15)
    assert [len(peer.requests) for peer in server.peers] == [1, 1, 1]

    # The same with an idle connection holding bytes nobody asked for.
    def chatty(peer: Peer, request: bytes) -> bool:
        peer.conn.sendall(OK + b"HTTP/1.1 200 OK\r\n")
        return True

    noisy = serve(chatty)
    transport = UnixTransport(noisy.path)
    for _ in range(2):
        assert sync_get(transport).status_code == 200
    assert [len(peer.requests) for peer in noisy.peers] == [1, 1]

    async def main() -> None:
        async with AsyncBrokerClient(server.path) as client:
            for _ in range(3):
                assert await client.ping() >= 0
                await asyncio.sleep(0.15)

    asyncio.run(main())
    assert [len(peer.requests) for peer in server.peers] == [1] * 6


def test_timeouts_map_to_httpx_exceptions(serve: Callable[[Handler], ScriptServer]) -> None:
    silent = serve(lambda peer, request: True)  # reads requests, never answers
    with pytest.raises(httpx.ReadTimeout):
        sync_get(UnixTransport(silent.path), timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(async_get(AsyncUnixTransport(silent.path), timeout=0.2))
    # Through the clients: the call's budget, as BrokerTimeout.
    with BrokerClient(silent.path, timeout=0.3) as client, pytest.raises(BrokerTimeout):
        client.ping()

    async def via_async() -> None:
        async with AsyncBrokerClient(silent.path, timeout=0.3) as client:
            await client.ping()

    with pytest.raises(BrokerTimeout):
        asyncio.run(via_async())

    # Pool: one connection allowed, held by a request that waits for its answer.
    transport = UnixTransport(silent.path, max_connections=1)

    def hold() -> None:
        with pytest.raises(httpx.ReadTimeout):
            sync_get(transport, timeout=1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    with pytest.raises(httpx.PoolTimeout):
        sync_get(transport, timeout=httpx.Timeout(5.0, pool=0.2))
    holder.join()

    async def pool_async() -> None:
        transport = AsyncUnixTransport(silent.path, max_connections=1)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            first = asyncio.create_task(c.get("/x", timeout=1.0))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await c.get("/y", timeout=httpx.Timeout(5.0, pool=0.2))
            with pytest.raises(httpx.ReadTimeout):
                await first
            # The slot came back: the next request gets a connection (and times out reading).
            with pytest.raises(httpx.ReadTimeout):
                await c.get("/z", timeout=0.1)

    asyncio.run(pool_async())

    # Write: a server that never reads, and a request larger than the socket buffers.
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deaf_path = silent.path.with_name("deaf.sock")
    deaf.bind(str(deaf_path))
    deaf.listen(4)
    try:
        head = b"PUT /x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 33554432\r\n\r\n"
        with pytest.raises(httpx.WriteTimeout):
            UnixTransport(deaf_path).roundtrip(head, b"x" * 33554432, 0.2)
        with pytest.raises(httpx.WriteTimeout):
            asyncio.run(AsyncUnixTransport(deaf_path).roundtrip(head, b"x" * 33554432, 0.2))
    finally:
        deaf.close()


def test_connect_errors_and_a_full_backlog(short_tmp: Path) -> None:
    with pytest.raises(httpx.ConnectError, match=r"missing\.sock"):
        sync_get(UnixTransport(short_tmp / "missing.sock"))
    with pytest.raises(httpx.ConnectError, match=r"missing\.sock"):
        asyncio.run(async_get(AsyncUnixTransport(short_tmp / "missing.sock")))
    # A listener that never accepts, its backlog full: connecting waits, then times out.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = short_tmp / "full.sock"
    listener.bind(str(path))
    listener.listen(0)
    queued = []
    try:
        for _ in range(8):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.setblocking(False)
            queued.append(probe)
            try:
                probe.connect(str(path))
            except BlockingIOError:
                break  # the backlog is full
        with pytest.raises(httpx.ConnectTimeout):
            sync_get(UnixTransport(path), timeout=0.2)
    finally:
        for probe in queued:
            probe.close()
        listener.close()


def test_a_response_over_the_limit_is_refused_clearly(
    serve: Callable[[Handler], ScriptServer],
) -> None:
    big = b'{"value":"' + b"y" * 10_000 + b'"}'
    server = serve(answer(big))
    with pytest.raises(ResponseTooLarge, match="limit of 4096 bytes"):
        sync_get(UnixTransport(server.path, max_response_bytes=4096))
    with pytest.raises(ResponseTooLarge, match="limit of 4096 bytes"):
        asyncio.run(async_get(AsyncUnixTransport(server.path, max_response_bytes=4096)))
    transport = UnixTransport(server.path, max_response_bytes=4096)
    with BrokerClient(server.path, transport=transport) as client:
        with pytest.raises(InvalidResponse, match=r"too large.*limit of 4096 bytes") as caught:
            client.get("k")
        assert caught.value.code == "invalid_response"
    assert len(server.peers) == 3  # the client did not retry it
    # A small gzip body that inflates beyond the limit: refused while inflating.
    bomb = serve(answer(gzip.compress(b"[" + b"0," * 50_000 + b"0]"), "content-encoding: gzip"))
    transport = UnixTransport(bomb.path, max_response_bytes=4096)
    with (
        BrokerClient(bomb.path, transport=transport) as client,
        pytest.raises(InvalidResponse, match="decompresses to more than"),
    ):
        client.get("k")
    with pytest.raises(ValueError, match="max_response_bytes"):
        UnixTransport(server.path, max_response_bytes=0)


def test_garbage_is_a_protocol_error(serve: Callable[[Handler], ScriptServer]) -> None:
    def handler(peer: Peer, request: bytes) -> bool:
        peer.conn.sendall(b"SMTP ready\r\n\r\n")
        return True

    server = serve(handler)
    with pytest.raises(httpx.RemoteProtocolError, match="not valid HTTP"):
        sync_get(UnixTransport(server.path))
    with pytest.raises(httpx.RemoteProtocolError, match="not valid HTTP"):
        asyncio.run(async_get(AsyncUnixTransport(server.path)))

    def half(peer: Peer, request: bytes) -> bool:
        peer.conn.sendall(OK[:-3])
        return False

    cut = serve(half)
    with pytest.raises(httpx.RemoteProtocolError, match="middle of its response"):
        sync_get(UnixTransport(cut.path))
    with pytest.raises(httpx.RemoteProtocolError, match="middle of its response"):
        asyncio.run(async_get(AsyncUnixTransport(cut.path)))
    # The client retries an idempotent call that broke, within its budget, then says so.
    with BrokerClient(cut.path, timeout=0.3) as client, pytest.raises(BrokerUnavailable):
        client.ping()


def test_a_forked_child_never_uses_the_parents_connection(
    serve: Callable[[Handler], ScriptServer],
) -> None:
    server = serve(answer())
    transport = UnixTransport(server.path)
    with BrokerClient(server.path, transport=transport) as client:
        client.ping()  # a pooled connection, opened by this process
        pid = os.fork()
        if pid == 0:  # the child: one call, then out without running pytest's teardown
            try:
                client.ping()
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.ping()  # the parent's connection still works
    by_pid = {peer.pid: len(peer.requests) for peer in server.peers}
    assert by_pid == {os.getpid(): 2, pid: 1}


def test_the_async_transport_across_event_loops_and_forks(
    serve: Callable[[Handler], ScriptServer],
) -> None:
    server = serve(answer())
    transport = AsyncUnixTransport(server.path)
    # A connection pooled on a loop that has ended is replaced on the next loop, not reused.
    for _ in range(2):
        assert asyncio.run(transport.roundtrip(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")).status == 200
    pid = os.fork()
    if pid == 0:  # the child: one request on a loop of its own, then out
        try:
            head = b"GET /child HTTP/1.1\r\nhost: x\r\n\r\n"
            os._exit(0 if asyncio.run(transport.roundtrip(head)).status == 200 else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    by_pid = [(peer.pid, len(peer.requests)) for peer in server.peers]
    assert by_pid == [(os.getpid(), 1), (os.getpid(), 1), (pid, 1)]
    # Its pooled connection belongs to a loop that has ended: closed all the same, with no
    # "unclosed transport" warning when it is collected.
    asyncio.run(transport.aclose())
    gc.collect()


def test_one_sync_client_shared_by_threads(shared_broker: BrokerProcess) -> None:
    with BrokerClient(shared_broker.socket) as client:
        for n in range(8):
            client.set(f"thr{n}", n, 60_000)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for _ in range(50):
                    assert client.get(f"thr{n}") == n
            except BaseException as exc:  # reported below, with the thread's own assertion
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        transport = client._transport
        assert isinstance(transport, UnixTransport)
        assert len(transport._idle) <= transport.max_idle


def test_a_cancelled_async_call_leaves_no_half_read_answer(
    serve: Callable[[Handler], ScriptServer],
) -> None:
    def handler(peer: Peer, request: bytes) -> bool:
        target = request.split(b" ")[1]
        if target == b"/slow":
            time.sleep(0.3)
        body = b'{"for":"%s"}' % target
        peer.conn.sendall(http_answer(200, body))
        return True

    server = serve(handler)

    async def main() -> None:
        transport = AsyncUnixTransport(server.path)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            slow = asyncio.create_task(c.get("/slow"))
            await asyncio.sleep(0.05)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            await asyncio.sleep(0.4)  # the slow answer arrives now, on a closed connection
            for target in ("/a", "/b"):
                assert (await c.get(target)).json() == {"for": target}
            # Cancelled by a timeout from the outside, on the raw path.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await transport.roundtrip(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await c.get("/c")).json() == {"for": "/c"}

    asyncio.run(main())
    # The cancelled requests' connections were closed, never pooled: /a and /b shared one, the
    # second /slow was sent on it too and closed it; /c needed a new one.
    targets = [[request.split(b" ")[1] for request in peer.requests] for peer in server.peers]
    assert targets == [[b"/slow"], [b"/a", b"/b", b"/slow"], [b"/c"]]


def test_a_closed_transport_refuses_requests(short_tmp: Path) -> None:
    transport = UnixTransport(short_tmp / "x.sock")
    transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        transport.roundtrip(b"GET / HTTP/1.1\r\n\r\n")
