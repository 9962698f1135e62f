"""Error bodies are bounded whatever the input, and say what went wrong in the user's words:
no model class names, the first few problems in the sentence, at most 20 `errors` entries and
a count of the rest."""

from __future__ import annotations

import orjson
import pytest

from ephemeral_broker.api.body import MAX_ERROR_ENTRIES
from tests.support.asgi import AppFactory
from tests.support.brokers import BrokerProcess
from tests.support.responses import assert_problem

pytestmark = pytest.mark.anyio

MODEL_NAMES = ("SetKeyRequest", "IncrRequest", "TouchRequest", "AcquireLeaseRequest")


async def test_a_hundred_thousand_unknown_fields_get_a_small_answer(
    make_api: AppFactory,
) -> None:
    body = orjson.dumps({"value": 1, "ttl_ms": 1000, **{f"f{n}": n for n in range(100_000)}})
    assert len(body) > 900_000
    async with make_api(max_request_size=2_000_000) as api:
        response = await api.put("/v1/keys/k", content=body)
    problem = assert_problem(response, 422, "validation_error")
    assert len(response.content) < 8_000, len(response.content)
    assert len(problem["errors"]) == MAX_ERROR_ENTRIES
    assert problem["more_errors"] == 100_000 - MAX_ERROR_ENTRIES
    assert problem["errors"][0] == {
        "loc": ["f0"],
        "msg": "unknown field",
        "type": "extra_forbidden",
    }
    assert problem["detail"] == (
        "invalid request body: unknown field 'f0'; unknown field 'f1'; unknown field 'f2'; "
        "and 99997 more"
    )
    assert not any(name in response.text for name in MODEL_NAMES)


async def test_a_misspelt_field_is_named_with_a_suggestion(make_api: AppFactory) -> None:
    async with make_api() as api:
        response = await api.put("/v1/keys/k", json={"value": 1, "ttl": 100})
        renew = await api.post("/v1/leases/p/w/renew", json={"tll_ms": 100})
    problem = assert_problem(response, 422, "validation_error")
    assert problem["detail"] == (
        "invalid request body: unknown field 'ttl' (did you mean 'ttl_ms'?)"
    )
    assert "more_errors" not in problem
    assert assert_problem(renew, 422, "validation_error")["detail"] == (
        "invalid request body: unknown field 'tll_ms' (did you mean 'ttl_ms'?)"
    )


async def test_a_huge_field_name_is_shortened_everywhere(make_api: AppFactory) -> None:
    name = "x" * 200_000
    async with make_api() as api:
        response = await api.put("/v1/keys/k", json={"value": 1, "ttl_ms": 100, name: 1})
    problem = assert_problem(response, 422, "validation_error")
    assert len(response.content) < 2_000
    assert problem["errors"][0]["loc"] == ["x" * 60 + "…"]


async def test_wrong_types_name_the_field_not_the_model(make_api: AppFactory) -> None:
    async with make_api() as api:
        responses = [
            await api.put("/v1/keys/k", json={"value": 1, "ttl_ms": "soon"}),
            await api.post("/v1/keys/k/incr", json={"by": "one", "ttl_ms": 100}),
            await api.put("/v1/keys/k", json=[1, 2]),
            await api.put("/v1/keys/k", content=b""),
            await api.get("/v1/keys?limit=-1"),
        ]
    details = [response.json()["detail"] for response in responses]
    assert details[0].startswith("invalid request body: field 'ttl_ms': ")
    assert details[1].startswith("invalid request body: field 'by': ")
    assert details[2] == "the request body must be a JSON object, not a JSON array"
    assert details[3] == "the request body is empty; expected a JSON object"
    assert details[4].startswith("invalid request: query parameter 'limit': ")
    for response in responses:
        assert not any(name in response.text for name in MODEL_NAMES), response.text


def test_the_maximal_body_over_the_socket_is_answered_and_others_are_served(
    broker: BrokerProcess,
) -> None:
    # 1 MiB of unknown fields, the most a default broker reads: answered, bounded, and the
    # broker serves the next request at once.
    fields = {f"f{n}": 0 for n in range(95_000)}
    body = orjson.dumps({"value": 1, "ttl_ms": 1000, **fields})
    assert len(body) < 1_048_576
    with broker.client(timeout=30) as client:
        response = client.put("/v1/keys/k", content=body)
        problem = assert_problem(response, 422, "validation_error")
        assert problem["more_errors"] == 95_000 - MAX_ERROR_ENTRIES
        assert len(response.content) < 8_000
        assert client.get("/v1/ping").status_code == 200
