"""Fresh brokers on demand, each in its own process, ready the moment they are asked for.

A stateful test (tests/test_schemathesis_stateful.py) needs a broker with no history for every
scenario it runs: Hypothesis replays the start of earlier scenarios and requires that the same
requests get the same answers, which they do not once keys, lease tokens and the version
counter carry over from the last scenario. `ephemeral-broker serve` takes 1-2 s to start on a
loaded machine, mostly imports; this process imports everything once and forks each broker,
and always has the next one started and waiting while the current one is in use.

Each child runs what `ephemeral-broker serve` runs (the settings from the same flags, the
app, `serve()` with its uvicorn server, signal handling and socket rules), with one
difference: its clock is a FakeClock that never moves, so no TTL ends during a scenario and
an answer does not depend on how fast the machine is.

    python -m tests.support.forked_brokers DIR [serve flags ...]

Protocol, one line each way: for every line the caller writes, the broker handed out last is
killed and reaped, and the answer is `EPHEMERAL_PIPE=<socket> <pid>` for a broker that
answers on <socket> (DIR/b<n>.sock), or `ERROR <what happened>`. End of stdin ends every
broker and this process. The brokers' logs go to this process's stderr.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from ephemeral_broker.api.app import create_app
from ephemeral_broker.cli.main import build_parser
from ephemeral_broker.cli.settings_flags import settings_from_args
from ephemeral_broker.clock import FakeClock
from ephemeral_broker.logs import configure_logging
from ephemeral_broker.serving.lifecycle import lifecycle_tasks
from ephemeral_broker.serving.server import run_in_new_loop, serve

START_TIMEOUT_SECONDS = 20.0


@dataclass
class Child:
    pid: int
    socket: Path
    ready: int  # read end of the pipe on which the child writes one byte once it answers


def _serve(socket: Path, flags: list[str], ready: int) -> int:
    """The body of a forked broker: `ephemeral-broker serve --socket SOCKET FLAGS` on a
    frozen clock."""
    args = build_parser().parse_args(["serve", "--socket", str(socket), *flags])
    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)

    def announce(_: Path) -> None:
        os.write(ready, b"\n")
        os.close(ready)

    app = create_app(settings, clock=FakeClock(), background=lifecycle_tasks(settings))
    return run_in_new_loop(serve(settings, app, on_ready=announce))


def _fork(socket: Path, flags: list[str]) -> Child:
    read_end, write_end = os.pipe()
    sys.stdout.flush()  # nothing buffered may be written twice, by parent and child
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # serve() installs its own handling
        code = 1
        try:
            code = _serve(socket, flags, write_end)
        except BaseException:
            traceback.print_exc()
        finally:
            # Never return into the parent's loop (and its stdin) from a child.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    return Child(pid, socket, read_end)


def _wait_ready(child: Child) -> str:
    """The answer line for `child` once it answers, or why it does not."""
    readable, _, _ = select.select([child.ready], [], [], START_TIMEOUT_SECONDS)
    signalled = os.read(child.ready, 1) if readable else b""
    os.close(child.ready)
    child.ready = -1
    if signalled:
        return f"EPHEMERAL_PIPE={child.socket} {child.pid}"
    if readable:
        return f"ERROR broker {child.pid} ended before it answered on {child.socket}"
    return f"ERROR broker {child.pid} did not answer within {START_TIMEOUT_SECONDS} s"


def _end(child: Child | None) -> None:
    if child is None:
        return
    if child.ready >= 0:
        os.close(child.ready)
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)
    os.waitpid(child.pid, 0)
    # Killed, it could not remove its socket; the next broker has a path of its own.
    with contextlib.suppress(FileNotFoundError):
        child.socket.unlink()


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(1)  # through main's `finally`, which ends the brokers


def main(argv: list[str]) -> int:
    directory, flags = Path(argv[0]), argv[1:]
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = 0

    def spare() -> Child:
        nonlocal started
        started += 1
        return _fork(directory / f"b{started}.sock", flags)

    in_use: Child | None = None
    waiting: Child | None = spare()
    try:
        for _ in sys.stdin:
            _end(in_use)
            in_use, waiting = waiting, None
            assert in_use is not None
            print(_wait_ready(in_use), flush=True)
            waiting = spare()  # starts while the caller uses this one
    finally:
        _end(in_use)
        _end(waiting)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
