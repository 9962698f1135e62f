"""What the stateless and the stateful schemathesis runs share: the configuration (statuses
that depend on state the document cannot describe, ASCII strings), short waits, and how a
generated case is sent over the broker's socket."""

from __future__ import annotations

from typing import Any

import httpx
from schemathesis.config import SchemathesisConfig

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
