"""The command line: `serve`, and (in their own modules) `run` and the client commands.

Exit codes: 0 success; 1 the operation failed; 2 usage or settings error; 3 the broker cannot
be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ephemeral_broker import __version__
from ephemeral_broker.cli_client import CLIENT_COMMANDS, add_client_commands

# The names the program is installed under (pyproject.toml's console scripts).
PROGRAM_NAMES: Final = ("ephemeral-broker", "epb")


def program_name(argv0: str) -> str:
    """The name the user typed, for usage lines and error messages: `epb` or
    `ephemeral-broker`. Anything else (`python -m ephemeral_broker` gives a path to
    `__main__.py`; a test runner calling main() gives its own name) is `ephemeral-broker`."""
    name = os.path.basename(argv0)
    return name if name in PROGRAM_NAMES else PROGRAM_NAMES[0]


# Decided once, at import: runner.py and background.py import it for their messages too.
PROG: Final = program_name(sys.argv[0] if sys.argv else "")
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3


class SettingsError(Exception):
    """A setting is invalid: one line for the user, exit code 2."""


def cmd_serve(args: argparse.Namespace) -> int:
    from ephemeral_broker.cli_settings import settings_from_args
    from ephemeral_broker.lifecycle import lifecycle_tasks
    from ephemeral_broker.logs import configure_logging
    from ephemeral_broker.main import create_app
    from ephemeral_broker.server import StartupError, run_in_new_loop, serve

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)

    def announce(path: Path) -> None:
        # The first stdout line, once the broker answers: scripts read it to find the socket.
        print(f"EPHEMERAL_PIPE={path}", flush=True)
        if args.detach_log is not None:  # started by `start`, which has read all it needs
            from ephemeral_broker.background import detach_after_ready

            detach_after_ready(args.detach_log)

    # The app is built before the socket is bound: serve() binds it only once its signal
    # handling is in place, so no signal can leave a socket file or directory behind.
    app = create_app(settings, background=lifecycle_tasks(settings))
    try:
        return run_in_new_loop(serve(settings, app, on_ready=announce))
    except StartupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def build_parser(*, server_commands: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without `server_commands`, only the client commands.

    `serve` and `run` need every setting as a flag, which means loading pydantic-settings
    (about 0.3 s); a client command such as `epb get KEY` in a shell loop should not pay that.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="In-memory key/value and lease broker for the processes of one run, "
        "over a Unix domain socket.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if not server_commands:
        add_client_commands(commands)
        return parser
    from ephemeral_broker.background import DETACH_FLAG, add_background_commands
    from ephemeral_broker.cli_settings import add_settings_arguments
    from ephemeral_broker.runner import add_run_command

    serve = commands.add_parser(
        "serve",
        help="run a broker in the foreground",
        description="Run a broker in the foreground. Once it answers, the first line on "
        "stdout is EPHEMERAL_PIPE=<socket path>; logs go to stderr.",
    )
    add_settings_arguments(serve)
    # Internal: `start` launches serve with it (where its logs go once it is ready).
    serve.add_argument(DETACH_FLAG, dest="detach_log", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)
    add_run_command(commands)
    add_background_commands(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in words if not word.startswith("-")), None)
    parser = build_parser(server_commands=command not in CLIENT_COMMANDS)
    args = parser.parse_args(words)
    try:
        code: int = args.handler(args)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code
