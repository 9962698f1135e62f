"""Every defect of the predecessor has a test marked `@pytest.mark.defect(N)`, and
docs/defects.md, generated from those markers, is up to date (`python -m tests.support.defects`
rewrites it)."""

from __future__ import annotations

import re

import pytest

from tests.support.defects import DEFECTS, DOCUMENT, main, marked_tests, render
from tests.support.paths import ROOT


def test_every_defect_has_a_test_and_every_marker_a_known_defect() -> None:
    found = marked_tests()
    assert sorted(DEFECTS) == list(range(1, 29))
    missing = sorted(set(DEFECTS) - set(found))
    assert not missing, f"no test is marked @pytest.mark.defect(N) for defects {missing}"
    assert set(found) <= set(DEFECTS), sorted(set(found) - set(DEFECTS))


def test_the_committed_document_is_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(marked_tests()), (
        "docs/defects.md is out of date: run python -m tests.support.defects"
    )
    assert main(["--check"]) == 0
    assert capsys.readouterr().err == ""


def test_the_source_reader_sees_the_markers_pytest_collects(request: pytest.FixtureRequest) -> None:
    """The document is built from the test modules' source; for every test this run
    collected, that must give exactly the markers pytest itself collected."""
    collected: set[tuple[int, str]] = set()
    tests: set[str] = set()
    for item in request.session.items:
        node_id = item.nodeid.split("[", 1)[0]  # one entry per test, not per parameter
        tests.add(node_id)
        collected |= {(mark.args[0], node_id) for mark in item.iter_markers("defect")}
    modules = {node_id.split("::", 1)[0] for node_id in tests}
    from_source = {
        (number, node_id)
        for number, node_ids in marked_tests(ROOT / module for module in modules).items()
        for node_id in node_ids
        if node_id in tests
    }
    assert from_source == collected


def test_a_defect_marker_selects_by_keyword_and_refuses_an_unknown_number(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nmarkers =\n    defect(N): a defect of the predecessor\n")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the conftest imports tests.support
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.defect(5)
        def test_five():
            pass

        @pytest.mark.defect(15)
        def test_fifteen():
            pass

        def test_unmarked():
            pass
        """
    )
    selected = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "defect_05")
    selected.assert_outcomes(passed=1, deselected=2)

    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.defect(29)
        def test_unknown():
            pass
        """
    )
    refused = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert re.search(r"defect number from 1 to 28 .*got \(29,\)", refused.stderr.str())
