"""The README's first command (`make demo`) runs examples/demo.py: it must work as shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_workers_share_one_token() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    token = re.search(r"stored token (\w+)", out)
    assert token, out
    readers = re.findall(r"worker \d+ \(pid \d+\) read token (\w+)", out)
    assert len(readers) >= 4 and set(readers) == {token.group(1)}, out
    socket_path = re.search(r"broker listening on (\S+)", out)
    assert socket_path and not Path(socket_path.group(1)).exists()
