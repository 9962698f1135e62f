"""`ephemeral-broker run [settings] [--auth] -- CMD [ARGS...]` with real child processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ephemeral_broker.cli.run import supervise
from ephemeral_broker.serving.server import run_in_new_loop
from ephemeral_broker.serving.signals import SIGNALS
from ephemeral_broker.settings import BrokerSettings
from tests.support.brokers import BROKER_EXE, read_first_line

PYTHON = sys.executable

READ_WRITE_CHILD = r"""
import json, os, stat, httpx
pipe = os.environ["EPHEMERAL_PIPE"]
client = httpx.Client(transport=httpx.HTTPTransport(uds=pipe), base_url="http://localhost",
                      timeout=30)
put = client.put("/v1/keys/greeting", json={"value": {"hello": "world"}, "ttl_ms": 60000})
got = client.get("/v1/keys/greeting")
incr = client.post("/v1/keys/hits/incr", json={"by": 5, "ttl_ms": 60000})
listed = client.get("/v1/keys")
print(json.dumps({
    "pipe": pipe,
    "statuses": [put.status_code, got.status_code, incr.status_code, listed.status_code],
    "value": got.json()["value"],
    "hits": incr.json()["value"],
    "keys": [k["key"] for k in listed.json()["keys"]],
    "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(pipe)).st_mode),
    "socket_mode": stat.S_IMODE(os.lstat(pipe).st_mode),
    "has_secret": "EPHEMERAL_SECRET" in os.environ,
}))
"""

AUTH_CHILD = r"""
import hashlib, json, os, time, httpx
from ephemeral_broker.signing import signature_headers
secret = os.environ["EPHEMERAL_SECRET"]
client = httpx.Client(transport=httpx.HTTPTransport(uds=os.environ["EPHEMERAL_PIPE"]),
                      base_url="http://localhost", timeout=30)
body = json.dumps({"value": "signed", "ttl_ms": 60000}).encode()
signed = signature_headers(secret, int(time.time() * 1000), "PUT", "/v1/keys/k", body)
cmdlines = [open(f"/proc/{pid}/cmdline", "rb").read() for pid in ("self", os.getppid())]
print(json.dumps({
    "anonymous": client.get("/v1/ping").status_code,
    "bearer": client.get("/v1/ping", headers={"Authorization": f"Bearer {secret}"}).status_code,
    "hmac": client.put("/v1/keys/k", content=body, headers=signed).status_code,
    "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(),
    "secret_length": len(secret),
    "secret_in_argv": any(secret.encode() in cmdline for cmdline in cmdlines),
}))
"""

# Counts the signals it gets; "ready" tells the test when its handler is in place. After the
# first one it waits, so that a duplicate would be counted, then exits 40 + count.
SIGNAL_COUNTING_CHILD = r"""
import signal, sys, time
received = 0
def count(signum, frame):
    global received
    received += 1
if sys.argv[1] != "default":
    signal.signal(getattr(signal, sys.argv[1]), count)
print("CHILD-READY", flush=True)
deadline = time.monotonic() + 30
while not received and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)
sys.exit(40 + received)
"""

# The child's very first action is a request; any connection error exits 1.
FIRST_REQUEST_CHILD = r"""
import os, socket, sys
conn = socket.socket(socket.AF_UNIX)
conn.connect(os.environ["EPHEMERAL_PIPE"])
conn.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
data = b""
while chunk := conn.recv(65536):
    data += chunk
sys.exit(0 if data.startswith(b"HTTP/1.1 200 ") else 1)
"""


def run_cli(
    tmp: Path, *command: str, flags: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BROKER_EXE, "run", *flags, "--", *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


def leftovers(tmp: Path) -> list[Path]:
    return [p for p in tmp.iterdir() if p.name.startswith("ephemeral-broker-")]


def test_child_reads_and_writes_the_broker_and_nothing_is_left(short_tmp: Path) -> None:
    done = run_cli(short_tmp, PYTHON, "-c", READ_WRITE_CHILD)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["statuses"] == [201, 200, 200, 200]
    assert report["value"] == {"hello": "world"}
    assert report["hits"] == 5
    assert report["keys"] == ["greeting", "hits"]
    pipe = Path(report["pipe"])
    assert pipe.parent.parent == short_tmp and pipe.parent.name.startswith("ephemeral-broker-")
    assert report["dir_mode"] == 0o700 and report["socket_mode"] == 0o600
    assert report["has_secret"] is False
    # run has exited, and with it the broker (it lives in run's process): nothing remains.
    assert not pipe.exists() and not pipe.parent.exists()
    assert leftovers(short_tmp) == []
    assert "broker stopped" in done.stderr


def test_auth_gives_the_child_a_fresh_secret_in_its_environment_only(short_tmp: Path) -> None:
    reports = []
    for _ in range(2):
        done = run_cli(short_tmp, PYTHON, "-c", AUTH_CHILD, flags=("--auth",))
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["anonymous"], report["bearer"], report["hmac"]) == (401, 200, 201)
        assert report["secret_length"] == 64
        assert report["secret_in_argv"] is False
        assert report["secret_sha256"] not in done.stderr
        assert "auth=on" in done.stderr
        reports.append(report)
    assert reports[0]["secret_sha256"] != reports[1]["secret_sha256"], "secrets must be fresh"
    assert leftovers(short_tmp) == []


def supervised(tmp: Path, monkeypatch: pytest.MonkeyPatch, *command: str) -> int:
    """`run`'s supervisor in this process (what `run` does after parsing its arguments): a
    real broker, a real child, no interpreter start-up for `run` itself."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return run_in_new_loop(supervise(BrokerSettings(), list(command)))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sys; sys.exit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + 15),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
        ("pass", 0),
    ],
    ids=["exit-3", "killed-by-sigterm", "killed-by-sigkill", "exit-0"],
)
def test_exit_code_of_the_child_is_propagated(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, code: str, expected: int
) -> None:
    assert supervised(short_tmp, monkeypatch, PYTHON, "-S", "-c", code) == expected
    assert leftovers(short_tmp) == []


def test_exit_code_through_the_command_line(short_tmp: Path) -> None:
    done = run_cli(short_tmp, PYTHON, "-S", "-c", "import sys; sys.exit(3)")
    assert done.returncode == 3, done.stderr
    assert leftovers(short_tmp) == []


def test_command_not_found_exits_127_with_one_line(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert supervised(short_tmp, monkeypatch, "no-such-command-eb5", "--flag") == 127
    assert capsys.readouterr().err == (
        "ephemeral-broker: run: command not found: no-such-command-eb5\n"
    )
    assert leftovers(short_tmp) == []


def test_command_that_cannot_be_executed_exits_126(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = short_tmp / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    assert supervised(short_tmp, monkeypatch, str(script)) == 126
    assert supervised(short_tmp, monkeypatch, str(short_tmp)) == 126  # a directory
    err = capsys.readouterr().err
    assert f"ephemeral-broker: run: cannot execute {script}: Permission denied" in err
    assert leftovers(short_tmp) == []


@pytest.mark.parametrize(
    ("sig", "handler", "expected"),
    [
        (signal.SIGTERM, "SIGTERM", 41),
        (signal.SIGINT, "SIGINT", 41),
        (signal.SIGTERM, "default", 128 + 15),
    ],
    ids=["sigterm-handled", "sigint-handled", "sigterm-default"],
)
@pytest.mark.defect(4)
@pytest.mark.defect(16)
def test_signal_reaches_the_child_once_and_run_exits_with_its_code(
    short_tmp: Path, sig: int, handler: str, expected: int
) -> None:
    """Defects 4 and 16: two handlers fired on one signal (the child was killed twice,
    the exit code was 0 or 1 depending on which won). One signal to `run` reaches the child
    exactly once (exit 41 = 40 + one signal), and `run` exits with the child's own code."""
    stderr_path = short_tmp / "run.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [BROKER_EXE, "run", "--", PYTHON, "-S", "-c", SIGNAL_COUNTING_CHILD, handler],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "TMPDIR": str(short_tmp)},
            start_new_session=True,  # no controlling terminal: the signal comes from us alone
        )
    try:
        assert read_first_line(proc, 30) == "CHILD-READY\n"
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=30) == expected, stderr_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    log = stderr_path.read_text()
    assert log.count("forwarding signal to the command") == 1
    assert leftovers(short_tmp) == []


def test_ctrl_c_at_a_terminal_reaches_the_child_once(short_tmp: Path) -> None:
    """Ctrl-C at a terminal sends SIGINT to the whole foreground process group, `run` and the
    child alike: `run` must not forward it a second time. (Two SIGINTs that arrive before the
    child runs again merge into one, so the child's count alone cannot show a duplicate:
    `run`'s debug log says what it did with the signal.)"""
    argv = [
        BROKER_EXE,
        "run",
        "--log-level",
        "debug",
        "--",
        PYTHON,
        "-S",
        "-c",
        SIGNAL_COUNTING_CHILD,
        "SIGINT",
    ]
    env = {**os.environ, "TMPDIR": str(short_tmp)}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: `run` as the session leader of a new terminal
        os.execve(BROKER_EXE, argv, env)  # noqa: S606 (our own argv, no shell)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while b"CHILD-READY" not in output:
            assert time.monotonic() < deadline, output
            if select.select([terminal], [], [], 1.0)[0]:
                output += os.read(terminal, 65536)
        os.write(terminal, b"\x03")  # what the Ctrl-C key sends
        while True:  # drain the terminal until `run` has exited and closed it
            if not select.select([terminal], [], [], 30)[0]:
                break
            try:
                chunk = os.read(terminal, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(terminal)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    log = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 41, log
    assert "SIGINT came from the terminal" in log
    assert "forwarding signal" not in log
    assert leftovers(short_tmp) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", PYTHON, "-c", "pass"], "put -- before the command"),
        (["run"], "put -- before the command"),
        (["run", "--"], "no command after --"),
        (["run", "--auth", "--secret-file", "/dev/null", "--", "true"], "cannot be combined"),
        (["run", "--max-items", "-1", "--", "true"], "max_items"),
    ],
    ids=["no-dashes", "nothing", "no-command", "auth-and-secret-file", "bad-setting"],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run(
        [BROKER_EXE, *args], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


@pytest.mark.defect(3)
def test_first_request_of_the_child_never_fails_20_times(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket listens before the child starts: its first request, made the instant it
    starts, is answered every time. In this process, 20 brokers in turn, each supervising
    a real child, which also shows the signal dispatcher is installed once (defect 3)."""
    for _ in range(20):
        assert supervised(short_tmp, monkeypatch, PYTHON, "-S", "-c", FIRST_REQUEST_CHILD) == 0
        assert leftovers(short_tmp) == []
    assert SIGNALS.installations == 1
    assert SIGNALS.listener_count == 0


@pytest.mark.defect(7)
def test_run_is_kept_alive_by_the_child_not_by_a_forever_future(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 7: the Node CLI kept itself alive with a never-resolving promise. `run`
    returns as soon as its child has exited and the broker has drained."""
    started = time.monotonic()
    assert supervised(short_tmp, monkeypatch, PYTHON, "-S", "-c", "pass") == 0
    assert time.monotonic() - started < 10
    assert leftovers(short_tmp) == []


def test_secret_file_is_used_and_handed_to_the_child(short_tmp: Path) -> None:
    secret = "from-a-file-" + hashlib.sha256(str(short_tmp).encode()).hexdigest()[:16]
    secret_file = short_tmp / "secret"
    secret_file.write_text(secret + "\n")
    done = run_cli(short_tmp, PYTHON, "-c", AUTH_CHILD, flags=("--secret-file", str(secret_file)))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["anonymous"], report["bearer"], report["hmac"]) == (401, 200, 201)
    assert report["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in done.stderr


# The child leaves a grandchild behind with a request in flight (its body never finishes),
# waits until the broker counts it, and exits 5: the broker then drains for that request.
LEAVES_A_REQUEST_IN_FLIGHT = r"""
import json, os, socket, subprocess, sys, time
GRANDCHILD = r'''
import os, socket, time
conn = socket.socket(socket.AF_UNIX)
conn.connect(os.environ["EPHEMERAL_PIPE"])
conn.sendall(b"PUT /v1/keys/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
time.sleep(60)
'''
subprocess.Popen([sys.executable, "-S", "-c", GRANDCHILD])
def in_flight():
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(os.environ["EPHEMERAL_PIPE"])
    conn.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])["connections"]["in_flight"]
deadline = time.monotonic() + 30
while in_flight() < 2 and time.monotonic() < deadline:  # the health request counts itself
    time.sleep(0.02)
sys.exit(5)
"""


def test_signal_while_draining_after_the_command_ended_stops_at_once(short_tmp: Path) -> None:
    stderr_path = short_tmp / "run.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                BROKER_EXE,
                "run",
                "--drain-timeout",
                "60000",
                "--",
                PYTHON,
                "-S",
                "-c",
                LEAVES_A_REQUEST_IN_FLIGHT,
            ],
            stderr=stderr,
            env={**os.environ, "TMPDIR": str(short_tmp)},
            start_new_session=True,  # its own process group: the grandchild is ended with it
        )
    try:
        deadline = time.monotonic() + 30
        while "shutting down" not in stderr_path.read_text():
            assert proc.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.02)
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 5  # still the command's code
        assert time.monotonic() - signalled < 10, "the drain (60 s) was not cut short"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = stderr_path.read_text()
    assert 'reason="command exited with 5"' in log and "forced=true" in log
    assert leftovers(short_tmp) == []


def test_a_socket_that_cannot_be_created_stops_run_before_the_command(short_tmp: Path) -> None:
    taken = short_tmp / "taken"
    taken.write_text("a regular file\n")
    marker = short_tmp / "command-ran"
    done = run_cli(short_tmp, "touch", str(marker), flags=("--socket", str(taken)))
    assert done.returncode == 2
    assert "not a socket" in done.stderr
    assert not marker.exists()
    assert taken.read_text() == "a regular file\n"


# Exits 0 once it has been asked to stop: a clean exit after a signal.
EXITS_0_ON_SIGTERM = r"""
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
open(sys.argv[1], "w").close()  # ready: the handler is in place
deadline = time.monotonic() + 30
while not stop and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(0 if stop == [signal.SIGTERM] else 99)
"""


@pytest.mark.defect(16)
def test_a_clean_exit_after_a_signal_is_exit_0(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 16: after a signal the Node CLI's exit code depended on which of two
    handlers won (0 or 1). The child's code is the one `run` exits with: here the child
    exits 0 after SIGTERM, sent to this process, in which `run`'s supervisor is running."""
    ready = short_tmp / "ready"

    def signal_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=signal_when_ready)
    sender.start()
    try:
        code = supervised(
            short_tmp, monkeypatch, PYTHON, "-S", "-c", EXITS_0_ON_SIGTERM, str(ready)
        )
    finally:
        sender.join()
    assert code == 0
    assert SIGNALS.listener_count == 0
    assert leftovers(short_tmp) == []
