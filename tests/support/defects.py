"""The defects of the predecessor (the Node.js broker this project replaces) and the tests that
would catch their return.

A test that guards against defect N carries `@pytest.mark.defect(N)` (registered in
pyproject.toml; the root conftest.py refuses a number not listed here and makes
`-k defect_05` select the tests for defect 5). docs/defects.md is generated from those markers:

    python -m tests.support.defects          # rewrite docs/defects.md
    python -m tests.support.defects --check  # exit 1 if it is out of date

and tests/test_defects.py fails when the committed file drifts, or when a defect has no test.
The markers are read from the test modules' source (decorators of module-level test
functions), not by collecting the suite: that takes a fraction of a second instead of half a
minute, so the drift test is cheap.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

TESTS = ROOT / "tests"
DOCUMENT = ROOT / "docs" / "defects.md"


@dataclass(frozen=True)
class Defect:
    title: str  # what went wrong in the predecessor, in one line
    remedy: str  # why it cannot happen here


DEFECTS: dict[int, Defect] = {
    1: Defect(
        "the sweeper ignored its configured interval and always ran every 30 s",
        "the sweeper sleeps `sweeper_interval`; reads never depend on it",
    ),
    2: Defect(
        "a value that cannot be encoded crashed the client with no key in the message",
        "`TypeError` naming the key before any I/O; NaN and infinities refused",
    ),
    3: Defect(
        "every start added another pair of signal handlers",
        "one process-wide signal dispatcher, installed once",
    ),
    4: Defect(
        "`spawn()` added duplicate signal handlers that raced each other",
        "`run` subscribes to the same dispatcher and forwards a signal once",
    ),
    5: Defect(
        "compression counters skipped values whose size was 0",
        "every stored value is counted, compressed or not",
    ),
    6: Defect(
        "an answer the client could not decode gave an opaque error",
        "`InvalidResponse` naming the key",
    ),
    7: Defect(
        "a promise that never resolved kept the process alive",
        "`run` waits for its child, `serve` for its server",
    ),
    8: Defect(
        "`ttl: 0` silently meant the default TTL",
        "`ttl_ms <= 0` is always `422 invalid_ttl`, for keys and leases",
    ),
    9: Defect(
        "a lease grant scanned the pool for the lowest free value",
        "a min-heap of freed values and a next-value counter",
    ),
    10: Defect(
        "sizes were counted in UTF-16 units and values serialised twice",
        "sizes are UTF-8 bytes of the canonical JSON, encoded once",
    ),
    11: Defect(
        "structured log fields were printed as `[object Object]`",
        "structured fields are rendered as JSON",
    ),
    12: Defect(
        "the approximate memory figure counted UTF-16 units and ignored compression",
        "UTF-8 key bytes + stored bytes + a per-entry estimate",
    ),
    13: Defect(
        "a malformed HMAC signature crashed the comparison",
        "verification never raises; anything malformed is a 401",
    ),
    14: Defect(
        "a connection's unread data was buffered without bound",
        "Content-Length refused before reading; streamed bodies counted; heads bounded",
    ),
    15: Defect(
        "each client retry had its own timeout, so a call could take several times its timeout",
        "all attempts fit inside the call's one timeout",
    ),
    16: Defect(
        "the exit code after a signal depended on which handler won",
        "the child's own code, or 128+N for a signal",
    ),
    17: Defect(
        "a socket path over the 107-byte limit failed with a cryptic error",
        "checked before binding, naming the length and a fix",
    ),
    18: Defect(
        "error names followed no convention",
        "one snake_case code per row of the documented error table",
    ),
    19: Defect(
        "tunable numbers were unnamed literals",
        "every tunable is a named, documented setting",
    ),
    20: Defect(
        "the public API had no doc comments",
        "docstrings on the client package, both clients' methods and the Store protocol",
    ),
    21: Defect(
        "a test that crashed left its broker running",
        "fixtures end brokers by pid in teardown; the pytest plugin's broker stops at session "
        "end, on Ctrl-C, and by itself when pytest dies",
    ),
    22: Defect(
        "metric label values were written unescaped",
        "keys and pool names never become labels; prometheus-client escapes the rest",
    ),
    23: Defect(
        "the client's constructor failed differently from its methods",
        "both clients raise `BrokerUnavailable` at construction, as methods do",
    ),
    24: Defect(
        "the sweeper walked the whole store even when nothing was due",
        "one look at the top of the expiry heap when nothing is due",
    ),
    25: Defect(
        "a ratio divided by zero",
        "utilisation is 0 when capacity is unlimited; no ratio of byte counters is exported",
    ),
    26: Defect(
        "retries went on without bound (a circuit breaker was asked for)",
        "nothing to break: each call fails within its timeout and recovers at once",
    ),
    27: Defect(
        "request ids were generated but never returned",
        "`X-Request-ID` on every response and in every error body",
    ),
    28: Defect(
        "metrics could be reset through a public call in production",
        "no reset exists; `/metrics` accepts only GET",
    ),
}


def _defect_numbers(decorator: ast.expr) -> list[int]:
    """The N of `@pytest.mark.defect(N)`, or nothing for any other decorator."""
    if not isinstance(decorator, ast.Call) or ast.unparse(decorator.func) != "pytest.mark.defect":
        return []
    numbers = [arg.value for arg in decorator.args if isinstance(arg, ast.Constant)]
    if len(numbers) != 1 or decorator.keywords or not isinstance(numbers[0], int):
        raise ValueError(f"expected @pytest.mark.defect(N), found @{ast.unparse(decorator)}")
    return [numbers[0]]


def marked_tests(paths: Iterable[Path] | None = None) -> dict[int, list[str]]:
    """Defect number -> the node ids (relative to the repository) of the tests marked with it."""
    found: dict[int, list[str]] = {}
    for path in sorted(paths if paths is not None else TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for decorator in node.decorator_list:
                    for number in _defect_numbers(decorator):
                        node_id = f"{path.relative_to(ROOT).as_posix()}::{node.name}"
                        found.setdefault(number, []).append(node_id)
    return found


def render(found: dict[int, list[str]]) -> str:
    """docs/defects.md: one row per defect, its tests in the last column."""
    lines = [
        "# The predecessor's defects and the tests that rule them out",
        "",
        "<!-- Generated by `python -m tests.support.defects` from the `@pytest.mark.defect(N)`",
        "     markers of the tests; tests/test_defects.py fails when this file is out of date. -->",
        "",
        "This broker replaces a Node.js one whose review listed the 28 defects below. Each is",
        "ruled out here by construction, and the tests named beside it would catch its return.",
        "`pytest -m defect` runs all of them; `pytest -k defect_05` the ones for defect 5.",
        "",
        "| # | defect of the predecessor | ruled out here by | tests |",
        "|---|---|---|---|",
    ]
    for number, defect in sorted(DEFECTS.items()):
        tests = ", ".join(f"`{node_id}`" for node_id in found.get(number, []))
        lines.append(f"| {number} | {defect.title} | {defect.remedy} | {tests or '(none)'} |")
    return "\n".join(lines) + "\n"


def keyword(number: int) -> str:
    """The `-k` keyword of a defect's tests: two digits, so that defect_01 never matches 10-19."""
    return f"defect_{number:02d}"


def main(argv: list[str]) -> int:
    expected = render(marked_tests())
    if argv == ["--check"]:
        current = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
        if current != expected:
            where = DOCUMENT.relative_to(ROOT)
            print(f"{where} is out of date: run python -m tests.support.defects", file=sys.stderr)
            return 1
        return 0
    if argv:
        print("usage: python -m tests.support.defects [--check]", file=sys.stderr)
        return 2
    DOCUMENT.parent.mkdir(exist_ok=True)
    # Through a temporary file: a generation that fails leaves the document as it was.
    temporary = DOCUMENT.with_suffix(".md.tmp")
    temporary.write_text(expected, encoding="utf-8")
    temporary.replace(DOCUMENT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
