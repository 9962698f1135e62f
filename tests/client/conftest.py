"""Fixtures of the client tests: `clients`, each test once per kind of client and transport."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clients import KINDS, Clients


@pytest.fixture(params=KINDS)
def clients(request: pytest.FixtureRequest) -> Iterator[Clients]:
    opened = Clients(request.param)
    yield opened
    opened.close()
