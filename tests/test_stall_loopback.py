"""
Clients that pipeline C{get}s and never read, over real loopback TCP (pytest
+ pytest-twisted, real reactor and worker threads): the kernel's buffers
fill, the write deadline closes them, the server holds one file per
connection meanwhile, and a bystander is served as usual.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from typing import Any

import blake3
import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.protocols.tls import TLSMemoryBIOFactory

from tests.loopback import openFilesOf, recordConnections, until
from twisted_frames import wire
from twisted_frames.certs import writeQuickStart
from twisted_frames.client import connect
from twisted_frames.files.client import FileClient
from twisted_frames.files.service import FileService
from twisted_frames.server import FramesServerFactory
from twisted_frames.tls import serverOptions

MiB = 1024 * 1024
WRITE_TIMEOUT = 2.0
STALLED = 6
GETS = 100


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _stalledReader(port: int) -> socket.socket:
    """
    A client with a 4 KiB receive buffer that sends C{GETS} pipelined gets
    and never reads (the socket is blocking, but sending a few KiB to
    loopback never waits for the reactor).
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(
        b"".join(
            wire.encodeMessage({"op": "get", "id": i, "path": "big.bin"}) for i in range(GETS)
        )
    )
    return s


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest_twisted.ensureDeferred
async def test_stalledReadersClosedBystanderServed(tmp_path: Any) -> None:
    """
    Connections that pipeline gets of an 8 MiB file and never read hold one
    open file each at most (not one per get), are closed by the write deadline
    within about its length once the server has data for them, and end
    every request; meanwhile a client on another connection pings in well
    under a second and downloads the file intact.
    """
    root = tmp_path / "root"
    root.mkdir()
    big = str(root / "big.bin")
    data = os.urandom(8 * MiB)
    with open(big, "wb") as f:
        f.write(data)
    service = FileService(str(root))
    factory = FramesServerFactory([service])
    factory.writeTimeout = WRITE_TIMEOUT
    factory.messagesPerTurn = 16
    connections = recordConnections(factory)
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    address = f"127.0.0.1:{port.getHost().port}"
    socks: list[socket.socket] = []
    bystander = None
    try:
        started = time.monotonic()
        socks = [_stalledReader(port.getHost().port) for _ in range(STALLED)]
        await until(lambda: len(connections) == STALLED)
        stalled = list(connections)
        # Each has its write side full, gets in flight (the rest of what it
        # sent is held unread), and one file open at most.
        await until(lambda: all(c.inFlight and c._pressure.paused for c in stalled))
        assert openFilesOf(big) <= STALLED

        bystander = await connect(_reactor(), address)
        t = time.monotonic()
        assert await bystander.ping(b"still there?") == b"still there?"
        assert time.monotonic() - t < 1.0
        got = await FileClient(bystander).getFile("big.bin", str(tmp_path / "copy"))
        assert (got["hash"], got["digest"]) == ("blake3", blake3.blake3(data).hexdigest())
        assert openFilesOf(big) <= STALLED

        await until(lambda: all(not c.transport.connected for c in stalled), timeout=15)
        closedAfter = time.monotonic() - started
        assert WRITE_TIMEOUT <= closedAfter <= 1.25 * WRITE_TIMEOUT + 3
        assert all(c.inFlight == {} for c in stalled)
        await until(lambda: openFilesOf(big) == 0)
        assert service._getTurns == {} or set(service._getTurns) == {
            c for c in connections if c.transport.connected
        }
        assert await bystander.ping(b"x") == b"x"
    finally:
        for s in socks:
            s.close()
        if bystander is not None:
            await bystander.close()
        await port.stopListening()


def _stalledTLSReader(port: int, ca: str) -> ssl.SSLSocket:
    """
    A TLS client (Python's C{ssl}, blocking: run it in a thread) with a
    4 KiB receive buffer that completes the handshake, sends C{GETS}
    pipelined gets and then never reads.
    """
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    tls = ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(
        b"".join(
            wire.encodeMessage({"op": "get", "id": i, "path": "big.bin"}) for i in range(GETS)
        )
    )
    return tls


@pytest_twisted.ensureDeferred
async def test_stalledTLSReaderClosed(tmp_path: Any) -> None:
    """
    Over TLS the deadline watches the TCP transport under the TLS layer: a
    client that stops reading after the handshake is cut off too.
    """
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(8 * MiB))
    certs = writeQuickStart(str(tmp_path / "pki"), ["localhost"])
    factory = FramesServerFactory([FileService(str(root))])
    factory.writeTimeout = WRITE_TIMEOUT
    connections = recordConnections(factory)
    options = serverOptions(certs["server"], certs["server-key"])
    port = _reactor().listenTCP(
        0, TLSMemoryBIOFactory(options, False, factory), interface="127.0.0.1"
    )
    tls = None
    try:
        tls = await threads.deferToThread(_stalledTLSReader, port.getHost().port, certs["ca"])
        started = time.monotonic()
        await until(lambda: bool(connections) and bool(connections[0].inFlight))
        (connection,) = connections
        await until(lambda: not connection.transport.transport.connected, timeout=15)
        assert WRITE_TIMEOUT <= time.monotonic() - started + 0.5
        assert connection.inFlight == {}
    finally:
        if tls is not None:
            tls.close()
        await port.stopListening()
