"""Running the project's own modules as a user would: `python -m module` from the root."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m module args...` from the project's root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
