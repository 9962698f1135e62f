"""Instructions per request, broker and floor: `python -m bench.instructions [--requests N]`.

Timings on a shared machine move by tens of percent between runs; the number of instructions
a request executes does not. This runs each server's request path in-process, through the
broker's own uvicorn protocol fed the very request bytes of the floor benchmark over a fake
transport (no system calls), under valgrind's callgrind, and counts the instructions of N
requests per operation, with instrumentation switched on only around them. It prints, per
operation, the broker's and the floor's instructions per request and their ratio. In this
project's measurements the timed ratio pinned to one CPU (`python -m bench --only floor`)
followed this one within a few hundredths, so a change to the request path can be judged here
first, exactly, before the timed run confirms it. Needs `valgrind` (Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.floor import OPERATIONS, REQUESTS, _put

WARMUP = 200
CALIBRATION = "calibration"  # a measurement of no requests: the toggling's own cost


class _Transport(asyncio.Transport):
    """Counts the writes of responses; everything else a protocol may ask is a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": "/tmp/bench.sock", "peername": ""}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol(side: str) -> tuple[Any, _Transport]:
    from uvicorn.server import ServerState

    from ephemeral_broker.serving.server import uvicorn_config

    if side == "broker":
        from ephemeral_broker.api.app import asgi_entry, create_app
        from ephemeral_broker.settings import BrokerSettings

        config = uvicorn_config(asgi_entry(create_app(BrokerSettings())), drain_timeout_ms=0)
    else:
        from bench import baseline

        config = uvicorn_config(baseline.app, drain_timeout_ms=0, lifespan="off")
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _drive(protocol: Any, transport: _Transport, requests: list[bytes]) -> None:
    for request in requests:
        written = transport.writes
        protocol.data_received(request)
        # Polled: the driver's own instructions are counted on both sides, and a poll costs
        # fewer of them than an Event would (set, clear and a wake-up per request).
        while transport.writes < written + 2:  # noqa: ASYNC110 (the response's head and body)
            await asyncio.sleep(0)


def _callgrind(*command: str) -> None:
    subprocess.run(
        ["callgrind_control", *command, str(os.getpid())], check=True, capture_output=True
    )


async def _child(side: str, operations: list[str], count: int) -> None:
    """Run under callgrind: one dump per operation (and one calibration) of `count` requests."""
    protocol, transport = _protocol(side)
    setup = [_put("hit"), _put("put"), *(_put(f"del{i}") for i in range(count + WARMUP))]
    await _drive(protocol, transport, setup)
    gc.disable()  # a collection would land in one measurement or another
    for name in [CALIBRATION, *operations]:
        make = REQUESTS.get(name)
        requests = [make(i) for i in range(count + WARMUP)] if make else []
        await _drive(protocol, transport, requests[:WARMUP])
        _callgrind("-i", "on")
        await _drive(protocol, transport, requests[WARMUP:])
        _callgrind("-i", "off")
        _callgrind("-d", name)


def _dumps(directory: Path) -> dict[str, int]:
    """name -> instructions, from callgrind's dump files."""
    found: dict[str, int] = {}
    for path in directory.iterdir():
        name, total = None, None
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("desc: Trigger: Client Request: "):
                name = line.rsplit(" ", 1)[1]
            elif line.startswith("desc: Trigger:") and "dump " in line:
                name = line.rsplit("dump ", 1)[1].strip()
            elif line.startswith("totals:"):
                total = int(line.split()[1])
        if name is not None and total is not None:
            found[name] = total
    return found


def measure(count: int, operations: list[str]) -> dict[str, dict[str, float]]:
    """Per operation: the broker's and the floor's instructions per request, their ratio."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("bench.instructions needs valgrind (Debian: apt-get install valgrind)")
    per_request: dict[str, dict[str, float]] = {}
    for side in ("broker", "floor"):
        with tempfile.TemporaryDirectory(prefix="ebi-") as workdir:
            out = Path(workdir) / "callgrind.out"
            subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={out}",
                    sys.executable,
                    "-m",
                    "bench.instructions",
                    "--child",
                    side,
                    "--requests",
                    str(count),
                    *operations,
                ],
                check=True,
                capture_output=True,
            )
            dumps = _dumps(Path(workdir))
        missing = {CALIBRATION, *operations} - set(dumps)
        if missing:
            raise RuntimeError(f"callgrind wrote no measurement for {sorted(missing)} ({side})")
        toggling = dumps[CALIBRATION]
        for op in operations:
            per_request.setdefault(op, {})[side] = (dumps[op] - toggling) / count
    return {
        op: {
            "broker_instructions": round(sides["broker"]),
            "floor_instructions": round(sides["floor"]),
            "ratio": round(sides["broker"] / sides["floor"], 3),
        }
        for op, sides in per_request.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "operations", nargs="*", help=f"of {', '.join(OPERATIONS)}; all when none is named"
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per operation")
    parser.add_argument("--child", choices=("broker", "floor"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    operations = list(args.operations) or list(OPERATIONS)
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        parser.error(f"unknown operation {unknown[0]!r}: choose from {', '.join(OPERATIONS)}")
    if args.child:
        import uvloop

        uvloop.run(_child(args.child, operations, args.requests))
        return 0
    results = measure(args.requests, operations)
    print(f"Instructions per request, in-process through the protocol ({args.requests} each)")
    print(f"{'operation':<10} {'broker':>10} {'floor':>10} {'ratio':>7}")
    for op, row in results.items():
        print(
            f"{op:<10} {row['broker_instructions']:>10} {row['floor_instructions']:>10} "
            f"{row['ratio']:>6.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
