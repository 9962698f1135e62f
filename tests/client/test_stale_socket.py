"""A client fails fast when nothing can ever answer at its socket path: a socket file nobody
listens on (a broker that was killed) or a path that is not a socket. Only a missing socket
file keeps the documented wait for a broker that is still starting. Over both clients and both
transports; the CLI says the same in one line with exit code 3."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from ephemeral_broker_client import BrokerUnavailable
from tests.support.brokers import BROKER_EXE
from tests.support.clients import Clients


def stale_socket(path: Path) -> Path:
    """A socket file as a SIGKILLed broker leaves it: bound once, nobody listening."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    return path


@pytest.mark.parametrize("what", ["stale socket", "regular file", "directory"])
def test_a_path_nobody_can_answer_on_fails_at_once(
    clients: Clients, short_tmp: Path, what: str
) -> None:
    path = short_tmp / "broker.sock"
    if what == "stale socket":
        stale_socket(path)
        says = f"no broker is listening on {path}: stale socket?"
    elif what == "regular file":
        path.write_text("not a socket")
        says = f"{path} is not a socket"
    else:
        path.mkdir()
        says = f"{path} is not a socket"
    transport = clients.uds_transport(path)
    client = clients.open(path, timeout=30.0, transport=transport)
    with pytest.raises(BrokerUnavailable) as caught:
        client.ping()
    assert says in str(caught.value)
    assert caught.value.code == "unavailable"
    # Not the 30 s budget of retries: a stale socket is tried twice (a starting broker's bind
    # comes a moment before its listen), a path that is no socket once.
    assert len(transport.requests) == (2 if what == "stale socket" else 1)


def test_a_missing_socket_still_waits_for_a_broker_that_starts(
    clients: Clients, short_tmp: Path
) -> None:
    path = short_tmp / "late.sock"
    transport = clients.uds_transport(path)
    client = clients.open(path, timeout=1.0, transport=transport)
    with pytest.raises(BrokerUnavailable) as caught:
        client.ping()
    assert len(transport.requests) >= 3  # it kept trying, with backoff, for its budget
    assert f"{len(transport.requests)} attempts" in str(caught.value)


def test_the_cli_names_a_stale_socket(short_tmp: Path) -> None:
    path = stale_socket(short_tmp / "broker.sock")
    result = subprocess.run(
        [BROKER_EXE, "ping", "--socket", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert f"no broker is listening on {path}: stale socket?" in result.stderr
    assert result.stderr.count("\n") == 1
