"""
Large bodies into files received over TLS off the reactor
(L{twisted_frames._speedups.recv.TLSReceive}), over real loopback sockets
with the real reactor and real threads: byte-exact bodies both ways, the
next request's frames in the same TLS record as the body's last bytes, the
reactor never touching the connection while the thread owns it (writes
held and replayed), the frame deadline, a peer closing or resetting,
a disk error, a delete, shutdown, progress, a bystander's latency and the
memory.  Run by pytest, which owns the reactor.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import blake3
import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from tests.inmemory import Credentials, makeCredentials
from tests.loopback import openFilesOf, until
from tests.test_receive_direct import _partial, _putHeader, _readMessage
from tests.test_tlssend import _randomFile, _rss, _TLSServer, guardConnection
from twisted_frames import _speedups, protocol, wire
from twisted_frames._speedups import recv, tlsown, tlssend
from twisted_frames.files import store
from twisted_frames.files.client import FileClient
from twisted_frames.wire import ErrorCode, FramesError

MiB = 1024 * 1024
#: Large enough that most of it is received off the reactor.
BODY = 24 * MiB
#: A TLS record's most plaintext.
RECORD = 16384

pytestmark = pytest.mark.skipif(not _speedups.enabled(), reason="the speed paths are disabled")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Receives:
    """
    Every L{recv.TLSReceive} the protocol makes in the test, and any use
    of an owned connection's pyOpenSSL C{Connection} by the reactor.
    """

    def __init__(self) -> None:
        self.made: list[recv.TLSReceive] = []
        self.misuse: list[str] = []


@contextmanager
def _recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Receives]:
    watch = _Receives()

    class Recorded(recv.TLSReceive):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            watch.made.append(self)
            guardConnection(self, watch.misuse)

    monkeypatch.setattr(protocol.recv, "TLSReceive", Recorded)
    yield watch
    assert watch.misuse == []


@pytest.fixture(scope="module")
def creds(tmp_path_factory: Any) -> Credentials:
    """
    Certificates for this module.
    """
    return makeCredentials(str(tmp_path_factory.mktemp("tls")))


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Any, creds: Credentials) -> AsyncIterator[_TLSServer]:
    root = tmp_path / "root"
    root.mkdir()
    s = _TLSServer(str(root), creds)
    yield s
    await s.port.stopListening()


def _rawClient(creds: Credentials, port: int) -> ssl.SSLSocket:
    """
    A blocking TLS client of Python's C{ssl} (use it from a thread), with
    the test's client certificate, the greeting read.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(creds.ca)
    ctx.load_cert_chain(creds.client, creds.clientKey)
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    assert "version" in _readMessage(s)
    return s


async def _sendPart(server: _TLSServer, body: bytes, part: int) -> ssl.SSLSocket:
    """
    Connect, send a put's frames and the first C{part} bytes of its body,
    and return the socket (the rest is not sent).
    """

    def send() -> ssl.SSLSocket:
        s = _rawClient(server.creds, server.port.getHost().port)
        s.sendall(_putHeader("up.bin", body) + body[:part])
        return s

    return await threads.deferToThread(send)


@pytest_twisted.ensureDeferred
async def test_nextRequestInBodysLastRecord(server: _TLSServer, monkeypatch: Any) -> None:
    """
    A put whose body's last bytes share a TLS record with the next
    request (a ping), all written at once: the body is received off the
    reactor, exactly the body (the ping, decrypted past the body's end by
    the thread, is handed back to the protocol and answered), the file is
    intact, the byte count has every byte, and the reactor never used the
    connection while the thread owned it.
    """
    ping = wire.encodeMessage({"op": "ping", "id": 2}, b"after")
    frames = _putHeader("up.bin", b"")
    # The body ends 100 bytes into a record: the ping fills the rest of it.
    size = BODY - (len(frames) + BODY) % RECORD + 100
    body = os.urandom(size)
    frames = _putHeader("up.bin", body)
    assert (len(frames) + size) % RECORD == 100 and len(ping) < RECORD - 100
    with _recording(monkeypatch) as watch:
        s = await threads.deferToThread(_rawClient, server.creds, server.port.getHost().port)
        try:

            def exchange() -> list[dict[str, Any]]:
                s.sendall(frames + body + ping)
                return sorted([_readMessage(s), _readMessage(s)], key=lambda h: h["id"])

            put, pong = await threads.deferToThread(exchange)
        finally:
            s.close()
        assert server.connections[-1].bytesReceived >= size + len(ping)
    assert put.get("ok") is True, put
    assert (pong["id"], pong.get("ok")) == (2, True)
    with open(os.path.join(server.root, "up.bin"), "rb") as f:
        assert f.read() == body
    assert [r.outcome for r in watch.made] == [recv.COMPLETE]
    assert watch.made[0].taken == watch.made[0].length > size - 2 * MiB
    assert not watch.made[0].owned
    assert recv._active == set()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("direct", [True, False], ids=["record-reader", "recv_into"])
async def test_roundTripBothSides(
    server: _TLSServer, monkeypatch: Any, tmp_path: Any, direct: bool
) -> None:
    """
    Our client's put is received off the reactor by the server, and its
    get by the client, byte-exact with the right digest; the client's
    progress callback sees every byte; the connection goes on afterwards.
    The same with the records decrypted by the direct record reader
    (L{twisted_frames._speedups.decrypt}) and by pyOpenSSL's C{recv_into}.
    """
    if not direct:
        monkeypatch.setattr(recv, "recordReader", lambda connection: None)
    src = str(tmp_path / "src")
    digest = _randomFile(src, BODY + 777)
    with _recording(monkeypatch) as watch:
        client = await server.connect()
        try:
            files = FileClient(client)
            put = await files.putFile(src, "f")
            assert put["digest"] == digest
            assert [r.outcome for r in watch.made] == [recv.COMPLETE]
            seen: list[int] = []
            got = await files.getFile("f", str(tmp_path / "dst"), progress=seen.append)
            assert got["digest"] == digest
            assert sum(seen) == BODY + 777
            assert [r.outcome for r in watch.made] == [recv.COMPLETE] * 2
            assert [r._reader is not None for r in watch.made] == [direct] * 2
            assert await client.ping(b"after") == b"after"
        finally:
            await client.close()
    with open(src, "rb") as a, open(tmp_path / "dst", "rb") as b:
        assert a.read() == b.read()


@pytest_twisted.ensureDeferred
async def test_writesHeldWhileOwned(server: _TLSServer, monkeypatch: Any) -> None:
    """
    What the reactor writes on the connection while the thread owns it (a
    message to the peer) is held, not encrypted beside the thread, and
    goes out intact once the body is in, ahead of the put's reply; no
    other thread may take the connection meanwhile (a threaded send).
    """
    body = os.urandom(BODY)
    with _recording(monkeypatch) as watch:
        s = await _sendPart(server, body, 4 * MiB)
        try:
            await until(lambda: bool(watch.made) and watch.made[0].owned)
            conn = server.connections[-1]
            conn.sendMessage({"id": 77, "ok": True}, b"held")
            held = watch.made[0]._ownership._held
            assert [name for name, _ in held] == ["write"]
            # Nor may a body be sent from a thread on it meanwhile.
            assert not tlsown.TLSOwnership(conn.transport, lambda: None).usable()
            assert tlssend.ThreadedSend(conn.transport).acquire() is False

            def rest() -> list[dict[str, Any]]:
                s.sendall(body[4 * MiB :])
                return [_readMessage(s), _readMessage(s)]

            first, put = await threads.deferToThread(rest)
        finally:
            s.close()
    assert first == {"id": 77, "ok": True}
    assert put.get("ok") is True, put
    assert [r.outcome for r in watch.made] == [recv.COMPLETE]


@pytest_twisted.ensureDeferred
async def test_stalledSenderCutOff(tmp_path: Any, creds: Credentials, monkeypatch: Any) -> None:
    """
    A sender that stops in the middle of a body received off the reactor
    over TLS is cut off by the frame deadline (a C{timeout} error, then the
    connection closed) within about the deadline; what arrived is kept
    for a resume, and the thread is gone.
    """
    server = _TLSServer(str(tmp_path), creds, frameTimeout=0.5)
    body = os.urandom(BODY)
    try:
        with _recording(monkeypatch) as watch:
            s = await _sendPart(server, body, 4 * MiB)
            try:
                await until(lambda: bool(watch.made))
                started = time.monotonic()
                error = await threads.deferToThread(_readMessage, s)
                took = time.monotonic() - started
                assert (await threads.deferToThread(s.recv, 1)) == b""
            finally:
                s.close()
            assert error["error"]["code"] == ErrorCode.TIMEOUT
            assert took < 5
            assert watch.made[0].outcome == recv.STALLED
            await until(lambda: openFilesOf(_partial(str(tmp_path), "up.bin")) == 0)
            assert os.path.getsize(_partial(str(tmp_path), "up.bin")) == 4 * MiB
    finally:
        await server.port.stopListening()
    assert recv._active == set()


@pytest.mark.parametrize("reset", [False, True])
@pytest_twisted.ensureDeferred
async def test_lostMidBodyKeepsPartial(
    server: _TLSServer, monkeypatch: Any, tmp_path: Any, reset: bool
) -> None:
    """
    A TLS connection closed or reset in the middle of a body received off
    the reactor ends as it would otherwise: the server's connection goes,
    the partial is kept with what arrived, for a resume that completes the
    file; no descriptor of it stays open, and the thread is gone.
    """
    root = server.root
    body = os.urandom(BODY)
    with _recording(monkeypatch) as watch:
        s = await _sendPart(server, body, 4 * MiB)
        await until(lambda: bool(watch.made))
        await until(lambda: os.path.getsize(_partial(root, "up.bin")) == 4 * MiB)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        await until(lambda: not server.factory.connections)
        await until(lambda: openFilesOf(_partial(root, "up.bin")) == 0)
        assert watch.made[0].outcome == recv.LOST
        client = await server.connect()
        try:
            files = FileClient(client)
            assert await files.partialSize("up.bin") == 4 * MiB
            (tmp_path / "src").write_bytes(body)
            got = await files.putFile(str(tmp_path / "src"), "up.bin", resume=True)
        finally:
            await client.close()
    assert got["resumed_from"] == 4 * MiB
    with open(os.path.join(root, "up.bin"), "rb") as f:
        assert f.read() == body
    assert recv._active == set()


@pytest.mark.parametrize(
    ("code", "expected"), [(errno.ENOSPC, ErrorCode.NO_SPACE), (errno.EIO, ErrorCode.IO_ERROR)]
)
@pytest_twisted.ensureDeferred
async def test_diskErrorAnsweredAsBefore(
    server: _TLSServer, monkeypatch: Any, tmp_path: Any, code: int, expected: str
) -> None:
    """
    A write error in the receive's thread over TLS gets the reply it gets
    on the reactor's path (C{no_space}, C{io_error}), the partial is
    removed, the rest of the body is read and dropped, and the connection
    goes on.
    """
    (tmp_path / "src").write_bytes(os.urandom(BODY))
    written = [0]
    writeAll = store.writeAll

    def failing(fd: int, data: Any) -> None:
        if written[0] > 8 * MiB:
            raise OSError(code, os.strerror(code))
        written[0] += len(data)
        writeAll(fd, data)

    monkeypatch.setattr(store, "writeAll", failing)
    with _recording(monkeypatch) as watch:
        client = await server.connect()
        try:
            files = FileClient(client)
            with pytest.raises(FramesError) as caught:
                await files.putFile(str(tmp_path / "src"), "up.bin")
            assert caught.value.code == expected
            assert await client.ping(b"still") == b"still"
            assert await files.partialSize("up.bin") == 0
        finally:
            await client.close()
    assert watch.made and watch.made[0].consumed <= 10 * MiB
    assert os.listdir(server.root) == []


@pytest_twisted.ensureDeferred
async def test_deleteCancelsUpload(server: _TLSServer, monkeypatch: Any) -> None:
    """
    Deleting a path while its body is received off the reactor over TLS
    cancels the upload (C{cancelled}) at the next write.
    """
    root = server.root
    body = os.urandom(BODY)
    with _recording(monkeypatch) as watch:
        s = await _sendPart(server, body, 4 * MiB)
        client = await server.connect()
        try:
            await until(lambda: bool(watch.made))
            await until(lambda: os.path.getsize(_partial(root, "up.bin")) == 4 * MiB)
            await FileClient(client).delete("up.bin")

            def rest() -> dict[str, Any]:
                s.sendall(body[4 * MiB :])
                return _readMessage(s)

            reply = await threads.deferToThread(rest)
        finally:
            s.close()
            await client.close()
    assert reply["error"]["code"] == ErrorCode.CANCELLED
    assert watch.made[0].consumed < BODY
    assert not os.path.exists(_partial(root, "up.bin"))
    assert not os.path.exists(os.path.join(root, "up.bin"))


@pytest_twisted.ensureDeferred
async def test_shutdownStopsReceive(server: _TLSServer, monkeypatch: Any) -> None:
    """
    A server shutting down cuts short an upload received off the reactor
    over TLS at once (the thread stops although the sender is silent),
    answers it C{shutting_down} and keeps the partial.
    """
    root = server.root
    body = os.urandom(BODY)
    with _recording(monkeypatch) as watch:
        s = await _sendPart(server, body, 4 * MiB)
        try:
            await until(lambda: bool(watch.made))
            await until(lambda: os.path.getsize(_partial(root, "up.bin")) == 4 * MiB)
            started = time.monotonic()
            server.connections[-1].beginShutdown()
            reply = await threads.deferToThread(_readMessage, s)
            assert time.monotonic() - started < 2
        finally:
            s.close()
        await until(lambda: recv._active == set())
    assert reply["error"]["code"] == ErrorCode.SHUTTING_DOWN
    assert watch.made[0].outcome == recv.CANCELLED
    assert os.path.getsize(_partial(root, "up.bin")) == 4 * MiB


@pytest_twisted.ensureDeferred
async def test_bystanderAndMemory(server: _TLSServer, monkeypatch: Any) -> None:
    """
    While a large upload is received and decrypted off the reactor, a
    bystander on another connection keeps its ping round trips short
    (the reactor is free), the process's memory stays flat (one buffer of
    ciphertext, one of the body's bytes), and the server's byte counter
    moves while the body comes in.
    """
    size = 256 * MiB
    chunk = os.urandom(MiB)
    h = blake3.blake3()
    for _ in range(size // MiB):
        h.update(chunk)
    header = wire.encodeHeader(
        {"op": "put", "id": 1, "path": "big", "offset": 0, "final": True}
        | {"hash": "blake3", "digest": h.hexdigest()}
    )
    frames = wire.PREFIX.pack(len(header)) + header + wire.encodePrefix(size)
    with _recording(monkeypatch) as watch:
        bystander = await server.connect()
        raw = await threads.deferToThread(_rawClient, server.creds, server.port.getHost().port)
        try:
            await bystander.ping(b"warm")
            start = _rss()
            peak = start

            def upload() -> dict[str, Any]:
                raw.sendall(frames)
                for _ in range(size // MiB):
                    raw.sendall(chunk)
                return _readMessage(raw)

            sending = threads.deferToThread(upload)
            await until(lambda: bool(watch.made))
            conn = server.connections[-1]
            counted = conn.bytesReceived
            pings: list[float] = []
            while not sending.called:
                t = time.perf_counter()
                await bystander.ping(b"x")
                pings.append(time.perf_counter() - t)
                peak = max(peak, _rss())
                await task.deferLater(_reactor(), 0.01, lambda: None)
            reply = await sending
            assert reply.get("ok") is True, reply
            assert conn.bytesReceived - counted > size // 2
        finally:
            raw.close()
            await bystander.close()
    assert watch.made[0].taken > size - 64 * MiB
    pings.sort()
    p99 = pings[int(len(pings) * 0.99)] if pings else 0.0
    # 20 ms on a quiet machine; room for a loaded one here.
    assert len(pings) >= 10 and p99 < 0.05, (len(pings), p99)
    assert peak - start < 64 * MiB, (start, peak)


@pytest_twisted.ensureDeferred
async def test_notReadyLeftToReactor(server: _TLSServer, monkeypatch: Any, tmp_path: Any) -> None:
    """
    While the connection cannot be taken (another thread owns it, it is
    closing, the TLS layer holds writes), the reactor reads the body: the
    put completes, through the TLS layer, with no receive taking a byte.
    """
    monkeypatch.setattr(tlsown.TLSOwnership, "usable", lambda self: False)
    src = str(tmp_path / "src")
    digest = _randomFile(src, 8 * MiB)
    with _recording(monkeypatch) as watch:
        client = await server.connect()
        try:
            put = defer.ensureDeferred(FileClient(client).putFile(src, "f"))
            put.addTimeout(20, _reactor())
            assert (await put)["digest"] == digest
        finally:
            await client.close()
    assert sum(r.taken for r in watch.made) == 0
