"""The client commands of the installed console script, in subprocesses: stdout made for shell
pipelines, one error line on stderr naming the key, and the exit codes 0 (done), 1 (the operation
failed), 2 (usage) and 3 (the broker cannot be reached)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from ephemeral_broker.signing import verify
from ephemeral_broker_client import BrokerClient
from tests.support.brokers import BIN_DIR, BrokerProcess
from tests.support.raw_server import RawServer, http_answer

EXE = str(BIN_DIR / "ephemeral-broker")


def cli(
    *args: str, socket: Path | None = None, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    if socket is not None:
        environment["EPHEMERAL_PIPE"] = str(socket)
    return subprocess.run(
        [EXE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int, *named: str) -> str:
    """The one stderr line of a failed command, checked for the exit code and its names."""
    assert result.returncode == code, result
    assert result.stdout == ""
    line = result.stderr
    assert line.endswith("\n") and line.count("\n") == 1, line
    assert line.startswith("ephemeral-broker: ")
    for name in named:
        assert name in line, (name, line)
    return line


def test_set_and_get_print_for_pipelines(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    assert (
        ok(cli("set", ns + "greeting", "hello world", "--ttl", "60000", socket=sock))
        .strip()
        .isdigit()
    )
    # A string prints as a JSON string; --raw prints it as it is.
    assert ok(cli("get", ns + "greeting", socket=sock)) == '"hello world"\n'
    assert ok(cli("get", ns + "greeting", "--raw", socket=sock)) == "hello world\n"
    ok(
        cli(
            "set",
            ns + "cfg",
            '{"a": [1, 2.5, null]}',
            "--json-value",
            "--ttl",
            "60000",
            socket=sock,
        )
    )
    assert ok(cli("get", ns + "cfg", socket=sock)) == '{"a":[1,2.5,null]}\n'
    ok(cli("set", ns + "quoted", '"a string"', "--json-value", "--ttl", "60000", socket=sock))
    assert ok(cli("get", ns + "quoted", socket=sock)) == '"a string"\n'
    assert ok(cli("get", ns + "cfg", "--raw", socket=sock)) == '{"a":[1,2.5,null]}\n'
    ok(cli("set", ns + "lines", 'two\nlines "quoted"', "--ttl", "60000", socket=sock))
    assert ok(cli("get", ns + "lines", socket=sock)) == '"two\\nlines \\"quoted\\""\n'
    assert ok(cli("get", ns + "lines", "--raw", socket=sock)) == 'two\nlines "quoted"\n'
    whole = orjson.loads(ok(cli("get", ns + "cfg", "--json", socket=sock)))
    assert set(whole) == {"key", "value", "version", "expires_at"}
    assert (whole["key"], whole["value"]) == (ns + "cfg", {"a": [1, 2.5, None]})


def test_set_json_value_from_stdin(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    ok(
        cli(
            "set",
            ns + "piped",
            "-",
            "--json-value",
            "--ttl",
            "60000",
            socket=sock,
            stdin='{"from": "stdin"}',
        )
    )
    assert ok(cli("get", ns + "piped", socket=sock)) == '{"from":"stdin"}\n'
    # Without --json-value, "-" is just a string.
    ok(cli("set", ns + "dash", "-", "--ttl", "60000", socket=sock))
    assert ok(cli("get", ns + "dash", socket=sock)) == '"-"\n'


def test_failures_exit_1_with_one_line_naming_the_key(
    shared_broker: BrokerProcess, ns: str
) -> None:
    sock = shared_broker.socket
    failed(cli("get", ns + "missing", socket=sock), 1, f"key '{ns}missing' does not exist")
    ok(cli("set", ns + "once", "x", "--ttl", "60000", "--if-absent", socket=sock))
    failed(
        cli("set", ns + "once", "y", "--ttl", "60000", "--if-absent", socket=sock),
        1,
        f"key '{ns}once' already exists",
    )
    failed(
        cli("incr", ns + "once", socket=sock),
        1,
        f"""value of '{ns}once' is the string "x", not an integer""",
    )


def test_usage_errors_exit_2(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    failed(
        cli("set", "bad key", "v", "--ttl", "1000", socket=sock),
        2,
        "key 'bad key' contains the character ' '",
    )
    failed(cli("set", ns + "k", "v", socket=sock), 2, f"key '{ns}k' needs a TTL: pass --ttl MS")
    failed(
        cli("set", ns + "k", "NaN", "--json-value", "--ttl", "1", socket=sock),
        2,
        "not valid JSON",
        f"'{ns}k'",
    )
    failed(cli("release", socket=sock), 2, "needs a POOL")
    failed(cli("release", "pool", "--all", socket=sock), 2, "takes no POOL")
    # argparse's own usage errors keep exit code 2.
    assert cli("get", socket=sock).returncode == 2
    assert cli("get", "k", "--timeout", "-1", socket=sock).returncode == 2


def test_unreachable_exits_3_and_no_socket_exits_2(short_tmp: Path) -> None:
    started = time.monotonic()
    line = failed(
        cli("ping", "--timeout", "0.3", socket=short_tmp / "none.sock"),
        3,
        "cannot reach the broker",
        "none.sock",
    )
    assert "attempts" in line
    assert time.monotonic() - started < 30  # no 5 s default wait: --timeout was honoured
    environment = {k: v for k, v in os.environ.items() if k != "EPHEMERAL_PIPE"}
    result = subprocess.run(
        [EXE, "get", "k"], capture_output=True, text=True, env=environment, check=False
    )
    assert "EPHEMERAL_PIPE" in failed(result, 2, "get 'k'")


def test_socket_flag_wins_over_the_environment(shared_broker: BrokerProcess) -> None:
    result = cli("ping", "--socket", str(shared_broker.socket), EPHEMERAL_PIPE="/nonexistent")
    assert ok(result).startswith("pong ")


def test_del_list_incr(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    with BrokerClient(sock) as broker:
        for key in ("b", "a", "c"):
            broker.set(ns + key, key, 60_000)
    assert ok(cli("list", "--prefix", ns, socket=sock)) == f"{ns}a\n{ns}b\n{ns}c\n"
    listed = orjson.loads(ok(cli("list", "--prefix", ns, "--json", socket=sock)))
    assert [entry["key"] for entry in listed] == [ns + "a", ns + "b", ns + "c"]
    assert set(listed[0]) == {"key", "version", "expires_at", "size"}
    assert ok(cli("del", ns + "a", socket=sock)) == "true\n"
    assert ok(cli("del", ns + "a", socket=sock)) == "false\n"
    assert ok(cli("incr", ns + "n", "--ttl", "60000", socket=sock)) == "1\n"
    assert ok(cli("incr", ns + "n", "--by", "-5", socket=sock)) == "-4\n"


def test_system_commands(shared_broker: BrokerProcess) -> None:
    sock = shared_broker.socket
    assert ok(cli("ping", socket=sock)).startswith("pong ")
    assert orjson.loads(ok(cli("health", socket=sock)))["status"] == "healthy"
    assert "requests_total" in orjson.loads(ok(cli("stats", socket=sock)))
    assert "# TYPE ephemeral_broker_items gauge" in ok(cli("metrics", socket=sock))


def test_a_closed_pipe_is_not_an_error(shared_broker: BrokerProcess, ns: str) -> None:
    # More than a pipe buffer (64 KiB) of output, so the writer meets the closed pipe.
    with BrokerClient(shared_broker.socket) as broker:
        for i in range(200):
            broker.set(f"{ns}{i:04}-{'x' * 480}", 1, 60_000)
    writer = subprocess.Popen(
        [EXE, "list", "--prefix", ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "EPHEMERAL_PIPE": str(shared_broker.socket)},
    )
    assert writer.stdout is not None and writer.stderr is not None
    assert writer.stdout.read(1) == b"t"
    writer.stdout.close()  # the reader leaves, like `| head -c 1`
    assert writer.wait(timeout=60) == 0
    assert writer.stderr.read() == b""
    writer.stderr.close()


def test_the_secret_is_read_from_ephemeral_secret(short_tmp: Path) -> None:
    secret = "shared between broker and clients"
    server = RawServer(
        short_tmp / "rec.sock",
        lambda _: http_answer(200, b'{"key":"k","value":"v","version":1,"expires_at":1}'),
    )
    try:
        assert ok(cli("get", "k", socket=server.path, EPHEMERAL_SECRET=secret)) == '"v"\n'
    finally:
        server.close()
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])}
    digest = hashlib.sha256(body).hexdigest()
    now = time.time_ns() // 1_000_000
    assert verify(
        secret,
        headers["x-broker-timestamp"],
        headers["x-broker-signature"],
        method,
        target,
        digest,
        now,
    )


def test_client_commands_do_not_load_the_server_stack(shared_broker: BrokerProcess) -> None:
    probe = (
        "import sys\n"
        "from ephemeral_broker.cli.main import main\n"
        f"code = main(['ping', '--socket', {str(shared_broker.socket)!r}])\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'pydantic_settings'})\n"
        "print(code, loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.stdout.splitlines()[-1] == "0 []", result


def test_lease_and_release(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    pool = ns + "gpus"
    # Without --worker both commands name the same worker: this test process, their parent.
    assert ok(cli("lease", pool, "--ttl", "60000", socket=sock)) == "0\n"
    assert ok(cli("lease", pool, "--ttl", "60000", socket=sock)) == "0\n"
    assert ok(cli("lease", pool, "--worker", "w1", "--ttl", "60000", socket=sock)) == "1\n"
    whole = orjson.loads(
        ok(cli("lease", pool, "--worker", "w2", "--ttl", "60000", "--json", socket=sock))
    )
    assert (whole["value"], whole["worker_id"]) == (2, "w2")
    assert set(whole) == {"pool", "worker_id", "value", "token", "expires_at", "ttl_ms"}
    failed(
        cli("lease", pool, "--worker", "w3", "--size", "3", "--ttl", "60000", socket=sock),
        1,
        f"pool '{pool}' has no free value below --size 3",
    )
    assert ok(cli("release", pool, socket=sock)) == "true\n"
    assert ok(cli("release", pool, socket=sock)) == "false\n"
    ok(cli("lease", ns + "other", "--worker", "w1", "--ttl", "60000", socket=sock))
    assert ok(cli("release", "--all", "--worker", "w1", socket=sock)) == "2\n"
    failed(
        cli("lease", "bad pool", "--ttl", "1000", socket=sock),
        2,
        "pool 'bad pool' contains the character ' '",
    )


def test_get_wait(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    env = {**os.environ, "EPHEMERAL_PIPE": str(sock)}
    waiter = subprocess.Popen(
        [EXE, "get", ns + "late", "--wait", "60000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        time.sleep(0.5)  # let it start waiting (it also works if the key comes first)
        ok(cli("set", ns + "late", "arrived", "--ttl", "60000", socket=sock))
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            os.kill(waiter.pid, 9)
            waiter.wait()
    assert (waiter.returncode, out, err) == (0, '"arrived"\n', "")
    failed(
        cli("get", ns + "never", "--wait", "200", socket=sock),
        1,
        f"key '{ns}never' did not appear within --wait 200 ms",
    )
