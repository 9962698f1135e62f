"""`start` and `stop`: a broker in the background for the steps of a CI job, the ssh-agent way.

    eval "$(ephemeral-broker start --idle-timeout 3600000)"   # exports EPHEMERAL_PIPE, _PID
    pytest -n 8 ...                                            # any later step or command
    eval "$(ephemeral-broker stop)"                            # drains it, unsets both

`start` launches `serve` as a detached process (a new session, no terminal, working directory
`/`, standard input closed), waits until it answers, and prints the variables to export. Until
it is ready the broker's stderr comes back to `start`, so a start-up error is shown as usual;
from then on the broker writes its logs to `--log-file` or nowhere, and holds none of the
caller's pipes: `$(…)` and CI steps end without waiting for it.

`stop` signals the broker by its pid (SIGTERM: it drains and removes its socket), after
checking that the pid is still an ephemeral-broker, since pids are reused. A broker that is
still draining after `--timeout` gets a second SIGTERM, which makes it exit at once (its
socket is still removed); one that survives even that is killed, and its socket removed here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from ephemeral_broker.cli.common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, PROG
from ephemeral_broker.cli.run import SECRET_BYTES
from ephemeral_broker.cli.settings_flags import add_settings_arguments, settings_from_args
from ephemeral_broker.serving.unix_socket import DEFAULT_SOCKET_DIR_PREFIX, socket_answers
from ephemeral_broker.settings import BrokerSettings, flag_name

PIPE_VARIABLE: Final = "EPHEMERAL_PIPE"
PID_VARIABLE: Final = "EPHEMERAL_BROKER_PID"
SECRET_VARIABLE: Final = "EPHEMERAL_SECRET"  # noqa: S105 (a variable name, not a secret)
FORMATS: Final = ("sh", "json", "github")
DEFAULT_START_TIMEOUT_S: Final = 30.0
DEFAULT_STOP_TIMEOUT_S: Final = 10.0
# How long a broker gets to exit after the second signal (or SIGKILL) before stop gives up.
_FORCED_EXIT_WAIT_S: Final = 3.0
_POLL_S: Final = 0.02
# The hidden `serve` flag that makes a started broker let go of start's pipes once ready.
DETACH_FLAG: Final = "--detach-log"


def add_background_commands(commands: Any) -> None:
    """Register `start` and `stop` (`commands` is argparse's _SubParsersAction)."""
    start: argparse.ArgumentParser = commands.add_parser(
        "start",
        help="start a broker in the background and print the variables to export",
        usage=f'eval "$({PROG} start [settings] [--auth] [--format sh|json|github])"',
        description="Start a detached broker, wait until it answers, and print "
        f"`export {PIPE_VARIABLE}=…; export {PID_VARIABLE}=…;` for eval in a shell "
        "(--format github: NAME=VALUE lines for $GITHUB_ENV; json: one object). "
        f"`{PROG} stop` ends it. Set --idle-timeout so that a forgotten broker ends by itself.",
    )
    add_settings_arguments(start)
    start.add_argument(
        "--auth",
        action="store_true",
        help=f"turn auth on with a fresh random secret, printed as {SECRET_VARIABLE}",
    )
    _format_option(start)
    start.add_argument(
        "--log-file",
        metavar="PATH",
        type=Path,
        help="append the broker's log lines to this file (default: they are discarded once "
        "it is ready; logs never contain values or secrets)",
    )
    start.add_argument(
        "--start-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_START_TIMEOUT_S,
        help=f"give up if the broker is not ready within this long [default: "
        f"{DEFAULT_START_TIMEOUT_S:g}]",
    )
    start.set_defaults(handler=cmd_start, start_parser=start)

    stop: argparse.ArgumentParser = commands.add_parser(
        "stop",
        help="drain and stop a broker that `start` started",
        usage=f'eval "$({PROG} stop [--pid PID] [--socket PATH])"',
        description=f"Send SIGTERM to the broker ${PID_VARIABLE} names (after checking it is "
        "one), wait until it has drained and removed its socket, and print `unset …;` for eval.",
    )
    stop.add_argument("--pid", type=int, help=f"the broker's pid [default: ${PID_VARIABLE}]")
    stop.add_argument(
        "--socket", metavar="PATH", help=f"the broker's socket [default: ${PIPE_VARIABLE}]"
    )
    stop.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_STOP_TIMEOUT_S,
        help="how long to wait for the drain before stopping it at once [default: "
        f"{DEFAULT_STOP_TIMEOUT_S:g}]",
    )
    _format_option(stop)
    stop.set_defaults(handler=cmd_stop)


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="sh",
        help="sh: commands for eval; github: NAME=VALUE lines for $GITHUB_ENV; json [default: sh]",
    )


# ---- start ---------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.start_parser
    if args.auth and args.secret_file is not None:
        parser.error("--auth makes a fresh secret; it cannot be combined with --secret-file")
    if args.start_timeout <= 0:
        parser.error("--start-timeout must be a positive number of seconds")
    # Validated here first: a bad setting is one line from start itself, nothing launched.
    settings = settings_from_args(args)
    env = dict(os.environ)
    secret = None
    if args.auth:
        secret = secrets.token_hex(SECRET_BYTES)
        env["BROKER_SECRET"] = secret  # the environment, never argv: nothing secret in ps
    log_target = os.devnull
    log_offset = 0
    if args.log_file is not None:
        log_target = str(args.log_file.absolute())
        try:  # checked here: once the broker is ready, nobody would see this error
            log_fd = os.open(log_target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            print(
                f"{PROG}: start: cannot open --log-file {log_target}: {exc.strerror}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        log_offset = os.lseek(log_fd, 0, os.SEEK_END)
    argv = [sys.executable, "-P", "-m", "ephemeral_broker", "serve"]
    argv += _settings_flags(args, settings)
    argv += [DETACH_FLAG, log_target]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            # With a log file, every line goes there from the first, in order; without one,
            # the start-up lines come back here, to be shown if the start fails.
            stderr=log_fd if args.log_file is not None else subprocess.PIPE,
            env=env,
            cwd="/",  # holds no directory of the caller's busy
            start_new_session=True,  # no terminal: Ctrl-C or a closed terminal never reach it
        )
    except OSError as exc:
        print(f"{PROG}: start: cannot launch the broker: {exc.strerror}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        if args.log_file is not None:
            os.close(log_fd)
    ready, stderr = _wait_ready(proc, args.start_timeout)
    if ready is None:
        if args.log_file is not None:
            with open(log_target, "rb") as log:
                log.seek(log_offset)
                stderr = log.read(65536)
        return _start_failed(proc, stderr, args.start_timeout)
    variables: dict[str, str | int] = {PIPE_VARIABLE: ready, PID_VARIABLE: proc.pid}
    if secret is not None:
        variables[SECRET_VARIABLE] = secret
    print(_render_exports(variables, args.format), end="", flush=True)
    return EXIT_OK


def _settings_flags(args: argparse.Namespace, settings: BrokerSettings) -> list[str]:
    """The settings given to `start` as `serve` flags; relative paths made absolute, since the
    broker runs in `/`."""
    flags: list[str] = []
    for name in BrokerSettings.model_fields:
        if name == "secret" or not hasattr(args, name):
            continue
        value = getattr(settings, name)
        if isinstance(value, bool):
            flags.append(flag_name(name) if value else "--no-" + flag_name(name)[2:])
        elif name == "socket":
            flags += [flag_name(name), str(Path(value).absolute())]
        elif name == "socket_mode":
            flags += [flag_name(name), f"{value:04o}"]
        else:
            flags += [flag_name(name), str(value)]
    if args.secret_file is not None:
        flags += ["--secret-file", str(args.secret_file.absolute())]
    return flags


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> tuple[str | None, bytes]:
    """Read the broker's `EPHEMERAL_PIPE=` line; meanwhile collect its stderr."""
    assert proc.stdout is not None
    stdout, stderr = b"", b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if proc.stderr is not None:
            selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map() and b"\n" not in stdout:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    stdout += chunk
                else:
                    stderr += chunk[: max(0, 65536 - len(stderr))]  # bounded: a start-up log
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    line, _, _ = stdout.partition(b"\n")
    prefix = PIPE_VARIABLE.encode() + b"="
    if line.startswith(prefix):
        return os.fsdecode(line[len(prefix) :]), stderr
    return None, stderr


def _start_failed(proc: subprocess.Popen[bytes], stderr: bytes, timeout: float) -> int:
    text = stderr.decode("utf-8", "replace").rstrip("\n")
    try:
        code = proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        # Ours, started a moment ago, and not ready in time: end it by its pid.
        proc.kill()
        proc.wait()
        if text:
            print(text, file=sys.stderr)
        print(f"{PROG}: start: the broker was not ready within {timeout:g} s", file=sys.stderr)
        return EXIT_UNREACHABLE
    # The broker's own start-up error (one line, exit 2) is what the user needs to read.
    print(
        text or f"{PROG}: start: the broker exited with {code} before it was ready", file=sys.stderr
    )
    return code if code in (EXIT_USAGE, EXIT_FAILED) else EXIT_UNREACHABLE


def _render_exports(variables: dict[str, str | int], form: str) -> str:
    if form == "json":
        return json.dumps(variables) + "\n"
    if form == "github":
        for name, value in variables.items():
            if "\n" in str(value):
                raise SystemExit(f"{PROG}: start: {name} contains a newline; use --format sh")
        return "".join(f"{name}={value}\n" for name, value in variables.items())
    return "".join(
        f"export {name}={shlex.quote(str(value))};\n" for name, value in variables.items()
    )


def detach_after_ready(log_target: str) -> None:
    """In the started broker, right after its ready line: let go of `start`'s pipes.

    stdout goes to /dev/null and stderr (the log) to the log file or /dev/null, on the same file
    descriptors, so every handler that writes to them follows.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    log_fd = os.open(log_target, flags, 0o600)
    try:
        os.dup2(log_fd, 2)
    finally:
        os.close(log_fd)


# ---- stop ----------------------------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> int:
    pid = args.pid if args.pid is not None else _pid_from_environment()
    if pid is None:
        print(
            f"{PROG}: stop: no broker pid: pass --pid or set {PID_VARIABLE} (start prints it)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.timeout <= 0:
        print(f"{PROG}: stop: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    socket_text = args.socket or os.environ.get(PIPE_VARIABLE)
    socket_path = Path(socket_text) if socket_text else None
    command_line = _command_line(pid)
    if command_line is None:
        print(
            f"{PROG}: stop: no process with pid {pid}: the broker has already stopped",
            file=sys.stderr,
        )
    elif not _is_broker(command_line):
        shown = " ".join(command_line)[:200]
        print(
            f"{PROG}: stop: pid {pid} is not an ephemeral-broker ({shown!r}); "
            "nothing was signalled",
            file=sys.stderr,
        )
        return EXIT_FAILED
    else:
        _end(pid, args.timeout)
    if socket_path is not None:
        _remove_if_dead(socket_path)
    print(_render_unset(args.format, pid), end="", flush=True)
    return EXIT_OK


def _pid_from_environment() -> int | None:
    text = os.environ.get(PID_VARIABLE, "").strip()
    return int(text) if text.isdigit() else None


def _command_line(pid: int) -> list[str] | None:
    """The process's argv; [] when it exists but cannot be read (no /proc: macOS); None when
    there is no such process, or only a zombie waiting to be reaped."""
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return []
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return []
    if not raw:  # a zombie: it has exited
        return None
    return [os.fsdecode(word) for word in raw.rstrip(b"\0").split(b"\0")]


def _is_broker(command_line: list[str]) -> bool:
    """Whether an argv is a broker's: `python … -m ephemeral_broker …` as `start` launches it,
    or the `ephemeral-broker` / `epb` console script."""
    if not command_line:
        return True  # nothing to read: the pid is all there is to go on
    return any(
        word == "ephemeral_broker" or os.path.basename(word) in ("ephemeral-broker", "epb")
        for word in command_line
    )


def _alive(pid: int) -> bool:
    return _command_line(pid) is not None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _end(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        return
    # A second signal ends the drain at once; the broker still removes its socket.
    print(
        f"{PROG}: stop: broker {pid} still draining after {timeout:g} s; stopping it at once",
        file=sys.stderr,
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, _FORCED_EXIT_WAIT_S):
        return
    print(f"{PROG}: stop: broker {pid} did not exit; killed", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, _FORCED_EXIT_WAIT_S)


def _remove_if_dead(path: Path) -> None:
    """Remove a socket nobody answers on any more (a killed broker's), and its private dir."""
    try:
        if not path.is_socket() or socket_answers(path, 0.5):
            return
    except OSError:
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if path.parent.name.startswith(DEFAULT_SOCKET_DIR_PREFIX):
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def _render_unset(form: str, pid: int) -> str:
    if form == "json":
        return json.dumps({"stopped": pid}) + "\n"
    if form == "github":
        return ""  # $GITHUB_ENV cannot unset; later steps simply find no broker there
    return f"unset {PIPE_VARIABLE} {PID_VARIABLE};\n"
