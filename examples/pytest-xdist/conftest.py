"""One expensive set-up per test run, however many xdist workers run the tests.

`database` builds a SQLite database once: the first worker that needs it builds it, the others
wait for it and get its path. `drop_database` runs once, after the last test of the run, in
whichever worker finishes last. `account` gives each worker an account of its own, from the
worker's slot (0, 1, 2, ... unique among the live workers), so that tests running at the same
time in different workers never write to the same row.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeral_broker_client import BrokerClient
from ephemeral_broker_client.pytest_plugin import once_fixture

ACCOUNTS = 8


def drop_database(path: str) -> None:
    shutil.rmtree(Path(path).parent)


@once_fixture(teardown=drop_database)
def database(broker: BrokerClient) -> str:
    """The path of the test database, built once per test run. The value must be JSON: a
    path as a string, not a connection."""
    path = Path(tempfile.mkdtemp(prefix="example-db-")) / "test.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        db.executemany("INSERT INTO accounts VALUES (?, ?)", [(i, 100) for i in range(ACCOUNTS)])
    # Counted in the broker, so that a test can show the build ran once in the whole run.
    broker.incr("example:database-builds", ttl_ms=600_000)
    return str(path)


@pytest.fixture
def db(database: str) -> Iterator[sqlite3.Connection]:
    """A connection of this test's own to the shared database."""
    connection = sqlite3.connect(database, timeout=30)
    yield connection
    connection.close()


@pytest.fixture
def account(broker_worker_slot: int) -> int:
    """The id of this worker's own account."""
    assert broker_worker_slot < ACCOUNTS, "more workers than accounts"
    return broker_worker_slot
