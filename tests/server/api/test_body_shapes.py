"""The plain body shapes (api/body.py PLAIN_SHAPES) against their models' own verdicts.

A body a shape takes skips pydantic, so every such body must be one the model accepts, with
the very same field values (a bool is never an int, 100.0 is not taken as it is). Bodies the
shape does not take go to the model, so the shape may be narrower, never wider.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ephemeral_broker.api.body import PLAIN_SHAPES
from ephemeral_broker.api.schemas import (
    INT64_MAX,
    INT64_MIN,
    IncrRequest,
    SetKeyRequest,
    TouchRequest,
)

_EDGE_INTS = [0, 1, -1, INT64_MIN, INT64_MAX, INT64_MIN - 1, INT64_MAX + 1, 2**64 - 1]
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(_EDGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([100.0, -3.0, 1.5, 0.0]),
    st.text(max_size=5),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def _bodies(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    names = [*model.model_fields, "ttl", "extra", "Value"]
    return st.dictionaries(st.sampled_from(names), _JSON, max_size=4)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("model", [SetKeyRequest, IncrRequest, TouchRequest])
def test_every_model_with_a_body_has_a_shape(model: type[BaseModel]) -> None:
    assert model in PLAIN_SHAPES


@pytest.mark.parametrize("model", list(PLAIN_SHAPES))
@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.data())
def test_a_body_the_shape_takes_is_one_the_model_takes_with_the_same_values(
    model: type[BaseModel], data: st.DataObject
) -> None:
    body = data.draw(_bodies(model))
    shape = PLAIN_SHAPES[model]
    if not shape.takes(body):
        return  # the model decides; nothing for the shape to agree with
    try:
        validated = model.model_validate(body)
    except ValidationError as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"shape of {model.__name__} took {body!r}, which the model refuses: {exc}")
    fields = {**shape.defaults, **body}
    assert set(fields) == set(model.model_fields)
    for name, value in fields.items():
        assert _same(getattr(validated, name), value), (name, body)


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (SetKeyRequest, {"value": 1, "ttl_ms": True}),
        (SetKeyRequest, {"value": 1, "ttl_ms": 100.0}),
        (SetKeyRequest, {"ttl_ms": 100}),
        (SetKeyRequest, {"value": 1, "ttl": 100}),
        (IncrRequest, {"by": INT64_MAX + 1}),
        (IncrRequest, {"by": False}),
        (TouchRequest, {}),
        (TouchRequest, {"ttl_ms": None}),
    ],
)
def test_bodies_outside_the_shape_go_to_the_model(
    model: type[BaseModel], body: dict[str, Any]
) -> None:
    assert not PLAIN_SHAPES[model].takes(body)
