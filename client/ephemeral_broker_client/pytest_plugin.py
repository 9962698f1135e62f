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

This module imports only pytest and the standard library at import time: it is loaded by every
pytest run in the environment, enabled or not.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import secrets
import socket as socket_module
import traceback
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, overload

import pytest

if TYPE_CHECKING:
    from ephemeral_broker_client._pytest_broker import StartedBroker
    from ephemeral_broker_client._sync import BrokerClient

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
_BROKER_SETTINGS: Final = (
    ("socket", "--socket", "PATH",
     "where the started broker listens (default: a new private directory under $TMPDIR)"),
    ("max-items", "--max-items", "N", "live keys at most (0 = unlimited; broker default 10000)"),
    ("max-leases", "--max-leases", "N",
     "live leases at most (0 = unlimited; broker default 10000)"),
    ("max-value-size", "--max-value-size", "BYTES",
     "bytes of a value's JSON at most (broker default 262144)"),
    ("log-level", "--log-level", "LEVEL",
     "the broker's log level: debug, info, warning, error (default: warning); its log lines "
     "are shown at the end of the run"),
    ("store", "--store", "URL",
     "keep the broker's state in Redis (redis://, rediss:// or unix:// URL) instead of in its "
     "memory, shared with brokers of other hosts (default: memory)"),
    ("namespace", "--namespace", "NAME",
     "with --broker-store: the Redis namespace to share (broker default: default)"),
)  # fmt: skip


class OnceFixtureError(Exception):
    """A once fixture could not give its value: its setup failed in another worker, or the
    plugin is not enabled."""


# ---- options -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "ephemeral-broker", "ephemeral-broker: one broker per test run, shared by xdist workers"
    )
    group.addoption(
        "--broker", action="store_true", dest="broker", default=None,
        help="start a broker for this run (or use the one in $EPHEMERAL_PIPE) and enable the "
        "broker fixtures [ini: broker = true]",
    )  # fmt: skip
    group.addoption(
        "--no-broker", action="store_false", dest="broker",
        help="disable the plugin even when the ini file enables it",
    )  # fmt: skip
    parser.addini("broker", "enable the ephemeral-broker plugin (see --broker)", type="bool",
                  default=False)  # fmt: skip
    for suffix, _flag, metavar, help_text in _BROKER_SETTINGS:
        name = "broker_" + suffix.replace("-", "_")
        group.addoption(f"--broker-{suffix}", dest=name, metavar=metavar, default=None,
                        help=f"{help_text} [ini: {name}]")  # fmt: skip
        parser.addini(name, help_text, default="")
    group.addoption(
        "--broker-auth", action="store_true", dest="broker_auth", default=None,
        help="turn auth on with a fresh random secret, given to the tests and workers as "
        "$EPHEMERAL_SECRET [ini: broker_auth]",
    )  # fmt: skip
    parser.addini("broker_auth", "turn auth on (see --broker-auth)", type="bool", default=False)
    group.addoption(
        "--broker-start-timeout", dest="broker_start_timeout", metavar="SECONDS", default=None,
        help="how long to wait for the broker to start, or to answer when it is given by "
        f"$EPHEMERAL_PIPE (default: {DEFAULT_START_TIMEOUT_S:g}) [ini: broker_start_timeout]",
    )  # fmt: skip
    parser.addini("broker_start_timeout", "see --broker-start-timeout", default="")
    group.addoption(
        "--broker-key-ttl", dest="broker_key_ttl", metavar="MS", default=None,
        help="TTL of the keys the plugin writes: once-fixture values and the run's counters "
        f"(default: {DEFAULT_KEY_TTL_MS}) [ini: broker_key_ttl]",
    )  # fmt: skip
    parser.addini("broker_key_ttl", "see --broker-key-ttl", default="")


def _setting(config: pytest.Config, name: str) -> str | None:
    """An option's value: the command line, else the ini file, else None."""
    given = config.getoption(name)
    if given is not None:
        return str(given)
    from_ini = config.getini(name)
    return str(from_ini) if from_ini not in ("", None) else None


def _enabled(config: pytest.Config) -> bool:
    given = config.getoption("broker")
    return bool(config.getini("broker")) if given is None else bool(given)


def _positive(config: pytest.Config, name: str, default: float, kind: type[float]) -> float:
    """A positive number option (`kind` int or float): command line, ini file, or default."""
    raw = _setting(config, name)
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


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        given = [
            "--" + name.replace("_", "-")
            for name in ("broker_auth", "broker_start_timeout", "broker_key_ttl",
                         *("broker_" + s[0].replace("-", "_") for s in _BROKER_SETTINGS))
            if config.getoption(name) is not None
        ]  # fmt: skip
        if given:
            raise pytest.UsageError(
                f"{', '.join(given)} has no effect without --broker (or broker = true in the "
                "ini file)"
            )
        return
    if config.option.help:
        return  # `pytest --help` only lists the options: no broker for it
    run = BrokerRun(config)
    config.add_cleanup(run.close)
    run.open()
    config.pluginmanager.register(run, PLUGIN_NAME)
    # The fixtures only now: a disabled plugin adds no fixture names (they could shadow a
    # fixture of another plugin).
    from ephemeral_broker_client import _pytest_fixtures

    config.pluginmanager.register(_pytest_fixtures, FIXTURES_NAME)


# ---- the run -------------------------------------------------------------------------------


class BrokerRun:
    """The plugin's state in one pytest process (controller, worker, or the only one) and its
    hooks; registered only when the plugin is enabled."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.worker = str(workerinput["workerid"]) if workerinput is not None else "main"
        self.workercount = int(workerinput["workercount"]) if workerinput is not None else 1
        self._nodes = 0
        self.started: StartedBroker | None = None
        self.external = False
        self.key_ttl = int(_positive(config, "broker_key_ttl", DEFAULT_KEY_TTL_MS, int))
        self.start_timeout = _positive(
            config, "broker_start_timeout", DEFAULT_START_TIMEOUT_S, float
        )
        self.ignored_settings: list[str] = []
        self._teardown_errors: list[str] = []
        self._not_torn_down: list[str] = []
        self._notes: list[str] = []
        self._once_in_run = False
        self._crashed = False
        self._uncounted_crashes = 0
        if workerinput is not None:
            shared = workerinput.get(WORKERINPUT_KEY)
            if not isinstance(shared, dict):
                raise pytest.UsageError(
                    "ephemeral-broker: this xdist worker got no broker from the controller; "
                    "is the plugin disabled there (-p no:ephemeral_broker)?"
                )
            self.socket = str(shared["socket"])
            self.namespace = str(shared["namespace"])
        else:
            self.socket = ""
            # Keys of this run are prefixed with it: runs sharing one broker never mix.
            self.namespace = f"pytest-{uuid.uuid4().hex[:12]}"
        self._saved_env: dict[str, str | None] = {}
        self._client: BrokerClient | None = None
        self._finished = False
        self._once_requested = False
        self._counted = False
        self._setup_failures: dict[str, BaseException] = {}

    # ---- start and stop ----------------------------------------------------------------------

    def open(self) -> None:
        if self.is_worker:
            self._export("EPHEMERAL_PIPE", self.socket)
            return
        given = os.environ.get("EPHEMERAL_PIPE")
        if given:
            self.socket = given
            self.external = True
            # That broker's settings are its own: ours are reported as not applied.
            self.ignored_settings = [
                f"--broker-{suffix}" for suffix, *_ in _BROKER_SETTINGS
                if _setting(self.config, "broker_" + suffix.replace("-", "_")) is not None
            ]  # fmt: skip
            if _truthy(_setting(self.config, "broker_auth")):
                self.ignored_settings.append("--broker-auth")
            return
        self._start()

    def _start(self) -> None:
        from ephemeral_broker_client._pytest_broker import launch

        flags: list[str] = []
        socket: Path | None = None
        for suffix, flag, _metavar, _help in _BROKER_SETTINGS:
            value = _setting(self.config, "broker_" + suffix.replace("-", "_"))
            if value is not None:
                if flag == "--socket":
                    socket = Path(value)
                else:
                    flags += [flag, value]
        env = dict(os.environ)
        if socket is None and env.get("BROKER_SOCKET"):
            socket = Path(env["BROKER_SOCKET"])
        if "--log-level" not in flags and "BROKER_LOG_LEVEL" not in env:
            flags += ["--log-level", DEFAULT_LOG_LEVEL]
        if _truthy(_setting(self.config, "broker_auth")):
            secret = secrets.token_hex(32)
            env["BROKER_SECRET"] = secret
            # The tests, the workers and anything they start sign their requests with it.
            self._export("EPHEMERAL_SECRET", secret)
        # Not waited for here: the broker starts while pytest collects and xdist starts its
        # workers (see pytest_runtestloop); a client reaches it as soon as it listens.
        self.started = launch(
            flags, env, self.start_timeout, socket.absolute() if socket is not None else None
        )
        self.socket = str(self.started.socket)
        self._export("EPHEMERAL_PIPE", self.socket)

    def _export(self, name: str, value: str) -> None:
        # Set for this process, the xdist workers it starts (they inherit the environment)
        # and every process a test starts; restored when the run ends.
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def close(self) -> None:
        """End of the run: close the client, stop the broker we started, restore the
        environment. Runs however the run ends (also after Ctrl-C)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.started is not None:
            code = self.started.stop()
            if code != 0:
                self.config.get_terminal_writer().line(
                    f"ephemeral-broker: the broker (pid {self.started.pid}) exited with code "
                    f"{code}",
                    red=True,
                )
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    @property
    def client(self) -> BrokerClient:
        """The plugin's own client (the `broker` fixture is another one, the tests' own)."""
        if self._client is None:
            from ephemeral_broker_client._sync import BrokerClient

            self._client = BrokerClient(self.socket)
        return self._client

    def key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    # ---- hooks -------------------------------------------------------------------------------

    def pytest_report_header(self) -> list[str]:
        if self.is_worker:
            return []
        if self.external:
            line = f"ephemeral-broker: using the broker at {self.socket} ($EPHEMERAL_PIPE)"
            if self.ignored_settings:
                line += f"; {', '.join(self.ignored_settings)} not applied to it"
            return [line]
        assert self.started is not None
        return [f"ephemeral-broker: started at {self.socket} (pid {self.started.pid})"]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self) -> None:
        # Before the first test (or, under xdist, before the controller waits for its
        # workers): the broker must be up, or the run stops here with the broker's own words.
        if self.started is not None:
            from ephemeral_broker_client._pytest_broker import BrokerStartError

            try:
                self.started.wait_ready()
            except BrokerStartError as exc:
                raise pytest.UsageError(f"ephemeral-broker: {exc}") from None
        elif self.external:
            from ephemeral_broker_client._sync import BrokerClient
            from ephemeral_broker_client.errors import BrokerError

            try:
                with BrokerClient(self.socket, timeout=self.start_timeout) as probe:
                    probe.ping()
            except BrokerError as exc:
                raise pytest.UsageError(
                    f"ephemeral-broker: the broker in $EPHEMERAL_PIPE does not answer: {exc}"
                ) from None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # xdist, in the controller, before each worker starts: the worker's share of the run.
        node.workerinput[WORKERINPUT_KEY] = {"socket": self.socket, "namespace": self.namespace}
        self._nodes += 1
        if self._nodes > int(node.workerinput["workercount"]):
            # A replacement of a worker that crashed or was interrupted: one more worker to
            # wait for, counted before it starts (see _finish_worker). Only now is a crashed
            # worker, which never counted itself, counted as finished for it: counted
            # earlier, the other workers could all have finished in between, and the last of
            # them would have torn down before the replacement runs the crashed one's tests.
            self.client.incr(self.key("replacements"), ttl_ms=self.key_ttl)
            if self._uncounted_crashes:
                self.client.incr(self.key("finished"), self._uncounted_crashes, ttl_ms=self.key_ttl)
                self._uncounted_crashes = 0

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> Generator[None, None, None]:  # fmt: skip
        try:
            return (yield)
        finally:
            # This process's last test, its session fixtures just torn down: a failing
            # once-fixture teardown is reported as an error at teardown of this test.
            if nextitem is None:
                self._finish_worker()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        # xdist, in the controller, when a worker has ended (called twice for a worker that
        # stopped on KeyboardInterrupt). A worker that crashed sent no output.
        output = getattr(node, "workeroutput", None)
        if output is None:
            self._crashed = True
            self._uncounted_crashes += 1
            return
        shared = output.get(WORKERINPUT_KEY, {})
        self._once_in_run |= bool(shared.get("once"))
        for text in shared.get("teardown_errors", []):
            if text not in self._teardown_errors:
                self._teardown_errors.append(text)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # trylast: after pytest's own sessionfinish has torn down the session fixtures and,
        # under xdist, after the controller has waited for its workers to end.
        if self.started is not None and not self.started.ready:
            return  # the broker never started (the run stopped on it): nothing to finish
        if not self.config.pluginmanager.has_plugin("dsession"):
            if not self._finished:
                # No test ran here, or the run stopped early (-x, Ctrl-C): there is no test
                # to report a teardown error on, so it goes to the run's summary.
                try:
                    self._finish_worker()
                except Exception as exc:
                    self._teardown_errors.append(self._describe_teardown_error(exc))
            # Whether this process wrote any of the run's keys.
            self._once_in_run = self._counted or self._once_requested
            if self.is_worker:
                self.config.workeroutput[WORKERINPUT_KEY] = {  # type: ignore[attr-defined]
                    "once": self._once_in_run,
                    "teardown_errors": self._teardown_errors,
                }
                return
        # The controller, or the only process: the whole run is over.
        if self._crashed and (self._once_in_run or _ONCE_DEFINITIONS):
            # A worker crashed. If it was not replaced, no worker could know it was the last
            # one: what is still set up is torn down here, now that every worker has ended,
            # when this process knows the definition (a once fixture of a conftest.py that
            # pytest loads at start-up). Those it does not know are reported.
            try:
                self._run_once_teardowns(known_only=True)
                self._not_torn_down = [str(r.get("fixture")) for _, r in self._set_up()]
            except Exception as exc:
                self._teardown_errors.append(self._describe_teardown_error(exc))
        if self._teardown_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.external and self._once_in_run:
            from ephemeral_broker_client.errors import BrokerError

            try:
                self._forget_run()
            except BrokerError as exc:
                self._notes.append(f"the run's keys could not be removed from the broker: {exc}")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        log = list(self.started.log) if self.started is not None else []
        if self.is_worker or not (
            self._teardown_errors or self._not_torn_down or self._notes or log
        ):
            return
        terminalreporter.section("ephemeral-broker")
        for text in self._teardown_errors:
            terminalreporter.line(text, red=True)
        for name in self._not_torn_down:
            terminalreporter.line(
                f"the teardown of once fixture {name!r} did not run: a worker crashed and was "
                "not replaced, so no worker could know it was the last one, and the fixture is "
                "not defined in a conftest.py the controller loads",
                yellow=True,
            )
        for note in self._notes:
            terminalreporter.line(note, yellow=True)
        if log:
            terminalreporter.line("broker log:")
            for line in log:
                terminalreporter.line("  " + line)

    # ---- the end of a worker -----------------------------------------------------------------

    def _finish_worker(self) -> None:
        """This process has run all its tests. The last worker of the run to get here runs
        the teardowns of the once fixtures that were set up (by any worker)."""
        if self._finished:
            return
        self._finished = True
        if not _ONCE_DEFINITIONS:
            # Every worker imports the same conftests and test modules: none defines a once
            # fixture, so there is nothing to tear down and nobody needs to count.
            return
        if not self.is_worker and not self._once_requested:
            return  # the only process, and no once fixture was used
        if self.is_worker:
            # xdist tells every worker how many workers the run has; a replacement of a
            # crashed worker is counted by the controller before it starts. Each worker counts
            # itself here once, after its last test. So the worker that makes the counts equal
            # is the last one running: no test anywhere can still use a once fixture. A worker
            # that finishes before others have even started does not make them equal.
            self._counted = True
            finished = self.client.incr(self.key("finished"), ttl_ms=self.key_ttl)
            replacements = int(self.client.get(self.key("replacements"), 0))
            if finished < self.workercount + replacements:
                return
        self._run_once_teardowns()

    def _describe_teardown_error(self, exc: Exception) -> str:
        where = "the controller" if self.worker == "main" and self._nodes else self.worker
        return f"once-fixture teardown failed in {where}:\n" + "".join(
            traceback.format_exception(exc)
        ).rstrip("\n")

    def _set_up(self) -> list[tuple[str, dict[str, Any]]]:
        """The once fixtures set up in this run (by any worker) and not torn down yet, with a
        teardown to run; the newest first."""
        from ephemeral_broker_client._operations import ONCE_LOCK_SUFFIX

        found = []
        for info in self.client.list(self.key("once:"), limit=10_000):
            if info.key.endswith(ONCE_LOCK_SUFFIX):
                continue
            record = self.client.get(info.key, None)
            if isinstance(record, dict) and record.get("ok") and record.get("teardown"):
                found.append((info.key, record))
        # A once fixture set up with another's value is torn down before it.
        return sorted(found, key=lambda entry: -int(entry[1]["seq"]))

    def _run_once_teardowns(self, *, known_only: bool = False) -> None:
        """Run the pending teardowns, newest first; raise what they raised. `known_only`
        leaves those whose definition this process has not imported to someone else."""
        prefix = self.key("once:")
        errors: list[Exception] = []
        for key, record in self._set_up():
            definition = _ONCE_DEFINITIONS.get(key[len(prefix) :])
            if known_only and (definition is None or definition.teardown is None):
                continue
            # Taken by deleting it, which succeeds for one caller only: even if two workers
            # believe they are the last (one that was interrupted, then its replacement), a
            # teardown runs once. Tried once, never again: the value goes with its resource.
            if not self.client.delete(key):
                continue
            try:
                if definition is None or definition.teardown is None:
                    raise OnceFixtureError(
                        f"the teardown of once fixture {record.get('fixture')!r} cannot run in "
                        f"worker {self.worker}: its definition was not imported here"
                    )
                definition.teardown(record["value"])
            except Exception as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"{len(errors)} once-fixture teardowns failed", errors)

    def _forget_run(self) -> None:
        # A broker that outlives the run keeps nothing of it.
        for info in self.client.list(self.namespace + ":", limit=10_000):
            self.client.delete(info.key)

    # ---- once fixtures -----------------------------------------------------------------------

    def once_value(self, definition: _OnceDefinition, request: pytest.FixtureRequest) -> Any:
        """The value of a once fixture: set up here if no worker did yet, else theirs."""
        self._once_requested = True
        key = self.key("once:" + definition.ident)
        me = f"{self.worker}@{socket_module.gethostname()}:{os.getpid()}"

        def factory() -> dict[str, Any]:
            return self._run_setup(definition, request, me)

        ttl_ms = definition.ttl_ms if definition.ttl_ms is not None else self.key_ttl
        record = self.client.once(key, factory, ttl_ms, lock_ttl_ms=definition.lock_ttl_ms)
        own_failure = self._setup_failures.pop(definition.ident, None)
        if not isinstance(record, dict):
            raise OnceFixtureError(
                f"once fixture {definition.name!r}: {key!r} holds {record!r}, not its record"
            )
        if record.get("ok"):
            return record["value"]
        if own_failure is not None and record.get("by") == me:
            raise own_failure  # the original exception, with its traceback, where it happened
        if "skip" in record:
            pytest.skip(str(record["skip"]))
        raise OnceFixtureError(
            f"the setup of once fixture {definition.name!r} failed in worker "
            f"{record.get('worker')} (it runs once per test run; see the error there): "
            f"{record.get('error')}"
        )

    def _run_setup(
        self, definition: _OnceDefinition, request: pytest.FixtureRequest, me: str
    ) -> dict[str, Any]:
        from ephemeral_broker_client._protocol import encode_json

        record: dict[str, Any] = {"fixture": definition.name, "worker": self.worker, "by": me}
        try:
            # Resolved here, in the one worker that sets up: the other workers never set up
            # the fixtures that only the setup needs.
            arguments = {
                name: request if name == "request" else request.getfixturevalue(name)
                for name in definition.argnames
            }
            value = definition.setup(**arguments)
            # Checked before anything is stored: every worker must get this value as JSON.
            encode_json({"value": value}, f"the value of once fixture {definition.name!r}")
        except pytest.skip.Exception as exc:
            self._setup_failures[definition.ident] = exc
            return {**record, "ok": False, "skip": str(exc.msg)}
        except (Exception, pytest.fail.Exception) as exc:
            self._setup_failures[definition.ident] = exc
            error = "".join(traceback.format_exception_only(exc)).strip()
            return {**record, "ok": False, "error": error}
        seq = self.client.incr(self.key("setups"), ttl_ms=self.key_ttl)
        return {**record, "ok": True, "value": value, "seq": seq,
                "teardown": definition.teardown is not None}  # fmt: skip


def run_of(config: pytest.Config) -> BrokerRun:
    """The plugin's state in this process; OnceFixtureError when the plugin is not enabled."""
    run = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if not isinstance(run, BrokerRun):
        raise OnceFixtureError(
            "the ephemeral-broker plugin is not enabled: run pytest with --broker, or set "
            "broker = true in the ini file"
        )
    return run


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


# ---- once_fixture --------------------------------------------------------------------------


@dataclass(frozen=True)
class _OnceDefinition:
    ident: str
    name: str
    setup: Callable[..., Any]
    argnames: tuple[str, ...]
    teardown: Callable[[Any], object] | None
    ttl_ms: int | None
    lock_ttl_ms: int


# Every once fixture defined in this process, by ident. Every xdist worker imports the same
# conftests and test modules, so the last worker finds each teardown here.
_ONCE_DEFINITIONS: dict[str, _OnceDefinition] = {}


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
        definition = _OnceDefinition(
            ident, fixture_name, function, argnames, teardown, ttl_ms, lock_ttl_ms
        )
        _ONCE_DEFINITIONS[ident] = definition

        def once(request: pytest.FixtureRequest) -> Any:
            return run_of(request.config).once_value(definition, request)

        # Not functools.wraps: pytest follows __wrapped__ and would call `function` directly.
        once.__name__ = function.__name__
        once.__qualname__ = function.__qualname__
        once.__module__ = function.__module__
        once.__doc__ = function.__doc__
        return pytest.fixture(once, scope="session", name=fixture_name, autouse=autouse)

    return decorate if setup is None else decorate(setup)
