"""The name rules (rules.py): check_name's one-match shortcut for plain ASCII names must give
exactly the verdicts of the full checks, for every name and limit."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ephemeral_broker.errors import BrokerError
from ephemeral_broker.rules import check_name, check_name_fully

# Mostly the characters at the edges of the shortcut's class ('/', '.', space, controls, DEL,
# the C1 range, non-ASCII letters, a lone surrogate), and plain ASCII around them.
_EDGE_CHARACTERS = st.sampled_from(
    ["/", ".", " ", "\t", "\n", "\x00", "\x1f", "\x7f", "\x85", "\xa0", "é", "\u2028", "\ud800"]
)
_NAMES = st.text(alphabet=st.one_of(st.characters(max_codepoint=0x7F), _EDGE_CHARACTERS))


def _verdict(check: object, name: str, limit: int) -> str | None:
    assert callable(check)
    try:
        check(name, limit)
    except BrokerError as error:
        assert error.code == "invalid_key"
        return error.detail
    return None


@settings(max_examples=2000, deadline=None)
@given(name=_NAMES, limit=st.integers(min_value=1, max_value=12))
@example(name=".", limit=5)
@example(name="..", limit=5)
@example(name="...", limit=5)
@example(name="a/b", limit=5)
@example(name="abcdef", limit=5)
@example(name="abcde", limit=5)
@example(name="", limit=5)
def test_the_shortcut_gives_the_full_checks_verdict(name: str, limit: int) -> None:
    assert _verdict(check_name, name, limit) == _verdict(check_name_fully, name, limit)


@pytest.mark.parametrize("name", ["hit", "a.b", ".a", "...", "~!-_:", "K" * 256])
def test_plain_ascii_names_pass(name: str) -> None:
    check_name(name, 256)
