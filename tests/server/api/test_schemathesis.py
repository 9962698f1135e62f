"""Schemathesis against a real broker: every operation of `openapi.json`, with data the document
says is valid (which must be accepted) and data it says is invalid (which must be refused), and
every answer checked against the document (status, headers, body schema).

Bounded for CI: a fixed number of examples per operation, derandomized so a run is repeatable.
Two statuses are allowed for valid data beyond schemathesis's defaults, because they depend on
state the document cannot describe, like a 404 does: 412 (`If-Match`, a release token) and, on
`incr` only, 422 `ttl_required` (a valid incr without `ttl_ms` creates nothing when the key is
absent). Strings are generated as ASCII: names are limited in bytes of UTF-8, which a JSON
Schema `maxLength` (in characters) states exactly only for ASCII.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.brokers import BrokerProcess, kill_broker, launch_broker
from tests.support.paths import ROOT
from tests.support.schemathesis_cases import CONFIG, send, shorten_waits

EXAMPLES_PER_OPERATION = 50
schema = schemathesis.openapi.from_path(ROOT / "openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    # Short (a socket path) and unique across concurrent pytest sessions: tmp_path_factory's
    # names (st0, st1, ...) restart at 0 in every session.
    workdir = Path(tempfile.mkdtemp(prefix="st-", dir="/tmp"))
    broker: BrokerProcess = launch_broker(workdir / "b.sock", workdir / "b.stderr")
    transport = httpx.HTTPTransport(uds=str(broker.socket))
    try:
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as client:
            yield client
    finally:
        kill_broker(broker)
        shutil.rmtree(workdir, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_holds_to_the_document(case: Any, api: httpx.Client) -> None:
    shorten_waits(case)
    case.validate_response(send(api, case))
