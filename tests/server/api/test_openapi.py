"""openapi.json at the repo root must be exactly what the app generates (`make openapi`)."""

from __future__ import annotations

import orjson

from ephemeral_broker.api.openapi import render
from tests.support.paths import ROOT


def test_committed_openapi_matches_the_app() -> None:
    committed = (ROOT / "openapi.json").read_bytes()
    assert committed == render(), "openapi.json is stale: run `make openapi` and commit it"


def test_every_operation_documents_its_response_and_errors() -> None:
    document = orjson.loads(render())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert any(status.startswith("2") for status in responses), (method, path)
            if path not in ("/healthz",):
                problem_statuses = [s for s in responses if s[0] in "45"]
                assert problem_statuses, f"{method} {path} documents no error response"
            assert operation.get("summary"), (method, path)
