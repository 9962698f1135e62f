"""The command line: `serve`, and (in their own modules) `run` and the client commands.

Exit codes: 0 success; 1 the operation failed; 2 usage or settings error; 3 the broker cannot
be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, get_args

from pydantic import ValidationError

from app import __version__
from app.cli_client import add_client_commands
from app.settings import BrokerSettings, describe_settings_error, env_name, flag_name

PROG: Final = "ephemeral-broker"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3


class SettingsError(Exception):
    pass


class _RefuseSecretFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            "--secret is not accepted: a secret on the command line is visible to every user "
            "through ps; use --secret-file PATH, or BROKER_SECRET / EPHEMERAL_SECRET"
        )


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting of BrokerSettings as `--name-with-dashes` (SPEC section 2)."""
    group = parser.add_argument_group(
        "broker settings", "Each also comes from BROKER_<NAME>; a flag wins over the environment."
    )
    for name, field in BrokerSettings.model_fields.items():
        if name == "secret":
            continue
        default = field.default
        shown = f"{default:04o}" if name == "socket_mode" else default
        help_text = f"{field.description} [{env_name(name)}; default: {shown}]"
        if field.annotation is bool:
            group.add_argument(
                flag_name(name), dest=name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )  # fmt: skip
        else:
            choices = get_args(field.annotation) if name in ("log_level", "log_format") else None
            group.add_argument(
                flag_name(name), dest=name, default=argparse.SUPPRESS, metavar=_metavar(name),
                choices=choices or None, help=help_text,
            )  # fmt: skip
    group.add_argument(
        "--secret-file",
        metavar="PATH",
        type=Path,
        help="Read the shared secret (turns auth on) from this file; trailing newline ignored.",
    )
    group.add_argument("--secret", nargs="?", action=_RefuseSecretFlag, help=argparse.SUPPRESS)


def _metavar(name: str) -> str:
    if name == "socket":
        return "PATH"
    if name == "socket_mode":
        return "MODE"
    if name in ("log_level", "log_format"):
        return name.split("_")[1].upper()
    return (
        "BYTES"
        if "size" in name or name == "compression_threshold"
        else ("N" if name in ("max_items", "max_leases", "max_key_length") else "MS")
    )


def settings_from_args(args: argparse.Namespace) -> BrokerSettings:
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in BrokerSettings.model_fields
        if name != "secret" and hasattr(args, name)
    }
    secret_file: Path | None = getattr(args, "secret_file", None)
    if secret_file is not None:
        try:
            secret = secret_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read --secret-file {secret_file}: {exc}") from exc
        overrides["secret"] = secret
    try:
        return BrokerSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from app.lifecycle import lifecycle_tasks
    from app.logs import configure_logging
    from app.main import create_app
    from app.server import StartupError, run_in_new_loop, serve

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)

    def announce(path: Path) -> None:
        # The first stdout line, once the broker answers: scripts read it to find the socket.
        print(f"EPHEMERAL_PIPE={path}", flush=True)

    # The app is built before the socket is bound: serve() binds it only once its signal
    # handling is in place, so no signal can leave a socket file or directory behind.
    app = create_app(settings, background=lifecycle_tasks(settings))
    try:
        return run_in_new_loop(serve(settings, app, on_ready=announce))
    except StartupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="In-memory key/value and lease broker for the processes of one run, "
        "over a Unix domain socket.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run a broker in the foreground",
        description="Run a broker in the foreground. Once it answers, the first line on "
        "stdout is EPHEMERAL_PIPE=<socket path>; logs go to stderr.",
    )
    add_settings_arguments(serve)
    serve.set_defaults(handler=cmd_serve)
    from app.runner import add_run_command

    add_run_command(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code
