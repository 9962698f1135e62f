"""The README's quickstart: the script it quotes is the one in examples/, and it runs as shown."""

from __future__ import annotations

import json
import subprocess

from tests.support.brokers import BROKER_EXE
from tests.support.paths import ROOT

SCRIPT = ROOT / "examples" / "quickstart.sh"


def test_readme_quotes_the_quickstart_script_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "ephemeral-broker run -- sh examples/quickstart.sh" in readme
    assert SCRIPT.read_text(encoding="utf-8") in readme


def test_quickstart_runs_under_run_and_prints_what_the_readme_shows() -> None:
    result = subprocess.run(
        [BROKER_EXE, "run", "--", "sh", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[1]["value"] == {"token": "s3cr3t"}
    assert [lines[2]["value"], lines[3]["value"]] == [0, 1]
    assert lines[4]["value"] == 1
    assert [k["key"] for k in lines[5]["keys"]] == ["db-token"]
    assert lines[6]["status"] == "healthy"
