"""
File bodies sent over TLS from a worker thread
(L{twisted_frames._speedups.tlssend}), over real loopback sockets with the
real reactor and real worker threads: byte-exact bodies and digests both
ways, the reactor never touching the connection while a slice owns it,
the write deadline, a peer closing mid-body, shutdown, progress, and a
bystander's latency.  Run by pytest, which owns the reactor.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import blake3
import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from tests.inmemory import Credentials, makeCredentials
from tests.loopback import recordConnections, until
from twisted_frames import _speedups, wire
from twisted_frames._speedups import tlssend
from twisted_frames._speedups.tls import writeUnbuffered
from twisted_frames.client import FramesClient, connect
from twisted_frames.files.client import FileClient
from twisted_frames.files.service import FileService
from twisted_frames.files.store import FileSource, synchronousRunner
from twisted_frames.server import FramesServerFactory, ServerProtocol
from twisted_frames.tls import clientOptions, serverOptions

MiB = 1024 * 1024

#: Not run with the speed paths disabled (TWISTED_FRAMES_NO_SPEEDUPS=1),
#: where the threaded send is not used.
pytestmark = pytest.mark.skipif(not _speedups.enabled(), reason="the speed paths are disabled")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _randomFile(path: str, size: int) -> str:
    """
    Write C{size} random bytes to C{path}.

    @return: their BLAKE3 digest.
    """
    h = blake3.blake3()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(MiB, left))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class _Slices:
    """
    Watches every L{tlssend.ThreadedSend} slice of the test: counts them,
    and checks that the reactor never used an owned connection's
    pyOpenSSL C{Connection} (each of its methods is wrapped to note the
    thread that calls it while owned).
    """

    def __init__(self, monkeypatch: Any) -> None:
        self.slices = 0
        self.blocked = 0
        self.bytes = 0
        self.running = 0
        self.misuse: list[str] = []
        run = tlssend.ThreadedSend.run
        acquire = tlssend.ThreadedSend.acquire
        watch = self

        def counted(s: tlssend.ThreadedSend, fill: Any, count: int) -> tlssend.Outcome:
            watch.running += 1
            try:
                outcome = run(s, fill, count)
            finally:
                watch.running -= 1
            watch.slices += 1
            watch.blocked += outcome.status == tlssend.BLOCKED
            watch.bytes += outcome.sent
            return outcome

        def acquired(s: tlssend.ThreadedSend) -> bool | None:
            result = acquire(s)
            if result:
                watch._guard(s)
            return result

        monkeypatch.setattr(tlssend.ThreadedSend, "run", counted)
        monkeypatch.setattr(tlssend.ThreadedSend, "acquire", acquired)

    def _guard(self, s: tlssend.ThreadedSend) -> None:
        """
        Note any call of the owned C{Connection} from the reactor thread.
        """
        guardConnection(s, self.misuse)


def guardConnection(owner: Any, misuse: list[str]) -> None:
    """
    Wrap the methods of C{owner.transport}'s pyOpenSSL C{Connection} to add
    to C{misuse} the name of any called from this (the reactor's) thread
    while C{owner.owned} (or that of any other owner it was guarded for).
    """
    connection = owner.transport._tlsConnection
    owners = getattr(connection, "_owners", None)
    if owners is not None:
        owners.append(owner)
        return
    owners = connection._owners = [owner]
    reactorThread = threading.current_thread()
    for name in ("send", "recv", "recv_into", "bio_read", "bio_write", "shutdown", "do_handshake"):
        original = getattr(connection, name)

        def guarded(*args: Any, _original: Any = original, _name: str = name) -> Any:
            owned = any(o.owned for o in owners)
            if owned and threading.current_thread() is reactorThread:
                misuse.append(_name)
            return _original(*args)

        setattr(connection, name, guarded)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: Any) -> Credentials:
    """
    Certificates for this module.
    """
    return makeCredentials(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def slices(monkeypatch: Any) -> _Slices:
    """
    Every slice of the test, watched.
    """
    return _Slices(monkeypatch)


class _TLSServer:
    """
    A file service on a temp root behind mutual TLS (no login), on a
    loopback port picked by the kernel.
    """

    def __init__(
        self, root: str, creds: Credentials, segmentSize: int = 1 << 30, **settings: Any
    ) -> None:
        self.root = root
        self.creds = creds
        service = FileService(root, segmentSize=segmentSize)
        self.factory = FramesServerFactory([service], clock=_reactor())
        self.factory.authRequired = False
        for name, value in settings.items():
            setattr(self.factory, name, value)
        self.connections: list[ServerProtocol] = recordConnections(self.factory)
        options = serverOptions(creds.server, creds.serverKey, creds.ca)
        self.port = _reactor().listenTCP(
            0, TLSMemoryBIOFactory(options, False, self.factory), interface="127.0.0.1"
        )
        self.address = f"127.0.0.1:{self.port.getHost().port}"

    async def connect(self) -> FramesClient:
        """
        @return: a client connected over mutual TLS.
        """
        creds = self.creds
        options = clientOptions("localhost", creds.ca, creds.client, creds.clientKey)
        return await connect(_reactor(), self.address, timeout=10, tls=options)


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Any, creds: Credentials) -> AsyncIterator[_TLSServer]:
    root = tmp_path / "root"
    root.mkdir()
    s = _TLSServer(str(root), creds)
    yield s
    await s.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_roundTripThreaded(server: _TLSServer, slices: _Slices, tmp_path: Any) -> None:
    """
    Over TLS a put (the client's side) and a get (the server's) both go
    from worker threads, in several slices each, byte-exact with the right
    digest, and the reactor never used a connection while a slice owned
    it; the client's progress callback saw every byte.
    """
    size = 3 * tlssend.SLICE_BYTES + 12345
    src = str(tmp_path / "src")
    digest = _randomFile(src, size)
    client = await server.connect()
    try:
        files = FileClient(client)
        progress: list[int] = []
        put = await files.putFile(src, "f", progress=progress.append)
        assert (put["hash"], put["digest"]) == ("blake3", digest)
        assert sum(progress) == size
        assert slices.bytes == size
        assert slices.slices >= 4
        dst = str(tmp_path / "dst")
        got = await files.getFile("f", dst)
        assert (got["hash"], got["digest"]) == ("blake3", digest)
        assert slices.bytes == 2 * size
        with open(src, "rb") as a, open(dst, "rb") as b:
            assert a.read() == b.read()
        # The connection still works both ways afterwards.
        assert await client.ping(b"after") == b"after"
    finally:
        await client.close()
    assert slices.misuse == []


def _rawClient(creds: Credentials, port: int) -> ssl.SSLSocket:
    """
    A client that is not ours: Python's C{ssl} over a blocking socket,
    with the test's client certificate, handshake done (run it in a
    thread).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(creds.ca)
    ctx.load_cert_chain(creds.client, creds.clientKey)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _getRequest(path: str, rid: int = 1) -> bytes:
    """
    @return: an encoded C{get} request for C{path}.
    """
    return wire.encodeMessage({"id": rid, "op": "get", "path": path, "hash": "blake3"})


def _closed(server: _TLSServer) -> bool:
    """
    @return: whether the server has had a connection and none is left.
    """
    return bool(server.connections) and not server.factory.connections


@pytest_twisted.ensureDeferred
async def test_stalledPeerResumes(
    server: _TLSServer, slices: _Slices, tmp_path: Any, monkeypatch: Any
) -> None:
    """
    A peer that stops reading for a while fills the socket: the slice
    ends blocked and the body waits for the socket, and once the peer
    reads again the rest goes (from the thread again), byte-exact.  (The
    server reads on the reactor here, so that pausing its transport stops
    its reading.)
    """
    monkeypatch.setattr(ServerProtocol, "receiveDirectMin", None)
    size = 48 * MiB
    src = str(tmp_path / "src")
    digest = _randomFile(src, size)
    client = await server.connect()
    try:
        files = FileClient(client)
        put = defer.ensureDeferred(files.putFile(src, "f"))
        await until(lambda: slices.bytes > 0 and bool(server.connections))
        receiving = server.connections[0].transport
        receiving.pauseProducing()
        await until(lambda: slices.blocked > 0)
        before = slices.slices
        await task.deferLater(_reactor(), 0.3, lambda: None)
        receiving.resumeProducing()
        result = await put
        assert result["digest"] == digest
        assert slices.slices > before
        assert slices.bytes == size
    finally:
        await client.close()
    assert slices.misuse == []


@pytest_twisted.ensureDeferred
async def test_peerDataReadBetweenSlices(
    tmp_path: Any, creds: Credentials, slices: _Slices
) -> None:
    """
    What the peer sends while a body goes from the thread is read between
    slices: a ping sent during a get of several segments is answered
    before the get ends.
    """
    root = tmp_path / "root"
    root.mkdir()
    s = _TLSServer(str(root), creds, segmentSize=4 * MiB)
    _randomFile(str(root / "f"), 64 * MiB)
    client = await s.connect()
    try:
        files = FileClient(client)
        get = defer.ensureDeferred(files.getFile("f", str(tmp_path / "dst")))
        await until(lambda: slices.bytes > 0)
        pong = await client.ping(b"during")
        assert pong == b"during"
        assert not get.called
        await get
    finally:
        await client.close()
        await s.port.stopListening()
    assert slices.misuse == []


@pytest.fixture
def bigFile(server: _TLSServer) -> str:
    """
    A 64 MiB file named C{big} in the server's root, far more than the
    socket buffers hold.
    """
    _randomFile(os.path.join(server.root, "big"), 64 * MiB)
    return "big"


@pytest_twisted.ensureDeferred
async def test_writeDeadlineCutsNonReader(
    server: _TLSServer, slices: _Slices, bigFile: str
) -> None:
    """
    A client that asks for a file and then never reads is cut off by the
    write deadline, as over plain TCP: the slice ends blocked, the body
    waits for a socket that never takes more, and the deadline aborts the
    connection (the thread is not left waiting).
    """
    server.factory.writeTimeout = 1.0
    port = server.port.getHost().port
    raw = await threads.deferToThread(_rawClient, server.creds, port)
    try:
        started = time.monotonic()
        await threads.deferToThread(raw.sendall, _getRequest(bigFile))
        await until(lambda: _closed(server), timeout=15)
        assert time.monotonic() - started < 10
        assert slices.blocked > 0
        assert slices.running == 0
    finally:
        raw.close()
    assert slices.misuse == []


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
@pytest_twisted.ensureDeferred
async def test_peerGoneMidBody(
    server: _TLSServer, slices: _Slices, bigFile: str, tmp_path: Any, reset: bool
) -> None:
    """
    A client that resets or closes its connection in the middle of a body
    ends that connection as over plain TCP (the server finds it lost), the
    thread stops, and the server goes on serving others over TLS.
    """
    port = server.port.getHost().port
    raw = await threads.deferToThread(_rawClient, server.creds, port)
    try:
        await threads.deferToThread(raw.sendall, _getRequest(bigFile))
        # Read some of the body, then reset (no TLS close, an RST) or
        # close (a FIN).
        await threads.deferToThread(raw.recv, 65536)
        await until(lambda: slices.bytes > 0)
        if reset:
            raw.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    finally:
        raw.close()
    await until(lambda: _closed(server), timeout=15)
    await until(lambda: slices.running == 0)
    client = await server.connect()
    try:
        got = await FileClient(client).getFile(bigFile, str(tmp_path / "dst"))
        with open(os.path.join(server.root, bigFile), "rb") as f:
            assert got["digest"] == blake3.blake3(f.read()).hexdigest()
    finally:
        await client.close()
    assert slices.misuse == []


@pytest_twisted.ensureDeferred
async def test_shutdownStopsThread(server: _TLSServer, slices: _Slices, bigFile: str) -> None:
    """
    The server's shutdown (what SIGTERM does) with a body going to a peer
    that reads nothing: after the grace period the connection is aborted
    and no slice is left running.
    """
    server.factory.shutdownGrace = 0.5
    server.factory.shutdownFlush = 0.2
    port = server.port.getHost().port
    raw = await threads.deferToThread(_rawClient, server.creds, port)
    try:
        await threads.deferToThread(raw.sendall, _getRequest(bigFile))
        await until(lambda: slices.blocked > 0)
        started = time.monotonic()
        await server.factory.shutDown()
        assert time.monotonic() - started < 5
        assert _closed(server)
        await until(lambda: slices.running == 0, timeout=2)
    finally:
        raw.close()
    assert slices.misuse == []


@pytest_twisted.ensureDeferred
async def test_heldWhileOwned(server: _TLSServer, slices: _Slices) -> None:
    """
    While a slice owns a connection, what the reactor does with its TLS
    layer is held: a write and an abort do not touch the pyOpenSSL
    C{Connection} (nor does a read: the TCP transport's reading is
    stopped, a resume asked for meanwhile is remembered).  The abort stops
    the thread, which ends its slice without sending the rest; once it
    is released the held calls run in order (the write is dropped by the
    aborting TLS layer, as it is after any abort) and the connection ends.
    """
    client = await server.connect()
    transport = client.protocol.transport
    assert tlssend.canSendThreaded(transport)
    threaded = tlssend.ThreadedSend(transport)
    inFill = threading.Event()
    go = threading.Event()
    filled: list[int] = []

    def fill(done: int, view: memoryview) -> None:
        filled.append(done)
        if not done:
            inFill.set()
            go.wait(10)
        view[:] = bytes(len(view))

    # Not from inside the TLS layer (connect() fires from there).
    await task.deferLater(_reactor(), 0, lambda: None)
    assert threaded.acquire() is True
    running = threads.deferToThread(threaded.run, fill, 4 * tlssend.CHUNK)
    await threads.deferToThread(inFill.wait, 10)
    below = transport.transport
    transport.write(b"held")
    # The protocol's own write below the TLS layer's buffering, too.
    writeUnbuffered(transport, b"also held")
    transport.resumeProducing()
    transport.abortConnection()
    assert below.connected and not below._aborting
    assert [name for name, _ in threaded._ownership._held] == ["write", "write", "abortConnection"]
    assert threaded.owned and slices.misuse == []
    go.set()
    outcome = await running
    # Stopped after the chunk it was in.
    assert filled == [0]
    assert outcome.status == tlssend.STOPPED
    assert outcome.sent == tlssend.CHUNK
    threaded.release(outcome)
    assert not threaded.owned
    assert "abortConnection" not in vars(transport)
    assert below._aborting
    await client.protocol.whenClosed()
    assert slices.misuse == []


def _rss() -> int:
    """
    @return: this process's resident set size in bytes (Linux).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _drain(raw: ssl.SSLSocket, n: int) -> int:
    """
    Read at least C{n} bytes from C{raw} and drop them (in a thread).

    @return: how many were read.
    """
    got = 0
    while got < n:
        data = raw.recv(1024 * 1024)
        if not data:
            break
        got += len(data)
    return got


@pytest_twisted.ensureDeferred
async def test_bystanderAndMemory(server: _TLSServer, slices: _Slices) -> None:
    """
    While a large body goes from the thread to a fast reader, a bystander
    on another connection keeps its ping round trips short (the reactor
    is free), and the process's memory stays flat: nothing is buffered
    beyond a slice's chunk and the records of one chunk.
    """
    size = 512 * MiB
    with open(os.path.join(server.root, "sparse"), "wb") as f:
        f.truncate(size)
    bystander = await server.connect()
    port = server.port.getHost().port
    raw = await threads.deferToThread(_rawClient, server.creds, port)
    try:
        await bystander.ping(b"warm")
        start = _rss()
        peak = start
        await threads.deferToThread(raw.sendall, _getRequest("sparse"))
        reading = threads.deferToThread(_drain, raw, size)
        await until(lambda: slices.bytes > 0)
        pings: list[float] = []
        while not reading.called:
            t = time.perf_counter()
            await bystander.ping(b"x")
            pings.append(time.perf_counter() - t)
            peak = max(peak, _rss())
            await task.deferLater(_reactor(), 0.01, lambda: None)
        assert await reading >= size
        assert slices.bytes >= size - 64 * MiB
        pings.sort()
        p99 = pings[int(len(pings) * 0.99)] if pings else 0.0
        # 20 ms on a quiet machine; room for a loaded one here.
        assert len(pings) >= 10 and p99 < 0.05, (len(pings), p99)
        assert peak - start < 64 * MiB, (start, peak)
    finally:
        raw.close()
        await bystander.close()
    assert slices.misuse == []


class _FakeThreadedConsumer:
    """
    A consumer that offers the threaded send and runs each slice's C{fill}
    at once, answering each slice from C{answers} (C{"send"}: take up to
    C{limit} bytes; C{None}: paused until resumed; -1: use the TLS
    layer); what is written the usual way goes to C{written}.
    """

    def __init__(self, answers: list[Any], limit: int) -> None:
        self.answers = answers
        self.limit = limit
        self.body = bytearray()
        self.written = bytearray()
        self.slices = 0

    def canSendThreaded(self) -> bool:
        return True

    def sendThreaded(self, count: int, fill: Any, runInThread: Any) -> defer.Deferred[int | None]:
        self.slices += 1
        answer = self.answers.pop(0) if self.answers else "send"
        if answer != "send":
            return defer.succeed(answer)
        n = min(count, self.limit)
        view = memoryview(bytearray(n))
        fill(0, view)
        self.body += view
        return defer.succeed(n)

    def write(self, data: bytes) -> None:
        self.written += data


class FileSourceThreadedTests(SynchronousTestCase):
    """
    L{FileSource} over a consumer that sends from a worker thread
    (synchronously here): slices in order, hashed as sent, a pause, and
    the fall back to the TLS layer mid-body.
    """

    def setUp(self) -> None:
        self.data = os.urandom(1000)
        fd, path = tempfile.mkstemp()
        os.write(fd, self.data)
        self.fd = fd
        self.addCleanup(os.unlink, path)
        self.addCleanup(os.close, fd)

    def source(self, offset: int = 0) -> tuple[FileSource, Any]:
        hasher = blake3.blake3()
        progress: list[int] = []
        s = FileSource(
            self.fd, offset, len(self.data) - offset, hasher, synchronousRunner, progress.append
        )
        return s, (hasher, progress)

    def test_slices(self) -> None:
        """
        The body goes in slices, each hashed as sent, progress once per
        slice; nothing is written the usual way.
        """
        s, (hasher, progress) = self.source(100)
        consumer = _FakeThreadedConsumer([], 256)
        d = s.startProducing(consumer)
        self.successResultOf(d)
        self.assertTrue(s.sendsThreaded)
        self.assertEqual(bytes(consumer.body), self.data[100:])
        self.assertEqual(consumer.written, b"")
        self.assertEqual(hasher.hexdigest(), blake3.blake3(self.data[100:]).hexdigest())
        self.assertEqual(progress, [256, 256, 256, 132])

    def test_pausedUntilResumed(self) -> None:
        """
        A slice answered C{None} (the consumer paused the source until the
        socket takes more) leaves the body waiting; resuming sends the
        rest.
        """
        s, _ = self.source()
        consumer = _FakeThreadedConsumer(["send", None], 400)
        d = s.startProducing(consumer)
        s.pauseProducing()
        self.assertNoResult(d)
        self.assertEqual(len(consumer.body), 400)
        s.resumeProducing()
        self.successResultOf(d)
        self.assertEqual(bytes(consumer.body), self.data)

    def test_fallBackToTLSLayer(self) -> None:
        """
        When the connection cannot be used from the thread any more (-1),
        the rest is read and written the usual way, in order, and the hash
        still covers the whole body.
        """
        s, (hasher, progress) = self.source()
        consumer = _FakeThreadedConsumer(["send", -1], 300)
        d = s.startProducing(consumer)
        self.successResultOf(d)
        self.assertFalse(s.sendsThreaded)
        self.assertEqual(bytes(consumer.body) + bytes(consumer.written), self.data)
        self.assertEqual(len(consumer.body), 300)
        self.assertEqual(hasher.hexdigest(), blake3.blake3(self.data).hexdigest())
        self.assertEqual(sum(progress), len(self.data))


@pytest_twisted.ensureDeferred
async def test_noDescriptorsFallsBack(
    server: _TLSServer, slices: _Slices, tmp_path: Any, monkeypatch: Any
) -> None:
    """
    With no descriptor left for a slice's wake-up pipe, the body goes
    through the TLS layer on the reactor instead, complete and verified.
    """

    def noPipe() -> tuple[int, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(tlssend.os, "pipe", noPipe)
    src = str(tmp_path / "src")
    digest = _randomFile(src, 3 * MiB)
    client = await server.connect()
    try:
        put = defer.ensureDeferred(FileClient(client).putFile(src, "f"))
        put.addTimeout(20, _reactor())
        assert (await put)["digest"] == digest
        assert slices.slices == 0
    finally:
        await client.close()
