"""The broker process of the pytest plugin: `ephemeral-broker serve` in a subprocess that stops
by itself when the pytest process that started it is gone.

`launch()` runs
`python -P -m ephemeral_broker_client.pytest_plugin.broker PARENT_PID PRIVATE_DIR serve [flags]`;
`wait_ready()` waits for its `EPHEMERAL_PIPE=` line. The child watches its parent: when the
pytest process that started it dies without stopping it (SIGKILL, a crash, an OOM kill), the
parent process id changes (re-parenting to init or a subreaper) and the child sends itself
SIGTERM, which drains and removes the socket like any graceful shutdown. The broker runs in a
session of its own, so a Ctrl-C at the terminal, which signals pytest and its xdist workers,
does not stop it while the workers still use it; pytest stops it when the run ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from ephemeral_broker.serving.unix_socket import new_private_socket_path, socket_answers

# How often the child checks that its parent is alive: an orphaned broker stops this soon.
PARENT_POLL_SECONDS: Final = 0.2
# How long stop() waits for a graceful exit before SIGKILL (the drain itself is bounded by
# the broker's drain_timeout, 5 s by default, and is usually over in a few ms).
STOP_TIMEOUT_SECONDS: Final = 15.0
# Lines of the broker's stderr kept for reports (the newest ones).
LOG_LINES_KEPT: Final = 200
_READY_PREFIX: Final = "EPHEMERAL_PIPE="
_PROBE_TIMEOUT_SECONDS: Final = 0.5


class BrokerStartError(Exception):
    """The broker could not be started; the message says why, with its last log lines."""


@dataclass
class StartedBroker:
    """A broker process launched by `launch()`: `wait_ready()` waits until it answers,
    `stop()` ends it and removes whatever it left."""

    proc: subprocess.Popen[bytes]
    socket: Path
    # The private directory made for a default socket, removed with it.
    private_dir: Path | None
    deadline: float
    log: deque[str]
    reader: threading.Thread
    ready: bool = False
    exit_code: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        """Wait for the broker's `EPHEMERAL_PIPE=` line; BrokerStartError if it exits or does
        not report ready in time (it is then stopped)."""
        if self.ready:
            return
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while not selector.select(max(0.0, self.deadline - time.monotonic())):
                if time.monotonic() >= self.deadline:
                    self.stop()
                    raise BrokerStartError(
                        f"the broker did not report ready in time{_describe_log(self.log)}"
                    )
        line = self.proc.stdout.readline().decode("utf-8", "replace")
        if line == "":
            # It closed its stdout: it is exiting (a bad setting, a socket taken).
            self.exit_code = self.proc.wait(STOP_TIMEOUT_SECONDS)
            self._close()
            raise BrokerStartError(
                f"the broker exited with code {self.exit_code}{_describe_log(self.log)}"
            )
        if line != f"{_READY_PREFIX}{self.socket}\n":
            self.stop()
            raise BrokerStartError(
                f"the broker printed {line!r} instead of its socket{_describe_log(self.log)}"
            )
        self.ready = True

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM the broker (by its pid), wait for it, and return its exit code; after
        `timeout` it is killed. Its socket and private directory are removed either way."""
        if self.exit_code is not None:
            return self.exit_code
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.log.append(f"the broker did not stop within {timeout:g} s: killed")
                self.exit_code = _kill(self.proc)
        except BaseException:
            # Interrupted while waiting (a second Ctrl-C): do not leave the broker running.
            self.exit_code = _kill(self.proc)
            raise
        finally:
            self._close()
        return self.exit_code

    def _close(self) -> None:
        # The broker has exited: its stderr reaches its end, and the reader with it.
        self.reader.join(timeout=1.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        remove_leftovers(self.socket, self.private_dir)


def _kill(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def remove_leftovers(socket: Path, private_dir: Path | None) -> None:
    """Remove the socket file a killed broker left behind and the private directory (only
    when empty). Only a dead socket is removed, never another kind of file, and never a socket
    something answers on: a broker that would not start because another one already listens
    on its path must leave that one alone."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(socket).st_mode) and not _answers(socket):
            os.unlink(socket)
    if private_dir is not None:
        with contextlib.suppress(OSError):
            private_dir.rmdir()


def _answers(path: Path) -> bool:
    try:
        return socket_answers(path, _PROBE_TIMEOUT_SECONDS)
    except OSError:
        return True  # cannot tell: leave it alone


def _read_log(stream: IO[bytes], log: deque[str]) -> None:
    # Drains the broker's stderr for as long as it runs, so that a chatty broker never blocks
    # on a full pipe; the newest lines are kept for the run's summary and for errors.
    with contextlib.suppress(OSError, ValueError):
        for raw in stream:
            log.append(raw.decode("utf-8", "replace").rstrip("\n"))


def _describe_log(log: deque[str]) -> str:
    lines = [line for line in log if line.strip()]
    return (": " + " | ".join(lines[-5:])) if lines else ""


def launch(
    flags: list[str], env: dict[str, str], timeout: float, socket: Path | None = None
) -> StartedBroker:
    """Start `serve` with `flags` and `env` on `socket`, without waiting for it: its socket
    path is known at once, so that the xdist workers can start while the broker does (a
    client reaches a broker that is still starting as soon as it listens). Without `socket`,
    a new private directory (0700) under $TMPDIR holds it. `timeout` bounds `wait_ready()`.
    """
    private_dir = None
    if socket is None:
        # Like the broker's own default socket (mode 0700 directory under $TMPDIR).
        socket = new_private_socket_path()
        private_dir = socket.parent
    # __name__ is this module's dotted name: the child runs main() below.
    args = [
        sys.executable,
        "-P",
        "-m",
        __name__,
        str(os.getpid()),
        str(private_dir or ""),
        "serve",
        "--socket",
        str(socket),
        *flags,
    ]
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        remove_leftovers(socket, private_dir)
        raise
    assert proc.stderr is not None
    log: deque[str] = deque(maxlen=LOG_LINES_KEPT)
    reader = threading.Thread(
        target=_read_log, args=(proc.stderr, log), name="ephemeral-broker log", daemon=True
    )
    reader.start()
    return StartedBroker(proc, socket, private_dir, time.monotonic() + timeout, log, reader)


# ---- the child -----------------------------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    # Our pytest is gone: shut down gracefully, exactly as on `kill -TERM` (drain, remove the
    # socket, exit 0).
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> None:
    """`python -m ephemeral_broker_client.pytest_plugin.broker PARENT_PID PRIVATE_DIR serve …`."""
    parent_pid, private_dir = int(argv[0]), argv[1]
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="parent watch", daemon=True
    ).start()
    from ephemeral_broker.cli.main import main as cli_main  # noqa: PLC0415 - the server stack, in the child only

    code = cli_main(argv[2:])
    # The broker has removed its socket; the directory made for it goes too.
    if private_dir:
        with contextlib.suppress(OSError):
            os.rmdir(private_dir)
    # Nothing of the broker is left to finalise: skip the interpreter's teardown of fastapi,
    # pydantic and friends (~0.3 s), which pytest would otherwise wait for at every run's end.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
