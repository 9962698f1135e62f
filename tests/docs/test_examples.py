"""Every code example of README.md and docs/ runs here, so none can rot.

One test per page. It starts one real broker for the page, makes a fresh temp dir (with a copy
of examples/) the working directory, and runs the page's fenced blocks in order, top to bottom,
sharing both (a page reads like a session: a later block may use what an earlier one stored).
The fence language decides what happens to a block (docs/development.md, "Examples in the
docs", is the reader's version):

- ``console``: lines starting with ``$ `` are commands (a trailing backslash continues them),
  each run with its own ``sh -c`` (so a variable set by one does not reach the next), stderr
  merged into stdout. The lines up to the next command are the
  expected output: ``...`` inside a line matches any text, a line of only ``...`` any number of
  lines, and a last line ``[exit N]`` the exit status (0 otherwise). A command without output
  lines has its status checked, not its output.
- ``sh``: a script, run as a whole with ``sh -e``; it must exit 0. A first line
  ``# file: PATH`` writes it to PATH instead, as for ``python``.
- ``python``: a program, run with this interpreter; it must exit 0 (it checks itself with
  ``assert``). A first line ``# file: PATH`` writes the block to PATH instead, for a later
  command to use.
- ``yaml``, ``json``, ``toml``, ``ini``: parsed, so they must be valid (``# file: PATH`` also
  writes them).
- ``text``: output, diagrams and trees; not run.
- Anything else needs ``<!-- not run: REASON -->`` on the line before the fence (a Docker
  daemon, a cluster, a remote host); a block of an unknown language without it fails the test,
  so nothing is skipped silently.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.brokers import kill_broker, launch_broker
from tests.support.paths import ROOT

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BIN = Path(sys.executable).parent

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not run: (?P<reason>.*\S.*) -->\s*$")
FILE_MARKER = re.compile(r"^(?:#|//) file: (?P<path>\S+)\s*$")
EXIT_LINE = re.compile(r"^\[exit (?P<code>\d+)\]$")
CONFIG_LANGS = {"yaml", "json", "toml", "ini"}
RUN_LANGS = {"console", "sh", "python"}
COMMAND_TIMEOUT = 60.0


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: list[str]
    not_run: str | None

    def where(self) -> str:
        name = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{name}:{self.line} ({self.lang or 'bare'} block)"


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, their bodies un-indented by their fence's indent."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent = len(match["indent"])
        before = NOT_RUN.match(lines[index - 1]) if index else None
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{page}:{index + 1}: fence never closed"
        body = [line[indent:] for line in lines[index + 1 : end]]
        blocks.append(
            Block(page, index + 1, match["lang"], body, before["reason"] if before else None)
        )
        index = end + 1
    return blocks


def expected_pattern(expected: list[str]) -> re.Pattern[str]:
    """A regex for a command's whole output: `...` inside a line is any text, a line of only
    `...` any number of lines."""
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def split_session(block: Block) -> Iterator[tuple[str, list[str]]]:
    """(command, expected output lines) pairs of a console block; comments are skipped."""
    command: list[str] = []
    expected: list[str] = []
    continuing = False
    for line in block.body:
        if continuing:
            command.append(line)
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            if command:
                yield "\n".join(command), expected
            command, expected = [line[2:]], []
            continuing = line.endswith("\\")
        elif not command and (line.startswith("#") or not line.strip()):
            continue
        else:
            assert command, f"{block.where()}: output before any '$ ' command: {line!r}"
            expected.append(line.rstrip())
    if command:
        yield "\n".join(command), expected


class Page:
    """What the blocks of one page share: a working directory, an environment, a broker."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env

    def run_console(self, block: Block) -> None:
        for command, shown_output in split_session(block):
            status, expected = 0, shown_output
            if expected and (last := EXIT_LINE.match(expected[-1])):
                status, expected = int(last["code"]), expected[:-1]
            result = self._run(["sh", "-c", command], block)
            output = "".join(line.rstrip() + "\n" for line in result.stdout.splitlines())
            shown = f"{block.where()}: $ {command}\n--- output ---\n{result.stdout}"
            assert result.returncode == status, f"exit {result.returncode}, not {status}: {shown}"
            if expected:
                pattern = expected_pattern(expected)
                assert pattern.fullmatch(output), f"{shown}--- expected ---\n" + "\n".join(expected)

    def run_script(self, block: Block, program: list[str], suffix: str) -> None:
        script = self.workdir / f".block-{block.line}{suffix}"
        script.write_text("\n".join(block.body) + "\n", encoding="utf-8")
        result = self._run([*program, str(script)], block)
        assert result.returncode == 0, (
            f"{block.where()}: exit {result.returncode}\n--- output ---\n{result.stdout}"
        )

    def write_file(self, block: Block) -> bool:
        """Write a `# file: PATH` block to PATH; False when the block has no such marker."""
        marker = FILE_MARKER.match(block.body[0]) if block.body else None
        if marker is None:
            return False
        target = self.workdir / marker["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(block.body[1:]) + "\n", encoding="utf-8")
        return True

    def _run(self, args: list[str], block: Block) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                args,
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{block.where()}: still running after {exc.timeout} s") from None


def check_config(block: Block) -> None:
    text = "\n".join(block.body) + "\n"
    try:
        if block.lang == "yaml":
            list(yaml.safe_load_all(text))
        elif block.lang == "json":
            json.loads(text)
        elif block.lang == "toml":
            tomllib.loads(text)
        else:
            configparser.ConfigParser().read_string(text)
    except Exception as exc:  # any parser's error is the finding
        raise AssertionError(f"{block.where()}: not valid {block.lang}: {exc}") from None


def run_page(page: Path, workdir: Path, socket: Path) -> int:
    """Run every block of `page`; returns how many ran or were parsed."""
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "EPHEMERAL_PIPE": str(socket),
        "EB_REPO": str(ROOT),
    }
    # curl prints no progress meter to a terminal, where a reader runs the examples; into a
    # pipe it would. A .curlrc in the page's HOME makes the captured output what a reader sees.
    (workdir / ".curlrc").write_text("silent\nshow-error\n", encoding="utf-8")
    runner = Page(workdir, env)
    checked = 0
    for block in parse_blocks(page):
        if block.not_run is not None or block.lang == "text":
            continue
        if block.lang in CONFIG_LANGS:
            runner.write_file(block)
            check_config(block)
        elif block.lang == "console":
            runner.run_console(block)
        elif block.lang == "sh":
            if not runner.write_file(block):
                runner.run_script(block, ["sh", "-e"], ".sh")
        elif block.lang == "python":
            if not runner.write_file(block):
                runner.run_script(block, [sys.executable], ".py")
        else:
            raise AssertionError(
                f"{block.where()}: a ```{block.lang} block is neither run nor marked: use "
                "console/sh/python/text, or put '<!-- not run: REASON -->' before it"
            )
        checked += 1
    return checked


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_examples_of_a_page_run_as_shown(page: Path) -> None:
    # A short path: the broker's socket lives in it (Unix socket paths are limited to 107 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="ebdoc-", dir="/tmp"))
    # Pages run commands as a reader does in a checkout (`sh examples/quickstart.sh`); a copy,
    # so an example can never change the repository.
    shutil.copytree(ROOT / "examples", workdir / "examples")
    broker = launch_broker(workdir / ".page-broker.sock", workdir / ".page-broker.stderr")
    try:
        run_page(page, workdir, broker.socket)
    finally:
        kill_broker(broker)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_collector_finds_every_kind_of_block_and_refuses_unmarked_ones(tmp_path: Path) -> None:
    """The collector itself: output matching, exit codes, file blocks, config parsing, and a
    block of an unknown language without a reason fails."""
    page = tmp_path / "page.md"
    page.write_text(
        "```console\n$ echo one; echo two; echo three\none\n...\n$ echo 'at 17 ms'\nat ... ms\n"
        "$ sh -c 'echo oops >&2; exit 3'\noops\n[exit 3]\n```\n"
        "```python\n# file: data.py\nVALUE = 42\n```\n"
        "```python\nimport sys\nsys.path.insert(0, '.')\n"
        "import data\nassert data.VALUE == 42\n```\n"
        "```yaml\na: [1, 2]\n```\n"
        "<!-- not run: needs a Docker daemon -->\n```sh\ndocker info\n```\n"
        "```text\nanything\n```\n",
        encoding="utf-8",
    )
    socket = tmp_path / "unused.sock"
    assert run_page(page, tmp_path, socket) == 4

    page.write_text("```console\n$ echo one\ntwo\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="expected"):
        run_page(page, tmp_path, socket)
    page.write_text("```console\n$ exit 1\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="exit 1, not 0"):
        run_page(page, tmp_path, socket)
    page.write_text("```bash\necho hi\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="neither run nor marked"):
        run_page(page, tmp_path, socket)
    page.write_text("```json\n{'a': 1}\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="not valid json"):
        run_page(page, tmp_path, socket)
