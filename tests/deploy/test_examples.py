"""The Docker Compose job and the Kubernetes pod in examples/ agree with the image.

Both are parsed (they must be valid YAML of the expected shape) and compared with what the
Dockerfile sets: the socket's directory and path, the numeric user, the environment variable
names the broker and its clients read, the metrics port the probes and the scrape use, and a
stop grace period longer than the drain. Neither is started here: Compose would create a
container network and there is no Kubernetes; the image itself is run by tests/test_image.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from ephemeral_broker.serving.listen_address import parse_listen_address
from ephemeral_broker.settings import BrokerSettings
from tests.support.dockerfile import dockerfile_instructions
from tests.support.paths import ROOT

COMPOSE = ROOT / "examples" / "compose" / "compose.yaml"
POD = ROOT / "examples" / "kubernetes" / "pod.yaml"


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def image_user() -> tuple[int, int]:
    (user,) = [rest for word, rest in dockerfile_instructions() if word == "USER"]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid)


def socket_dir() -> str:
    return image_env()["BROKER_SOCKET"].rsplit("/", 1)[0]


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def assert_broker_settings(env: dict[str, str]) -> int:
    """Every BROKER_* variable names a setting and holds a value it accepts; returns the
    metrics port, which the examples must set (probes and scrapes use it)."""
    fields = {f"BROKER_{name.upper()}" for name in BrokerSettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    BrokerSettings.model_validate(
        {name.removeprefix("BROKER_").lower(): value for name, value in env.items()}
    )
    address = parse_listen_address(env["BROKER_METRICS_LISTEN"])
    # In a compose network or a pod, Prometheus and the kubelet come from outside the
    # container: loopback would be unreachable for them.
    assert address.host == "0.0.0.0"  # noqa: S104 (a check of the examples, not a bind)
    return address.port


def drain_seconds(env: dict[str, str]) -> float:
    return int(env.get("BROKER_DRAIN_TIMEOUT", BrokerSettings().drain_timeout)) / 1000


def test_the_image_sets_what_the_examples_rely_on() -> None:
    env = image_env()
    assert env["BROKER_SOCKET"] == env["EPHEMERAL_PIPE"] == "/run/ephemeral-broker/broker.sock"
    assert env["BROKER_SOCKET_MODE"] == "0660"  # the group may use it
    assert image_user() == (10001, 10001)


def test_compose_job_shares_the_socket_and_matches_the_image() -> None:
    compose = load(COMPOSE)
    broker, tests = compose["services"]["broker"], compose["services"]["tests"]
    assert broker["image"] == tests["image"]
    volume = next(iter(compose["volumes"]))
    for service in (broker, tests):
        assert f"{volume}:{socket_dir()}" in service["volumes"]
    broker_env = {str(k): str(v) for k, v in broker["environment"].items()}
    port = assert_broker_settings(broker_env)
    assert f"127.0.0.1:{port}:{port}" in broker["ports"]
    assert broker["stop_grace_period"].endswith("s")
    assert float(broker["stop_grace_period"][:-1]) > drain_seconds(broker_env)
    assert broker["read_only"] is True
    assert tests["user"] == "{}:{}".format(*image_user())
    assert tests["environment"] == {"EPHEMERAL_PIPE": image_env()["EPHEMERAL_PIPE"]}
    assert tests["depends_on"] == {"broker": {"condition": "service_healthy"}}


def test_kubernetes_pod_runs_the_broker_as_a_native_sidecar_matching_the_image() -> None:
    pod = load(POD)
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    spec = pod["spec"]
    (broker,) = spec["initContainers"]
    (tests,) = spec["containers"]
    assert broker["restartPolicy"] == "Always"  # a native sidecar, not a one-shot init step

    (volume,) = spec["volumes"]
    assert "emptyDir" in volume
    for container in (broker, tests):
        assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": socket_dir()}]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True

    uid, gid = image_user()
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, gid, gid)

    broker_env = {e["name"]: e["value"] for e in broker["env"]}
    port = assert_broker_settings(broker_env)
    (named,) = broker["ports"]
    assert named["containerPort"] == port
    probes = {kind: broker[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe")}
    probes["livenessProbe"] = broker["livenessProbe"]["httpGet"]
    assert {kind: get["path"] for kind, get in probes.items()} == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    assert {get["port"] for get in probes.values()} == {named["name"]}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert spec["terminationGracePeriodSeconds"] > drain_seconds(broker_env)

    assert {e["name"]: e["value"] for e in tests["env"]} == {
        "EPHEMERAL_PIPE": image_env()["EPHEMERAL_PIPE"]
    }
