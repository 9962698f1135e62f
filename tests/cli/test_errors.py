"""Every error a client command can meet, as the line `epb` prints: a sentence naming the key or
pool and what to do, in the command line's terms (flags, commands), never the HTTP request's
(headers, body fields). Real brokers where a setting makes the error happen; a socket server
that answers with the broker's own problem+json where only a broken or busy broker would."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import pytest

from ephemeral_broker.cli.messages import Failure, describe
from ephemeral_broker.errors import ERRORS, problem_body
from tests.support.brokers import BIN_DIR, BrokerFactory, BrokerProcess
from tests.support.raw_server import RawServer, http_answer

EPB = str(BIN_DIR / "epb")

# What the line may never show: the request's own words.
MACHINE_WORDS = re.compile(
    r"If-Match|If-None-Match|ttl_ms|wait_ms|worker_id|max_value_size|max_key_length|max_ttl"
    r"|max_items|max_leases|HTTP|problem\+json|Content-Encoding"
)
CLIENT_CODES = ("unavailable", "timeout", "invalid_response")


def epb(*args: str | bytes, socket: Path, **env: str) -> tuple[int, str]:
    """Run `epb`; its exit code and its one stderr line (stdout must stay empty)."""
    environment = {**os.environ, "EPHEMERAL_PIPE": str(socket), **env}
    result = subprocess.run(
        [EPB, *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )
    assert result.stdout == "", result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("epb: "), result.stderr
    line = result.stderr.removesuffix("\n")
    assert not MACHINE_WORDS.search(line), line
    return result.returncode, line


# ---- the table: every code has a sentence ------------------------------------------------------


def command(name: str, **flags: object) -> argparse.Namespace:
    defaults = {"key": None, "pool": None, "ttl": None, "wait": None}
    return argparse.Namespace(command=name, **{**defaults, **flags})


# The codes whose sentence keeps the broker's own words (they say which limit or which
# character); the tests against real brokers below check those words are the user's.
KEEPS_DETAIL = {
    "invalid_key",
    "invalid_ttl",
    "too_large",
    "validation_error",
    "bad_request",
    "invalid_json",
    "unsupported_encoding",
    "route_not_found",
    "method_not_allowed",
}


KEY_CODES = {"not_found", "precondition_failed", "not_an_integer", "ttl_required", "max_items"}
POOL_CODES = {"lease_not_found", "pool_exhausted", "max_leases"}


@pytest.mark.parametrize("code", [*ERRORS, *CLIENT_CODES])
def test_every_code_has_a_sentence_naming_the_key_or_pool(code: str) -> None:
    detail = "the broker's words"
    on_key = (
        command("set", key="k1", value="v", ttl=1000, if_absent=False, if_version=None),
        "'k1'",
    )
    on_pool = (command("lease", pool="p1", worker_id="w1", ttl=1000, size=2), "'p1'")
    # A code about a key is answered to a command on a key, a pool's to a lease command.
    cases = (
        [on_pool] if code in POOL_CODES else [on_key] if code in KEY_CODES else [on_key, on_pool]
    )
    for args, named in cases:
        failure = Failure(code, detail, "rid", args, "epb", "/run/b.sock", secret_set=False)
        line = describe(failure, lambda key: None)
        if code in CLIENT_CODES:
            # The client's own sentences already name the socket and the key, in plain words.
            assert line == detail
            continue
        if code in KEEPS_DETAIL:
            # The name may be the broker's to give ("key 'a b' contains the character ' '").
            assert named in line or "/run/b.sock" in line or detail in line, (code, line)
        else:
            assert named in line or "/run/b.sock" in line, (code, line)
            assert detail not in line, (code, line)


def test_a_code_the_command_line_does_not_know_keeps_the_brokers_sentence() -> None:
    failure = Failure(
        "new_code",
        "something new happened",
        None,
        command("get", key="k"),
        "epb",
        "/s",
        secret_set=False,
    )
    assert describe(failure, lambda key: None) == "key 'k': something new happened"


# ---- real brokers ------------------------------------------------------------------------------


def test_limits_of_a_broker_in_its_flags_words(start_broker: BrokerFactory) -> None:
    broker = start_broker("--max-items", "1", "--max-leases", "1", "--max-value-size", "16")
    sock = broker.socket
    assert epb("set", "big", "x" * 40, "--ttl", "60000", socket=sock) == (
        1,
        "epb: the value for key 'big' is 42 bytes as JSON, over the broker's --max-value-size "
        "of 16 bytes: store a smaller value",
    )
    assert (
        subprocess.run(
            [EPB, "set", "first", "1", "--ttl", "60000", "--socket", str(sock)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    assert epb("set", "second", "1", "--ttl", "60000", socket=sock) == (
        1,
        "epb: cannot add key 'second': the broker holds as many keys as its --max-items "
        "allows; delete some (epb del KEY) or start the broker with a higher --max-items",
    )
    assert (
        subprocess.run(
            [EPB, "lease", "p", "--worker", "w1", "--socket", str(sock)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    assert epb("lease", "q", "--worker", "w2", socket=sock) == (
        1,
        "epb: cannot lease in pool 'q': the broker holds as many leases as its --max-leases "
        "allows; release some (epb release POOL --worker ID) or start the broker with a higher "
        "--max-leases",
    )


def test_out_of_range_flags_are_named_as_flags(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    assert epb("get", ns + "k", "--wait", "-1", socket=sock) == (
        2,
        f"epb: --wait -1 for key '{ns}k' is out of range: input should be greater than or "
        "equal to 0",
    )
    assert epb("get", ns + "k", "--wait", "300001", socket=sock) == (
        2,
        f"epb: --wait 300001 for key '{ns}k' is out of range: input should be less than or "
        "equal to 300000",
    )
    assert epb("list", "--limit", "0", socket=sock) == (
        2,
        "epb: --limit 0 for the list command is out of range: input should be greater than "
        "or equal to 1",
    )
    assert epb("lease", ns + "p", "--size", "0", socket=sock) == (
        2,
        f"epb: --size 0 for pool '{ns}p' is out of range: input should be greater than or "
        "equal to 1",
    )


def test_bad_names(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    long = ns + "x" * 600
    code, line = epb("get", long, socket=sock)
    assert code == 2
    assert re.fullmatch(
        rf"epb: key '{ns}x+…' is {len(long)} bytes of UTF-8, over the broker's --max-key-length "
        r"of 512: choose another name",
        line,
    ), line
    # A name so long that the request's head passes the broker's limit for it.
    code, line = epb("get", "k" * 70_000, socket=sock)
    assert code == 1
    assert line == (
        f"epb: the request for key '{'k' * 80}…' is too large for the broker to read (a name "
        "this long passes its limit on a request's head): use a shorter name"
    )
    assert epb("set", b"k\xff", "v", "--ttl", "1000", socket=sock) == (
        2,
        "epb: key 'k\\udcff' is not UTF-8 text: choose another name",
    )
    assert epb("list", "--prefix", "a/b", socket=sock) == (
        2,
        "epb: --prefix 'a/b' contains '/'; names may not contain '/', whitespace or control "
        "characters: choose another name",
    )
    # An empty --worker is sent as given, and refused: only no --worker means the default.
    assert epb("lease", ns + "p", "--worker", "", socket=sock) == (
        2,
        "epb: the worker id is empty; it must be 1 to 512 bytes: choose another name",
    )
    assert epb("lease", "a/b", "--worker", "w", socket=sock) == (
        2,
        "epb: pool 'a/b' contains '/'; names may not contain '/', whitespace or control "
        "characters: choose another name",
    )


def test_ttl_required_on_a_broker_that_requires_one(shared_broker: BrokerProcess, ns: str) -> None:
    sock = shared_broker.socket
    assert epb("incr", ns + "n", socket=sock) == (
        2,
        f"epb: incr creates key '{ns}n', which needs a TTL: pass --ttl MS (this broker "
        "requires one on every value)",
    )


def test_auth_failures(start_broker: BrokerFactory) -> None:
    broker = start_broker(env={"BROKER_SECRET": "the right one"})
    sock = broker.socket
    environment = {k: v for k, v in os.environ.items() if k != "EPHEMERAL_SECRET"}
    result = subprocess.run(
        [EPB, "get", "k", "--socket", str(sock)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        2,
        f"epb: the broker at {sock} requires a secret: set EPHEMERAL_SECRET to the secret it "
        "was started with\n",
    )
    assert epb("get", "k", socket=sock, EPHEMERAL_SECRET="a wrong one") == (
        2,
        f"epb: the broker at {sock} refused EPHEMERAL_SECRET: it is not the secret the broker "
        "was started with",
    )


# ---- a broker that is broken, busy or of another version ---------------------------------------


def answering(path: Path, code: str, detail: str) -> RawServer:
    """A socket server that answers every request as the broker answers with `code`."""
    status = ERRORS[code][0]
    extra = ("retry-after: 1",) if status == 503 else ()
    body = problem_body(code, detail, "req-42")
    return RawServer(path, lambda _: http_answer(status, body, "application/problem+json", *extra))


@pytest.mark.parametrize(
    ("code", "exit_code", "expected"),
    [
        ("bad_request", 2, "epb: the broker at {sock} does not understand this set request"),
        ("invalid_json", 2, "epb: the broker at {sock} does not understand this set request"),
        (
            "unsupported_encoding",
            2,
            "epb: the broker at {sock} does not understand this set request",
        ),
        ("route_not_found", 2, "epb: the broker at {sock} does not understand this set request"),
        ("method_not_allowed", 2, "epb: the broker at {sock} does not understand this set request"),
        (
            "draining",
            3,
            "epb: the broker at {sock} is shutting down and takes no new requests; "
            "nothing was done for key 'k'",
        ),
        (
            "too_many_connections",
            3,
            "epb: the broker at {sock} has as many open connections as "
            "its --max-connections allows; try again when its other clients are done",
        ),
        (
            "request_timeout",
            1,
            "epb: the broker at {sock} gave up waiting for the rest of the "
            "request for key 'k'; try again",
        ),
        (
            "internal_error",
            1,
            "epb: the broker failed while handling key 'k' (request id "
            "req-42); its log has the reason, under that request id",
        ),
        (
            "store_unavailable",
            3,
            "epb: the broker's shared store (Redis) did not answer: the set "
            "of key 'k' may or may not have been applied; check it, then try again",
        ),
    ],
)
def test_a_broken_or_busy_broker(short_tmp: Path, code: str, exit_code: int, expected: str) -> None:
    sock = short_tmp / "f.sock"
    server = answering(sock, code, f"the broker's own words for {code}")
    try:
        got = epb("set", "k", "v", "--ttl", "1000", "--timeout", "1", socket=sock)
    finally:
        server.close()
    assert got[0] == exit_code
    assert got[1].startswith(expected.format(sock=sock)), got[1]
    if exit_code == 2:
        # A request of the wrong form: the broker's own sentence is kept, to find out why.
        assert f"(the broker's own words for {code}); is it another version" in got[1]


def test_an_answer_that_is_not_the_brokers(short_tmp: Path) -> None:
    sock = short_tmp / "f.sock"
    server = RawServer(sock, lambda _: http_answer(200, b"<html>not JSON</html>"))
    try:
        code, line = epb("get", "k", socket=sock)
    finally:
        server.close()
    assert code == 1
    assert line.startswith("epb: ") and "'k'" in line, line


def test_no_broker_listening(short_tmp: Path) -> None:
    code, line = epb("get", "k", "--timeout", "0.3", socket=short_tmp / "none.sock")
    assert code == 3
    assert line.startswith(f"epb: cannot reach the broker at {short_tmp / 'none.sock'}"), line
