"""
Large bodies received off the reactor (L{twisted_frames._speedups.recv}):
over real loopback TCP (pytest + pytest-twisted, real reactor and threads),
an upload's and a download's body is read by a thread of its own straight
into the file, and everything the reactor's reading guarantees still holds:
the next message stays intact, a stalled sender is cut off, a lost or reset
connection keeps the partial, a disk error is answered as before, a delete
cancels, a shutdown stops the thread, and bytes are counted.

L{ReactorPathTests} (in-memory transports, under Trial too) checks that
nothing but a real socket transport is ever offered the off-reactor path.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import blake3
import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.loopback import openFilesOf, recordConnections, until
from twisted_frames import _speedups, protocol, wire
from twisted_frames._speedups import recv
from twisted_frames.bodies import BodySink
from twisted_frames.client import FramesClient, connect
from twisted_frames.files import store
from twisted_frames.files.client import FileClient
from twisted_frames.files.paths import partialName
from twisted_frames.files.service import FileService
from twisted_frames.server import FramesServerFactory, ServerProtocol
from twisted_frames.wire import ErrorCode, FramesError

MiB = 1024 * 1024
#: Large enough that most of it is received off the reactor.
BODY = 24 * MiB

#: Not run with the speed paths disabled, where the path is not used.
directOnly = pytest.mark.skipif(not _speedups.enabled(), reason="the speed paths are disabled")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@contextmanager
def recordReceives(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[recv.DirectReceive]]:
    """
    Record every L{recv.DirectReceive} the protocol makes.
    """
    made: list[recv.DirectReceive] = []

    class Recorded(recv.DirectReceive):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(protocol.recv, "DirectReceive", Recorded)
    yield made


@asynccontextmanager
async def serving(
    root: str, **attributes: Any
) -> AsyncIterator[tuple[list[ServerProtocol], int, FramesClient]]:
    """
    A file service on a loopback port picked by the kernel, with factory
    C{attributes} set, and a connected client; closed afterwards.

    @return: (the server's connections as they come, the port, the client).
    """
    factory = FramesServerFactory([FileService(root)])
    for name, value in attributes.items():
        setattr(factory, name, value)
    connections = recordConnections(factory)
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    try:
        client = await connect(_reactor(), f"127.0.0.1:{port.getHost().port}")
        try:
            yield connections, port.getHost().port, client
        finally:
            await client.close()
    finally:
        await port.stopListening()


def _putHeader(path: str, body: bytes, rid: int = 1) -> bytes:
    """
    The frames of a final C{put} of C{body} up to the body itself: its
    header and the body's length prefix.
    """
    header = wire.encodeHeader(
        {
            "op": "put",
            "id": rid,
            "path": path,
            "offset": 0,
            "final": True,
            "hash": "blake3",
            "digest": blake3.blake3(body).hexdigest(),
        }
    )
    return wire.PREFIX.pack(len(header)) + header + wire.encodePrefix(len(body))


def _recvExact(s: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = s.recv(n)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _readMessage(s: socket.socket) -> dict[str, Any]:
    """
    Read one message (blocking) and return its header.
    """
    (length,) = struct.unpack("!I", _recvExact(s, 4))
    header = wire.decodeHeader(_recvExact(s, length))
    (bodyLength,) = struct.unpack("!I", _recvExact(s, 4))
    _recvExact(s, bodyLength)
    return header


def _rawClient(port: int) -> socket.socket:
    """
    A blocking client socket (use it from a thread), greeting read.
    """
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(20)
    assert "version" in _readMessage(s)
    return s


def _partial(root: str, name: str) -> str:
    return os.path.join(root, partialName(name))


@directOnly
@pytest_twisted.ensureDeferred
async def test_uploadOffReactorNextMessageIntact(tmp_path: Any, monkeypatch: Any) -> None:
    """
    A put of 24 MiB sent in one go with a ping right behind it: the body
    is received off the reactor (one receive, complete, nearly all of it),
    the file is intact, exactly the body was taken from the socket (the
    ping that follows in the same stream is answered), and the connection's
    byte count has every byte.
    """
    root = str(tmp_path)
    body = os.urandom(BODY)
    ping = wire.encodeMessage({"op": "ping", "id": 2}, b"after")
    with recordReceives(monkeypatch) as made:
        async with serving(root) as (connections, port, _):
            s = await threads.deferToThread(_rawClient, port)
            try:

                def exchange() -> list[dict[str, Any]]:
                    s.sendall(_putHeader("up.bin", body) + body + ping)
                    # The ping's reply may come first (the put's waits for
                    # its fsync).
                    return sorted([_readMessage(s), _readMessage(s)], key=lambda h: h["id"])

                put, pong = await threads.deferToThread(exchange)
            finally:
                s.close()
            server = connections[-1]
            assert server.bytesReceived >= BODY + len(ping)
    assert put.get("ok") is True, put
    assert put.get("size") == BODY, put
    assert (pong["id"], pong.get("ok")) == (2, True)
    with open(tmp_path / "up.bin", "rb") as f:
        assert f.read() == body
    assert [r.outcome for r in made] == [recv.COMPLETE]
    assert made[0].taken > BODY - 2 * MiB
    assert recv._active == set()


@directOnly
@pytest_twisted.ensureDeferred
async def test_downloadOffReactorWithProgress(tmp_path: Any, monkeypatch: Any) -> None:
    """
    A client's download is received off the reactor too, and its progress
    callback still sees every byte.
    """
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(BODY)
    (root / "big.bin").write_bytes(data)
    seen: list[int] = []
    with recordReceives(monkeypatch) as made:
        async with serving(str(root)) as (_, _port, client):
            got = await FileClient(client).getFile(
                "big.bin", str(tmp_path / "copy"), progress=seen.append
            )
    assert got["digest"] == blake3.blake3(data).hexdigest()
    assert (tmp_path / "copy").read_bytes() == data
    assert sum(seen) == BODY
    assert made and all(r.outcome == recv.COMPLETE for r in made)


async def _sendPart(port: int, body: bytes, part: int) -> socket.socket:
    """
    Connect, send a put's header and the first C{part} bytes of its body,
    and return the socket (the rest is not sent).
    """

    def send() -> socket.socket:
        s = _rawClient(port)
        s.sendall(_putHeader("up.bin", body) + body[:part])
        return s

    return await threads.deferToThread(send)


@directOnly
@pytest_twisted.ensureDeferred
async def test_stalledSenderCutOff(tmp_path: Any, monkeypatch: Any) -> None:
    """
    A sender that stops in the middle of a body received off the reactor
    is cut off by the frame deadline (a C{timeout} error, the connection
    closed) within about the deadline; what arrived is kept for a resume,
    and the thread is gone.
    """
    root = str(tmp_path)
    body = os.urandom(BODY)
    with recordReceives(monkeypatch) as made:
        async with serving(root, frameTimeout=0.5) as (connections, port, client):
            s = await _sendPart(port, body, 4 * MiB)
            try:
                await until(lambda: bool(made))
                started = time.monotonic()
                error = await threads.deferToThread(_readMessage, s)
                took = time.monotonic() - started
                assert (await threads.deferToThread(s.recv, 1)) == b""
            finally:
                s.close()
            assert error["error"]["code"] == ErrorCode.TIMEOUT
            assert took < 5
            assert made[0].outcome == recv.STALLED
            assert await FileClient(client).partialSize("up.bin") == 4 * MiB
    await until(lambda: openFilesOf(_partial(root, "up.bin")) == 0)
    assert recv._active == set()


@directOnly
@pytest.mark.parametrize("reset", [False, True])
@pytest_twisted.ensureDeferred
async def test_lostMidBodyKeepsPartial(tmp_path: Any, monkeypatch: Any, reset: bool) -> None:
    """
    A connection closed or reset in the middle of a body received off the
    reactor ends as it would otherwise: the partial is kept with what
    arrived, for a resume that then completes the file; no descriptor of
    it stays open, and the thread is gone.
    """
    root = str(tmp_path)
    body = os.urandom(BODY)
    with recordReceives(monkeypatch) as made:
        async with serving(root) as (connections, port, client):
            s = await _sendPart(port, body, 4 * MiB)
            await until(lambda: bool(made))
            await until(lambda: os.path.getsize(_partial(root, "up.bin")) == 4 * MiB)
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            await until(lambda: not connections[-1].transport.connected)
            await until(lambda: openFilesOf(_partial(root, "up.bin")) == 0)
            assert made[0].outcome == recv.LOST
            files = FileClient(client)
            assert await files.partialSize("up.bin") == 4 * MiB
            (tmp_path / "src").write_bytes(body)
            got = await files.putFile(str(tmp_path / "src"), "up.bin", resume=True)
    assert got["resumed_from"] == 4 * MiB
    assert (tmp_path / "up.bin").read_bytes() == body
    assert recv._active == set()


@directOnly
@pytest.mark.parametrize(
    ("code", "expected"), [(errno.ENOSPC, ErrorCode.NO_SPACE), (errno.EIO, ErrorCode.IO_ERROR)]
)
@pytest_twisted.ensureDeferred
async def test_diskErrorAnsweredAsBefore(
    tmp_path: Any, monkeypatch: Any, code: int, expected: str
) -> None:
    """
    A write error in the receive's thread gets the reply it gets on the
    reactor's path (C{no_space}, C{io_error}), the partial is removed, the
    rest of the body is read and dropped, and the connection goes on.
    """
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "src").write_bytes(os.urandom(BODY))
    written = [0]
    writeAll = store.writeAll

    def failing(fd: int, data: Any) -> None:
        if written[0] > 8 * MiB:
            raise OSError(code, os.strerror(code))
        written[0] += len(data)
        writeAll(fd, data)

    monkeypatch.setattr(store, "writeAll", failing)
    with recordReceives(monkeypatch) as made:
        async with serving(str(root)) as (_, _port, client):
            files = FileClient(client)
            with pytest.raises(FramesError) as caught:
                await files.putFile(str(tmp_path / "src"), "up.bin")
            assert caught.value.code == expected
            assert await client.ping(b"still") == b"still"
            assert await files.partialSize("up.bin") == 0
    assert made and made[0].consumed <= 10 * MiB
    assert os.listdir(root) == []


@directOnly
@pytest_twisted.ensureDeferred
async def test_deleteCancelsUpload(tmp_path: Any, monkeypatch: Any) -> None:
    """
    Deleting a path while its body is received off the reactor cancels
    the upload (C{cancelled}) at the next write.
    """
    root = str(tmp_path)
    body = os.urandom(BODY)
    with recordReceives(monkeypatch) as made:
        async with serving(root) as (_, port, client):
            s = await _sendPart(port, body, 4 * MiB)
            try:
                await until(lambda: bool(made))
                await until(lambda: os.path.getsize(_partial(root, "up.bin")) == 4 * MiB)
                await FileClient(client).delete("up.bin")

                def rest() -> dict[str, Any]:
                    s.sendall(body[4 * MiB :])
                    return _readMessage(s)

                reply = await threads.deferToThread(rest)
            finally:
                s.close()
    assert reply["error"]["code"] == ErrorCode.CANCELLED
    assert made[0].consumed < BODY
    assert not os.path.exists(_partial(root, "up.bin"))
    assert not os.path.exists(os.path.join(root, "up.bin"))


@directOnly
@pytest_twisted.ensureDeferred
async def test_shutdownStopsReceive(tmp_path: Any, monkeypatch: Any) -> None:
    """
    A server shutting down cuts short an upload received off the reactor
    at once (the thread stops although the sender is silent, not waiting
    for a read with no way out), answers it C{shutting_down} and keeps
    the partial; a reactor shutting down wakes every receive the same way.
    """
    root = str(tmp_path)
    body = os.urandom(BODY)
    with recordReceives(monkeypatch) as made:
        async with serving(root) as (connections, port, _):
            s = await _sendPart(port, body, 4 * MiB)
            try:
                await until(lambda: bool(made))
                await until(lambda: os.path.getsize(_partial(root, "up.bin")) == 4 * MiB)
                started = time.monotonic()
                connections[-1].beginShutdown()
                reply = await threads.deferToThread(_readMessage, s)
                assert time.monotonic() - started < 2
            finally:
                s.close()
            await until(lambda: recv._active == set())
    assert reply["error"]["code"] == ErrorCode.SHUTTING_DOWN
    assert made[0].outcome == recv.CANCELLED
    assert os.path.getsize(_partial(root, "up.bin")) == 4 * MiB


@pytest_twisted.ensureDeferred
async def test_receiveReadsExactlyAndWakes() -> None:
    """
    L{recv.DirectReceive} on one end of a socket pair reads exactly its
    length (what follows stays in the kernel) and hands it on in order;
    one still waiting for bytes ends at once when cancelled, or when the
    reactor begins to shut down (its trigger, called here).
    """
    a, b = socket.socketpair()
    a.setblocking(False)
    try:

        class Transport:
            socket = a
            reactor = _reactor()

        data = os.urandom(3 * MiB + 5)
        sent = threads.deferToThread(b.sendall, data + b"next")
        got = bytearray()
        receive = recv.DirectReceive(Transport, len(data), None, lambda n: None, 64 * 1024)
        await receive(lambda view: got.extend(view))
        receive.release()
        await sent
        assert (bytes(got), receive.outcome, receive.taken) == (data, recv.COMPLETE, len(data))
        assert a.recv(100) == b"next"

        for stop in (lambda r: r.cancel(), lambda r: recv._cancelAll()):
            waiting = recv.DirectReceive(Transport, 10, None, lambda n: None)
            started = time.monotonic()
            done = waiting(lambda view: None)
            stop(waiting)
            await done
            waiting.release()
            assert waiting.outcome == recv.CANCELLED
            assert time.monotonic() - started < recv.MAX_WAIT
    finally:
        a.close()
        b.close()
    assert recv._active == set()


class _OfferedSink(BodySink):
    """
    A sink that would take a body off the reactor, and records whether it
    was ever offered one.
    """

    receivesDirect = True

    def __init__(self) -> None:
        self.offered = 0
        self.received = 0
        self.finished = False

    def receiveDirect(self, receive: Any) -> Any:
        self.offered += 1
        return None

    def bodyData(self, data: bytes) -> None:
        self.received += len(data)

    def bodyFinished(self) -> None:
        self.finished = True


class ReactorPathTests(SynchronousTestCase):
    """
    The off-reactor path is offered only for a real TCP transport.
    """

    def test_inMemoryTransportKeepsReactorReading(self) -> None:
        """
        Over an in-memory transport a large body is delivered through
        C{bodyData} as before; its sink is never offered the off-reactor
        path.
        """
        sink = _OfferedSink()

        class Receiver(protocol.FrameProtocol):
            def messageStarted(self, header: dict[str, Any], bodyLength: int) -> BodySink:
                return sink

        p = Receiver()
        p.makeConnection(StringTransport())
        message = wire.encodeMessage({"op": "x"}, bytes(4 * MiB))
        for i in range(0, len(message), 64 * 1024):
            p.dataReceived(message[i : i + 64 * 1024])
        self.assertEqual((sink.offered, sink.received, sink.finished), (0, 4 * MiB, True))

    def test_canReceiveDirect(self) -> None:
        """
        L{recv.canReceiveDirect} is false for anything but Twisted's own
        TCP connection.
        """
        self.assertFalse(recv.canReceiveDirect(StringTransport()))
        self.assertFalse(recv.canReceiveDirect(object()))
