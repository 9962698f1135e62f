"""The plugin's options (command line and ini file) and how they are read. A leaf: pytest and
the standard library only."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import pytest

if TYPE_CHECKING:
    pass

PLUGIN_NAME: Final = "ephemeral_broker_run"
FIXTURES_NAME: Final = "ephemeral_broker_fixtures"
WORKERINPUT_KEY: Final = "ephemeral_broker"
DEFAULT_KEY_TTL_MS: Final = 86_400_000
DEFAULT_START_TIMEOUT_S: Final = 30.0
DEFAULT_LOCK_TTL_MS: Final = 5000
# The started broker logs warnings and errors only, unless --broker-log-level or
# BROKER_LOG_LEVEL says otherwise; its lines are shown in the run's summary.
DEFAULT_LOG_LEVEL: Final = "warning"

# Settings of the started broker: (option suffix, `serve` flag, metavar, help).
BROKER_SETTINGS: Final = (
    (
        "socket",
        "--socket",
        "PATH",
        "where the started broker listens (default: a new private directory under $TMPDIR)",
    ),
    ("max-items", "--max-items", "N", "live keys at most (0 = unlimited; broker default 10000)"),
    (
        "max-leases",
        "--max-leases",
        "N",
        "live leases at most (0 = unlimited; broker default 10000)",
    ),
    (
        "max-value-size",
        "--max-value-size",
        "BYTES",
        "bytes of a value's JSON at most (broker default 262144)",
    ),
    (
        "log-level",
        "--log-level",
        "LEVEL",
        "the broker's log level: debug, info, warning, error (default: warning); its log lines "
        "are shown at the end of the run",
    ),
    (
        "store",
        "--store",
        "URL",
        "keep the broker's state in Redis (redis://, rediss:// or unix:// URL) instead of in its "
        "memory, shared with brokers of other hosts (default: memory)",
    ),
    (
        "namespace",
        "--namespace",
        "NAME",
        "with --broker-store: the Redis namespace to share (broker default: default)",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "ephemeral-broker", "ephemeral-broker: one broker per test run, shared by xdist workers"
    )
    group.addoption(
        "--broker",
        action="store_true",
        dest="broker",
        default=None,
        help="start a broker for this run (or use the one in $EPHEMERAL_PIPE) and enable the "
        "broker fixtures [ini: broker = true]",
    )
    group.addoption(
        "--no-broker",
        action="store_false",
        dest="broker",
        help="disable the plugin even when the ini file enables it",
    )
    parser.addini(
        "broker", "enable the ephemeral-broker plugin (see --broker)", type="bool", default=False
    )
    for suffix, _flag, metavar, help_text in BROKER_SETTINGS:
        name = "broker_" + suffix.replace("-", "_")
        group.addoption(
            f"--broker-{suffix}",
            dest=name,
            metavar=metavar,
            default=None,
            help=f"{help_text} [ini: {name}]",
        )
        parser.addini(name, help_text, default="")
    group.addoption(
        "--broker-auth",
        action="store_true",
        dest="broker_auth",
        default=None,
        help="turn auth on with a fresh random secret, given to the tests and workers as "
        "$EPHEMERAL_SECRET [ini: broker_auth]",
    )
    parser.addini("broker_auth", "turn auth on (see --broker-auth)", type="bool", default=False)
    group.addoption(
        "--broker-start-timeout",
        dest="broker_start_timeout",
        metavar="SECONDS",
        default=None,
        help="how long to wait for the broker to start, or to answer when it is given by "
        f"$EPHEMERAL_PIPE (default: {DEFAULT_START_TIMEOUT_S:g}) [ini: broker_start_timeout]",
    )
    parser.addini("broker_start_timeout", "see --broker-start-timeout", default="")
    group.addoption(
        "--broker-key-ttl",
        dest="broker_key_ttl",
        metavar="MS",
        default=None,
        help="TTL of the keys the plugin writes: once-fixture values and the run's counters "
        f"(default: {DEFAULT_KEY_TTL_MS}) [ini: broker_key_ttl]",
    )
    parser.addini("broker_key_ttl", "see --broker-key-ttl", default="")


def setting(config: pytest.Config, name: str) -> str | None:
    """An option's value: the command line, else the ini file, else None."""
    given = config.getoption(name)
    if given is not None:
        return str(given)
    from_ini = config.getini(name)
    return str(from_ini) if from_ini not in ("", None) else None


def enabled(config: pytest.Config) -> bool:
    given = config.getoption("broker")
    return bool(config.getini("broker")) if given is None else bool(given)


def positive(config: pytest.Config, name: str, default: float, kind: type[float]) -> float:
    """A positive number option (`kind` int or float): command line, ini file, or default."""
    raw = setting(config, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not 0 < value < math.inf:  # also refuses nan
        option = "--" + name.replace("_", "-")
        raise pytest.UsageError(
            f"{option} (ini: {name}) must be a positive {kind.__name__}, not {raw!r}"
        )
    return value


def truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")
