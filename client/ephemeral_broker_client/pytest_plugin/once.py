"""`once_fixture`: a session fixture whose body runs once per test run, across all xdist
workers, its JSON value shared with all of them."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, overload

import pytest

if TYPE_CHECKING:
    pass

from ephemeral_broker_client.pytest_plugin.options import DEFAULT_LOCK_TTL_MS, PLUGIN_NAME


class OnceFixtureError(Exception):
    """A once fixture could not give its value: its setup failed in another worker, or the
    plugin is not enabled."""


# The state of an enabled plugin (run.BrokerRun) registers under PLUGIN_NAME; named here by
# the one method a once fixture needs, so this module does not import run.py (which imports
# this one for the definitions).
class OnceRunner(Protocol):
    def once_value(self, definition: OnceDefinition, request: pytest.FixtureRequest) -> Any: ...


NOT_ENABLED: Final = (
    "the ephemeral-broker plugin is not enabled: run pytest with --broker, or set "
    "broker = true in the ini file"
)


def runner_of(config: pytest.Config) -> OnceRunner:
    """The enabled plugin's state; OnceFixtureError when the plugin is not enabled."""
    run = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if run is None or not callable(getattr(run, "once_value", None)):
        raise OnceFixtureError(NOT_ENABLED)
    return cast(OnceRunner, run)


@dataclass(frozen=True)
class OnceDefinition:
    ident: str
    name: str
    setup: Callable[..., Any]
    argnames: tuple[str, ...]
    teardown: Callable[[Any], object] | None
    ttl_ms: int | None
    lock_ttl_ms: int


# Every once fixture defined in this process, by ident. Every xdist worker imports the same
# conftests and test modules, so the last worker finds each teardown here.
ONCE_DEFINITIONS: dict[str, OnceDefinition] = {}


def _argnames(setup: Callable[..., Any], name: str) -> tuple[str, ...]:
    if (
        inspect.isgeneratorfunction(setup)
        or inspect.iscoroutinefunction(setup)
        or inspect.isasyncgenfunction(setup)
    ):
        raise TypeError(
            f"once fixture {name!r} must be a plain function returning its value: its teardown "
            "may run in another process, so it is given separately (teardown=...)"
        )
    names = []
    for parameter in inspect.signature(setup).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"once fixture {name!r}: *args and **kwargs cannot name fixtures")
        if parameter.default is parameter.empty:
            names.append(parameter.name)
    return tuple(names)


@overload
def once_fixture(setup: Callable[..., Any], /) -> Any: ...
@overload
def once_fixture(
    *,
    teardown: Callable[[Any], object] | None = None,
    name: str | None = None,
    ttl_ms: int | None = None,
    lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS,
    autouse: bool = False,
) -> Callable[[Callable[..., Any]], Any]: ...
def once_fixture(
    setup: Callable[..., Any] | None = None,
    /,
    *,
    teardown: Callable[[Any], object] | None = None,
    name: str | None = None,
    ttl_ms: int | None = None,
    lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS,
    autouse: bool = False,
) -> Any:
    """Make `setup` a session fixture that runs once per test run, across all xdist workers.

    The first worker to request the fixture runs `setup` (resolving its arguments as fixtures,
    in that worker only); the others wait for its value, which must be JSON and reaches every
    worker decoded from JSON (a tuple as a list). `teardown(value)`, if given, runs once, in
    the last worker to finish, after every test of the run; it gets the value and nothing
    else, as it may run in another process than `setup`.

    A setup that raises is not retried by the other workers: they fail with an error naming
    the worker where it failed (a `pytest.skip` in `setup` skips them too). `ttl_ms` keeps the
    value in the broker (default: the run's --broker-key-ttl); `lock_ttl_ms` is how soon
    another worker takes over when the worker running `setup` dies.
    """

    def decorate(function: Callable[..., Any]) -> Any:
        fixture_name = name or function.__name__
        argnames = _argnames(function, fixture_name)
        where = f"{inspect.getsourcefile(function) or function.__module__}:{function.__qualname__}"
        ident = f"{fixture_name}:{hashlib.sha256(where.encode()).hexdigest()[:12]}"
        definition = OnceDefinition(
            ident, fixture_name, function, argnames, teardown, ttl_ms, lock_ttl_ms
        )
        ONCE_DEFINITIONS[ident] = definition

        def once(request: pytest.FixtureRequest) -> Any:
            return runner_of(request.config).once_value(definition, request)

        # Not functools.wraps: pytest follows __wrapped__ and would call `function` directly.
        once.__name__ = function.__name__
        once.__qualname__ = function.__qualname__
        once.__module__ = function.__module__
        once.__doc__ = function.__doc__
        return pytest.fixture(once, scope="session", name=fixture_name, autouse=autouse)

    return decorate if setup is None else decorate(setup)
