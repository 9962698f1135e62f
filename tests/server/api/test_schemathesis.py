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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tests.support.brokers import BrokerProcess, kill_broker, launch_broker
from tests.support.paths import ROOT

EXAMPLES_PER_OPERATION = 50
STATE_DEPENDENT = ["2xx", "3xx", "401", "404", "409", "412"]

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"codec": "ascii"},
        "checks": {"positive_data_acceptance": {"expected-statuses": STATE_DEPENDENT}},
        "operations": [
            {
                "include-path": "/v1/keys/{key}/incr",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": [*STATE_DEPENDENT, "422"]}
                },
            }
        ],
    }
)
schema = schemathesis.openapi.from_path(ROOT / "openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    workdir = Path("/tmp") / tmp_path_factory.mktemp("st").name  # short: a socket path
    workdir.mkdir(exist_ok=True)
    broker: BrokerProcess = launch_broker(workdir / "b.sock", workdir / "b.stderr")
    transport = httpx.HTTPTransport(uds=str(broker.socket))
    try:
        with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as client:
            yield client
    finally:
        kill_broker(broker)


SHORT_WAIT_MS = 50


def shorten_waits(case: Any) -> None:
    """A valid `wait_ms` (0..300000) becomes at most SHORT_WAIT_MS: still valid, and a case
    that waits on a missing key or a full pool answers in milliseconds, not minutes. Invalid
    ones stay as generated, to be refused."""
    for holder in (case.query, case.body):
        if isinstance(holder, dict):
            wait = holder.get("wait_ms")
            if isinstance(wait, str) and wait.isdigit() and int(wait) <= 300_000:
                holder["wait_ms"] = str(min(int(wait), SHORT_WAIT_MS))  # a query's text
            elif type(wait) is int and 0 <= wait <= 300_000:
                holder["wait_ms"] = min(wait, SHORT_WAIT_MS)


def send(api: httpx.Client, case: Any) -> httpx.Response:
    sent = case.as_transport_kwargs(base_url="http://localhost")
    # Header values as bytes: negative cases include non-ASCII values, which httpx would
    # refuse to encode as str, and which a raw HTTP client can send all the same.
    headers = {name: value.encode() for name, value in (sent.get("headers") or {}).items()}
    return api.request(
        sent["method"],
        sent["url"],
        headers=headers,
        params=sent.get("params"),
        json=sent.get("json"),
        content=sent.get("data"),
    )


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
