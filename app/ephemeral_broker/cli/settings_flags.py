"""Every setting of BrokerSettings as a command-line flag of `serve` and `run`.

Kept apart from ephemeral_broker/cli/main.py so that client commands never load pydantic-settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from ephemeral_broker.cli.common import SettingsError
from ephemeral_broker.settings import BrokerSettings, describe_settings_error, env_name, flag_name


class _RefuseSecretFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            "--secret is not accepted: a secret on the command line is visible to every user "
            "through ps; use --secret-file PATH, or BROKER_SECRET / EPHEMERAL_SECRET"
        )


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting of BrokerSettings as `--name-with-dashes`."""
    group = parser.add_argument_group(
        "broker settings", "Each also comes from BROKER_<NAME>; a flag wins over the environment."
    )
    for name, field in BrokerSettings.model_fields.items():
        if name == "secret":
            continue
        default = field.default
        shown = _shown_default(name, default)
        help_text = f"{field.description} [{env_name(name)}; default: {shown}]"
        if field.annotation is bool:
            group.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            choices = get_args(field.annotation) if name in ("log_level", "log_format") else None
            group.add_argument(
                flag_name(name),
                dest=name,
                default=argparse.SUPPRESS,
                metavar=_metavar(name),
                choices=choices or None,
                help=help_text,
            )
    group.add_argument(
        "--secret-file",
        metavar="PATH",
        type=Path,
        help="Read the shared secret (turns auth on) from this file; trailing newline ignored.",
    )
    group.add_argument("--secret", nargs="?", action=_RefuseSecretFlag, help=argparse.SUPPRESS)


def _shown_default(name: str, default: Any) -> Any:
    if name == "socket_mode":
        return f"{default:04o}"
    if name == "metrics_listen":
        return "off"
    return default


def _metavar(name: str) -> str:
    if name == "socket":
        return "PATH"
    if name == "socket_mode":
        return "MODE"
    if name == "metrics_listen":
        return "HOST:PORT"
    if name == "store":
        return "URL"
    if name == "namespace":
        return "NAME"
    if name in ("log_level", "log_format"):
        return name.split("_")[1].upper()
    return (
        "BYTES"
        if "size" in name or name == "compression_threshold"
        else (
            "N"
            if name in ("max_items", "max_leases", "max_key_length", "max_connections")
            else "MS"
        )
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
