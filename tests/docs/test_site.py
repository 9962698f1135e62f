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


def tree_paths(tree: str) -> set[str]:
    """The files a `text` tree names, as paths: a line's first tokens that end in `.py` or `/`,
    under the folders of the lines indented less than it."""
    paths: set[str] = set()
    folders: list[tuple[int, str]] = []  # (indent, folder path) of the open folders
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        parent = folders[-1][1] if folders else ""
        for token in line.split():
            if token.endswith("/"):
                folders.append((indent, parent + token))
                break
            if not token.endswith(".py"):
                break
            paths.add(parent + token)
    return paths


def test_tree_paths_reads_folders_by_indent() -> None:
    tree = "a/\n  x.py y.py   two files\n  b/\n    z.py  one\n  w.py\nc/\n"
    assert tree_paths(tree) == {"a/x.py", "a/y.py", "a/b/z.py", "a/w.py"}


def test_the_architecture_page_names_every_module_and_only_those() -> None:
    """The tree on the architecture page is the code's: every module of both packages is on
    it, under its folder, and nothing on it is missing from the code."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = page.split("## The tree", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    named = {path for path in tree_paths(tree) if path.startswith(("app/", "client/"))}
    modules = {
        path.relative_to(ROOT).as_posix()
        for folder in ("app/ephemeral_broker", "client/ephemeral_broker_client")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "__init__.py" or path.parent.name == "pytest_plugin"
    }
    named = {path for path in named if not path.endswith("/__init__.py")} | (
        named & {"client/ephemeral_broker_client/pytest_plugin/__init__.py"}
    )
    assert modules - named == set(), "modules missing from docs/architecture.md's tree"
    assert named - modules == set(), "docs/architecture.md's tree names files that do not exist"
