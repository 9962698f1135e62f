"""The pytest plugin (`ephemeral_broker_client.pytest_plugin`), run the way users run it:
`pytester` suites
under `--broker` with `-n 4` and without xdist, real interruptions (a KeyboardInterrupt in a
test, Ctrl-C to the process group, SIGKILL of pytest), a broker given by $EPHEMERAL_PIPE, and
the `examples/pytest-xdist` project copied and run as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Imported here, before any in-process pytester run: pytester removes the modules a run
# imported when it ends, and a second copy of the client's modules imported by a later run
# would mix with the first (the package keeps its attributes). Runs that talk to a broker
# run in a subprocess: httpx imports httpcore only on first use, with the same effect.
import ephemeral_broker_client.pytest_plugin.broker
import ephemeral_broker_client.pytest_plugin.fixtures  # noqa: F401
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store.base import StoreLimits
from ephemeral_broker.store.redis import RedisStore
from ephemeral_broker_client.pytest_plugin import once_fixture
from tests.support.brokers import BrokerProcess
from tests.support.paths import ROOT
from tests.support.redis_server import fresh_namespace
from tests.support.waiting import wait_until

RUN_TIMEOUT = 120.0

# The conftest of the suites run below: every event is one JSON line appended to a file, so
# that the order of events across worker processes can be checked afterwards.
CONFTEST = """
import json, os, time
from pathlib import Path

from ephemeral_broker_client.pytest_plugin import once_fixture

EVENTS = Path(__file__).parent / "events.jsonl"


def record(kind, **fields):
    with EVENTS.open("a") as out:
        out.write(json.dumps({"kind": kind, "pid": os.getpid(), **fields}) + "\\n")


def events():
    return [json.loads(line) for line in EVENTS.read_text().splitlines()] if EVENTS.exists() else []


def worker(config):
    return getattr(config, "workerinput", {}).get("workerid", "main")


def drop_database(value):
    record("teardown", value=value)


@once_fixture(teardown=drop_database)
def database(tmp_path_factory):
    record("setup")
    time.sleep(0.2)  # other workers ask for it meanwhile
    return {"name": "db-%d" % os.getpid(), "tags": ("a", "b")}


@once_fixture
def broken():
    record("broken-setup")
    raise RuntimeError("cannot build it")


@once_fixture
def unshareable():
    record("unshareable-setup")
    return {"handle": object()}


def pytest_sessionfinish(session):
    record("sessionfinish", worker=worker(session.config))
"""

# Four groups for `-n 4 --dist loadgroup`: one per worker. The "late" worker asks for the
# once fixture only after another worker has ended its session.
SUITE = """
import asyncio, os, time
import pytest
from conftest import events, record, worker

GROUPS = ["a", "b", "c"]


def grouped(*values):
    return [pytest.param(*v, marks=pytest.mark.xdist_group(v[0])) for v in values]


@pytest.mark.parametrize(("group", "n"), grouped(*[(g, n) for g in GROUPS for n in range(3)]))
def test_database(group, n, database, broker_worker_slot, broker, request):
    broker.set(f"seen-{group}{n}", database["name"], ttl_ms=60_000)
    assert broker.get(f"seen-{group}{n}") == database["name"]
    record("test", value=database, slot=broker_worker_slot, worker=worker(request.config),
           pipe=os.environ["EPHEMERAL_PIPE"])


@pytest.mark.parametrize("group", grouped(*[(g,) for g in GROUPS]))
def test_broken(group, broken):
    pass


@pytest.mark.parametrize("group", grouped(*[(g,) for g in GROUPS]))
def test_unshareable(group, unshareable):
    pass


@pytest.mark.xdist_group("a")
def test_async_client_in_two_event_loops(broker_async, database):
    async def roundtrip():
        await broker_async.set("async-key", database["name"], ttl_ms=60_000)
        return await broker_async.get("async-key")

    assert asyncio.run(roundtrip()) == database["name"]
    assert asyncio.run(roundtrip()) == database["name"]


@pytest.mark.xdist_group("late")
def test_late_user(request, broker_worker_slot):
    me = worker(request.config)
    if me != "main":
        deadline = time.monotonic() + 60
        while not any(e["kind"] == "sessionfinish" and e["worker"] != me for e in events()):
            assert time.monotonic() < deadline, "no other worker finished"
            time.sleep(0.02)
    value = request.getfixturevalue("database")
    assert not any(e["kind"] == "teardown" for e in events())
    record("test", value=value, slot=broker_worker_slot, worker=me,
           pipe=os.environ["EPHEMERAL_PIPE"])
"""

INI = """
[pytest]
markers =
    xdist_group: a group of tests for --dist loadgroup
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The suite above, in a fresh directory. When this test suite itself runs under xdist,
    its PYTEST_XDIST_* variables must not reach the inner runs."""
    for name in list(os.environ):
        if name.startswith("PYTEST_XDIST_"):
            monkeypatch.delenv(name)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini(INI)
    return pytester


def read_events(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    path = pytester.path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_once_semantics(events: list[dict[str, Any]]) -> None:
    """The once fixture was set up once, every test saw its value (as JSON), its teardown ran
    once with that value after every test, and nothing of the broker is left."""
    kinds = [event["kind"] for event in events]
    setups = [event for event in events if event["kind"] == "setup"]
    assert len(setups) == 1, kinds
    value = {"name": f"db-{setups[0]['pid']}", "tags": ["a", "b"]}
    tests = [event for event in events if event["kind"] == "test"]
    assert len(tests) == 10 and all(event["value"] == value for event in tests), tests
    teardowns = [i for i, kind in enumerate(kinds) if kind == "teardown"]
    assert len(teardowns) == 1 and events[teardowns[0]]["value"] == value, kinds
    assert teardowns[0] > max(i for i, kind in enumerate(kinds) if kind == "test"), kinds
    assert kinds.count("broken-setup") == 1 and kinds.count("unshareable-setup") == 1, kinds
    pipes = {event["pipe"] for event in tests}
    assert len(pipes) == 1
    socket = Path(pipes.pop())
    assert not socket.exists() and not socket.parent.exists()


def test_under_xdist_once_fixture_runs_once_and_tears_down_after_the_last_test(
    suite: pytest.Pytester,
) -> None:
    result = suite.runpytest_subprocess(
        "--broker", "-n", "4", "--dist", "loadgroup", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=11, errors=6)
    result.stdout.fnmatch_lines(["ephemeral-broker: started at *broker.sock (pid *)"])
    # The failed setup ran once: the worker that ran it shows its error, the others name it.
    result.stdout.fnmatch_lines(["*RuntimeError: cannot build it*"])
    result.stdout.fnmatch_lines(
        ["*OnceFixtureError: the setup of once fixture 'broken' failed in worker gw*"]
    )
    # A value that cannot travel as JSON fails the same way, naming the fixture.
    result.stdout.fnmatch_lines(
        ["*TypeError: the value of once fixture 'unshareable' cannot be encoded as JSON*"]
    )
    events = read_events(suite)
    check_once_semantics(events)
    slots = {event["worker"]: event["slot"] for event in events if event["kind"] == "test"}
    assert len(slots) == 4, slots  # every worker ran tests
    assert len(set(slots.values())) == 4 and all(slot < 4 for slot in slots.values()), slots
    # Each worker kept its slot for all its tests.
    assert all(
        event["slot"] == slots[event["worker"]] for event in events if event["kind"] == "test"
    )


def test_the_same_suite_passes_without_xdist_enabled_by_the_ini_file(
    suite: pytest.Pytester,
) -> None:
    suite.makeini(INI + "broker = true\n")
    result = suite.runpytest_subprocess("-p", "no:xdist", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=11, errors=6)
    events = read_events(suite)
    check_once_semantics(events)
    assert {(e["worker"], e["slot"]) for e in events if e["kind"] == "test"} == {("main", 0)}


INTERRUPTED_SUITE = """
import os
from conftest import record


def test_before(database):
    pass


def test_interrupt(database):
    record("interrupt", pipe=os.environ["EPHEMERAL_PIPE"])
    raise KeyboardInterrupt


def test_never_reached():
    pass
"""


@pytest.mark.defect(21)
def test_keyboard_interrupt_in_a_test_leaves_no_socket(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_suite=INTERRUPTED_SUITE)
    result = suite.runpytest_subprocess("--broker", "-n", "2", timeout=RUN_TIMEOUT)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    events = read_events(suite)
    kinds = [event["kind"] for event in events]
    assert kinds.count("setup") == 1 and kinds.count("teardown") == 1, kinds
    socket = Path(next(event["pipe"] for event in events if event["kind"] == "interrupt"))
    assert not socket.exists() and not socket.parent.exists()


CRASHING_SUITE = """
import os
import pytest
from conftest import record


def test_crash(database):
    os._exit(1)


@pytest.mark.parametrize("n", range(6))
def test_after(n, database):
    record("test", n=n)
"""


@pytest.mark.parametrize("restarts", ["2", "0"])
def test_a_crashed_worker_does_not_make_the_teardown_early_or_lost(
    suite: pytest.Pytester, restarts: str
) -> None:
    # Replaced (restarts allowed): the replacement is counted before it runs the crashed
    # worker's tests. Not replaced: nobody can be the last worker, so the controller, which
    # loaded the rootdir's conftest.py, tears down after every worker has ended.
    suite.makepyfile(test_suite=CRASHING_SUITE)
    result = suite.runpytest_subprocess(
        "--broker", "-n", "2", "--max-worker-restart", restarts, timeout=RUN_TIMEOUT
    )
    result.stdout.fnmatch_lines(
        ["*worker 'gw*' crashed while running 'test_suite.py::test_crash'*"]
    )
    result.stdout.no_fnmatch_line("*did not run*")
    events = read_events(suite)
    kinds = [event["kind"] for event in events]
    assert kinds.count("setup") == 1 and kinds.count("teardown") == 1, kinds
    assert kinds.index("teardown") > max(i for i, kind in enumerate(kinds) if kind == "test")
    if restarts == "0":
        workers = {event["pid"] for event in events if event["kind"] in ("setup", "test")}
        assert events[kinds.index("teardown")]["pid"] not in workers  # the controller's


WAITING_SUITE = """
import os, time
from conftest import record


def test_waits(database, broker_worker_slot):
    record("running", pipe=os.environ["EPHEMERAL_PIPE"])
    time.sleep(60)
"""


def start_waiting_run(
    pytester: pytest.Pytester, *args: str, new_session: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start pytest on WAITING_SUITE in a subprocess; return it and its broker's socket once
    its test runs."""
    pytester.makepyfile(test_suite=WAITING_SUITE)
    events = pytester.path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--broker", *args],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    try:
        wait_until(
            lambda: events.exists() and '"running"' in events.read_text(),
            timeout=RUN_TIMEOUT,
            what="the test to run",
        )
    except BaseException:
        if new_session:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest and its workers, all ours
        else:
            proc.kill()
        proc.wait()
        raise
    running = next(e for e in read_events(pytester) if e["kind"] == "running")
    return proc, Path(running["pipe"])


@pytest.mark.defect(21)
def test_ctrl_c_at_the_terminal_leaves_no_socket(suite: pytest.Pytester) -> None:
    # A terminal's Ctrl-C signals every process of the foreground group: pytest and its
    # workers. The broker is in a session of its own; pytest stops it after the workers.
    proc, socket = start_waiting_run(suite, "-n", "2", new_session=True)
    assert socket.exists()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=RUN_TIMEOUT) == pytest.ExitCode.INTERRUPTED
    kinds = [event["kind"] for event in read_events(suite)]
    assert kinds.count("teardown") == 1, kinds
    assert not socket.exists() and not socket.parent.exists()


@pytest.mark.defect(21)
def test_a_killed_pytest_leaves_no_broker_behind(suite: pytest.Pytester) -> None:
    # SIGKILL gives pytest no chance to stop its broker: the broker notices that its parent
    # is gone and shuts down by itself, removing its socket and directory.
    proc, socket = start_waiting_run(suite)
    assert socket.exists()
    proc.kill()  # by its pid
    proc.wait(timeout=RUN_TIMEOUT)
    wait_until(lambda: not socket.parent.exists(), timeout=30, what="the orphaned broker to stop")


def test_uses_the_broker_in_ephemeral_pipe(
    suite: pytest.Pytester, broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(
        test_suite="""
        import os

        def test_one(database, broker, broker_worker_slot):
            assert os.environ["EPHEMERAL_PIPE"] == broker.socket
            broker.set("left-by-the-test", 1, ttl_ms=60_000)

        def test_two(database, broker_worker_slot):
            pass
        """
    )
    monkeypatch.setenv("EPHEMERAL_PIPE", str(broker.socket))
    result = suite.runpytest_subprocess(
        "--broker", "-n", "2", "--broker-max-items", "5", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"ephemeral-broker: using the broker at {broker.socket} ($EPHEMERAL_PIPE); "
            "--broker-max-items not applied to it"
        ]
    )
    kinds = [event["kind"] for event in read_events(suite)]
    assert kinds.count("setup") == 1 and kinds.count("teardown") == 1, kinds
    # The run's own keys and slots are gone; what the tests stored is theirs to keep.
    with broker.client() as http:
        assert [k["key"] for k in http.get("/v1/keys").json()["keys"]] == ["left-by-the-test"]
        assert http.get("/v1/leases").json()["pools"] == []
    assert broker.socket.exists()  # not ours to stop


def test_disabled_by_default_it_adds_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import os

        def test_no_broker_in_the_environment():
            assert "EPHEMERAL_PIPE" not in os.environ

        def test_no_fixture(broker_worker_slot):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'broker_worker_slot' not found*"])
    result.stdout.no_fnmatch_line("ephemeral-broker:*")
    refused = pytester.runpytest("--broker-socket", "/tmp/x.sock")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(
        ["*--broker-socket has no effect without --broker (or broker = true in the ini file)"]
    )


def test_help_lists_the_options_in_one_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "ephemeral-broker: one broker per test run, shared by xdist workers:",
            "  --broker *",
            "  --no-broker *",
            "  --broker-socket=PATH *",
            "  --broker-max-items=N *",
            "  --broker-max-leases=N*",
            "  --broker-max-value-size=BYTES*",
            "  --broker-log-level=LEVEL*",
            "  --broker-store=URL*",
            "  --broker-namespace=NAME*",
            "  --broker-auth *",
            "  --broker-start-timeout=SECONDS*",
            "  --broker-key-ttl=MS *",
        ]
    )
    result.stdout.fnmatch_lines(["  broker (bool):*", "  broker_socket (string):*"])


@pytest.fixture
def private_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A TMPDIR of the test's own (short: a socket path must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="eb-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_broker_that_cannot_start_stops_the_run_with_its_reason(
    pytester: pytest.Pytester,
    private_tmpdir: Path,
    broker: BrokerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytester.makepyfile("def test_never_runs(broker):\n    raise AssertionError\n")
    result = pytester.runpytest("--broker", "--broker-max-items", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: ephemeral-broker: the broker exited with code 2: ephemeral-broker: invalid "
            "settings: max_items='-1' (BROKER_MAX_ITEMS or --max-items): *"
        ]
    )
    assert list(private_tmpdir.iterdir()) == []  # no private directory left behind
    assert "EPHEMERAL_PIPE" not in os.environ  # what the run exported is restored
    # A socket another broker answers on is refused by ours, and left alone by the plugin.
    taken = pytester.runpytest("--broker", "--broker-socket", str(broker.socket))
    assert taken.ret == pytest.ExitCode.USAGE_ERROR
    taken.stderr.fnmatch_lines([f"*a broker is already running on {broker.socket}*"])
    with broker.client() as http:
        assert http.get("/healthz").status_code == 200
    monkeypatch.setenv("EPHEMERAL_PIPE", str(private_tmpdir / "nobody.sock"))
    absent = pytester.runpytest_subprocess("--broker", "--broker-start-timeout", "0.3")
    assert absent.ret == pytest.ExitCode.USAGE_ERROR
    absent.stderr.fnmatch_lines(
        ["ERROR: ephemeral-broker: the broker in $EPHEMERAL_PIPE does not answer: *nobody.sock*"]
    )
    monkeypatch.delenv("EPHEMERAL_PIPE")
    bad = pytester.runpytest("--broker", "--broker-start-timeout", "soon")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(
        ["*--broker-start-timeout (ini: broker_start_timeout) must be a positive float, not 'soon'"]
    )


def test_broker_auth_gives_the_tests_a_fresh_secret_and_the_log_goes_to_the_summary(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import os
        import httpx

        def test_signed(broker):
            assert len(os.environ["EPHEMERAL_SECRET"]) == 64
            broker.set("k", 1, ttl_ms=60_000)
            assert broker.get("k") == 1

        def test_unsigned_is_refused():
            transport = httpx.HTTPTransport(uds=os.environ["EPHEMERAL_PIPE"])
            with httpx.Client(transport=transport) as http:
                assert http.get("http://localhost/v1/keys/k").status_code == 401
        """
    )
    result = pytester.runpytest_subprocess(
        "--broker", "--broker-auth", "--broker-log-level", "info", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= ephemeral-broker =*", "broker log:", "*broker ready*auth=on*"])


def test_a_failing_teardown_is_an_error_at_the_last_test(
    pytester: pytest.Pytester, private_tmpdir: Path
) -> None:
    pytester.makeconftest(
        """
        from ephemeral_broker_client.pytest_plugin import once_fixture

        def explode(value):
            raise RuntimeError(f"cannot drop {value}")

        @once_fixture(teardown=explode)
        def resource():
            return "r1"
        """
    )
    pytester.makepyfile(
        "def test_one(resource):\n    assert resource == 'r1'\ndef test_two(resource):\n    pass\n"
    )
    result = pytester.runpytest_subprocess(
        "--broker", "--broker-socket", str(private_tmpdir / "b.sock"), timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_two*", "*cannot drop r1*"])
    assert list(private_tmpdir.iterdir()) == []


def test_a_failing_teardown_in_a_worker_without_tests_fails_the_run(
    suite: pytest.Pytester,
) -> None:
    # One group for two workers: one worker gets no test and (held back below) finishes
    # last, after the other worker's last test; its teardown error has no test to go to.
    suite.makeconftest(
        CONFTEST
        + """

def explode(value):
    raise RuntimeError("cannot drop " + value)


@once_fixture(teardown=explode)
def resource():
    return "r1"


def pytest_runtest_logfinish(nodeid):
    if "PYTEST_XDIST_WORKER" in os.environ:  # not the controller, which relays the reports
        record("ran", worker=os.environ["PYTEST_XDIST_WORKER"])


import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    me = worker(session.config)
    if not any(e["kind"] == "ran" and e["worker"] == me for e in events()):
        deadline = time.monotonic() + 60
        while not any(e["kind"] == "sessionfinish" and e["worker"] != me for e in events()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    record("sessionfinish", worker=me)
"""
    )
    suite.makepyfile(
        test_suite="import pytest\n\n@pytest.mark.xdist_group('only')\n"
        "def test_one(resource):\n    assert resource == 'r1'\n"
    )
    result = suite.runpytest_subprocess(
        "--broker", "-n", "2", "--dist", "loadgroup", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= ephemeral-broker =*",
            "once-fixture teardown failed in gw*:",
            "*RuntimeError: cannot drop r1",
        ]
    )


def test_once_fixture_refuses_what_cannot_run_in_another_process() -> None:
    def generator() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"plain function returning its value.*teardown="):
        once_fixture(generator)

    def variadic(*args: Any) -> int:
        return 1

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs cannot name fixtures"):
        once_fixture(variadic)


def test_the_example_project_runs_as_its_readme_says(tmp_path: Path) -> None:
    # Copied out of the repository and run as a user would: `pytest -n 4` in its directory.
    project = tmp_path / "project"
    shutil.copytree(ROOT / "examples" / "pytest-xdist", project)
    scratch = Path(tempfile.mkdtemp(prefix="eb-", dir="/tmp"))
    try:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PYTEST_", "EPHEMERAL_", "BROKER_"))
        }
        env["TMPDIR"] = str(scratch)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-n", "4", "-p", "no:cacheprovider"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "9 passed" in result.stdout, result.stdout
        # The database was dropped after the last test, and the broker removed its socket.
        leftovers = [p.name for p in scratch.iterdir() if not p.name.startswith("pytest-of-")]
        assert leftovers == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_plugin_is_registered_by_the_distribution() -> None:
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="pytest11") if ep.name == "ephemeral_broker"]
    assert entry.value == "ephemeral_broker_client.pytest_plugin"


def test_a_disabled_plugin_does_not_import_the_client() -> None:
    # Loaded by every pytest run in the environment: it must not cost them httpx.
    probe = (
        "import sys, ephemeral_broker_client.pytest_plugin; "
        "heavy = ('httpx', 'ephemeral_broker_client._sync', 'ephemeral_broker'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


def test_the_plugin_points_its_broker_at_redis_by_option_or_ini(
    pytester: pytest.Pytester, private_tmpdir: Path, redis_url: str
) -> None:
    pytester.makepyfile(
        test_shared="""
        def test_state_lives_in_redis(broker):
            stats = broker.stats()
            assert stats["store"] == "redis", stats
            broker.set("seen-by-every-host", 1, ttl_ms=60_000)
        """
    )
    namespace = fresh_namespace()
    by_option = pytester.runpytest_subprocess(
        "--broker",
        "--broker-store",
        redis_url,
        "--broker-namespace",
        namespace,
        timeout=RUN_TIMEOUT,
    )
    by_option.assert_outcomes(passed=1)
    pytester.makeini(
        f"[pytest]\nbroker = true\nbroker_store = {redis_url}\nbroker_namespace = {namespace}\n"
    )
    by_ini = pytester.runpytest_subprocess(timeout=RUN_TIMEOUT)
    by_ini.assert_outcomes(passed=1)
    # Both runs used the same namespace, and what they stored outlives their brokers.

    async def read_back() -> bytes | None:
        store = RedisStore(StoreLimits.from_settings(BrokerSettings()), redis_url, namespace)
        await store.start()
        try:
            item = await store.get("seen-by-every-host")
            return None if item is None else item.value
        finally:
            await store.close()

    assert asyncio.run(read_back()) == b"1"
