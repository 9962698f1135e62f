"""What every command-line module shares: the program's name, its exit codes, the settings
error. A leaf (it imports nothing of the package), so the dispatcher (`cli/main.py`) and the
command modules it loads can all import it without a cycle."""

from __future__ import annotations

import os
import sys
from typing import Final

# The names the program is installed under (pyproject.toml's console scripts).
PROGRAM_NAMES: Final = ("ephemeral-broker", "epb")


def program_name(argv0: str) -> str:
    """The name the user typed, for usage lines and error messages: `epb` or
    `ephemeral-broker`. Anything else (`python -m ephemeral_broker` gives a path to
    `__main__.py`; a test runner calling main() gives its own name) is `ephemeral-broker`."""
    name = os.path.basename(argv0)
    return name if name in PROGRAM_NAMES else PROGRAM_NAMES[0]


# Decided once, at import: every command module uses it for its messages.
PROG: Final = program_name(sys.argv[0] if sys.argv else "")
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3


class SettingsError(Exception):
    """A setting is invalid: one line for the user, exit code 2."""
