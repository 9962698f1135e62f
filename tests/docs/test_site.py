"""The documentation site: it builds with `mkdocs build --strict` (every page in the nav, every
link and anchor resolves), the README stays a front page, and no page sends a reader to a
document outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.paths import ROOT

DOCS = ROOT / "docs"


def nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages.extend(nav_pages(value) if isinstance(value, list) else [str(value)])
    return pages


def test_the_site_builds_strictly_with_every_page_in_the_nav(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        # Material's banner about its successor is not a finding about these docs.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING -" not in result.stderr, result.stderr
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = nav_pages(config["nav"])
    assert sorted(pages) == sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    for page in pages:
        html = "index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html"
        assert (tmp_path / html).is_file(), page


def test_the_readme_is_a_front_page_that_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    # The two commands come first: the first code block of the README is `make demo`, `make test`.
    first_block = readme.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]]
    assert [c for c in commands if c][:2] == ["make demo", "make test"]
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_no_page_sends_the_reader_outside_the_repository() -> None:
    """Decisions and the predecessor's defects are written out in the docs (design-notes.md),
    never cited from documents that are not in the repository."""
    forbidden = re.compile(
        r"\bSPEC\b|(?i:SPEC\.md|DESIGN\.md|ISSUES_AND_FIXES|seeds?/|seed defect)"
    )
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not forbidden.search(line), f"{page.relative_to(ROOT)}:{number}: {line}"
