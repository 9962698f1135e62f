"""`ephemeral-broker run [settings] [--auth] -- CMD [ARGS...]`: a broker for one command's life.

The broker runs in this process, on the same machinery as `serve` (server.py). The order is
what makes it race-free:

1. CMD starts only once the socket is bound and listening and the app has finished starting,
   so CMD's first request can never be refused: it is answered at once. Signal handling is in
   place before the socket exists, so no signal can leave the socket behind.
2. CMD runs with EPHEMERAL_PIPE (and, with auth, EPHEMERAL_SECRET) in its environment, never in
   its arguments: nothing secret shows in `ps`.
3. SIGINT and SIGTERM go to CMD, each exactly once, through the process's one signal dispatcher
   (serving/signals.py): the broker itself does not react to them, so CMD's own shutdown
   requests are still served (defects 3, 4 and 16 of the design notes). The one exception is a
   Ctrl-C typed at a terminal in which CMD runs in the foreground with us: the terminal has
   already sent SIGINT to CMD, and forwarding it would deliver it twice.
4. When CMD ends, the broker drains and stops, the socket and its directory are removed, and
   `run` exits with CMD's exit code: 128+N when CMD died of signal N, 127 when CMD cannot be
   found, 126 when it cannot be executed. Awaiting CMD is what keeps the process alive; there
   is no never-resolving future (defect 7 of the design notes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import SecretStr

from ephemeral_broker.cli.common import EXIT_USAGE, PROG
from ephemeral_broker.cli.settings_flags import add_settings_arguments, settings_from_args
from ephemeral_broker.logs import logger
from ephemeral_broker.settings import BrokerSettings

if TYPE_CHECKING:
    from ephemeral_broker.api.runtime import Runtime

EXIT_CANNOT_EXECUTE: Final = 126
EXIT_NOT_FOUND: Final = 127
EXIT_SIGNAL_BASE: Final = 128
SECRET_BYTES: Final = 32  # 256 bits, as hex: 64 characters


def add_run_command(commands: Any) -> None:
    """Register `run` on the CLI's subparsers (`commands` is argparse's _SubParsersAction)."""
    run: argparse.ArgumentParser = commands.add_parser(
        "run",
        help="run a command with a broker that lives as long as it does",
        usage=f"{PROG} run [settings] [--auth] -- CMD [ARGS...]",
        description="Start a broker, run CMD with EPHEMERAL_PIPE (and with --auth a fresh "
        "EPHEMERAL_SECRET) in its environment, forward SIGINT/SIGTERM to it, and when it ends "
        "stop the broker, remove its socket, and exit with CMD's exit code (128+N when CMD died "
        "of signal N, 127 when CMD cannot be found).",
    )
    add_settings_arguments(run)
    run.add_argument(
        "--auth",
        action="store_true",
        help="turn auth on with a fresh random secret, handed to CMD as EPHEMERAL_SECRET in its "
        "environment (never on a command line)",
    )
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="the command to run; everything after -- is passed to it untouched",
    )
    run.set_defaults(handler=cmd_run, run_parser=run)


def cmd_run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.run_parser
    command: list[str] = args.command
    if not command or command[0] != "--":
        parser.error("put -- before the command: run [settings] [--auth] -- CMD [ARGS...]")
    command = command[1:]
    if not command:
        parser.error("no command after --")
    if args.auth and args.secret_file is not None:
        parser.error("--auth makes a fresh secret; it cannot be combined with --secret-file")

    from ephemeral_broker.logs import configure_logging
    from ephemeral_broker.serving.binding import StartupError
    from ephemeral_broker.serving.server import run_in_new_loop

    settings = settings_from_args(args)
    if args.auth:
        # Made here, kept in memory, handed to CMD through its environment only.
        fresh = SecretStr(secrets.token_hex(SECRET_BYTES))
        settings = settings.model_copy(update={"secret": fresh})
    configure_logging(settings.log_level, settings.log_format)
    if settings.idle_timeout:
        logger.warning(
            "idle_timeout does not apply to run: the broker lives exactly as long as the command",
            extra={"fields": {"idle_timeout": settings.idle_timeout}},
        )
    try:
        return run_in_new_loop(supervise(settings, command))
    except StartupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE


async def supervise(settings: BrokerSettings, command: Sequence[str]) -> int:
    """Serve a broker while `command` runs; returns the exit code `run` exits with."""
    from ephemeral_broker.serving.signals import SIGNALS

    supervisor = _Supervisor(command)
    # Subscribed before the broker starts: from here on a signal is ours to handle, never the
    # default action that would leave the socket behind.
    SIGNALS.install()
    unsubscribe = SIGNALS.subscribe(supervisor.on_signal)
    try:
        return await supervisor.run(settings)
    finally:
        unsubscribe()


class _Supervisor:
    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.loop = asyncio.get_running_loop()
        self.child: asyncio.subprocess.Process | None = None
        self.runtime: Runtime | None = None
        # A signal that came before we began to start CMD: CMD is then not started at all.
        self.early_signal: int | None = None
        # One that came while CMD was being started: CMD gets it as soon as it exists.
        self.pending_signal: int | None = None
        self.starting = False
        self.command_ended = False

    def on_signal(self, signum: int) -> None:
        """Runs in the signal handler: hand over to the loop."""
        self.loop.call_soon_threadsafe(self._handle_signal, signum)

    def _handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.command_ended:
            # CMD is gone and the broker is draining: a signal now means "stop at once".
            if self.runtime is not None and self.runtime.force_shutdown is not None:
                self.runtime.force_shutdown()
            return
        child = self.child
        if child is None:
            if self.starting:
                self.pending_signal = signum
            elif self.early_signal is None:
                self.early_signal = signum
                logger.info(
                    "signal before the command started; it will not be started",
                    extra={"fields": {"signal": name}},
                )
            return
        if signum == signal.SIGINT and _terminal_sent_it_too(child.pid):
            logger.debug(
                "SIGINT came from the terminal, which sent it to the command as well; "
                "not forwarded",
                extra={"fields": {"pid": child.pid}},
            )
            return
        logger.info(
            "forwarding signal to the command",
            extra={"fields": {"signal": name, "pid": child.pid}},
        )
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    async def run(self, settings: BrokerSettings) -> int:
        from ephemeral_broker.api.app import create_app
        from ephemeral_broker.serving.binding import StartupError
        from ephemeral_broker.serving.lifecycle import lifecycle_tasks
        from ephemeral_broker.serving.server import serve

        app = create_app(settings, background=lifecycle_tasks(settings, idle=False))
        self.runtime = app.state.runtime
        # serve() binds the socket and starts the app; it reports the path once both are done,
        # so the socket is listening (and the app answering) before CMD exists.
        ready: asyncio.Future[Path] = self.loop.create_future()
        server = asyncio.create_task(
            serve(settings, app, on_ready=ready.set_result, stop_on_signal=False)
        )
        either: set[asyncio.Future[Any]] = {server, ready}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await server  # re-raises what stopped it (a StartupError: exit 2)
            raise StartupError("the broker stopped before it was ready")

        env = {**os.environ, "EPHEMERAL_PIPE": str(ready.result())}
        if settings.secret is not None:
            env["EPHEMERAL_SECRET"] = settings.secret.get_secret_value()
        reason = "run stopped"
        try:
            if self.early_signal is not None:
                code = EXIT_SIGNAL_BASE + self.early_signal
                reason = f"{signal.Signals(self.early_signal).name} before the command started"
            else:
                code = await self._run_command(env)
                reason = f"command exited with {code}"
        finally:
            self.command_ended = True
            assert self.runtime.request_shutdown is not None  # installed by serve()
            self.runtime.request_shutdown(reason)
            await server
        return code

    async def _run_command(self, env: dict[str, str]) -> int:
        program = self.command[0]
        self.starting = True
        try:
            self.child = await asyncio.create_subprocess_exec(*self.command, env=env)
        except FileNotFoundError:
            print(f"{PROG}: run: command not found: {program}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except OSError as exc:  # not executable, a directory, a bad binary format
            print(f"{PROG}: run: cannot execute {program}: {exc.strerror}", file=sys.stderr)
            return EXIT_CANNOT_EXECUTE
        if self.pending_signal is not None:
            # It came while CMD was being started: CMD gets it now, as it would have.
            self._handle_signal(self.pending_signal)
        returncode = await self.child.wait()
        return returncode if returncode >= 0 else EXIT_SIGNAL_BASE - returncode


def _terminal_sent_it_too(child_pid: int) -> bool:
    """Whether a SIGINT we got most likely came from Ctrl-C at our controlling terminal and so
    reached the command too: we are in the terminal's foreground process group, and so is it.

    (A `kill -INT` aimed at `run` alone in that situation is not forwarded: that is the price of
    never delivering a Ctrl-C twice. SIGTERM is always forwarded.)
    """
    try:
        tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal: the signal was sent to us alone
    try:
        foreground = os.tcgetpgrp(tty)
        return foreground == os.getpgrp() == os.getpgid(child_pid)
    except OSError:
        return False
    finally:
        os.close(tty)
