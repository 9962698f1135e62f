"""Signed requests against a real broker that requires its secret: the broker verifies what
the clients sign (targets with percent-encoded names and queries, bodies, for keys, leases,
waits and once), and AuthFailed comes from its real trigger: no secret, or the wrong one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ephemeral_broker_client import AuthFailed
from tests.support.brokers import BIN_DIR, BrokerFactory, BrokerProcess
from tests.support.clients import each_kind

SECRET = "correct horse battery staple"


@pytest.fixture
def guarded(start_broker: BrokerFactory) -> BrokerProcess:
    return start_broker(env={"BROKER_SECRET": SECRET})


def test_signed_requests_are_accepted_by_the_broker(guarded: BrokerProcess) -> None:
    with each_kind() as kinds:
        for clients in kinds:
            b = clients.open(guarded.socket, secret=SECRET)
            key = f"{clients.name}:a?b#c %d/é".replace("/", "-").replace(" ", "_")
            b.set(key, {"v": [1, "ü"]}, 60_000)
            assert b.get(key) == {"v": [1, "ü"]}
            assert [info.key for info in b.list(f"{clients.name}:a?b")] == [key]
            assert b.incr(f"{clients.name}:n", 2, 60_000) == 2
            assert b.touch(key, 120_000) > 0
            assert b.delete(key) is True
            assert b.ping() > 0
            assert b.health()["status"] == "healthy"
            assert "ephemeral_broker_items" in b.metrics()
            # Lease targets: percent-encoded worker ids, queries, bodies, waits.
            worker = f"{clients.name}-wörker:1@x"
            lease = b.lease("pool?x", worker, ttl_ms=60_000, size=2, wait_ms=100)
            lease.renew()
            assert lease.release() is True
            b.lease("pool?x", worker, ttl_ms=60_000)
            assert b.release_all(worker) == 1
            assert b.get(f"{clients.name}:absent", None, wait_ms=50) is None
            assert b.once(f"{clients.name}:once", lambda: "made", 60_000) == "made"


def test_auth_failed_without_the_secret_or_with_a_wrong_one(
    guarded: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    with each_kind() as kinds:
        for clients in kinds:
            for secret in (None, "not the secret"):
                b = clients.open(guarded.socket, secret=secret)
                with pytest.raises(AuthFailed) as caught:
                    b.get("k")
                assert (caught.value.code, caught.value.status) == ("auth_failed", 401)
                assert caught.value.request_id
            monkeypatch.setenv("EPHEMERAL_SECRET", SECRET)
            assert clients.open(guarded.socket).set("from-env", 1, 60_000) > 0
            monkeypatch.delenv("EPHEMERAL_SECRET")


def test_the_cli_signs_with_ephemeral_secret(guarded: BrokerProcess) -> None:
    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "EPHEMERAL_PIPE": str(guarded.socket), **env}
        return subprocess.run(
            [str(Path(BIN_DIR) / "ephemeral-broker"), *args],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )

    signed = cli("set", "k", "v", "--ttl", "60000", EPHEMERAL_SECRET=SECRET)
    assert (signed.returncode, signed.stderr) == (0, "")
    refused = cli("get", "k")
    assert refused.returncode == 2  # a settings problem: the secret is missing
    assert refused.stderr == (
        f"ephemeral-broker: the broker at {guarded.socket} requires a secret: set "
        "EPHEMERAL_SECRET to the secret it was started with\n"
    )
    assert refused.stdout == ""
