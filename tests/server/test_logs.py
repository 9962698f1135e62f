"""Logging: text or JSON lines, structured fields as JSON (defect 11), the access log,
and never a value or a secret in the log, at any level."""

from __future__ import annotations

import gzip
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ephemeral_broker.logs import JsonFormatter, TextFormatter
from tests.support.brokers import BrokerFactory

VALUE = "VALUE-7f3a9c-must-never-be-logged"
SECRET = "SECRET-0b1e44-must-never-be-logged"


def record(message: str, fields: dict[str, Any] | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("ephemeral_broker", logging.INFO, __file__, 1, message, (), None)
    if fields is not None:
        entry.fields = fields
    return entry


@pytest.mark.defect(11)
def test_structured_fields_render_as_json_in_text_lines() -> None:
    """Defect 11: metadata objects rendered as "[object Object]"."""
    fields = {
        "nested": {"a": [1, 2], "b": {"c": None}},
        "items": [1, "two"],
        "text": "two words",
        "quoted": 'say "hi"',
        "token": "plain-token",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
    }
    line = TextFormatter().format(record("something happened", fields))
    assert "\n" not in line
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO +something happened ", line)
    assert 'nested={"a":[1,2],"b":{"c":null}}' in line
    assert 'items=[1,"two"]' in line
    assert 'text="two words"' in line
    assert 'quoted="say \\"hi\\""' in line
    assert "token=plain-token" in line
    assert "count=3 ratio=0.5 flag=true nothing=null" in line
    assert "object Object" not in line and "{'" not in line


def test_json_lines_carry_fields_as_json_values() -> None:
    fields = {"nested": {"a": [1, 2]}, "count": 3}
    line = JsonFormatter().format(record("something happened", fields))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "something happened"
    assert parsed["level"] == "info"
    assert parsed["logger"] == "ephemeral_broker"
    assert parsed["nested"] == {"a": [1, 2]}
    assert parsed["count"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["ts"])


def test_exceptions_stay_on_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = record("failed")
        entry.exc_info = sys.exc_info()
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def _exercise_every_endpoint(client: httpx.Client) -> int:
    """Touch every operation the app describes, with VALUE in bodies and queries and SECRET in
    the credentials; returns how many requests were made. (Key names are not values: the
    access log names the path, so VALUE never goes into one.)"""
    bearer = {"Authorization": f"Bearer {SECRET}"}
    body = {"value": {"secret-ish": VALUE, "list": [VALUE]}, "ttl_ms": 60000}
    sent = 0

    def send(method: str, url: str, **kwargs: Any) -> httpx.Response:
        nonlocal sent
        sent += 1
        headers = {**bearer, **kwargs.pop("headers", {})}
        response = client.request(method, url, headers=headers, **kwargs)
        assert response.status_code < 500, (method, url, response.text)
        return response

    # The happy paths of the operations this branch has.
    assert send("PUT", "/v1/keys/k", json=body).status_code == 201
    version = send("GET", "/v1/keys/k").json()["version"]
    send("GET", "/v1/keys", params={"prefix": "k"})
    send("PUT", "/v1/keys/k", json=body, headers={"If-Match": f'"{version + 100}"'})  # 412
    send("PUT", "/v1/keys/k", json=body, headers={"If-None-Match": "*"})  # 412
    send("POST", "/v1/keys/n/incr", json={"by": 7, "ttl_ms": 60000})
    send("POST", "/v1/keys/k/touch", json={"ttl_ms": 60000})
    send("POST", "/v1/keys/k/incr", json={"by": 1})  # 409 not_an_integer
    for path in ("/v1/health", "/v1/stats", "/v1/ping", "/metrics", "/healthz", "/readyz"):
        send("GET", path)
    # Error paths that carry the value.
    send("PUT", "/v1/keys/k", content=b'{"value": "' + VALUE.encode() + b'", ')  # bad JSON
    send("PUT", "/v1/keys/big", json={"value": VALUE * 100, "ttl_ms": 60000})  # too large
    send("PUT", "/v1/keys/k", json={"value": VALUE, "ttl_ms": 60000, VALUE: 1})  # unknown field
    send("PUT", "/v1/keys/k", json={"value": VALUE, "ttl_ms": VALUE})  # wrong type
    send(
        "PUT",
        "/v1/keys/gz",
        content=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    send(
        "PUT",
        "/v1/keys/gz",
        content=b"\x1f\x8bnot gzip " + VALUE.encode(),
        headers={"Content-Encoding": "gzip"},
    )
    # Credentials that are wrong, with the secret inside them.
    for headers in (
        {"Authorization": f"Bearer {SECRET}-almost"},
        {"Authorization": f"Basic {SECRET}"},
        {"X-Broker-Timestamp": SECRET, "X-Broker-Signature": SECRET},
    ):
        sent += 1
        assert client.get("/v1/ping", headers=headers).status_code == 401
    # Then every operation the app describes (those of later issues too), generically.
    spec = send("GET", "/openapi.json").json()
    for template, operations in spec["paths"].items():
        path = re.sub(r"\{[^}]+\}", "some-name", template)
        for method in operations:
            kwargs: dict[str, Any] = {"params": {"prefix": VALUE, "worker_id": VALUE}}
            if method.upper() in ("PUT", "POST", "PATCH"):
                kwargs["json"] = body
            send(method.upper(), path, **kwargs)
    send("DELETE", "/v1/keys/k")
    return sent


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_value_or_secret_is_ever_logged(
    start_broker: BrokerFactory, short_tmp: Path, log_format: str
) -> None:
    secret_file = short_tmp / "secret"
    secret_file.write_text(SECRET + "\n")
    broker = start_broker(
        "--log-level",
        "debug",
        "--access-log",
        "--log-format",
        log_format,
        "--secret-file",
        str(secret_file),
        "--max-value-size",
        "2048",
    )
    with broker.client(timeout=30) as client:
        sent = _exercise_every_endpoint(client)
    assert broker.stop() == 0
    log = broker.stderr()
    assert VALUE not in log
    assert SECRET not in log
    # The log did run at debug with the access log on: it is not empty by accident.
    assert "Started server process" in log  # uvicorn's chatter shows at debug only
    assert "request refused: auth_failed" in log  # our debug lines, without the secret
    lines = log.splitlines()
    if log_format == "json":
        parsed = [json.loads(line) for line in lines]
        access = [p for p in parsed if p["logger"] == "ephemeral_broker.access"]
    else:
        access = [line for line in lines if " request method=" in line]
    assert len(access) >= sent


def test_access_log_is_off_by_default_and_independent_of_the_level(
    start_broker: BrokerFactory,
) -> None:
    quiet = start_broker()
    loud = start_broker("--access-log", "--log-level", "warning")
    for broker in (quiet, loud):
        with broker.client(timeout=30) as client:
            client.get("/v1/ping", headers={"X-Request-ID": "trace-42"})
        assert broker.stop() == 0
    assert " request " not in quiet.stderr()
    assert "broker ready" in quiet.stderr()
    loud_log = loud.stderr()
    assert "broker ready" not in loud_log  # info lines are below the level...
    lines = [line for line in loud_log.splitlines() if " request " in line]
    assert len(lines) == 1  # ...but the access log was asked for explicitly
    assert re.search(
        r" INFO +request method=GET path=/v1/ping status=200 duration_ms=[0-9.]+ "
        r"request_id=trace-42$",
        lines[0],
    ), lines[0]


def test_info_level_hides_uvicorn_chatter(start_broker: BrokerFactory) -> None:
    broker = start_broker()
    assert broker.stop() == 0
    log = broker.stderr()
    assert "Started server process" not in log
    assert "Waiting for application startup" not in log
    assert "broker ready" in log and "broker stopped" in log
    assert "heartbeat" not in log  # off by default
