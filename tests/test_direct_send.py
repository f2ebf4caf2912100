"""
What is written while a read is handled goes out at the end of the read,
straight to the socket when the TCP transport has nothing buffered, and
through the transport otherwise.

The loopback tests (real reactor, real TCP on port 0) are run by pytest,
which owns the reactor; L{GatheringTests} runs under Trial too.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.loopback import recordConnections, until
from twisted_frames import _speedups, wire
from twisted_frames.certs import writeQuickStart
from twisted_frames.client import FramesClient, connect
from twisted_frames.server import FramesServerFactory, Request, ServerProtocol, Service, operation
from twisted_frames.tls import clientOptions, serverOptions

#: For the tests of the direct send itself, not run with the speed paths
#: disabled (TWISTED_FRAMES_NO_SPEEDUPS=1), where it is not used.
directSendOnly = pytest.mark.skipif(not _speedups.enabled(), reason="the direct send is disabled")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Counter:
    """
    Counts the calls of one method of an object, still calling it.
    """

    def __init__(self, obj: Any, name: str) -> None:
        self.calls = 0
        original = getattr(obj, name)

        def counted(*args: Any) -> Any:
            self.calls += 1
            return original(*args)

        setattr(obj, name, counted)


@asynccontextmanager
async def _serve(
    factory: FramesServerFactory,
) -> AsyncIterator[tuple[ServerProtocol, FramesClient]]:
    """
    Listen on a loopback port picked by the kernel, connect a client, and
    give (the server's protocol, the client); close both afterwards.
    """
    servers = recordConnections(factory)
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    try:
        client = await connect(_reactor(), f"127.0.0.1:{port.getHost().port}")
        try:
            yield servers[0], client
        finally:
            await client.close()
    finally:
        await port.stopListening()


@pytest_twisted.async_yield_fixture
async def pair() -> AsyncIterator[tuple[ServerProtocol, FramesClient]]:
    async with _serve(FramesServerFactory()) as connected:
        yield connected


async def _pingChain(client: FramesClient, bodies: list[bytes]) -> list[bytes]:
    """
    Ping with each body in turn, each sent from the previous reply's callback
    (so from within the client's read, after the first).
    """
    echoed: list[bytes] = []
    done: defer.Deferred[list[bytes]] = defer.Deferred()

    def next(body: bytes | None) -> None:
        if body is not None:
            echoed.append(body)
        if len(echoed) == len(bodies):
            done.callback(echoed)
        else:
            client.ping(bodies[len(echoed)]).addCallbacks(next, done.errback)

    next(None)
    return await done


@directSendOnly
@pytest_twisted.ensureDeferred
async def test_noWriteWatch(pair: tuple[ServerProtocol, FramesClient]) -> None:
    """
    A reply, and a request sent from a reply's callback, are sent during the
    read: the reactor is never asked to watch the socket for writability
    (the stock path asks for every write).
    """
    server, client = pair
    serverWatch = _Counter(server.transport, "startWriting")
    clientWatch = _Counter(client.protocol.transport, "startWriting")
    bodies = [b"%d" % i * i for i in range(20)]
    # Out of the read that delivered the greeting, so that the first ping is
    # sent from outside any read.
    await task.deferLater(_reactor(), 0, lambda: None)
    assert await _pingChain(client, bodies) == bodies
    assert serverWatch.calls == 0
    # Only the first ping, sent from this test rather than from a read, goes
    # through the transport's buffer.
    assert clientWatch.calls == 1


class _Socket:
    """
    A connection's socket with its C{send} replaced (the direct send and
    the transport's own writes both send through it).
    """

    def __init__(self, real: Any, send: Any) -> None:
        self._real = real
        self.send = send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest_twisted.ensureDeferred
async def test_partialSend(pair: tuple[ServerProtocol, FramesClient]) -> None:
    """
    What the socket does not take goes through the transport, after the part
    it took.
    """
    server, client = pair
    transport = server.transport
    original = transport.socket.send
    short = [True]

    def fewBytes(data: Any) -> Any:
        if short[0]:
            short[0] = False
            return original(data[:3])
        return original(data)

    transport.socket = _Socket(transport.socket, fewBytes)
    bodies = [b"first", b"second", b"x" * 100_000]
    assert await _pingChain(client, bodies) == bodies
    assert not short[0]


@directSendOnly
@pytest_twisted.ensureDeferred
async def test_sendErrorLosesTheConnection(pair: tuple[ServerProtocol, FramesClient]) -> None:
    """
    When the direct send meets a socket error, the connection ends as lost,
    as the transport's own write would end it: the socket reports an error
    such as a reset only once, so leaving it to the transport's next read
    would end the connection as closed cleanly.
    """
    server, client = pair
    transport = server.transport

    def reset(data: Any) -> int:
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    transport.socket = _Socket(transport.socket, reset)
    reasons: list[Failure] = []
    connectionLost = server.connectionLost

    def recordLost(reason: Failure) -> None:
        reasons.append(reason)
        connectionLost(reason)

    server.connectionLost = recordLost  # type: ignore[method-assign]
    with pytest.raises(Exception):  # noqa: B017 (however the client hears of it)
        await client.ping(b"gone")
    await until(lambda: bool(reasons))
    assert reasons[0].check(ConnectionLost), reasons[0]


@pytest_twisted.ensureDeferred
async def test_pipelinedInOrder(pair: tuple[ServerProtocol, FramesClient]) -> None:
    """
    Many pipelined requests of mixed sizes, read together: their replies
    (gathered past the gathering limit, sent partly straight and partly
    through the transport's buffer) arrive whole and in order.
    """
    _, client = pair
    sizes = [16, 70_000, 0, 200_000, 3, 150_000] * 6
    bodies = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    echoed = await defer.gatherResults([client.ping(b) for b in bodies])
    assert [len(e) for e in echoed] == sizes
    assert echoed == bodies
    # And the connection is still in step afterwards.
    assert await client.ping(b"after") == b"after"


@pytest_twisted.ensureDeferred
async def test_violationReplyBeforeClose(pair: tuple[ServerProtocol, FramesClient]) -> None:
    """
    An error written in a read that also closes the connection is sent
    before the close.
    """
    _, client = pair
    closed = client.protocol.whenClosed()
    # A header that is not JSON: a violation, answered, then closed.
    client.protocol.transport.write(b"\x00\x00\x00\x03{{{\x00\x00\x00\x00")
    await closed
    error = client.protocol.serverError
    assert error is not None
    assert error.code == "bad_header"


class _AbortService(Service):
    """
    An op that sends an event and then aborts its connection, all within the
    read that brought the request.
    """

    @operation("abort-now")
    def abortNow(self, request: Request) -> None:
        request.event("doomed")
        request.connection.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_abortDropsGathered() -> None:
    """
    An abort drops what was written before it, as the transport's own buffer
    would: nothing gathered is sent straight to the socket after it.
    """
    async with _serve(FramesServerFactory([_AbortService()])) as (_, client):
        events: list[Any] = []
        with pytest.raises(ConnectionLost):
            await client.request("abort-now", onEvent=lambda h, b: events.append(h))
        assert events == []


class _StartTLSService(Service):
    """
    A STARTTLS-style op: the reply goes out in the clear, then the server
    starts TLS on the connection, all within the read that brought the
    request.
    """

    def __init__(self, options: Any) -> None:
        self.options = options

    @operation("starttls")
    def startTLS(self, request: Request) -> None:
        request.reply({})
        request.connection.transport.startTLS(self.options)


@pytest_twisted.ensureDeferred
async def test_replyBeforeStartTLS(tmp_path: Any) -> None:
    """
    What is written before C{transport.startTLS()} goes out before TLS
    starts, in the clear, as it does when each write reaches the transport
    at once.
    """
    files = writeQuickStart(str(tmp_path / "tls"), ["localhost"])
    service = _StartTLSService(serverOptions(files["server"], files["server-key"]))
    async with _serve(FramesServerFactory([service])) as (_, client):
        # Encrypted instead, the reply would wait in the server's TLS layer
        # for a handshake this client starts only once it has the reply.
        await client.request("starttls").addTimeout(10, _reactor())
        client.protocol.transport.startTLS(clientOptions("localhost", files["ca"]))
        assert await client.ping(b"over tls").addTimeout(10, _reactor()) == b"over tls"


class GatheringTests(SynchronousTestCase):
    """
    Writes made while a read is handled reach the transport as one write at
    the end of the read (any transport, here a C{StringTransport}).
    """

    def setUp(self) -> None:
        self.server = FramesServerFactory().buildProtocol(None)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.transport.clear()
        self.writes: list[bytes] = []
        write = self.transport.write

        def recordingWrite(data: bytes) -> None:
            self.writes.append(data)
            write(data)

        self.transport.write = recordingWrite  # type: ignore[method-assign]

    def test_oneWritePerRead(self) -> None:
        """
        Three pipelined requests in one read get their three replies in one
        write, in order.
        """
        requests = b"".join(
            wire.encodeMessage({"op": "ping", "id": i}, b"%d" % i) for i in (1, 2, 3)
        )
        self.server.dataReceived(requests)
        self.assertEqual(len(self.writes), 1)
        expected = b"".join(
            wire.encodeMessage({"id": i, "ok": True}, b"%d" % i) for i in (1, 2, 3)
        )
        self.assertEqual(self.transport.value(), expected)

    def test_limitSendsEarly(self) -> None:
        """
        Past the gathering limit (64 KiB), what was gathered is written at
        once rather than held to the end of the read.
        """
        body = b"x" * 40_000
        requests = b"".join(wire.encodeMessage({"op": "ping", "id": i}, body) for i in (1, 2, 3))
        self.server.dataReceived(requests)
        self.assertEqual(len(self.writes), 2)
        self.assertEqual(sum(map(len, self.writes)), len(self.transport.value()))
        expected = b"".join(wire.encodeMessage({"id": i, "ok": True}, body) for i in (1, 2, 3))
        self.assertEqual(self.transport.value(), expected)

    def test_writeOutsideRead(self) -> None:
        """
        Outside a read, a message goes to the transport at once.
        """
        self.server.sendMessage({"event": "note"})
        self.assertEqual(self.writes, [wire.encodeMessage({"event": "note"})])


@directSendOnly
@pytest_twisted.ensureDeferred
async def test_sendFileStraightToTheSocket(tmp_path: Any) -> None:
    """
    C{_speedups.tcp.sendFile} sends a file's bytes straight to a TCP
    transport's socket when its buffer is empty, waits (C{None}) while
    something is buffered before them, and says the connection is going
    (-1) once it is aborted.
    """
    import os
    import socket

    from twisted.internet.protocol import Factory, Protocol

    from twisted_frames._speedups import tcp

    path = tmp_path / "f"
    data = os.urandom(50_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    accepted: list[Protocol] = []

    class Accepted(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    port = _reactor().listenTCP(0, Factory.forProtocol(Accepted), interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        await until(lambda: bool(accepted))
        t = accepted[0].transport
        assert tcp.canSendFile(t)
        assert tcp.sendFile(t, fd, 10, 1000) == 1000
        t.write(b"buffered")
        assert tcp.sendFile(t, fd, 1010, 1000) is None
        t.abortConnection()
        assert tcp.sendFile(t, fd, 1010, 1000) == -1
        peer.settimeout(10)
        got = b""
        while len(got) < 1000:
            more = peer.recv(65536)
            if not more:
                break
            got += more
        assert got[:1000] == data[10:1010]
    finally:
        os.close(fd)
        peer.close()
        await port.stopListening()
