"""parse_json (api/body.py) refuses exactly the JSON it must: nesting deeper than 64 levels, and
integers beyond 64 bits (which orjson would silently turn into floats), whether written with
digits only or as a number with no fractional part (1e20), as JSON Schema counts them. It
decides both from one walk over the parsed value; these hold it to a plain reference over the
same texts."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ephemeral_broker.api.body import MAX_JSON_DEPTH, parse_json
from ephemeral_broker.errors import BrokerError

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_EDGE_INTS = [
    0,
    -1,
    _INT64_MIN,
    _UINT64_MAX,
    _INT64_MIN - 1,
    _UINT64_MAX + 1,
    10**19,
    -(10**19),
    10**30,
    1234567890123456789,
]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(_EDGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e19, 1e20, 2.0**63, 2.0**64, -(2.0**63), -(2.0**64), 1.5e300]),
    st.text(alphabet="0123456789x", max_size=25),  # digit runs inside strings are not numbers
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _has_wide_int(value: Any) -> bool:
    """As JSON Schema counts integers: any number with no fractional part, 1e20 included.
    `value` is parsed with Decimal for numbers with a fraction or exponent, so that the number
    is the one the text says (json.dumps writes -2^63 as -9.223372036854776e+18, which is not
    -2^63)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | Decimal) and value == int(value):
        return not _INT64_MIN <= int(value) <= _UINT64_MAX
    if isinstance(value, dict):
        return any(_has_wide_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_wide_int(v) for v in value)
    return False


def _nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


@settings(max_examples=600, deadline=None)
@given(value=_VALUES)
@example(value=_nested(MAX_JSON_DEPTH))
@example(value=_nested(MAX_JSON_DEPTH + 1))
@example(value=_nested(MAX_JSON_DEPTH - 1, 10**25))
@example(value=[1.5, 10**20])
@example(value={"a": "12345678901234567890123", "b": 2.5})
@example(value={"value": 6.634770800035887e271, "ttl_ms": 1200})
@example(value={"value": 10**20, "ttl_ms": 1200})  # an object of plain values but one too wide
@example(value={"value": "v", "ttl_ms": 1200, "flag": True, "none": None, "n": -(2**63)})
@example(value=[1e19, -9.223372036854776e18, 1.5])
@example(value=2.0**64)
@example(value=-(2.0**63) * 2)
def test_parse_json_refuses_exactly_too_deep_and_too_wide(value: Any) -> None:
    text = json.dumps(value).encode()
    exact = json.loads(text, parse_float=Decimal)
    expected_refusal = _depth(value) > MAX_JSON_DEPTH or _has_wide_int(exact)
    try:
        parsed = parse_json(text)
    except BrokerError as error:
        assert error.code == "invalid_json"
        assert expected_refusal, text[:200]
    else:
        assert not expected_refusal, text[:200]
        assert parsed == json.loads(text)


@pytest.mark.parametrize("text", [b"1e400", b"[1, 2", b"NaN", b"{'a': 1}"])
def test_parse_json_refuses_what_is_not_json(text: bytes) -> None:
    with pytest.raises(BrokerError) as raised:
        parse_json(text)
    assert raised.value.code == "invalid_json"
