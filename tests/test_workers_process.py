"""
C{twistd frameserver --workers N} for real: worker processes sharing the
main process's sockets, restarted when they die, stopped with it.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

from .inmemory import makeCredentials
from .serverprocess import TWISTD, ServerProcess, childEnv

#: How long a worker may take to start on a loaded machine.
START = 60.0


def greeting(port: int) -> dict[str, object]:
    """
    Connect to the server and read its greeting.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        (n,) = struct.unpack("!I", f.read(4))
        header: dict[str, object] = json.loads(f.read(n))
        f.close()
        return header


def exits(pid: int, timeout: float) -> bool:
    """
    Whether process C{pid} exits within C{timeout} seconds (waited for on a
    pidfd, which is readable once it has exited).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def workerPids(server: ServerProcess, count: int) -> dict[int, int]:
    """
    Wait until workers 1 to C{count} are ready; their process ids.
    """
    pids = {}
    for index in range(1, count + 1):
        line = server.waitFor(rf"worker {index} ready \(pid \d+\)", START)
        pid = re.search(r"ready \(pid (\d+)\)", line)
        assert pid is not None
        pids[index] = int(pid.group(1))
    return pids


def test_workersServeRestartAndStop(tmp_path: Path) -> None:
    """
    With C{--workers 2}: both workers serve the one TCP port and the UDP
    echo's; a worker killed with C{SIGKILL} is logged and restarted while
    the other goes on serving; C{SIGTERM} to the main process stops every
    worker and the main process exits by that signal, as a single server
    does.
    """
    with ServerProcess(str(tmp_path), "--workers", "2", udp=True) as server:
        pids = workerPids(server, 2)
        for _ in range(10):
            assert greeting(server.port)["event"] == "hello"
        assert server.udpPort is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(30)
            udp.sendto(b"echo me", ("127.0.0.1", server.udpPort))
            assert udp.recvfrom(100)[0] == b"echo me"
        server.waitFor(r"\[worker \d\] connection from 127\.0\.0\.1:")

        os.kill(pids[1], signal.SIGKILL)
        server.waitFor(
            rf"worker 1 \(pid {pids[1]}\) was killed by signal 9 after [\d.]+ s; "
            r"restarting it in [\d.]+ s",
            START,
        )
        # Worker 2 serves meanwhile.
        assert greeting(server.port)["event"] == "hello"
        line = server.waitFor(rf"worker 1 ready \(pid (?!{pids[1]}\))\d+\)", START)
        restarted = int(re.findall(r"pid (\d+)", line)[-1])
        assert greeting(server.port)["event"] == "hello"

        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        status = server.process.wait(30)
        assert status == -signal.SIGTERM
        for pid in (pids[2], restarted):
            assert exits(pid, 10), f"worker {pid} still running"
    for pid in (pids[2], restarted):
        assert re.search(rf"worker \d \(pid {pid}\) stopped", server.log)


def test_workersStopWhenTheMainProcessIsKilled(tmp_path: Path) -> None:
    """
    A main process killed with C{SIGKILL} cannot stop its workers: each
    sees its standard input close and stops by itself, so none is left
    serving on the socket.
    """
    with ServerProcess(str(tmp_path), "--workers", "2") as server:
        pids = workerPids(server, 2)
        assert server.process is not None
        server.process.kill()
        server.process.wait(30)
        for pid in pids.values():
            assert exits(pid, 30), f"worker {pid} still running"


def test_workerThatCannotStartStopsTheServer(tmp_path: Path) -> None:
    """
    A worker that exits at start-up every time is restarted with a growing
    delay, not in a loop; after five failures in a row the main process
    gives up, says why, and exits with status 1.
    """
    # Python runs sitecustomize at start-up: here it fails every worker (they
    # have the worker variable) and nothing else.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'TWISTED_FRAMES_WORKER' in os.environ:\n"
        "    sys.exit('this worker cannot start')\n"
    )
    root = tmp_path / "srv"
    root.mkdir()
    env = childEnv()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "frameserver"]
        + ["--listen", "tcp:0:interface=127.0.0.1", "--root", str(root), "--udp", "0"]
        + ["--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    log = done.stdout
    assert "this worker cannot start" in log
    delays = [float(d) for d in re.findall(r"worker 1 .* restarting it in ([\d.]+) s", log)]
    assert delays == [0.5, 1, 2, 4], log
    assert re.search(r"worker \d \(pid \d+\) exited with status 1; it never started, 5 times", log)
    # The delays add up to 7.5 s: no restart loop.
    assert took >= 7.5


def test_unixSocketSharedAndRemovedOnce(tmp_path: Path) -> None:
    """
    A C{unix:} listen is shared too; the socket's file stays while a worker
    stops and restarts, and it and its lock file are removed once, by the
    main process, when the server stops.
    """
    path = tmp_path / "frames.sock"
    with ServerProcess(str(tmp_path), "--workers", "2", "--listen", f"unix:{path}") as server:
        pids = workerPids(server, 2)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(path))
            (n,) = struct.unpack("!I", s.recv(4, socket.MSG_WAITALL))
            assert json.loads(s.recv(n, socket.MSG_WAITALL))["event"] == "hello"
        os.kill(pids[1], signal.SIGTERM)
        server.waitFor(rf"worker 1 \(pid {pids[1]}\) was killed by signal 15", START)
        assert path.exists()
        server.waitFor(rf"worker 1 ready \(pid (?!{pids[1]}\))\d+\)", START)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == -signal.SIGTERM
    assert not path.exists()
    assert not Path(f"{path}.lock").exists()
    assert "Traceback" not in server.log, server.log


def test_tlsBehindTheBalancerInWorkers(tmp_path: Path) -> None:
    """
    C{--tls-cert} and C{--listen haproxy:...} with C{--workers 2}: a worker
    reads the PROXY header, then the TLS handshake; the greeting comes over
    TLS and the log names the client from the header.
    """
    creds = makeCredentials(str(tmp_path / "creds"))
    root = tmp_path / "srv"
    root.mkdir()
    tls = ("--tls-cert", creds.server, "--tls-key", creds.serverKey)
    listen = "haproxy:tcp:0:interface=127.0.0.1"
    with ServerProcess(str(root), "--workers", "2", *tls, listen=listen) as server:
        workerPids(server, 2)
        context = ssl.create_default_context(cafile=creds.ca)
        for port in (4321, 4322):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
                raw.sendall(f"PROXY TCP4 198.51.100.7 127.0.0.1 {port} 8007\r\n".encode())
                with context.wrap_socket(raw, server_hostname="localhost") as s:
                    f = s.makefile("rb")
                    (n,) = struct.unpack("!I", f.read(4))
                    assert json.loads(f.read(n))["event"] == "hello"
                    f.close()
            server.waitFor(rf"\[worker \d\] connection from 198\.51\.100\.7:{port}")


def test_requestInFlightFinishesOnSIGTERM(tmp_path: Path) -> None:
    """
    C{SIGTERM} to the main process reaches the worker serving a request in
    flight as a graceful shutdown: the request, whose body is still
    arriving, gets its final reply; then the server exits.
    """
    with ServerProcess(str(tmp_path), "--workers", "2") as server:
        workerPids(server, 2)
        body = os.urandom(1 << 20)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            f = s.makefile("rb")
            (n,) = struct.unpack("!I", f.read(4))
            f.read(n + 4)
            header = json.dumps({"op": "ping", "id": 1}).encode()
            s.sendall(struct.pack("!I", len(header)) + header + struct.pack("!I", len(body)))
            s.sendall(body[: len(body) // 2])
            me = s.getsockname()[1]
            line = server.waitFor(rf"\[worker (\d)\] connection from 127\.0\.0\.1:{me}\b")
            worker = re.findall(r"\[worker (\d)\]", line)[0]
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            server.waitFor(rf"\[worker {worker}\] shutting down: 1 connections")
            s.sendall(body[len(body) // 2 :])
            while True:
                (n,) = struct.unpack("!I", f.read(4))
                reply = json.loads(f.read(n))
                (m,) = struct.unpack("!I", f.read(4))
                f.read(m)
                if "ok" in reply:
                    break
            f.close()
        assert reply["ok"] is True, reply
        assert server.process.wait(30) == -signal.SIGTERM
