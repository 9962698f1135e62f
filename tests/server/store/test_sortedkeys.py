"""The sorted key index behind prefix listing, against a plain sorted list as the reference."""

from __future__ import annotations

import random

from ephemeral_broker.store.sortedkeys import SortedKeys


def test_random_operations_match_a_sorted_reference() -> None:
    rng = random.Random(1234)
    index = SortedKeys(load=4)  # tiny chunks: splits and empty chunks happen constantly
    reference: set[str] = set()
    alphabet = "abcé"
    for _ in range(5000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        if key in reference and rng.random() < 0.6:
            index.remove(key)
            reference.discard(key)
        elif key not in reference:
            index.add(key)
            reference.add(key)
        if rng.random() < 0.05:
            prefix = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2)))
            expected = sorted(k for k in reference if k.startswith(prefix))
            assert list(index.with_prefix(prefix)) == expected
    assert len(index) == len(reference)
    assert list(index.with_prefix("")) == sorted(reference)


def test_removing_an_absent_key_is_a_no_op() -> None:
    index = SortedKeys()
    index.remove("nothing")
    index.add("b")
    index.remove("a")
    index.remove("c")
    assert list(index.with_prefix("")) == ["b"]
    assert len(index) == 1


def test_prefix_scan_stops_at_the_first_non_match() -> None:
    index = SortedKeys(load=2)
    for key in ["a", "b1", "b2", "b3", "c"]:
        index.add(key)
    scan = index.with_prefix("b")
    assert next(scan) == "b1"
    assert list(scan) == ["b2", "b3"]
    assert list(index.with_prefix("d")) == []
    assert list(index.with_prefix("0")) == []
