"""The fixtures of the pytest plugin, registered only when the plugin is enabled (see
`ephemeral_broker_client.pytest_plugin`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import httpx
import pytest

from ephemeral_broker_client._async import AsyncBrokerClient
from ephemeral_broker_client._sync import BrokerClient
from ephemeral_broker_client.pytest_plugin.run import BrokerRun, run_of

# The pool of `broker_worker_slot`: one pool for every run on a broker, so that two test runs
# sharing one broker (under `ephemeral-broker run`) never hold the same slot at once.
SLOT_POOL: Final = "pytest-worker-slot"
SLOT_TTL_MS: Final = 60_000


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerClient]:
    """A `BrokerClient` of the run's broker, one per worker, closed at the worker's end."""
    with BrokerClient(run_of(request.config).socket) as client:
        yield client


@pytest.fixture(scope="session")
def broker_async(request: pytest.FixtureRequest) -> AsyncBrokerClient:
    """An `AsyncBrokerClient` of the run's broker, one per worker, usable from any event loop:
    it keeps no connection between calls (each call connects anew, some tens of microseconds
    over a Unix socket), so it is bound to no loop and needs no closing."""
    socket = run_of(request.config).socket
    transport = httpx.AsyncHTTPTransport(
        uds=socket, limits=httpx.Limits(max_keepalive_connections=0)
    )
    return AsyncBrokerClient(socket, transport=transport)


@pytest.fixture(scope="session")
def broker_worker_slot(request: pytest.FixtureRequest) -> Iterator[int]:
    """A small integer unique among the live workers (0, 1, … in the order they first ask):
    a lease in the pool `pytest-worker-slot`, renewed in the background for as long as the
    worker runs, released at its end."""
    run: BrokerRun = run_of(request.config)
    lease = run.client.lease(
        SLOT_POOL, f"{run.namespace}:{run.worker}", ttl_ms=SLOT_TTL_MS, keepalive=True
    )
    with lease:
        yield lease.value
