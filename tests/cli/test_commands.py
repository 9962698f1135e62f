"""The command line as a person uses it, in subprocesses of the installed scripts against a real
broker: `epb` under its own name, values shown as JSON, `incr`'s hint about --json-value, and
the commands `touch`, `renew` and `set --if-version`, each with its success and its failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.brokers import BIN_DIR, BrokerFactory, BrokerProcess

EPB = str(BIN_DIR / "epb")
LONG_NAME = str(BIN_DIR / "ephemeral-broker")


def run(
    *args: str, socket: Path | None = None, program: str = EPB, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    if socket is not None:
        environment["EPHEMERAL_PIPE"] = str(socket)
    return subprocess.run(
        [program, *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout


def error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one stderr line of a failed `epb` command, without the trailing newline."""
    assert result.returncode == code, result
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("epb: "), result.stderr
    return result.stderr.removesuffix("\n")


def usage_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    """argparse's refusal of a command's arguments: exit 2, the usage, then the reason."""
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"usage: epb {command} "), result.stderr
    return result.stderr.splitlines()[-1]


# ---- the program's name ------------------------------------------------------------------------


def test_each_script_is_named_as_it_was_called(shared_broker: BrokerProcess, ns: str) -> None:
    assert ok(run("--help")).startswith("usage: epb [-h]")
    assert ok(run("--help", program=LONG_NAME)).startswith("usage: ephemeral-broker [-h]")
    assert ok(run("--version")).startswith("epb ")
    assert ok(run("get", "--help")).startswith("usage: epb get ")
    assert ok(run("run", "--help")).startswith("usage: epb run ")
    missing = run("get")
    assert missing.stderr.splitlines()[-1] == (
        "epb get: error: the following arguments are required: KEY"
    )
    # The error lines of the commands themselves too.
    sock = shared_broker.socket
    assert run("get", ns + "none", socket=sock).stderr.startswith("epb: key ")
    line = run("get", ns + "none", socket=sock, program=LONG_NAME).stderr
    assert line.startswith("ephemeral-broker: key ")
    # `python -m ephemeral_broker` has no script name of its own: the package's name stands.
    module = subprocess.run(
        [sys.executable, "-m", "ephemeral_broker", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert module.stdout.startswith("usage: ephemeral-broker [-h]"), module


# ---- values: a string and a number are not the same ------------------------------------------


def test_get_shows_a_string_as_a_json_string(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    ok(run("set", ns + "text", "5", "--ttl", "60000", socket=sock))
    ok(run("set", ns + "number", "5", "--json-value", "--ttl", "60000", socket=sock))
    assert ok(run("get", ns + "text", socket=sock)) == '"5"\n'
    assert ok(run("get", ns + "number", socket=sock)) == "5\n"
    assert ok(run("get", ns + "text", "--raw", socket=sock)) == "5\n"
    assert ok(run("get", ns + "number", "--raw", socket=sock)) == "5\n"
    whole = orjson.loads(ok(run("get", ns + "text", "--json", socket=sock)))
    assert whole["value"] == "5"


def test_set_help_says_what_a_value_is() -> None:
    text = " ".join(ok(run("set", "--help")).split())
    assert 'VALUE is stored as a string: `set num 5` stores the string "5"' in text
    assert "`set num 5 --json-value` stores the number 5" in text
    assert "--if-version N" in text
    assert "--raw" in ok(run("get", "--help"))


def test_incr_of_a_string_says_how_to_store_a_number(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    num = ns + "num"
    ok(run("set", num, "5", "--ttl", "60000", socket=sock))
    hint = f"epb set {num} 5 --json-value"
    assert error_line(run("incr", num, socket=sock), 1) == (
        f'epb: value of {num!r} is the string "5", not an integer: set it with --json-value '
        f"({hint})"
    )
    # The hint is a command that works, and after it incr does.
    ok(run(*hint.split()[1:], "--ttl", "60000", socket=sock))
    assert ok(run("incr", num, socket=sock)) == "6\n"

    ok(run("set", ns + "word", "five", "--ttl", "60000", socket=sock))
    assert error_line(run("incr", ns + "word", socket=sock), 1) == (
        f"epb: value of '{ns}word' is the string \"five\", not an integer: incr works on "
        "integers only"
    )
    ok(run("set", ns + "obj", '{"n": 1}', "--json-value", "--ttl", "60000", socket=sock))
    assert error_line(run("incr", ns + "obj", socket=sock), 1) == (
        f"epb: value of '{ns}obj' is a JSON object, not an integer: incr works on integers only "
        f"(start a counter with epb set {ns}obj 0 --json-value)"
    )
    top = str(2**63 - 1)
    ok(run("set", ns + "top", top, "--json-value", "--ttl", "60000", socket=sock))
    assert error_line(run("incr", ns + "top", socket=sock), 1) == (
        f"epb: cannot incr key '{ns}top' (at {top}) by 1: the result leaves the signed 64-bit "
        "integer range"
    )
    # A key named with shell characters is quoted in the hint, so the hint can be pasted.
    odd = ns + "it's"
    ok(run("set", odd, "7", "--ttl", "60000", socket=sock))
    assert error_line(run("incr", odd, socket=sock), 1).endswith(
        f"(epb set '{ns}it'\"'\"'s' 7 --json-value)"
    )


def test_integer_flags_are_checked_before_anything_is_sent() -> None:
    huge = str(2**63)
    assert usage_error(run("incr", "k", "--by", huge), "incr") == (
        f"epb incr: error: argument --by: {huge} is outside the signed 64-bit integer range the "
        "broker keeps"
    )
    assert usage_error(run("set", "k", "v", "--ttl", "soon"), "set") == (
        "epb set: error: argument --ttl: not an integer: 'soon'"
    )
    assert usage_error(run("set", "k", "v", "--if-version", "0"), "set") == (
        "epb set: error: argument --if-version: 0 is not a version: versions start at 1"
    )


# ---- touch -------------------------------------------------------------------------------------


def test_touch_restarts_the_ttl_and_keeps_value_and_version(
    shared_broker: BrokerProcess, ns: str
) -> None:
    sock = shared_broker.socket
    key = ns + "session"
    # TTLs of minutes: a loaded machine takes a second or more to start each command.
    ok(run("set", key, "abc", "--ttl", "60000", socket=sock))
    before = orjson.loads(ok(run("get", key, "--json", socket=sock)))
    expires_at = int(ok(run("touch", key, "--ttl", "600000", socket=sock)))
    # 600 s instead of 60 s, counted from a moment at or after the set: 540 s later at least.
    assert expires_at >= before["expires_at"] + 540_000
    after = orjson.loads(ok(run("get", key, "--json", socket=sock)))
    assert after == {**before, "expires_at": expires_at}


def test_touch_failures(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    gone = ns + "gone"
    assert error_line(run("touch", gone, "--ttl", "1000", socket=sock), 1) == (
        f"epb: key '{gone}' does not exist or has expired: touch only extends a live key; set it "
        f"again (epb set {gone} VALUE --ttl MS)"
    )
    key = ns + "k"
    ok(run("set", key, "v", "--ttl", "60000", socket=sock))
    assert error_line(run("touch", key, "--ttl", "0", socket=sock), 2) == (
        f"epb: --ttl 0 for key '{key}' is not a valid TTL: it must be a positive number of "
        "milliseconds (0 never means 'no expiry')"
    )
    assert error_line(run("touch", key, "--ttl", "86400001", socket=sock), 2) == (
        f"epb: --ttl 86400001 for key '{key}' is not a valid TTL: it is above the broker's "
        "--max-ttl of 86400000 ms"
    )
    assert usage_error(run("touch", key, socket=sock), "touch") == (
        "epb touch: error: the following arguments are required: --ttl"
    )
    assert error_line(run("touch", "a/b", "--ttl", "1000", socket=sock), 2).startswith(
        "epb: key 'a/b' contains '/'; names may not contain '/'"
    )


# ---- renew -------------------------------------------------------------------------------------


def test_renew_keeps_value_and_token_and_restarts_the_ttl(
    shared_broker: BrokerProcess, ns: str
) -> None:
    sock = shared_broker.socket
    pool = ns + "slots"
    ok(run("lease", pool, "--worker", "w0", "--ttl", "60000", socket=sock))
    granted = orjson.loads(
        ok(run("lease", pool, "--worker", "w1", "--ttl", "60000", "--json", socket=sock))
    )
    renewed = orjson.loads(
        ok(run("renew", pool, "--worker", "w1", "--ttl", "600000", "--json", socket=sock))
    )
    assert renewed == {
        **granted,
        "ttl_ms": 600_000,
        "expires_at": renewed["expires_at"],
    }
    assert renewed["expires_at"] >= granted["expires_at"] + 540_000
    # Plain output: the value, as `lease` prints it.
    assert ok(run("renew", pool, "--worker", "w1", socket=sock)) == f"{granted['value']}\n"
    # Without --worker, lease and renew name the same worker: this test process, their parent.
    value = ok(run("lease", ns + "mine", "--ttl", "60000", socket=sock))
    assert ok(run("renew", ns + "mine", socket=sock)) == value


def test_renew_failures(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    pool = ns + "slots"
    assert error_line(run("renew", pool, "--worker", "w9", socket=sock), 1) == (
        f"epb: worker 'w9' holds no lease in pool '{pool}' (it expired or was released): take a "
        f"new one (epb lease {pool} --worker w9)"
    )
    ok(run("lease", pool, "--worker", "w1", "--ttl", "60000", socket=sock))
    ok(run("release", pool, "--worker", "w1", socket=sock))
    assert "holds no lease" in error_line(run("renew", pool, "--worker", "w1", socket=sock), 1)
    ok(run("lease", pool, "--worker", "w1", "--ttl", "60000", socket=sock))
    assert error_line(run("renew", pool, "--worker", "w1", "--ttl", "0", socket=sock), 2) == (
        f"epb: --ttl 0 for pool '{pool}' is not a valid TTL: it must be a positive number of "
        "milliseconds (0 never means 'no expiry')"
    )
    assert error_line(run("renew", "a b", "--worker", "w1", socket=sock), 2).startswith(
        "epb: pool 'a b' contains the character ' '"
    )
    assert error_line(run("renew", pool, "--worker", "a\tb", socket=sock), 2).startswith(
        "epb: worker id 'a\\tb' contains"
    )


# ---- set --if-version --------------------------------------------------------------------------


def test_set_if_version_replaces_only_the_version_it_names(
    shared_broker: BrokerProcess, ns: str
) -> None:
    sock = shared_broker.socket
    key = ns + "cas"
    version = int(ok(run("set", key, "one", "--ttl", "60000", socket=sock)))
    newer = int(
        ok(run("set", key, "two", "--if-version", str(version), "--ttl", "60000", socket=sock))
    )
    assert newer > version
    stale = run("set", key, "three", "--if-version", str(version), "--ttl", "60000", socket=sock)
    assert error_line(stale, 1) == (
        f"epb: key '{key}' is at version {newer}, not {version}: it changed since that version "
        f"was read, and nothing was set; read it again (epb get {key} --json) and redo the "
        "change against the new version"
    )
    assert ok(run("get", key, socket=sock)) == '"two"\n'


def test_set_if_version_failures(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    absent = ns + "absent"
    assert error_line(
        run("set", absent, "v", "--if-version", "3", "--ttl", "1000", socket=sock), 1
    ) == (
        f"epb: key '{absent}' does not exist (any more), so it is not at version 3: nothing "
        "was set; create it without --if-version"
    )
    assert error_line(run("get", absent, socket=sock), 1)  # and nothing was created
    both = run("set", absent, "v", "--if-version", "3", "--if-absent", "--ttl", "1000", socket=sock)
    assert error_line(both, 2) == (
        f"epb: set '{absent}': --if-absent and --if-version exclude each other: a key that must "
        "not exist cannot be at a version"
    )


def test_set_if_absent_says_the_key_exists(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    key = ns + "token"
    version = ok(run("set", key, "abc", "--if-absent", "--ttl", "60000", socket=sock)).strip()
    assert error_line(run("set", key, "xyz", "--if-absent", "--ttl", "60000", socket=sock), 1) == (
        f"epb: key '{key}' already exists (at version {version}): --if-absent only creates a "
        f"key; delete it first (epb del {key}) or leave out --if-absent"
    )
    assert ok(run("get", key, socket=sock)) == '"abc"\n'


@pytest.mark.parametrize("program", ["epb", "ephemeral-broker"])
def test_no_socket_is_a_usage_error_under_either_name(program: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "EPHEMERAL_PIPE"}
    result = subprocess.run(
        [str(BIN_DIR / program), "touch", "k", "--ttl", "5"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (
        2,
        f"{program}: touch 'k': no broker socket: pass --socket PATH or set EPHEMERAL_PIPE\n",
    )


def test_renew_uses_the_brokers_lease_ttl_by_default(start_broker: BrokerFactory) -> None:
    broker = start_broker("--lease-ttl", "45000")
    sock = broker.socket
    ok(run("lease", "p", "--worker", "w", "--ttl", "60000", socket=sock))
    renewed = orjson.loads(ok(run("renew", "p", "--worker", "w", "--json", socket=sock)))
    assert renewed["ttl_ms"] == 45_000
