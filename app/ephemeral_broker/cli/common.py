"""What every command-line module shares: the program's name, its exit codes, the settings
error. A leaf (it imports nothing of the package), so the dispatcher (`cli/main.py`) and the
command modules it loads can all import it without a cycle."""

from __future__ import annotations

from typing import Final

PROG: Final = "ephemeral-broker"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3


class SettingsError(Exception):
    """A setting is invalid: one line for the user, exit code 2."""
