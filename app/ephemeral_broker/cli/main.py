"""The command line: `serve`, and (in their own modules) `run` and the client commands.

Exit codes: 0 success; 1 the operation failed; 2 usage or settings error; 3 the broker cannot
be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ephemeral_broker import __version__
from ephemeral_broker.cli.client_commands import CLIENT_COMMANDS, add_client_commands
from ephemeral_broker.cli.common import (
    EXIT_USAGE,
    PROG,
    SettingsError,
)


def cmd_serve(args: argparse.Namespace) -> int:
    from ephemeral_broker.api.app import create_app
    from ephemeral_broker.cli.settings_flags import settings_from_args
    from ephemeral_broker.logs import configure_logging
    from ephemeral_broker.serving.binding import StartupError
    from ephemeral_broker.serving.lifecycle import lifecycle_tasks
    from ephemeral_broker.serving.server import run_in_new_loop, serve

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)

    def announce(path: Path) -> None:
        # The first stdout line, once the broker answers: scripts read it to find the socket.
        print(f"EPHEMERAL_PIPE={path}", flush=True)
        if args.detach_log is not None:  # started by `start`, which has read all it needs
            from ephemeral_broker.cli.background import detach_after_ready

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
    from ephemeral_broker.cli.background import DETACH_FLAG, add_background_commands
    from ephemeral_broker.cli.run import add_run_command
    from ephemeral_broker.cli.settings_flags import add_settings_arguments

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
