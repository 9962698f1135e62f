"""A real Prometheus (Debian's `prometheus` package) scrapes a broker's metrics port and
answers a query for `ephemeral_broker_items` through its HTTP API.

Where no `prometheus` binary is on PATH the test is skipped with a message naming it, except
under CI (`CI=true`), where `.ci/run` installs it and its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.brokers import BrokerFactory
from tests.support.net import free_port

SCRAPE_INTERVAL = "1s"
QUERY_TIMEOUT_SECONDS = 60.0


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "no `prometheus` on PATH (Debian package `prometheus`)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must install it (.ci/run)")
        pytest.skip(message)
    return found


def query_items(api: httpx.Client, expected: float) -> list[dict[str, object]]:
    """Poll the query API until Prometheus has scraped the value the broker holds now."""
    deadline = time.monotonic() + QUERY_TIMEOUT_SECONDS
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = api.get("/api/v1/query", params={"query": "ephemeral_broker_items"})
        except httpx.TransportError as exc:  # Prometheus not listening yet
            last = exc
        else:
            if response.status_code != 200:  # still starting: 503 and a plain-text body
                last = response.text
                time.sleep(0.2)
                continue
            answer = response.json()
            last = answer
            result: list[dict[str, object]] = answer["data"]["result"]
            if result and float(result[0]["value"][1]) == expected:  # type: ignore[index]
                return result
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never reported ephemeral_broker_items={expected}: {last}")


def test_a_real_prometheus_scrapes_the_metrics_port(
    start_broker: BrokerFactory, short_tmp: Path
) -> None:
    binary = prometheus_binary()
    metrics_port, web_port = free_port(), free_port()
    broker = start_broker("--metrics-listen", f"127.0.0.1:{metrics_port}")
    config = short_tmp / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {SCRAPE_INTERVAL}\n"
        "scrape_configs:\n"
        "  - job_name: ephemeral-broker\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n",
        encoding="utf-8",
    )
    log = short_tmp / "prometheus.log"
    with log.open("w") as log_file:
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={short_tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        with (
            broker.client(timeout=10) as unix,
            httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=5) as api,
        ):
            for n in range(5):
                unix.put(f"/v1/keys/k{n}", json={"value": n, "ttl_ms": 600_000}).raise_for_status()
            result = query_items(api, 5)
            assert result[0]["metric"] == {
                "__name__": "ephemeral_broker_items",
                "instance": f"127.0.0.1:{metrics_port}",
                "job": "ephemeral-broker",
            }
            targets = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            assert [target["health"] for target in targets] == ["up"], targets
    finally:
        prometheus.send_signal(signal.SIGTERM)
        try:
            prometheus.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(timeout=10)
