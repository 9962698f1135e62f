"""The README's first command, `make demo`: the same command line, run as the Makefile runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.brokers import BROKER_EXE
from tests.support.paths import ROOT


def test_makefile_demo_runs_the_demo_under_run() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "ephemeral-broker run --log-level warning -- $(BIN)/python examples/demo.py" in makefile


def test_demo_workers_share_one_token_and_lease_unique_accounts() -> None:
    result = subprocess.run(
        [BROKER_EXE, "run", "--log-level", "warning", "--", sys.executable, "examples/demo.py"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    token = re.search(r"stored token (\w+)", out)
    assert token, out
    readers = re.findall(
        r"worker \d+ \(pid \d+\) read token (\w+), holds account test-user-(\d)", out
    )
    assert len(readers) == 6, out
    assert {t for t, _ in readers} == {token.group(1)}
    assert {int(a) for _, a in readers} == {0, 1, 2, 3}  # 4 accounts for 6 workers: reuse
    assert "never two holders at once: True" in out
    pipe = re.search(r"broker listening on (\S+)", out)
    assert pipe and not Path(pipe.group(1)).exists()  # run removed it
    assert result.stderr == ""  # --log-level warning: nothing to say on a clean run
