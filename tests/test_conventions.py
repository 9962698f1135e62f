"""The predecessor's defects that are about conventions rather than one code path: error
naming (18), named defaults (19), documented public API (20), cleanup of failed tests (21), and
metrics that cannot be reset from outside (28)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.errors import ERRORS
from ephemeral_broker.metrics import BrokerMetrics
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store.base import Store
from tests.support.asgi import asgi_call
from tests.support.paths import ROOT

# Where the tables live on the docs site: the error codes, the settings, the defects.
ERRORS_PAGE = (ROOT / "docs" / "http-api" / "conventions.md").read_text(encoding="utf-8")
SETTINGS_PAGE = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
DESIGN_NOTES = (ROOT / "docs" / "design-notes.md").read_text(encoding="utf-8")


@pytest.mark.defect(18)
def test_error_codes_are_one_convention_and_all_documented() -> None:
    """Defect 18: error names followed no documented convention."""
    for code in ERRORS:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code), code
        assert f"`{code}`" in ERRORS_PAGE, f"{code} is missing from the docs' error table"
    table_codes = set(re.findall(r"^\| \d{3} \| `([a-z_]+)`", ERRORS_PAGE, flags=re.MULTILINE))
    table_codes |= {"max_leases"}  # shares a row with max_items
    assert table_codes == set(ERRORS)


@pytest.mark.defect(19)
def test_every_default_is_a_named_documented_setting() -> None:
    """Defect 19: magic numbers (30000, 10000, 5000) without names. Every tunable number
    is a setting with a description, and the docs' settings table states the same default."""
    pattern = r"^\| (\w+) \| `BROKER_\w+`[^|]*\| ([^|]+) \|"
    rows = dict(re.findall(pattern, SETTINGS_PAGE, re.MULTILINE))
    for name, field in BrokerSettings.model_fields.items():
        assert field.description, name
        assert name in rows, f"setting {name} is missing from the docs' settings table"
        if isinstance(field.default, int) and not isinstance(field.default, bool):
            shown = f"{field.default:04o}" if name == "socket_mode" else str(field.default)
            assert rows[name].strip().strip("`").startswith(shown), (name, rows[name])


@pytest.mark.defect(20)
def test_the_public_api_is_documented() -> None:
    """Defect 20: the public API had no doc comments. Every public name of the client
    package, every public method of both clients and of the Store protocol has a docstring."""
    import ephemeral_broker_client as client

    for name, member in inspect.getmembers(Store, inspect.isfunction):
        if not name.startswith("_"):
            assert inspect.getdoc(member), f"Store.{name} has no docstring"
    for name in client.__all__:
        obj = getattr(client, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"client.{name} has no docstring"
    for cls in (client.BrokerClient, client.AsyncBrokerClient, client.Lease, client.AsyncLease):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"


@pytest.mark.defect(21)
def test_a_failing_test_still_stops_its_broker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 21: a crashing test left its broker running. Our fixtures end brokers by
    pid in teardown, which runs whether the test passed or failed."""
    conftest = (Path(__file__).resolve().parent / "conftest.py").read_text(encoding="utf-8")
    pytester.makeconftest(conftest)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the conftest imports tests.support
    pytester.makepyfile(
        test_fails="""
        def test_fails(broker):
            with open("pid.txt", "w") as out:
                out.write(f"{broker.pid} {broker.socket}")
            assert False, "deliberate failure"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    pid_text, socket_text = (pytester.path / "pid.txt").read_text().split()
    assert (
        not Path(f"/proc/{pid_text}").exists()
        or "zombie" in Path(f"/proc/{pid_text}/status").read_text().lower()
    )
    assert not Path(socket_text).exists()


@pytest.mark.defect(28)
@pytest.mark.anyio
async def test_metrics_cannot_be_reset() -> None:
    """Defect 28: a public metrics.reset() in production. There is no reset: not on the
    metrics object, and no route accepts a write to /metrics."""
    assert not [name for name in dir(BrokerMetrics) if "reset" in name.lower()]
    app = create_app(BrokerSettings())
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert (await asgi_call(app, method, "/metrics")).status == 405


def test_the_design_notes_describe_every_defect_under_its_anchor() -> None:
    """Each of the 28 defects is described in the design notes under the anchor other pages
    link to (`design-notes.md#defect-N`); docs/defects.md lists the tests that prove each."""
    section = DESIGN_NOTES.split("## The predecessor's defects", 1)[1]
    section = section.split("\n## ", 1)[0]
    anchors = re.findall(r"^### (\d+)\. .+ \{#defect-(\d+)\}$", section, flags=re.MULTILINE)
    assert [(int(a), int(b)) for a, b in anchors] == [(n, n) for n in range(1, 29)]
