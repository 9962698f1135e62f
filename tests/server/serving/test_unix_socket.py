"""The socket rules of SPEC section 5, with real `serve` processes on real paths."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.brokers import BROKER_EXE, BrokerFactory


def serve_expecting_failure(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `serve` that must refuse to start; returns (exit code, stderr)."""
    done = subprocess.run(
        [BROKER_EXE, "serve", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    assert done.stdout == "", "nothing may be announced by a broker that did not start"
    return done.returncode, done.stderr


def test_sigkill_leaves_a_stale_socket_that_the_next_serve_removes(
    start_broker: BrokerFactory, short_tmp: Path
) -> None:
    path = short_tmp / "stale.sock"
    first = start_broker(socket=path)
    first.stop(signal.SIGKILL)
    # SIGKILL gives the broker no chance to clean up: the socket file stays, dead.
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    probe = socket.socket(socket.AF_UNIX)
    try:
        refused = probe.connect_ex(str(path))
    finally:
        probe.close()
    assert refused != 0

    second = start_broker(socket=path)  # asserts it announced EPHEMERAL_PIPE=<path>
    with second.client(timeout=30) as client:
        assert client.get("/v1/ping").status_code == 200
    assert "removing stale socket" in second.stderr()
    assert second.stop() == 0
    assert not path.exists()


def test_second_serve_on_a_live_broker_exits_2_and_leaves_the_first_alone(
    start_broker: BrokerFactory, short_tmp: Path
) -> None:
    path = short_tmp / "live.sock"
    first = start_broker(socket=path)
    inode = os.lstat(path).st_ino
    code, stderr = serve_expecting_failure("--socket", str(path))
    assert code == 2
    assert "already running" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    # The first broker still owns the very same socket file and still answers.
    assert os.lstat(path).st_ino == inode
    with first.client(timeout=30) as client:
        assert client.get("/v1/ping").status_code == 200
    assert first.stop() == 0


def test_a_regular_file_at_the_socket_path_is_never_deleted(short_tmp: Path) -> None:
    path = short_tmp / "precious.txt"
    path.write_text("do not delete me\n")
    code, stderr = serve_expecting_failure("--socket", str(path))
    assert code == 2
    assert "not a socket" in stderr and "refusing to remove it" in stderr
    assert path.read_text() == "do not delete me\n"


def test_a_directory_or_symlink_at_the_socket_path_is_left_alone(short_tmp: Path) -> None:
    directory = short_tmp / "dir.sock"
    directory.mkdir()
    target = short_tmp / "target.txt"
    target.write_text("kept")
    link = short_tmp / "link.sock"
    link.symlink_to(target)
    for path in (directory, link):
        code, stderr = serve_expecting_failure("--socket", str(path))
        assert code == 2, stderr
        assert "not a socket" in stderr
    assert directory.is_dir()
    assert link.is_symlink() and target.read_text() == "kept"


def test_socket_mode_is_applied_at_bind(start_broker: BrokerFactory, short_tmp: Path) -> None:
    shared = start_broker("--socket-mode", "0660", socket=short_tmp / "group.sock")
    assert stat.S_IMODE(os.lstat(shared.socket).st_mode) == 0o660
    private = start_broker(socket=short_tmp / "private.sock")
    assert stat.S_IMODE(os.lstat(private.socket).st_mode) == 0o600


@pytest.mark.defect(17)
def test_socket_path_over_107_bytes_stops_startup_with_the_length(
    short_tmp: Path,
) -> None:
    """Defect 17: a long socket path failed with a cryptic error from bind()."""
    long_path = short_tmp / ("x" * 120 + ".sock")
    code, stderr = serve_expecting_failure("--socket", str(long_path))
    assert code == 2
    assert f"{len(os.fsencode(long_path))} bytes" in stderr and "107" in stderr
    assert not long_path.exists()


@pytest.mark.defect(17)
def test_default_socket_under_a_long_tmpdir_suggests_a_shorter_one(
    short_tmp: Path,
) -> None:
    deep = short_tmp / ("d" * 90)
    deep.mkdir()
    code, stderr = serve_expecting_failure(env={"TMPDIR": str(deep)})
    assert code == 2
    assert "TMPDIR" in stderr and "shorter" in stderr
    assert list(deep.iterdir()) == [], "no private directory may be left behind"
