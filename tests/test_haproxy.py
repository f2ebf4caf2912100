"""
A real HAProxy in front of two frameservers that share one root, each
listening with C{--listen haproxy:tcp:...} (the balancer sends the PROXY
header, C{send-proxy}).  HAProxy runs with its own configuration on free
loopback ports, started and stopped here; the tests are skipped where it is
not installed.

Everything is on loopback, so that the servers can tell the balancer from
its clients the balancer connects from 127.0.0.2 (C{source}) and the
clients from 127.0.0.3 and 127.0.0.4.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .serverprocess import ServerProcess, frames

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (Debian/Ubuntu: apt-get install haproxy)"
)

BALANCER = "127.0.0.2"
CLIENT = "127.0.0.3"
OTHER_CLIENT = "127.0.0.4"
#: Connections one client address may have open at once, on each server.
PER_SOURCE = 2
#: How long HAProxy may take to see a server come up or go down.
CHECK_TIMEOUT = 30.0

CONFIG = """\
global
    stats socket {stats} level admin
    maxconn 256

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # Health checks: connect with the server line's options (so sending
    # the PROXY header, check-send-proxy), expect the greeting; every 200 ms,
    # down after 2 failures.
    option tcp-check
    tcp-check connect default
    tcp-check expect string twisted-frames
    default-server send-proxy check check-send-proxy inter 200ms fall 2 rise 1 source {balancer}

frontend fe_a
    bind 127.0.0.1:{feA}
    default_backend be_a

frontend fe_b
    bind 127.0.0.1:{feB}
    default_backend be_b

frontend fe_pool
    bind 127.0.0.1:{fePool}
    default_backend be_pool

backend be_a
    server a 127.0.0.1:{a}

backend be_b
    server b 127.0.0.1:{b}

backend be_pool
    balance roundrobin
    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b}
"""


def freePort() -> int:
    """
    A TCP port on loopback that was free a moment ago (HAProxy binds the
    numbers its configuration names).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class HAProxy:
    """
    A running HAProxy in front of servers C{a} and C{b}.

    @ivar ports: the frontends' ports: C{a} and C{b} reach one server each,
        C{pool} balances between both.
    """

    def __init__(self, directory: Path, a: int, b: int) -> None:
        self.directory = directory
        self.stats = str(directory / "haproxy.sock")
        self.ports = {"a": freePort(), "b": freePort(), "pool": freePort()}
        self.config = directory / "haproxy.cfg"
        self.config.write_text(
            CONFIG.format(
                stats=self.stats,
                balancer=BALANCER,
                feA=self.ports["a"],
                feB=self.ports["b"],
                fePool=self.ports["pool"],
                a=a,
                b=b,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.output = directory / "haproxy.log"

    def __enter__(self) -> HAProxy:
        assert HAPROXY is not None
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        self.waitFor(lambda s: all(v == "UP" for v in s.values()), "every server checked up")
        return self

    def __exit__(self, *exc: Any) -> None:
        p = self.process
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def servers(self) -> dict[tuple[str, str], str]:
        """
        The status of every server, by C{(backend, server)}, from the stats
        socket (empty until HAProxy answers on it): C{UP} once a health check
        has passed (a server is also C{UP} before its first check: that is
        C{unchecked} here), C{DOWN} once it has failed.
        """
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(self.stats)
                s.sendall(b"show stat\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return {}
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {
            (row["pxname"], row["svname"]): (
                row["status"].split()[0]
                if "OK" in row["check_status"] or row["status"].startswith("DOWN")
                else "unchecked"
            )
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def waitFor(self, condition: Any, what: str) -> None:
        """
        Wait until C{condition(servers())} holds, checking every 50 ms for
        at most L{CHECK_TIMEOUT} seconds.
        """
        deadline = time.monotonic() + CHECK_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError("haproxy exited:\n" + self.output.read_text())
            state = self.servers()
            if state and condition(state):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {CHECK_TIMEOUT} s: {state}")
            time.sleep(0.05)


def connect(port: int, source: str = CLIENT) -> socket.socket:
    """
    A connection through the balancer from C{source}.
    """
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def receive(s: socket.socket) -> dict[str, Any]:
    """
    The header of the next message (its body is read and dropped).
    """
    f = s.makefile("rb")
    try:
        (n,) = struct.unpack("!I", f.read(4))
        header: dict[str, Any] = json.loads(f.read(n))
        (m,) = struct.unpack("!I", f.read(4))
        f.read(m)
    finally:
        f.close()
    return header


def send(s: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    """
    Send one message.
    """
    encoded = json.dumps(header).encode()
    s.sendall(struct.pack("!I", len(encoded)) + encoded + struct.pack("!I", len(body)) + body)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, HAProxy]]:
    """
    Servers C{a} and C{b} on one root, behind one HAProxy.
    """
    base = tmp_path_factory.mktemp("haproxy")
    root = base / "srv"
    root.mkdir()
    yield from startCluster(base, root)


def startCluster(base: Path, root: Path) -> Iterator[tuple[Any, Any, HAProxy]]:
    """
    Start servers C{a} and C{b} on C{root} and HAProxy in front of them.
    """
    common = ("--max-per-source", str(PER_SOURCE), "--listen", "haproxy:tcp:0:interface=127.0.0.1")
    # ServerProcess's own --listen is replaced: the servers listen only
    # behind the balancer.
    listen = "haproxy:tcp:0:interface=127.0.0.1"
    with ServerProcess(str(root), "--name", "a", *common[:2], listen=listen) as a:
        with ServerProcess(str(root), "--name", "b", *common[:2], listen=listen) as b:
            with HAProxy(base, a.port, b.port) as haproxy:
                yield a, b, haproxy


def test_putThroughOneGetThroughTheOther(cluster: Any, tmp_path: Path) -> None:
    """
    A file put through server C{a} is read, verified, through server C{b}.
    """
    a, b, haproxy = cluster
    data = os.urandom(3 << 20)
    (tmp_path / "up.bin").write_bytes(data)
    put = frames(
        "put", str(tmp_path / "up.bin"), "shared.bin", server=f"127.0.0.1:{haproxy.ports['a']}"
    )
    assert put.returncode == 0, put.stderr
    got = frames(
        "get", "shared.bin", str(tmp_path / "down.bin"), server=f"127.0.0.1:{haproxy.ports['b']}"
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "down.bin").read_bytes() == data


def test_sameUploadThroughBoth(cluster: Any) -> None:
    """
    An upload in progress through server C{a} makes the same upload through
    server C{b} fail at once with C{busy}.
    """
    a, b, haproxy = cluster
    put = {"op": "put", "path": "contended.bin", "size": 1000, "overwrite": False}
    put |= {"offset": 0, "final": False}
    with connect(haproxy.ports["a"]) as first, connect(haproxy.ports["b"]) as second:
        assert receive(first)["server"] == "a"
        assert receive(second)["server"] == "b"
        send(first, {**put, "id": 1})
        started = receive(first)
        assert (started["id"], started["ok"], started["have"]) == (1, True, 0), started
        send(second, {**put, "id": 1})
        reply = receive(second)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "busy", reply


def test_perSourceLimitIsTheClients(cluster: Any) -> None:
    """
    Every connection reaches server C{a} from the balancer's address, yet
    C{--max-per-source} counts the client's: a client over it is refused
    C{busy} while another client is served, and the log names the clients.
    """
    a, b, haproxy = cluster
    port = haproxy.ports["a"]
    held = [connect(port) for _ in range(PER_SOURCE)]
    try:
        for s in held:
            assert receive(s)["event"] == "hello"
        with connect(port) as refused:
            error = receive(refused)
        assert error["error"]["code"] == "busy", error
        assert "from your address" in error["error"]["message"]
        with connect(port, source=OTHER_CLIENT) as other:
            assert receive(other)["event"] == "hello"
    finally:
        for s in held:
            s.close()
    a.waitFor(rf"connection from {CLIENT.replace('.', '[.]')}:\d+")
    a.waitFor(rf"refused connection from {CLIENT.replace('.', '[.]')}:\d+: too many connections")
    a.waitFor(rf"connection from {OTHER_CLIENT.replace('.', '[.]')}:\d+")


def test_deadBackendIsTakenOut(tmp_path: Path) -> None:
    """
    A server that dies is marked down by the health check (the greeting,
    read over a connection that sends the PROXY header), and then every new
    connection to the balanced frontend goes to the other one.
    """
    root = tmp_path / "srv"
    root.mkdir()
    cluster = startCluster(tmp_path, root)
    a, b, haproxy = next(cluster)
    try:
        pool = haproxy.ports["pool"]
        names = set()
        for _ in range(4):
            with connect(pool) as s:
                names.add(receive(s)["server"])
        assert names == {"a", "b"}
        assert a.process is not None
        a.process.kill()
        a.process.wait(10)
        haproxy.waitFor(lambda s: s[("be_pool", "a")] == "DOWN", "server a down")
        assert haproxy.servers()[("be_pool", "b")] == "UP"
        for _ in range(6):
            with connect(pool) as s:
                assert receive(s)["server"] == "b"
    finally:
        cluster.close()
