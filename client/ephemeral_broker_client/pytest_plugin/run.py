"""The plugin's state in one pytest process (controller, worker, or the only one) and its
hooks: start or find the broker, hand it to the workers, run once-fixture teardowns, stop it."""

from __future__ import annotations

import os
import secrets
import socket as socket_module
import traceback
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from ephemeral_broker_client._operations import ONCE_LOCK_SUFFIX
from ephemeral_broker_client._protocol import encode_json
from ephemeral_broker_client._sync import BrokerClient
from ephemeral_broker_client.errors import BrokerError
from ephemeral_broker_client.pytest_plugin.broker import BrokerStartError, StartedBroker, launch
from ephemeral_broker_client.pytest_plugin.once import (
    NOT_ENABLED,
    ONCE_DEFINITIONS,
    OnceDefinition,
    OnceFixtureError,
)
from ephemeral_broker_client.pytest_plugin.options import (
    BROKER_SETTINGS,
    DEFAULT_KEY_TTL_MS,
    DEFAULT_LOG_LEVEL,
    DEFAULT_START_TIMEOUT_S,
    PLUGIN_NAME,
    WORKERINPUT_KEY,
    positive,
    setting,
    truthy,
)


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
        self.key_ttl = int(positive(config, "broker_key_ttl", DEFAULT_KEY_TTL_MS, int))
        self.start_timeout = positive(
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
                f"--broker-{suffix}"
                for suffix, *_ in BROKER_SETTINGS
                if setting(self.config, "broker_" + suffix.replace("-", "_")) is not None
            ]
            if truthy(setting(self.config, "broker_auth")):
                self.ignored_settings.append("--broker-auth")
            return
        self._start()

    def _start(self) -> None:
        flags: list[str] = []
        socket: Path | None = None
        for suffix, flag, _metavar, _help in BROKER_SETTINGS:
            value = setting(self.config, "broker_" + suffix.replace("-", "_"))
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
        if truthy(setting(self.config, "broker_auth")):
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
            try:
                self.started.wait_ready()
            except BrokerStartError as exc:
                raise pytest.UsageError(f"ephemeral-broker: {exc}") from None
        elif self.external:
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
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
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
        if self._crashed and (self._once_in_run or ONCE_DEFINITIONS):
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
        if not ONCE_DEFINITIONS:
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
            definition = ONCE_DEFINITIONS.get(key[len(prefix) :])
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

    def once_value(self, definition: OnceDefinition, request: pytest.FixtureRequest) -> Any:
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
        self, definition: OnceDefinition, request: pytest.FixtureRequest, me: str
    ) -> dict[str, Any]:
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
        return {
            **record,
            "ok": True,
            "value": value,
            "seq": seq,
            "teardown": definition.teardown is not None,
        }


def run_of(config: pytest.Config) -> BrokerRun:
    """The plugin's state in this process; OnceFixtureError when the plugin is not enabled."""
    run = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if not isinstance(run, BrokerRun):
        raise OnceFixtureError(NOT_ENABLED)
    return run
