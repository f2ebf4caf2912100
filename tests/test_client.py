"""
Tests for L{twisted_frames.client}: the client against a real server
protocol, pumped in memory with L{twisted.test.iosim}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.client import (
    ClientProtocol,
    FramesClient,
    Reply,
    _endpointFor,
    connect,
    parseServer,
)
from twisted_frames.protocol import BodyOverrun, BodySink
from twisted_frames.server import FramesServerFactory, ServerProtocol
from twisted_frames.tcpclient import TCPAddressEndpoint
from twisted_frames.testing import MemoryEndpoint, connectedPair
from twisted_frames.wire import FramesError, ProtocolViolation

from .test_protocol import BytesSource, RecordingSink, parseMessages
from .test_server import SampleService

CONNECTION_DONE = Failure(ConnectionDone())
GREETING = {"event": "hello", "protocol": "twisted-frames", "version": wire.PROTOCOL_VERSION}


def makeClient() -> ClientProtocol:
    """
    A client protocol whose timers run on a fake clock.
    """
    client = ClientProtocol()
    client.clock = Clock()
    return client


class ClientServerMixin:
    """
    A L{ClientProtocol} connected to a L{ServerProtocol} serving
    L{SampleService}, in memory (L{twisted_frames.testing.connectedPair}).
    """

    def connectPair(self, protocol: type[ServerProtocol] = ServerProtocol) -> None:
        self.service = SampleService()
        self.factory = FramesServerFactory([self.service], clock=Clock())
        self.factory.protocol = protocol
        conn = connectedPair(self.factory)
        self.client, self.server, self.pump = conn.client, conn.server, conn.pump


class GreetingTests(ClientServerMixin, SynchronousTestCase):
    """
    The client checks the server's greeting before anything else.
    """

    def test_greeted(self) -> None:
        """
        C{greeted} fires with the greeting, which L{FramesClient} keeps.
        """
        self.connectPair()
        greeting = self.successResultOf(self.client.greeted)
        self.assertEqual(greeting["event"], "hello")
        self.assertIn("ping", greeting["ops"])
        self.assertIs(FramesClient(self.client).greeting, greeting)

    def test_wrongVersion(self) -> None:
        """
        A server speaking another protocol version fails C{greeted} with
        C{version_mismatch}, and the client closes the connection.
        """

        lost: list[Failure] = []

        class FutureServer(ServerProtocol):
            def greeting(self) -> dict[str, Any]:
                return {**super().greeting(), "version": 99}

            def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
                lost.append(reason)
                super().connectionLost(reason)

        self.connectPair(FutureServer)
        error = self.failureResultOf(self.client.greeted, ProtocolViolation).value
        self.assertEqual(error.code, "version_mismatch")
        self.assertIn("99", error.message)
        self.assertTrue(self.client.isClosed)
        self.assertEqual(len(lost), 1)
        self.assertIsNone(self.client.greeting)

    def test_notHello(self) -> None:
        """
        A first message that is not a twisted-frames C{hello} fails
        C{greeted} with C{bad_header}, and the client hangs up silently.
        """
        for greeting in (
            {"event": "welcome", "protocol": "twisted-frames", "version": 1},
            {"event": "hello", "protocol": "other", "version": 1},
            {"id": 1, "ok": True},
        ):
            client = makeClient()
            transport = StringTransport()
            client.makeConnection(transport)
            client.dataReceived(wire.encodeMessage(greeting))
            error = self.failureResultOf(client.greeted, ProtocolViolation).value
            self.assertEqual(error.code, "bad_header")
            self.assertTrue(transport.disconnecting)
            self.assertEqual(transport.value(), b"")

    def test_lostBeforeGreeting(self) -> None:
        """
        A connection lost before the greeting fails C{greeted}.
        """
        client = makeClient()
        client.makeConnection(StringTransport())
        client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(client.greeted, ConnectionDone)


class RequestTests(ClientServerMixin, SynchronousTestCase):
    """
    Requests and their replies, events and bodies.
    """

    def setUp(self) -> None:
        self.connectPair()
        self.frames = FramesClient(self.client)

    def test_ping(self) -> None:
        """
        C{ping} returns the echoed body: empty, small, or 1 MiB.
        """
        for body in (b"", b"hello", bytes(range(256)) * 4096):
            d = self.frames.ping(body)
            self.pump.flush()
            self.assertEqual(self.successResultOf(d), body)

    def test_replyHeader(self) -> None:
        """
        The reply carries the request's id, C{ok} and the op's fields.
        """
        d = self.frames.request("fields", {"value": [1, 2]})
        self.pump.flush()
        reply = self.successResultOf(d)
        self.assertEqual(reply.header, {"id": 1, "ok": True, "value": [1, 2], "bodyLength": 0})
        self.assertEqual((reply.body, reply.sink), (b"", None))

    def test_pipelined(self) -> None:
        """
        Pipelined requests get fresh ids, and replies are matched by id even
        when they come back out of order.
        """
        slow = self.frames.request("later")
        fast = [self.frames.ping(bytes([i])) for i in range(3)]
        self.pump.flush()
        self.assertNoResult(slow)
        self.assertEqual([self.successResultOf(d) for d in fast], [b"\x00", b"\x01", b"\x02"])
        self.service.pending[0].callback({"late": True})
        self.pump.flush()
        self.assertEqual(self.successResultOf(slow).header, {"id": 1, "ok": True, "late": True})

    def test_errorReply(self) -> None:
        """
        An error reply fails the request with L{FramesError} carrying the
        code, message and details; the connection stays usable.
        """
        unknown = self.frames.request("nope", body=b"ignored")
        missing = self.frames.request("fail")
        self.pump.flush()
        error = self.failureResultOf(unknown, FramesError).value
        self.assertEqual(error.code, "unknown_op")
        error = self.failureResultOf(missing, FramesError).value
        self.assertEqual(
            (error.code, error.message, error.details),
            ("not_found", "nothing here", {"path": "a/b"}),
        )
        d = self.frames.ping(b"still")
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), b"still")

    def test_events(self) -> None:
        """
        Intermediate messages go to C{onEvent}, with their bodies, before the
        final reply.
        """
        events: list[tuple[dict[str, Any], bytes]] = []
        d = self.frames.request("events", onEvent=lambda h, b: events.append((h, b)))
        d.addCallback(lambda reply: events.append((reply.header, b"final")))
        self.pump.flush()
        self.assertEqual(
            events,
            [
                ({"id": 1, "event": "progress", "n": 1}, b""),
                ({"id": 1, "event": "chunk"}, b"data"),
                ({"id": 1, "ok": True, "done": True}, b"final"),
            ],
        )

    def test_eventSink(self) -> None:
        """
        With C{eventSink}, each event's body streams to the sink it makes.
        """
        sinks: list[tuple[dict[str, Any], int, RecordingSink]] = []

        def eventSink(header: dict[str, Any], length: int) -> BodySink:
            sinks.append((header, length, RecordingSink()))
            return sinks[-1][2]

        d = self.frames.request("events", eventSink=eventSink)
        self.pump.flush()
        self.successResultOf(d)
        self.assertEqual(
            [(h["event"], n, s.data, s.finished) for h, n, s in sinks],
            [
                ("progress", 0, b"", 1),
                ("chunk", 4, b"data", 1),
            ],
        )

    def test_eventsIgnored(self) -> None:
        """
        Without a handler, events are read and dropped.
        """
        d = self.frames.request("events")
        self.pump.flush()
        self.assertEqual(self.successResultOf(d).header["done"], True)

    def test_replySink(self) -> None:
        """
        With C{replySink}, a final reply's body streams to the sink it makes;
        the request fires once the body is complete, with that sink.
        """
        made: list[tuple[dict[str, Any], int]] = []
        sink = RecordingSink()

        def replySink(header: dict[str, Any], length: int) -> BodySink:
            made.append((header, length))
            return sink

        d = self.frames.request("streamReply", replySink=replySink)
        self.pump.flush()
        reply = self.successResultOf(d)
        self.assertEqual(made, [({"id": 1, "ok": True, "streamed": True}, 100_000)])
        self.assertIs(reply.sink, sink)
        self.assertEqual(reply.body, b"")
        self.assertEqual((sink.data, sink.finished), (b"s" * 100_000, 1))

    def test_replySinkNotForEmptyBody(self) -> None:
        """
        An empty final body does not ask for a sink.
        """
        d = self.frames.request("fields", replySink=lambda h, n: self.fail("sink made"))
        self.pump.flush()
        self.assertIsNone(self.successResultOf(d).sink)

    def test_streamedRequestBody(self) -> None:
        """
        A request body may be streamed from a source.
        """
        d = self.frames.request("stream", body=BytesSource(b"\x01" * 200_000))
        self.pump.flush()
        self.assertEqual(self.successResultOf(d).header["size"], 200_000)

    def test_streamedRequestBodyFails(self) -> None:
        """
        A source that breaks its frame fails the request, and the connection
        is closed.
        """
        d = self.frames.request("stream", body=BytesSource(b"abc", length=5))
        self.failureResultOf(d, BodyOverrun)
        self.flushLoggedErrors(BodyOverrun)
        self.pump.flush()
        self.assertTrue(self.client.isClosed)

    def test_serverViolationError(self) -> None:
        """
        When the server closes the connection for a violation it names no
        request for, pending requests fail with its error.
        """
        held = self.frames.request("hold")
        self.pump.flush()
        self.client.transport.write(wire.encodeFrame(b"[]"))
        self.pump.flush()
        error = self.failureResultOf(held, FramesError).value
        self.assertEqual(error.code, "bad_header")
        self.assertTrue(self.client.isClosed)

    def test_violationOfOwnRequest(self) -> None:
        """
        A violation the server pins on a request fails that request with it.
        """
        d = self.frames.request("fields", body=b"not allowed")
        self.pump.flush()
        error = self.failureResultOf(d, FramesError).value
        self.assertEqual((error.code, error.details), ("body_not_allowed", {}))
        self.assertTrue(self.client.isClosed)


class ConnectionLossTests(ClientServerMixin, SynchronousTestCase):
    """
    Losing the connection fails what is pending, and closes the client.
    """

    def setUp(self) -> None:
        self.connectPair()
        self.frames = FramesClient(self.client)

    def test_lostFailsPending(self) -> None:
        """
        Every pending request fails when the connection is lost; C{whenClosed}
        fires.
        """
        pending = [self.frames.request("hold"), self.frames.request("later")]
        closed = self.client.whenClosed()
        self.pump.flush()
        self.server.transport.loseConnection()
        self.pump.flush()
        for d in pending:
            self.failureResultOf(d, ConnectionDone)
        self.successResultOf(closed)
        self.successResultOf(self.client.whenClosed())

    def test_requestAfterClose(self) -> None:
        """
        A request on a closed connection fails at once.
        """
        closing = self.frames.close()
        self.pump.flush()
        self.successResultOf(closing)
        self.successResultOf(self.frames.close())
        self.failureResultOf(self.frames.ping(), ConnectionDone)


class StringTransportClientTests(SynchronousTestCase):
    """
    The client against a scripted server, byte by byte.
    """

    def setUp(self) -> None:
        self.client = makeClient()
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)
        self.client.dataReceived(wire.encodeMessage(GREETING))

    def test_requestWireFormat(self) -> None:
        """
        A request is a header with C{op}, a fresh integer C{id} and the
        fields, then the body.
        """
        self.client.request("put", {"path": "a"}, b"data")
        self.client.request("ping")
        self.assertEqual(
            parseMessages(self.transport.value()),
            [({"op": "put", "id": 1, "path": "a"}, b"data"), ({"op": "ping", "id": 2}, b"")],
        )

    def test_pingHeaderNotThroughEncoder(self) -> None:
        """
        A request without fields has its header made without the JSON
        encoder, from a prefix made once per op: the same bytes.
        """
        self.client.request("ping")
        calls: list[Any] = []
        encode = wire.encodeHeader

        def counting(header: dict[str, Any]) -> bytes:
            calls.append(header)
            return encode(header)

        self.patch(wire, "encodeHeader", counting)
        self.client.request("ping", body=b"b")
        self.client.request("ping")
        self.assertEqual(calls, [])
        self.assertEqual(
            parseMessages(self.transport.value()),
            [({"op": "ping", "id": n}, body) for n, body in [(1, b""), (2, b"b"), (3, b"")]],
        )

    def test_lostMidReplyBody(self) -> None:
        """
        A connection lost while a reply's body is arriving fails the request
        (instead of leaving it unfired).
        """
        d = self.client.request("ping", body=b"abcdef")
        self.client.dataReceived(wire.encodeMessage({"id": 1, "ok": True}, b"abcdef")[:-2])
        self.assertNoResult(d)
        self.client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)

    def test_lostMidReplySink(self) -> None:
        """
        A reply sink is told of the loss, and the request fails.
        """
        sink = RecordingSink()
        d = self.client.request("get", replySink=lambda h, n: sink)
        self.client.dataReceived(wire.encodeMessage({"id": 1, "ok": True}, b"abcdef")[:-2])
        self.client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)
        self.assertEqual((sink.data, sink.finished, len(sink.failures)), (b"abcd", 0, 1))

    def test_replyByteAtATime(self) -> None:
        """
        Replies fed one byte at a time resolve their requests.
        """
        d1 = self.client.request("ping", body=b"x")
        d2 = self.client.request("nope")
        data = wire.encodeMessage({"id": 2, "ok": False, "error": {"code": "unknown_op"}})
        data += wire.encodeMessage({"id": 1, "ok": True}, b"x")
        for i in range(len(data)):
            self.client.dataReceived(data[i : i + 1])
        self.assertEqual(self.successResultOf(d1), Reply({"id": 1, "ok": True}, b"x"))
        self.assertEqual(self.failureResultOf(d2, FramesError).value.code, "unknown_op")

    def test_readsRepliesWhileSendingWaits(self) -> None:
        """
        While the transport has paused the client's producer (its write
        buffer is full), replies are still read and delivered, and the
        socket's reading is not paused however much arrives: the server
        echoes a ping body only as fast as the echo is read, so a client
        that stopped reading until its own writes drained would wait on
        the server for ever (a large ping over TLS did).
        """
        payload = b"e" * (2 * self.client.sendHoldLimit)
        d = self.client.request("ping", body=payload)
        self.transport.producer.pauseProducing()
        data = wire.encodeMessage({"id": 1, "ok": True}, payload)
        for i in range(0, len(data), 65536):
            self.client.dataReceived(data[i : i + 65536])
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.successResultOf(d), Reply({"id": 1, "ok": True}, payload))

    def test_malformedErrorMember(self) -> None:
        """
        An error reply whose error member is malformed still fails the
        request with a L{FramesError}.
        """
        d = self.client.request("x")
        self.client.dataReceived(wire.encodeMessage({"id": 1, "ok": False, "error": "oops"}))
        self.assertEqual(self.failureResultOf(d, FramesError).value.code, "bad_header")

    def test_unknownReplyId(self) -> None:
        """
        A reply for no pending request is a server bug: the client hangs up
        without sending anything, and pending requests fail.
        """
        d = self.client.request("x")
        self.transport.clear()
        self.client.dataReceived(wire.encodeMessage({"id": 99, "ok": True}))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        self.client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)

    def test_boolIdNotMatched(self) -> None:
        """
        C{"id": true} does not match request 1 (C{True == 1} in Python).
        """
        d = self.client.request("x")
        self.client.dataReceived(wire.encodeMessage({"id": True, "ok": True}))
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(d)
        self.client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)

    def test_closingErrorWithoutId(self) -> None:
        """
        A server's closing error with a null id becomes the failure of every
        pending request when the connection closes.
        """
        d = self.client.request("x")
        self.client.dataReceived(
            wire.encodeMessage(
                {"id": None, "ok": False, "error": {"code": "bad_header"}, "closing": True}
            )
        )
        self.assertNoResult(d)
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failureResultOf(d, FramesError).value.code, "bad_header")

    def test_requestAfterClosingError(self) -> None:
        """
        A request made after the server's closing error (here
        C{shutting_down}, with the connection then gone) fails with that
        error, not with a bare lost connection.
        """
        error = {"code": "shutting_down", "message": "the server is shutting down"}
        self.client.dataReceived(
            wire.encodeMessage({"id": None, "ok": False, "error": error, "closing": True})
        )
        before = self.client.request("x")
        self.client.connectionLost(Failure(ConnectionDone()))
        after = self.client.request("y")
        for d in (before, after):
            self.assertEqual(self.failureResultOf(d, FramesError).value.code, "shutting_down")


class ParseServerTests(SynchronousTestCase):
    """
    L{parseServer} reads C{HOST:PORT} forms.
    """

    def test_valid(self) -> None:
        """
        Host and port, bracketed IPv6 with or without a port, a port alone
        (loopback), and a host alone (the default port).
        """
        cases = {
            "example.com:8007": ("example.com", 8007),
            "10.0.0.1:1": ("10.0.0.1", 1),
            "[::1]:80": ("::1", 80),
            "[fe80::1%eth0]:65535": ("fe80::1%eth0", 65535),
            "[::1]": ("::1", 8007),
            ":9000": ("127.0.0.1", 9000),
            "host": ("host", 8007),
            "::1": ("::1", 8007),
        }
        for server, expected in cases.items():
            self.assertEqual(parseServer(server), expected, server)

    def test_defaultPort(self) -> None:
        """
        The default port can be chosen.
        """
        self.assertEqual(parseServer("h", default_port=1234), ("h", 1234))

    def test_badPort(self) -> None:
        """
        A missing, non-numeric, zero or too large port is a C{ValueError}.
        """
        for server in ("host:", "host:abc", "host:0", "host:65536", "host:-1", "[::1]:", ":x"):
            self.assertRaises(ValueError, parseServer, server)

    def test_malformedBrackets(self) -> None:
        """
        An unclosed bracket, or text after it other than C{:PORT}, is a
        C{ValueError}.
        """
        for server in ("[::1", "[::1]80", "[::1]x:80"):
            self.assertRaises(ValueError, parseServer, server)


class PendingEndpoint:
    """
    A client endpoint whose connection attempts never finish.
    """

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.Deferred()


class ConnectTests(SynchronousTestCase):
    """
    L{connect} connects and waits for the greeting, within a timeout.
    """

    def test_connect(self) -> None:
        """
        C{connect} fires with a L{FramesClient} once greeted, and leaves no
        timer behind.
        """
        clock = Clock()
        d = connect(clock, MemoryEndpoint(FramesServerFactory(clock=Clock())))
        client = self.successResultOf(d)
        self.assertIsInstance(client, FramesClient)
        self.assertEqual(client.greeting["event"], "hello")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        A connection that is not greeted within the timeout fails.
        """
        clock = Clock()
        d = connect(clock, PendingEndpoint(), timeout=5)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, defer.TimeoutError)

    def test_endpointStrings(self) -> None:
        """
        C{HOST:PORT} makes a hostname endpoint for a name and a plain
        C{connectTCP} one for an IPv4 or IPv6 address; an endpoint
        description string is parsed as one.
        """
        reactor = MemoryReactorClock()
        self.assertIsInstance(_endpointFor(reactor, "example.com:1", 5), HostnameEndpoint)
        for server in ("127.0.0.1:1", "[::1]:1"):
            self.assertIsInstance(_endpointFor(reactor, server, 5), TCPAddressEndpoint)
        self.assertIsInstance(
            _endpointFor(reactor, "tcp:host=127.0.0.1:port=1", 5), TCP4ClientEndpoint
        )
        self.assertRaises(ValueError, _endpointFor, reactor, "example.com:x", 5)
