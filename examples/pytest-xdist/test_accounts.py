"""Tests that run in parallel (`pytest -n 4`) against one database built once."""

from __future__ import annotations

import sqlite3

import pytest

from ephemeral_broker_client import BrokerClient


def test_the_database_was_built_once(database: str, broker: BrokerClient) -> None:
    assert broker.get("example:database-builds") == 1


@pytest.mark.parametrize("amount", [10, 20, 30, 40, 50, 60, 70, 80])
def test_deposit_into_my_own_account(db: sqlite3.Connection, account: int, amount: int) -> None:
    # No other worker writes to this account while this worker holds its slot: read, change
    # and check without a lock.
    (before,) = db.execute("SELECT balance FROM accounts WHERE id = ?", (account,)).fetchone()
    with db:
        db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, account))
    (after,) = db.execute("SELECT balance FROM accounts WHERE id = ?", (account,)).fetchone()
    assert after == before + amount
