"""
A real Prometheus server scrapes a real C{twistd frameserver}: the test
starts both (Prometheus with its own configuration and storage in a
temporary directory, on a free loopback port), drives pings, and asks
Prometheus's HTTP API for the request counter until it has the count.

Skipped, with the reason, where the C{prometheus} binary is missing
(Debian: C{apt install prometheus}).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .serverprocess import ServerProcess
from .test_metrics_process import METRICS, metricsPort, ping

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
)
#: The longest wait for Prometheus to start, and to have scraped a value.
WAIT = 60.0

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (Debian: apt install prometheus)"
)


def freePort() -> int:
    """
    A TCP port on loopback that was free a moment ago (Prometheus cannot
    be asked to pick one and say which).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def query(port: int, expression: str) -> list[dict[str, Any]]:
    """
    The result of an instant query on Prometheus's HTTP API.
    """
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def waitFor(what: str, check: Any, timeout: float = WAIT) -> Any:
    """
    Call C{check} until it returns something true, for at most C{timeout}
    seconds, with short pauses between the tries.

    @return: what C{check} returned.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


@pytest.fixture
def prometheus(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """
    A factory starting Prometheus scraping C{127.0.0.1:target} every
    second; it is stopped at the end of the test.

    @return: a function of the target port returning Prometheus's port.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def start(target: int) -> int:
        assert PROMETHEUS is not None
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: frameserver\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target}']\n"
        )
        port = freePort()
        log = open(tmp_path / "prometheus.log", "wb")
        request.addfinalizer(log.close)
        processes.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        )
        return port

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_scrape(tmp_path: Path, prometheus: Any) -> None:
    """
    Prometheus scrapes the server's endpoint (its target is up) and its
    API returns the count of the pings the test sent.
    """
    root = tmp_path / "root"
    root.mkdir()
    with ServerProcess(str(root), "--metrics", METRICS) as server:
        port = prometheus(metricsPort(server))
        ping(server.port, 5)
        up = waitFor(
            "the target is scraped",
            lambda: [r for r in query(port, 'up{job="frameserver"}') if r["value"][1] == "1"],
        )
        assert up[0]["metric"]["instance"].startswith("127.0.0.1:")
        counted = waitFor(
            "the pings are counted",
            lambda: [
                r
                for r in query(port, 'frames_requests_total{op="ping",outcome="ok"}')
                if r["value"][1] == "5"
            ],
        )
        assert counted[0]["metric"]["job"] == "frameserver"
        # And it follows: two more pings, seen at the next scrapes.
        ping(server.port, 2)
        waitFor(
            "the next pings are counted",
            lambda: [
                r
                for r in query(port, 'frames_requests_total{op="ping",outcome="ok"}')
                if r["value"][1] == "7"
            ],
        )
