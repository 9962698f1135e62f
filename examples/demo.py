"""The broker's main job in one run: workers of one run share a token.

`make demo` runs this: it starts a broker on a private socket, stores a freshly minted token,
starts worker processes that each read it over the socket, prints what each read, and stops
the broker (which removes its socket).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx

WORKERS = 4
BROKER = str(Path(sys.executable).parent / "ephemeral-broker")

WORKER_CODE = r"""
import os, sys, httpx
client = httpx.Client(transport=httpx.HTTPTransport(uds=os.environ["EPHEMERAL_PIPE"]),
                      base_url="http://localhost")
token = client.get("/v1/keys/demo-token").json()["value"]
# One write per line: print() writes text and newline apart, and workers share stdout.
sys.stdout.write(f"worker {os.environ['WORKER']} (pid {os.getpid()}) read token {token}\n")
sys.stdout.flush()
"""


def main() -> int:
    broker = subprocess.Popen([BROKER, "serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert broker.stdout is not None
        pipe = broker.stdout.readline().strip().removeprefix("EPHEMERAL_PIPE=")
        print(f"broker listening on {pipe}")
        token = secrets.token_hex(8)
        with httpx.Client(transport=httpx.HTTPTransport(uds=pipe), base_url="http://x") as client:
            client.put("/v1/keys/demo-token", json={"value": token, "ttl_ms": 60_000})
        print(f"stored token {token} with a 60 s TTL")
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER_CODE],
                env={**os.environ, "EPHEMERAL_PIPE": pipe, "WORKER": str(n)},
            )
            for n in range(WORKERS)
        ]
        failed = sum(worker.wait() != 0 for worker in workers)
        print(f"{WORKERS - failed} of {WORKERS} workers read the token")
        return 1 if failed else 0
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait()
        if broker.stdout is not None:
            broker.stdout.close()


if __name__ == "__main__":
    raise SystemExit(main())
