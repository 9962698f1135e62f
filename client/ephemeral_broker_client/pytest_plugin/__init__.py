"""pytest plugin: one ephemeral-broker per test run, shared by every pytest-xdist worker.

Installed with the distribution (entry point `ephemeral_broker` in the `pytest11` group), it
does nothing until enabled with `--broker` or `broker = true` in the ini file. Then:

- the controller (or the only process, without xdist) starts a broker before any worker
  starts, or uses the one in `$EPHEMERAL_PIPE`; workers get its socket through xdist's
  `workerinput` and find it in `$EPHEMERAL_PIPE`, like every process the tests start;
- fixtures: `broker` (a `BrokerClient`), `broker_async` (an `AsyncBrokerClient`),
  `broker_worker_slot` (a small integer unique among the live workers);
- `once_fixture`: a session fixture whose body runs once per test run across all workers,
  its JSON value shared with all of them, its teardown run once by the last worker to finish.

    from ephemeral_broker_client.pytest_plugin import once_fixture

    def drop_database(url: str) -> None: ...

    @once_fixture(teardown=drop_database)
    def database() -> str:
        return create_database()

This module and options.py import only pytest and the standard library: it is loaded by every
pytest run in the environment, enabled or not.
"""

from __future__ import annotations

import pytest

from ephemeral_broker_client.pytest_plugin.once import OnceFixtureError, once_fixture
from ephemeral_broker_client.pytest_plugin.options import (
    BROKER_SETTINGS,
    FIXTURES_NAME,
    PLUGIN_NAME,
    add_options,
    enabled,
)

# The public API of the plugin for conftest files: `from ephemeral_broker_client.pytest_plugin
# import once_fixture`.
__all__ = ["OnceFixtureError", "once_fixture"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    if not enabled(config):
        given = [
            "--" + name.replace("_", "-")
            for name in (
                "broker_auth",
                "broker_start_timeout",
                "broker_key_ttl",
                *("broker_" + s[0].replace("-", "_") for s in BROKER_SETTINGS),
            )
            if config.getoption(name) is not None
        ]
        if given:
            raise pytest.UsageError(
                f"{', '.join(given)} has no effect without --broker (or broker = true in the "
                "ini file)"
            )
        return
    if config.option.help:
        return  # `pytest --help` only lists the options: no broker for it
    # The run's state only now: a disabled plugin loads nothing but this module and options.
    from ephemeral_broker_client.pytest_plugin.run import BrokerRun

    run = BrokerRun(config)
    config.add_cleanup(run.close)
    run.open()
    config.pluginmanager.register(run, PLUGIN_NAME)
    # The fixtures only now: a disabled plugin adds no fixture names (they could shadow a
    # fixture of another plugin).
    from ephemeral_broker_client.pytest_plugin import fixtures

    config.pluginmanager.register(fixtures, FIXTURES_NAME)
