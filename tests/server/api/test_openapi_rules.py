"""The OpenAPI document states the rules the server enforces: checked against the document
the app generates (which `openapi.json` must equal) and against the server's own behaviour."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from ephemeral_broker.api.app import create_app
from ephemeral_broker.settings import BrokerSettings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(BrokerSettings()).openapi()
    return schema


def ecma(pattern: str) -> re.Pattern[str]:
    """A JSON Schema (ECMA-262) pattern in Python: there `$` never matches before a newline."""
    return re.compile(pattern.replace("$", r"\Z"))


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_names_carry_their_rules(document: dict[str, Any]) -> None:
    seen = 0
    for _, _, operation in operations(document):
        for parameter in operation.get("parameters", ()):
            if parameter["name"] in ("key", "pool", "worker_id"):
                schema = parameter["schema"]
                assert (schema["minLength"], schema["maxLength"]) == (1, 512)
                assert schema["not"] == {"enum": [".", ".."]}
                pattern = ecma(schema["pattern"])
                assert pattern.match("ok-name.1_é")
                for bad in ("a/b", "a b", "tab\t", "nl\n", "del\x7f", "c1\x85", ""):
                    assert not pattern.match(bad), bad
                seen += 1
    assert seen >= 10
    body = document["components"]["schemas"]["AcquireLeaseRequest"]["properties"]["worker_id"]
    assert body["pattern"] and body["minLength"] == 1


def test_ttl_and_64_bit_bounds(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for model in (
        "SetKeyRequest",
        "IncrRequest",
        "TouchRequest",
        "AcquireLeaseRequest",
        "RenewLeaseRequest",
    ):
        ttl = schemas[model]["properties"]["ttl_ms"]
        branch = next((m for m in ttl.get("anyOf", ()) if m.get("type") == "integer"), ttl)
        assert (branch["minimum"], branch["maximum"]) == (1, 86_400_000), model
    by = schemas["IncrRequest"]["properties"]["by"]
    assert (by["minimum"], by["maximum"]) == (-(2**63), 2**63 - 1)
    small = create_app(
        BrokerSettings(max_ttl=5000, default_ttl=5000, lease_ttl=5000, max_key_length=16)
    ).openapi()
    ttl = small["components"]["schemas"]["TouchRequest"]["properties"]["ttl_ms"]
    assert ttl["maximum"] == 5000
    key = small["paths"]["/v1/keys/{key}"]["get"]["parameters"][0]["schema"]
    assert key["maxLength"] == 16


def test_conditional_headers_have_a_format(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/v1/keys/{key}"]["put"]["parameters"]
    if_match = next(p for p in parameters if p["name"] == "if-match")
    pattern = ecma(if_match["schema"]["pattern"])
    for good in ('"7"', "*", 'W/"7"', '"1", "2"'):
        assert pattern.match(good), good
    for bad in ("7", '"x"', '"7', " "):
        assert not pattern.match(bad), bad


def test_security_schemes_and_the_answers_before_any_route(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == schemes["bearer"] | {"type": "http", "scheme": "bearer"}
    assert schemes["hmacSignature"]["name"] == "X-Broker-Signature"
    assert schemes["hmacTimestamp"]["name"] == "X-Broker-Timestamp"
    for path, method, operation in operations(document):
        responses = operation["responses"]
        for status in ("400", "408", "431", "503"):
            assert status in responses, (method, path, status)
        assert "Retry-After" in responses["503"]["headers"]
        assert all("X-Request-ID" in r["headers"] for r in responses.values())
        if path in ("/healthz", "/readyz"):
            assert operation["security"] == []
            assert "401" not in responses
        else:
            assert {} in operation["security"] and {"bearer": []} in operation["security"]
            assert "auth_failed" in responses["401"]["description"]
        if "requestBody" in operation:
            assert "too_large" in responses["413"]["description"]
    key = document["paths"]["/v1/keys/{key}"]
    assert "ETag" in key["get"]["responses"]["200"]["headers"]
    assert "ETag" in key["get"]["responses"]["304"]["headers"]
    assert "ETag" in key["put"]["responses"]["201"]["headers"]


def test_every_bound_is_a_json_schema_keyword(document: dict[str, Any]) -> None:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for child in node.values():
                yield from walk(child)
        elif isinstance(node, list):
            for child in node:
                yield from walk(child)

    for node in walk(document):
        if node.get("type") in ("integer", "number"):
            assert not {"ge", "le", "gt", "lt"} & node.keys(), node
    size = document["components"]["schemas"]["AcquireLeaseRequest"]["properties"]["size"]
    branch = next(m for m in size["anyOf"] if m.get("type") == "integer")
    assert (branch["minimum"], branch["maximum"]) == (1, 1_000_000)


def test_links_lead_to_real_operations_with_real_parameters(document: dict[str, Any]) -> None:
    by_id = {
        operation["operationId"]: operation
        for _, _, operation in operations(document)
        if "operationId" in operation
    }
    put_links = document["paths"]["/v1/keys/{key}"]["put"]["responses"]["201"]["links"]
    acquire_links = document["paths"]["/v1/leases/{pool}"]["post"]["responses"]["201"]["links"]
    assert {"GetKey", "DeleteKey", "TouchKey", "IncrKey"} <= put_links.keys()
    assert {"RenewLease", "ReleaseLease", "ListPool"} <= acquire_links.keys()
    assert acquire_links["ReleaseLease"]["parameters"]["token"] == "$response.body#/token"
    for link in [*put_links.values(), *acquire_links.values()]:
        target = by_id[link["operationId"]]
        names = {parameter["name"] for parameter in target["parameters"]}
        assert set(link["parameters"]) <= names, link
