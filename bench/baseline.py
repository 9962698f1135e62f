"""The raw-ASGI baseline: the broker's uvicorn configuration serving a trivial app.

`python -m bench.baseline SOCKET [--loaded]` binds SOCKET and answers every request with a fixed
JSON body shaped like a broker GET, so "broker GET costs X times the bare server" compares like
with like.
A request with a body (PUT, POST) has it read first, as any app that uses it must: the floor of
a write includes receiving what is written.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvicorn

from ephemeral_broker.serving.binding import LISTEN_BACKLOG
from ephemeral_broker.serving.server import run_in_new_loop, uvicorn_config

# What a broker GET of a 100-byte value answers.
BODY = b'{"key":"k","value":"' + b"v" * 98 + b'","version":1,"expires_at":1767225600000}'
_WITH_BODY = frozenset({"PUT", "POST"})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] in _WITH_BODY:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        print("BASELINE_READY", flush=True)


async def main(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(LISTEN_BACKLOG)
    # The broker's own configuration, minus the lifespan a trivial app does not have.
    await _Server(uvicorn_config(app, drain_timeout_ms=0, lifespan="off")).serve(sockets=[sock])
    await asyncio.sleep(0)


def load_the_broker() -> object:
    """The broker's app, built and kept but never served: `--loaded` gives the floor a process
    of the broker's size (its modules, FastAPI, pydantic, its routes) with the same trivial
    request path, to tell the cost of a process's size from the cost of its request path."""
    from ephemeral_broker.api.app import create_app
    from ephemeral_broker.settings import BrokerSettings

    return create_app(BrokerSettings())


if __name__ == "__main__":
    kept = load_the_broker() if "--loaded" in sys.argv[2:] else None
    run_in_new_loop(main(sys.argv[1]))
