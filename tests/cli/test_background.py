"""`ephemeral-broker start` / `stop`: a detached broker shared by the steps of a CI job.

The steps are separate shell processes, as in a CI job: the first starts the broker and hands
its variables on (by `eval` or through a $GITHUB_ENV-style file), later ones use it, the last
stops it. Every broker a test starts is killed by its pid in the teardown if it still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.brokers import BIN_DIR, BROKER_EXE, uds_client
from tests.support.slow_upload import SlowUpload
from tests.support.waiting import wait_until

EPB = str(BIN_DIR / "epb")


def alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty for a zombie
    except FileNotFoundError:
        return False


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    """Pids of brokers a test started; any still running at the end is killed by its pid."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def sh(script: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**os.environ, "PATH": f"{BIN_DIR}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start(*flags: str, pids: list[int]) -> dict[str, str]:
    result = subprocess.run(
        [BROKER_EXE, "start", "--format", "json", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    variables: dict[str, str] = {k: str(v) for k, v in json.loads(result.stdout).items()}
    pids.append(int(variables["EPHEMERAL_BROKER_PID"]))
    return variables


def test_ci_steps_share_one_broker_through_github_env(
    short_tmp: Path, started_pids: list[int]
) -> None:
    github_env = short_tmp / "github_env"
    github_env.touch()
    env = {"GITHUB_ENV": str(github_env), "TMPDIR": str(short_tmp)}
    steps = [
        'ephemeral-broker start --idle-timeout 600000 --format github >> "$GITHUB_ENV"',
        "epb set db-token s3cr3t --ttl 60000 && epb lease accounts --worker step-2",
        "epb get db-token && epb lease accounts --worker step-3",
        "ephemeral-broker stop --format github",
    ]
    outputs = []
    for step in steps:
        # Each step is a new shell that sees what earlier steps wrote to $GITHUB_ENV.
        exported = dict(
            line.split("=", 1) for line in github_env.read_text().splitlines() if "=" in line
        )
        result = sh(step, {**env, **exported})
        assert result.returncode == 0, (step, result.stderr)
        outputs.append(result.stdout)
        if "EPHEMERAL_BROKER_PID" in exported and not started_pids:
            started_pids.append(int(exported["EPHEMERAL_BROKER_PID"]))
    variables = dict(line.split("=", 1) for line in github_env.read_text().splitlines())
    assert set(variables) == {"EPHEMERAL_PIPE", "EPHEMERAL_BROKER_PID"}
    assert outputs[1].split() == ["1", "0"]  # set's version, then lease value 0
    assert outputs[2].split() == ['"s3cr3t"', "1"]  # the value as JSON, then the next free slot
    assert outputs[3] == ""
    pid, pipe = int(variables["EPHEMERAL_BROKER_PID"]), Path(variables["EPHEMERAL_PIPE"])
    assert not alive(pid)
    assert not pipe.exists()
    assert not pipe.parent.exists()  # its private directory too


def test_eval_exports_and_unsets_in_one_shell(short_tmp: Path, started_pids: list[int]) -> None:
    script = r"""
        eval "$(ephemeral-broker start)"
        echo "pid=$EPHEMERAL_BROKER_PID"
        echo "pipe=$EPHEMERAL_PIPE"
        epb set shared '{"n": 1}' --json-value --ttl 60000 > /dev/null
        bash -c 'epb get shared'        # a child process finds the broker by the exports
        eval "$(ephemeral-broker stop)"
        echo "after=${EPHEMERAL_PIPE:-unset}/${EPHEMERAL_BROKER_PID:-unset}"
    """
    result = sh(script, {"TMPDIR": str(short_tmp)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pid = int(lines[0].removeprefix("pid="))
    started_pids.append(pid)
    pipe = Path(lines[1].removeprefix("pipe="))
    assert json.loads(lines[2]) == {"n": 1}
    assert lines[3] == "after=unset/unset"
    assert not alive(pid)
    assert not pipe.exists()


def test_start_returns_at_once_and_the_broker_is_detached(
    short_tmp: Path, started_pids: list[int]
) -> None:
    # $(…) would hang for as long as the broker lived if it held start's stdout or stderr.
    result = sh(
        'out=$(ephemeral-broker start --socket "$DIR/b.sock" 2>&1); echo "$out"',
        {"DIR": str(short_tmp)},
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split("EPHEMERAL_BROKER_PID=")[1].split(";")[0])
    started_pids.append(pid)
    assert f"export EPHEMERAL_PIPE={short_tmp}/b.sock;" in result.stdout
    assert os.getsid(pid) == pid  # its own session: no terminal, no Ctrl-C of ours
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == os.devnull
    with uds_client(short_tmp / "b.sock", timeout=10) as client:
        assert client.get("/v1/ping").status_code == 200
    stopped = subprocess.run(
        [BROKER_EXE, "stop", "--pid", str(pid), "--socket", str(short_tmp / "b.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(pid)
    assert not (short_tmp / "b.sock").exists()


def test_a_forgotten_broker_ends_by_itself_with_an_idle_timeout(
    short_tmp: Path, started_pids: list[int]
) -> None:
    sock = short_tmp / "idle.sock"
    variables = start("--socket", str(sock), "--idle-timeout", "300", pids=started_pids)
    pid = int(variables["EPHEMERAL_BROKER_PID"])
    wait_until(lambda: not alive(pid), timeout=30, what="the idle broker to exit")
    assert not sock.exists()


def test_the_log_file_gets_the_lines_after_ready_and_auth_secret_works(
    short_tmp: Path, started_pids: list[int]
) -> None:
    log = short_tmp / "broker.log"
    sock = short_tmp / "a.sock"
    variables = start(
        "--socket", str(sock), "--auth", "--log-file", str(log), "--access-log", pids=started_pids
    )
    secret = variables["EPHEMERAL_SECRET"]
    assert len(secret) == 64
    with uds_client(sock, timeout=10) as client:
        assert client.get("/v1/ping").status_code == 401
        bearer = {"Authorization": f"Bearer {secret}"}
        response = client.put(
            "/v1/keys/k", json={"value": "the-value", "ttl_ms": 60000}, headers=bearer
        )
        assert response.status_code == 201
    stopped = subprocess.run(
        [BROKER_EXE, "stop", "--format", "json"],
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": int(variables["EPHEMERAL_BROKER_PID"])}
    text = log.read_text()
    assert "broker ready" in text and "broker stopped" in text
    assert "method=PUT path=/v1/keys/k status=201" in text  # logged after start returned
    assert secret not in text and "the-value" not in text
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_a_bad_setting_fails_start_with_one_line_and_launches_nothing(short_tmp: Path) -> None:
    result = subprocess.run(
        [BROKER_EXE, "start", "--socket", str(short_tmp / "b.sock"), "--max-ttl", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "max_ttl='0' (BROKER_MAX_TTL or --max-ttl)" in result.stderr
    assert not (short_tmp / "b.sock").exists()


def test_start_on_a_live_socket_reports_the_brokers_own_error(
    short_tmp: Path, started_pids: list[int]
) -> None:
    sock = short_tmp / "b.sock"
    start("--socket", str(sock), pids=started_pids)
    second = subprocess.run(
        [BROKER_EXE, "start", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 2
    assert second.stdout == ""
    assert f"a broker is already running on {sock}" in second.stderr


def test_stop_refuses_a_pid_that_is_not_a_broker() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        result = subprocess.run(
            [BROKER_EXE, "stop", "--pid", str(sleeper.pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert f"pid {sleeper.pid} is not an ephemeral-broker" in result.stderr
        assert "nothing was signalled" in result.stderr
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        ([], {}, 2, "no broker pid: pass --pid or set EPHEMERAL_BROKER_PID"),
        (["--pid", "1", "--timeout", "0"], {}, 2, "--timeout must be a positive number"),
        ([], {"EPHEMERAL_BROKER_PID": "4194304"}, 0, "the broker has already stopped"),
    ],
)
def test_stop_without_a_running_broker(
    args: list[str], env: dict[str, str], code: int, says: str
) -> None:
    base = {k: v for k, v in os.environ.items() if k != "EPHEMERAL_BROKER_PID"}
    result = subprocess.run(
        [BROKER_EXE, "stop", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == code
    assert says in result.stderr


def test_stop_ends_a_drain_that_outlasts_its_timeout(
    short_tmp: Path, started_pids: list[int]
) -> None:
    sock = short_tmp / "b.sock"
    variables = start("--socket", str(sock), "--drain-timeout", "60000", pids=started_pids)
    pid = int(variables["EPHEMERAL_BROKER_PID"])
    # A request in flight for as long as the drain may last: a body that keeps moving.
    upload = SlowUpload(sock)
    try:
        with uds_client(sock, timeout=10) as client:
            wait_until(
                lambda: client.get("/v1/health").json()["connections"]["in_flight"] >= 2,
                what="the slow upload to count as in flight",
            )
        result = subprocess.run(
            [BROKER_EXE, "stop", "--pid", str(pid), "--socket", str(sock), "--timeout", "0.5"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        upload.close()
    assert result.returncode == 0, result.stderr
    assert f"broker {pid} still draining after 0.5 s; stopping it at once" in result.stderr
    assert not alive(pid)
    assert not sock.exists()


def test_stop_removes_the_socket_of_a_broker_that_was_killed(
    short_tmp: Path, started_pids: list[int]
) -> None:
    sock = short_tmp / "b.sock"
    variables = start("--socket", str(sock), pids=started_pids)
    pid = int(variables["EPHEMERAL_BROKER_PID"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), what="the killed broker to go")
    assert sock.is_socket()  # SIGKILL leaves it behind
    result = subprocess.run(
        [BROKER_EXE, "stop"],
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert "already stopped" in result.stderr
    assert not sock.exists()
    with pytest.raises(httpx.TransportError), uds_client(sock, timeout=2) as client:
        client.get("/v1/ping")
