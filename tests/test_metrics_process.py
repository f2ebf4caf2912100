"""
The metrics endpoint of the real C{twistd frameserver}: C{/metrics} counts
the requests a raw client sent, C{/healthz} says 200 while it serves and
503 while it shuts down, a non-loopback endpoint is refused, and servers
run as workers (the multiprocess mode) have their counts summed.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from twisted_frames import wire
from twisted_frames.metrics import (
    MULTIPROC_ENV,
    multiprocessRegistry,
    prepareMultiprocess,
    workerExited,
)

from .serverprocess import TWISTD, ServerProcess, childEnv
from .test_shutdown_process import recvExactly, recvMessage, sendMessage
from .test_workers_process import START, workerPids

METRICS = "tcp:0:interface=127.0.0.1"
_METRICS_PORT = re.compile(r"metrics listening on 127\.0\.0\.1:(\d+)")


def metricsPort(server: ServerProcess) -> int:
    """
    The port the server's metrics endpoint listens on (from its log).
    """
    match = _METRICS_PORT.search(server.waitFor(_METRICS_PORT.pattern))
    assert match is not None
    return int(match.group(1))


def httpGet(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """
    C{GET path} on C{127.0.0.1:port}.

    @return: the status and the body.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def ping(port: int, count: int) -> None:
    """
    Send C{count} pings on one connection and read their replies.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        recvMessage(sock)
        for n in range(count):
            sendMessage(sock, {"op": "ping", "id": n}, b"hi")
            header, body = recvMessage(sock)
            assert header == {"id": n, "ok": True} and body == b"hi", header


def sample(text: str, name: str, **labels: str) -> float | None:
    """
    The value of sample C{name} with C{labels} in an exposition C{text}.
    """
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def scrapeUntil(port: int, name: str, expected: float, **labels: str) -> str:
    """
    Get C{/metrics} until sample C{name} with C{labels} is C{expected}
    (counts are exported every second), for at most 30 seconds.

    @return: the last exposition text.
    """
    deadline = time.monotonic() + 30
    while True:
        status, text = httpGet(port, "/metrics")
        assert status == 200
        found = sample(text, name, **labels)
        if found == expected:
            return text
        assert time.monotonic() < deadline, f"{name} {labels} is {found}, not {expected}"
        time.sleep(0.1)


def test_metricsAndHealth(tmp_path: Path) -> None:
    """
    C{/metrics} has the pings a client sent, under C{op="ping"}, and the
    connection it opened; C{/healthz} answers 200; any other path is 404.
    """
    with ServerProcess(str(tmp_path), "--metrics", METRICS) as server:
        port = metricsPort(server)
        assert httpGet(port, "/healthz") == (200, "serving\n")
        ping(server.port, 3)
        text = scrapeUntil(port, "frames_requests_total", 3.0, op="ping", outcome="ok")
        assert sample(text, "frames_received_bytes_total", op="ping") == 6.0
        assert sample(text, "frames_connections_total", outcome="closed") == 1.0
        assert httpGet(port, "/nothing")[0] == 404


def test_healthDuringShutdown(tmp_path: Path) -> None:
    """
    From C{SIGTERM} until the last connection is gone, C{/healthz} answers
    503 (the main port has stopped listening); then the server exits.
    """
    with ServerProcess(str(tmp_path), "--metrics", METRICS, "--shutdown-grace", "20") as server:
        port = metricsPort(server)
        assert server.process is not None
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            recvMessage(sock)
            # A ping too large to be gathered, so its echo streams back as
            # it arrives: once the echo's header is back, the server is in
            # the middle of the message, and the connection cannot close
            # before its end (or the grace period's).
            length = 2 * wire.DEFAULT_BUFFER_THRESHOLD
            sock.sendall(wire.encodeMessage({"op": "ping", "id": 1}, b"")[:-4])
            sock.sendall(wire.encodePrefix(length) + b"x" * 1000)
            (headerLength,) = wire.PREFIX.unpack(recvExactly(sock, 4))
            assert wire.decodeHeader(recvExactly(sock, headerLength)) == {"id": 1, "ok": True}
            server.process.send_signal(signal.SIGTERM)
            server.waitFor("shutting down: 1 connections")
            assert httpGet(port, "/healthz") == (503, "shutting down\n")
            assert httpGet(port, "/metrics")[0] == 200
        assert server.process.wait(timeout=20) == -signal.SIGTERM


def failedStart(root: Path, endpoint: str, *extra: str) -> str:
    """
    Start a frameserver with C{--metrics endpoint} (and C{extra}
    options), which must fail.

    @return: the one line it printed on stderr (it exited with status 1).
    """
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "frameserver",
            "--root",
            str(root),
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--udp",
            "0",
            "--metrics",
            endpoint,
            *extra,
        ],
        capture_output=True,
        text=True,
        env=childEnv(),
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_refusesNonLoopback(tmp_path: Path) -> None:
    """
    C{--metrics} on all interfaces stops start-up with one line and
    status 1, and nothing listens.
    """
    line = failedStart(tmp_path, "tcp:0")
    assert line.startswith("twistd frameserver: refusing to serve metrics on tcp:0")
    assert "--metrics-insecure" in line


def test_portInUse(tmp_path: Path) -> None:
    """
    A metrics port already taken stops start-up with one line, as a main
    port does.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = failedStart(tmp_path, f"tcp:{port}:interface=127.0.0.1")
    assert line == f"twistd frameserver: cannot listen: 127.0.0.1:{port}: Address already in use"


def test_portInUseWithWorkers(tmp_path: Path) -> None:
    """
    With C{--workers 2}, the main process binds the metrics endpoint before
    it starts any worker: a port already taken stops start-up with the
    same one line (no worker tries it).
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = failedStart(tmp_path, f"tcp:{port}:interface=127.0.0.1", "--workers", "2")
    assert line == f"twistd frameserver: cannot listen: 127.0.0.1:{port}: Address already in use"


def test_workersSummed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The multiprocess contract with real servers: two frameservers run as
    workers (C{--metrics worker}, C{PROMETHEUS_MULTIPROC_DIR} set by
    L{prepareMultiprocess}) count the pings each was sent; once they have
    stopped, L{multiprocessRegistry} sums them, and L{workerExited} drops
    the dead workers' open-connection gauges but not their counts.
    """
    path = str(tmp_path / "metrics")
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    prepareMultiprocess(path)
    # (prepareMultiprocess set it in os.environ; monkeypatch puts it back.)
    monkeypatch.setenv(MULTIPROC_ENV, path)
    pids = []
    for n, count in enumerate((3, 4)):
        root = tmp_path / f"root{n}"
        root.mkdir()
        with ServerProcess(str(root), "--metrics", "worker") as server:
            assert server.process is not None
            pids.append(server.process.pid)
            ping(server.port, count)
            # Stopped at once: the last export, after the connections
            # closed, must still count every ping.
        assert "metrics listening" not in server.log
    registry = multiprocessRegistry(path)
    assert registry.get_sample_value("frames_requests_total", {"op": "ping", "outcome": "ok"}) == 7
    # Closed by the client, or by the shutdown if that came first.
    closed = [
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "frames_connections_total"
    ]
    assert sum(closed) == 2
    assert registry.get_sample_value("frames_connections_open", {}) == 0
    for pid in pids:
        workerExited(pid, path)
    # The dead workers' live gauges are gone; their counts stay.
    after = multiprocessRegistry(path)
    assert after.get_sample_value("frames_connections_open", {}) is None
    assert after.get_sample_value("frames_requests_total", {"op": "ping", "outcome": "ok"}) == 7


def processPids(port: int, expected: set[str]) -> None:
    """
    Get C{/metrics} until the process figures have one series per process
    of C{expected} (their C{pid} labels), for at most 30 seconds.
    """
    deadline = time.monotonic() + 30
    while True:
        _, text = httpGet(port, "/metrics")
        found = {
            s.labels.get("pid", "")
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "frames_process_resident_memory_bytes"
        }
        if found == expected:
            return
        assert time.monotonic() < deadline, f"process figures of {found}, not {expected}"
        time.sleep(0.1)


def test_workersServeTheSum(tmp_path: Path) -> None:
    """
    C{--workers 2 --metrics ENDPOINT}: the main process alone listens on
    the endpoint, and its C{/metrics} is the sum of the pings the workers
    served over several connections; the process figures are the live
    workers'.  A worker killed with C{SIGKILL} is restarted and the pings
    it counted stay counted; C{SIGTERM} stops the whole server.
    """
    with ServerProcess(str(tmp_path), "--workers", "2", "--metrics", METRICS) as server:
        pids = workerPids(server, 2)
        port = metricsPort(server)
        assert httpGet(port, "/healthz") == (200, "serving\n")
        for _ in range(6):
            ping(server.port, 5)
        scrapeUntil(port, "frames_requests_total", 30.0, op="ping", outcome="ok")
        processPids(port, {str(pid) for pid in pids.values()})

        os.kill(pids[1], signal.SIGKILL)
        line = server.waitFor(rf"worker 1 ready \(pid (?!{pids[1]}\))\d+\)", START)
        restarted = int(re.findall(r"pid (\d+)", line)[-1])
        # The dead worker's counts stay; its live gauges are gone.
        processPids(port, {str(pids[2]), str(restarted)})
        status, text = httpGet(port, "/metrics")
        assert status == 200
        assert sample(text, "frames_requests_total", op="ping", outcome="ok") == 30.0
        for _ in range(2):
            ping(server.port, 2)
        scrapeUntil(port, "frames_requests_total", 34.0, op="ping", outcome="ok")
        assert httpGet(port, "/healthz") == (200, "serving\n")

        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == -signal.SIGTERM
    assert len(_METRICS_PORT.findall(server.log)) == 1, server.log
    assert "Traceback" not in server.log, server.log
