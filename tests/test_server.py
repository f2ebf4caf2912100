"""
Tests for L{twisted_frames.server}: the greeting, dispatch of requests to
services, request-level errors and protocol violations.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.protocol import BodySink, Pipe
from twisted_frames.server import (
    FramesServerFactory,
    PingService,
    Request,
    ServerProtocol,
    ServerReply,
    Service,
    operation,
)
from twisted_frames.testing import connectProtocols
from twisted_frames.wire import ErrorCode, FramesError, Limits

from .test_protocol import (
    BytesSource,
    Message,
    RecordingProtocol,
    parseFrames,
    parseMessages,
)

MAX_HEADER = 4096
MAX_BODY = 2 * 1024 * 1024
THRESHOLD = 64 * 1024
LIMITS = Limits(maxHeader=MAX_HEADER, maxBody=MAX_BODY, bufferThreshold=THRESHOLD)


class CountingSink(BodySink):
    """
    The sink of the C{stream} op: counts the body and replies with its size
    and a digest of it (the first and last bytes).
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        self.chunks: list[bytes] = []
        self.failures: list[Failure] = []

    def bodyData(self, data: bytes) -> None:
        self.chunks.append(data)

    def bodyFinished(self) -> None:
        body = b"".join(self.chunks)
        self.request.reply({"size": len(body), "ends": body[:1].hex() + body[-1:].hex()})

    def bodyFailed(self, reason: Failure) -> None:
        self.failures.append(reason)


class SampleService(Service):
    """
    One op per way a handler can answer.
    """

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []
        self.held: list[Request] = []
        self.sinks: list[CountingSink] = []
        self.lost: list[ServerProtocol] = []

    @operation("fields")
    def fields(self, request: Request) -> dict[str, Any]:
        return {"value": request.header.get("value"), "bodyLength": request.bodyLength}

    @operation("bufferEcho", body="buffer")
    def bufferEcho(self, request: Request) -> ServerReply:
        return ServerReply({"size": len(request.body)}, request.body)

    @operation("small", body="buffer", maxBody=10)
    def small(self, request: Request) -> dict[str, Any]:
        return {"size": len(request.body)}

    @operation("later")
    def later(self, request: Request) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    @operation("coro")
    async def coro(self, request: Request) -> dict[str, Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        value = await d
        return {"value": value}

    @operation("hold")
    def hold(self, request: Request) -> None:
        self.held.append(request)

    @operation("fail")
    def fail(self, request: Request) -> None:
        raise FramesError(ErrorCode.NOT_FOUND, "nothing here", path="a/b")

    @operation("boom")
    def boom(self, request: Request) -> None:
        raise ZeroDivisionError("bug")

    @operation("badReturn")
    def badReturn(self, request: Request) -> int:
        return 42

    @operation("notJSON")
    def notJSON(self, request: Request) -> dict[str, Any]:
        return {"value": object()}

    @operation("events")
    def events(self, request: Request) -> dict[str, Any]:
        request.event("progress", {"n": 1})
        request.event("chunk", None, b"data")
        return {"done": True}

    @operation("streamReply")
    def streamReply(self, request: Request) -> ServerReply:
        return ServerReply({"streamed": True}, BytesSource(b"s" * 100_000))

    @operation("stream", body="stream")
    def stream(self, request: Request) -> BodySink:
        sink = CountingSink(request)
        self.sinks.append(sink)
        return sink

    @operation("streamFail", body="stream")
    def streamFail(self, request: Request) -> BodySink:
        raise FramesError(ErrorCode.NO_SPACE, "disk full")

    @operation("streamBoom", body="stream")
    def streamBoom(self, request: Request) -> BodySink:
        raise KeyError("bug")

    @operation("streamNotSink", body="stream")
    def streamNotSink(self, request: Request) -> Any:
        return {"not": "a sink"}

    def connectionLost(self, connection: ServerProtocol) -> None:
        self.lost.append(connection)


def request(op: str, rid: Any, body: bytes = b"", **fields: Any) -> bytes:
    """
    The wire bytes of one request.
    """
    return wire.encodeMessage({"op": op, "id": rid, **fields}, body)


class ServerTestMixin:
    """
    A factory with L{SampleService}, and connections to it over
    L{StringTransport}.
    """

    assertEqual: Callable[..., None]

    def makeFactory(self, limits: Limits = LIMITS) -> FramesServerFactory:
        self.service = SampleService()
        self.clock = Clock()
        self.factory = FramesServerFactory([self.service], limits=limits, clock=self.clock)
        return self.factory

    def connect(self) -> tuple[ServerProtocol, StringTransport, dict[str, Any]]:
        """
        Connect to the factory; return the protocol, its transport (emptied)
        and the greeting.
        """
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        [(greeting, body)] = parseMessages(transport.value())
        self.assertEqual(body, b"")
        transport.clear()
        return proto, transport, greeting

    def replies(self, transport: StringTransport) -> list[Message]:
        """
        Parse and clear what the server wrote.
        """
        messages = parseMessages(transport.value())
        transport.clear()
        return messages


class GreetingTests(ServerTestMixin, SynchronousTestCase):
    """
    The server speaks first, saying who it is and what it accepts.
    """

    def setUp(self) -> None:
        self.makeFactory()

    def test_greeting(self) -> None:
        """
        The greeting is a C{hello} event with the protocol name and version,
        the server's name, auth, a nonce, the limits and the sorted ops.
        """
        _, _, greeting = self.connect()
        nonce = greeting.pop("nonce")
        self.assertEqual(
            greeting,
            {
                "event": "hello",
                "protocol": "twisted-frames",
                "version": wire.PROTOCOL_VERSION,
                "server": "twisted-frames",
                "auth": {"required": False, "mechanisms": []},
                "limits": {"header": MAX_HEADER, "body": MAX_BODY},
                "ops": sorted(self.factory.operations),
            },
        )
        self.assertTrue(re.fullmatch("[0-9a-f]{32}", nonce), nonce)

    def test_opsListed(self) -> None:
        """
        The ops list has C{ping} and every op of every service, sorted.
        """
        _, _, greeting = self.connect()
        self.assertIn("ping", greeting["ops"])
        self.assertIn("stream", greeting["ops"])
        self.assertEqual(greeting["ops"], sorted(greeting["ops"]))

    def test_nonceFresh(self) -> None:
        """
        Every connection gets its own nonce.
        """
        nonces = {self.connect()[2]["nonce"] for _ in range(20)}
        self.assertEqual(len(nonces), 20)

    def test_serverNameAndLimits(self) -> None:
        """
        The server name and limits come from the factory.
        """
        self.factory = FramesServerFactory(
            serverName="box", limits=Limits(maxHeader=100, maxBody=5), clock=Clock()
        )
        _, _, greeting = self.connect()
        self.assertEqual(greeting["server"], "box")
        self.assertEqual(greeting["limits"], {"header": 100, "body": 5})
        self.assertEqual(greeting["ops"], ["ping"])

    def test_serviceFields(self) -> None:
        """
        Each service's L{Service.greetingFields} is asked, with the
        connection, for fields added after the base ones; it cannot change
        a base field.
        """
        asked: list[ServerProtocol] = []

        class Greeter(Service):
            def greetingFields(self, connection: ServerProtocol) -> dict[str, Any]:
                asked.append(connection)
                return {"extra": [1, 2], "server": "not this"}

        self.factory = FramesServerFactory([Greeter()], clock=Clock())
        proto, _, greeting = self.connect()
        self.assertEqual(asked, [proto])
        self.assertEqual((greeting["server"], greeting["extra"]), ("twisted-frames", [1, 2]))
        self.assertEqual(list(greeting)[-1], "extra")

    def test_limitsApplied(self) -> None:
        """
        The connection enforces the factory's limits, not the defaults.
        """
        proto, _, _ = self.connect()
        self.assertEqual(proto.limits, LIMITS)
        self.assertEqual(proto.MAX_LENGTH, MAX_HEADER)


class PingTests(ServerTestMixin, SynchronousTestCase):
    """
    C{ping} echoes its body exactly, of any size.
    """

    def setUp(self) -> None:
        self.makeFactory()
        self.proto, self.transport, _ = self.connect()

    def test_empty(self) -> None:
        """
        An empty ping gets an empty success reply with its id.
        """
        self.proto.dataReceived(request("ping", 1))
        self.assertEqual(self.replies(self.transport), [({"id": 1, "ok": True}, b"")])

    def test_replyHeaderNotThroughEncoder(self) -> None:
        """
        The reply to a ping with an integer id is made without the JSON
        encoder (its bytes are those the encoder makes: see
        L{tests.test_wire.FixedShapeEncoderTests}).
        """
        data = request("ping", 7, b"x")
        calls: list[Any] = []
        encode = wire.encodeHeader

        def counting(header: dict[str, Any]) -> bytes:
            calls.append(header)
            return encode(header)

        self.patch(wire, "encodeHeader", counting)
        self.proto.dataReceived(data)
        self.assertEqual(self.replies(self.transport), [({"id": 7, "ok": True}, b"x")])
        self.assertEqual(calls, [])

    def test_small(self) -> None:
        """
        A small body is echoed.
        """
        self.proto.dataReceived(request("ping", "p", b"hello\x00\xff"))
        self.assertEqual(
            self.replies(self.transport), [({"id": "p", "ok": True}, b"hello\x00\xff")]
        )

    def test_atThreshold(self) -> None:
        """
        A body of exactly the buffer threshold is echoed.
        """
        body = b"t" * THRESHOLD
        self.proto.dataReceived(request("ping", 1, body))
        self.assertEqual(self.replies(self.transport), [({"id": 1, "ok": True}, body)])

    def test_large(self) -> None:
        """
        A 1 MiB body (over the buffer threshold) is streamed back through a
        L{Pipe} as it arrives, and echoed exactly.
        """
        body = bytes(range(256)) * 4096
        data = request("ping", 9, body)
        producers = set()
        for i in range(0, len(data), 65536):
            self.proto.dataReceived(data[i : i + 65536])
            active = self.proto._activeSource
            producers.add(type(active[0]) if active is not None else None)
        self.assertIn(Pipe, producers)
        self.assertEqual(self.replies(self.transport), [({"id": 9, "ok": True}, body)])
        self.assertIsNone(self.proto._activeSource)
        self.assertFalse(self.transport.disconnecting)

    def test_largeStreamsAsItArrives(self) -> None:
        """
        The echo of a large body starts before the whole body has arrived.
        """
        body = b"L" * (THRESHOLD * 2)
        data = request("ping", 9, body)
        self.proto.dataReceived(data[: len(data) - THRESHOLD])
        frames, partial = parseFrames(self.transport.value())
        self.assertEqual(frames, [b'{"id":9,"ok":true}'])
        self.assertEqual(len(partial), 4 + THRESHOLD)

    def test_largeCoalesced(self) -> None:
        """
        Large and small pings coalesced in one read are all echoed in order.
        """
        big = b"B" * (THRESHOLD + 1)
        self.proto.dataReceived(request("ping", 1, big) + request("ping", 2, b"s"))
        self.assertEqual(
            self.replies(self.transport),
            [({"id": 1, "ok": True}, big), ({"id": 2, "ok": True}, b"s")],
        )


class PipelineTestsMixin(ServerTestMixin):
    """
    Requests pipelined in one write are all answered, with their ids, however
    the bytes are split into reads.
    """

    def deliver(self, proto: ServerProtocol, data: bytes) -> None:
        raise NotImplementedError

    def setUp(self) -> None:
        self.makeFactory()
        self.proto, self.transport, _ = self.connect()

    def test_pipelined(self) -> None:
        """
        Several requests, of several kinds, in one write: every reply comes
        back with the right id, in order, and the connection stays open.
        """
        data = b"".join(
            [
                request("ping", 1),
                request("fields", "two", value=[1, "x"]),
                request("bufferEcho", 3, b"abc"),
                request("nope", 4, b"ignored"),
                request("stream", 5, b"0123456789"),
                request("ping", 6, b"last"),
            ]
        )
        self.deliver(self.proto, data)
        replies = self.replies(self.transport)
        self.assertEqual([h["id"] for h, _ in replies], [1, "two", 3, 4, 5, 6])
        self.assertEqual(
            replies[1][0], {"id": "two", "ok": True, "value": [1, "x"], "bodyLength": 0}
        )
        self.assertEqual(replies[2], ({"id": 3, "ok": True, "size": 3}, b"abc"))
        self.assertEqual(replies[3][0]["error"]["code"], "unknown_op")
        self.assertEqual(replies[4][0], {"id": 5, "ok": True, "size": 10, "ends": "3039"})
        self.assertEqual(replies[5], ({"id": 6, "ok": True}, b"last"))
        self.assertFalse(self.transport.disconnecting)

    def test_unknownOpThenPing(self) -> None:
        """
        An unknown op, with or without a body (even one over the buffer
        threshold, which is read and discarded), gets C{unknown_op} and leaves
        the connection usable.
        """
        for body in (b"", b"abc", b"D" * (THRESHOLD + 10)):
            self.deliver(self.proto, request("nosuchop", 1, body) + request("ping", 2, b"ok"))
            [(error, errorBody), pong] = self.replies(self.transport)
            self.assertEqual(
                error,
                {
                    "id": 1,
                    "ok": False,
                    "error": {"code": "unknown_op", "message": "unknown op 'nosuchop'"},
                },
            )
            self.assertEqual(errorBody, b"")
            self.assertEqual(pong, ({"id": 2, "ok": True}, b"ok"))
            self.assertFalse(self.transport.disconnecting)


class PipelineWholeTests(PipelineTestsMixin, SynchronousTestCase):
    """
    Pipelining with all requests in one read.
    """

    def deliver(self, proto: ServerProtocol, data: bytes) -> None:
        proto.dataReceived(data)


class PipelineByteAtATimeTests(PipelineTestsMixin, SynchronousTestCase):
    """
    Pipelining with the requests fed one byte at a time.
    """

    def deliver(self, proto: ServerProtocol, data: bytes) -> None:
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])


def frame(payload: bytes) -> bytes:
    return wire.encodeFrame(payload)


#: (name, bytes sent, expected code, expected id in the error reply)
VIOLATION_CASES: list[tuple[str, bytes, str, Any]] = [
    ("headerTooLarge", wire.encodePrefix(MAX_HEADER + 1), "header_too_large", None),
    ("headerHuge", b"\xff\xff\xff\xff", "header_too_large", None),
    (
        "bodyTooLarge",
        frame(b'{"op":"ping","id":1}') + wire.encodePrefix(MAX_BODY + 1),
        "body_too_large",
        1,
    ),
    (
        "bodyTooLargeUnknownOp",
        frame(b'{"op":"nope","id":1}') + wire.encodePrefix(MAX_BODY + 1),
        "body_too_large",
        1,
    ),
    ("opMaxBody", request("small", "s", b"x" * 11), "body_too_large", "s"),
    (
        "bufferOverThreshold",
        frame(b'{"op":"bufferEcho","id":2}') + wire.encodePrefix(THRESHOLD + 1),
        "body_too_large",
        2,
    ),
    ("invalidUTF8", frame(b'{"op":"ping","id":1,"x":"\xff"}') + frame(b""), "bad_header", None),
    ("invalidJSON", frame(b'{"op":"ping","id":1') + frame(b""), "bad_header", None),
    ("nanConstant", frame(b'{"op":"ping","id":NaN}') + frame(b""), "bad_header", None),
    ("arrayHeader", frame(b'[{"op":"ping","id":1}]') + frame(b""), "bad_header", None),
    ("numberHeader", frame(b"7") + frame(b""), "bad_header", None),
    ("stringHeader", frame(b'"ping"') + frame(b""), "bad_header", None),
    ("emptyHeader", wire.encodePrefix(0) + frame(b""), "bad_header", None),
    ("deepHeader", frame(b"[" * 3000), "bad_header", None),
    ("loneSurrogateId", frame(b'{"op":"ping","id":"\\ud800"}') + frame(b""), "bad_header", None),
    ("missingOp", wire.encodeMessage({"id": 1}), "bad_request", 1),
    ("opNotString", wire.encodeMessage({"op": 5, "id": 1}), "bad_request", 1),
    ("emptyOp", wire.encodeMessage({"op": "", "id": 1}), "bad_request", 1),
    ("missingId", wire.encodeMessage({"op": "ping"}), "bad_request", None),
    ("nullId", request("ping", None), "bad_request", None),
    ("boolId", request("ping", True), "bad_request", None),
    ("floatId", request("ping", 1.0), "bad_request", None),
    ("negativeId", request("ping", -1), "bad_request", None),
    ("hugeId", request("ping", 2**53), "bad_request", None),
    ("emptyStringId", request("ping", ""), "bad_request", None),
    ("longStringId", request("ping", "x" * 129), "bad_request", None),
    ("bodyNotAllowed", request("fields", 3, b"x"), "body_not_allowed", 3),
    ("duplicateId", request("hold", 7) + request("ping", 7), "duplicate_id", 7),
    ("duplicateStringId", request("later", "d") + request("fields", "d"), "duplicate_id", "d"),
]


class ViolationTableTests(ServerTestMixin, SynchronousTestCase):
    """
    Every protocol violation gets one error message naming it, with the
    request's id (or null), C{"closing": true}; then the connection closes
    and nothing more is read.  Other connections are unaffected.

    Test methods are generated from L{VIOLATION_CASES}, fed whole and one
    byte at a time.
    """

    def setUp(self) -> None:
        self.makeFactory()

    def check(self, data: bytes, code: str, rid: Any, bytewise: bool) -> None:
        proto, transport, _ = self.connect()
        # A valid request after the violation must never be answered.
        data += request("ping", 99)
        if bytewise:
            for i in range(len(data)):
                proto.dataReceived(data[i : i + 1])
        else:
            proto.dataReceived(data)
        [(header, body)] = self.replies(transport)
        self.assertEqual(
            header,
            {
                "id": rid,
                "ok": False,
                "error": {"code": code, "message": header["error"]["message"]},
                "closing": True,
            },
        )
        self.assertIsInstance(header["error"]["message"], str)
        self.assertEqual(body, b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

        other, otherTransport, _ = self.connect()
        other.dataReceived(request("ping", 1, b"still fine"))
        self.assertEqual(self.replies(otherTransport), [({"id": 1, "ok": True}, b"still fine")])
        self.assertFalse(otherTransport.disconnecting)


def _violationTest(name: str, data: bytes, code: str, rid: Any, bytewise: bool) -> Any:
    def test(self: ViolationTableTests) -> None:
        self.check(data, code, rid, bytewise)

    reads = "one byte at a time" if bytewise else "in one read"
    test.__doc__ = (
        f"{name}, fed {reads}: one C{{{code}}} error with id {rid!r}, closing; "
        "the factory's next connection is unaffected."
    )
    test.__name__ = f"test_{name}{'ByteAtATime' if bytewise else 'Whole'}"
    return test


for _case in VIOLATION_CASES:
    for _bytewise in (False, True):
        _test = _violationTest(*_case, bytewise=_bytewise)
        setattr(ViolationTableTests, _test.__name__, _test)
del _case, _bytewise, _test


class HandlerTests(ServerTestMixin, SynchronousTestCase):
    """
    Whatever way a handler answers, the client gets one final reply.
    """

    def setUp(self) -> None:
        self.makeFactory()
        self.proto, self.transport, _ = self.connect()

    def call(self, op: str, body: bytes = b"", rid: Any = 1, **fields: Any) -> list[Message]:
        self.proto.dataReceived(request(op, rid, body, **fields))
        return self.replies(self.transport)

    def assertError(self, messages: list[Message], code: str, rid: Any = 1) -> dict[str, Any]:
        [(header, body)] = messages
        self.assertEqual((header["id"], header["ok"], header["error"]["code"]), (rid, False, code))
        self.assertNotIn("closing", header)
        self.assertEqual(body, b"")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.proto.inFlight, {})
        return header["error"]

    def test_dict(self) -> None:
        """
        A dict returned is the success reply's fields.
        """
        self.assertEqual(
            self.call("fields", value="v"),
            [({"id": 1, "ok": True, "value": "v", "bodyLength": 0}, b"")],
        )

    def test_reply(self) -> None:
        """
        A L{ServerReply} returned gives fields and a body.
        """
        self.assertEqual(
            self.call("bufferEcho", b"xyz"), [({"id": 1, "ok": True, "size": 3}, b"xyz")]
        )

    def test_bufferOpEmptyBody(self) -> None:
        """
        A buffer op may get an empty body.
        """
        self.assertEqual(self.call("bufferEcho"), [({"id": 1, "ok": True, "size": 0}, b"")])

    def test_bufferOpAtMaxBody(self) -> None:
        """
        A body of exactly the op's C{maxBody} is accepted.
        """
        self.assertEqual(self.call("small", b"x" * 10), [({"id": 1, "ok": True, "size": 10}, b"")])

    def test_streamedReply(self) -> None:
        """
        A L{ServerReply} whose body is a source is streamed.
        """
        self.assertEqual(
            self.call("streamReply"), [({"id": 1, "ok": True, "streamed": True}, b"s" * 100_000)]
        )

    def test_deferred(self) -> None:
        """
        A Deferred returned is answered when it fires; other requests are
        served meanwhile.
        """
        self.assertEqual(self.call("later", rid=1), [])
        self.assertEqual(self.call("ping", rid=2), [({"id": 2, "ok": True}, b"")])
        self.assertIn(1, self.proto.inFlight)
        self.service.pending[0].callback({"late": True})
        self.assertEqual(
            self.replies(self.transport), [({"id": 1, "ok": True, "late": True}, b"")]
        )
        self.assertEqual(self.proto.inFlight, {})

    def test_deferredReply(self) -> None:
        """
        A Deferred may fire with a L{ServerReply}.
        """
        self.call("later")
        self.service.pending[0].callback(ServerReply({"r": 1}, b"body"))
        self.assertEqual(self.replies(self.transport), [({"id": 1, "ok": True, "r": 1}, b"body")])

    def test_coroutine(self) -> None:
        """
        A coroutine handler is run as a Deferred.
        """
        self.assertEqual(self.call("coro"), [])
        self.service.pending[0].callback("awaited")
        self.assertEqual(
            self.replies(self.transport), [({"id": 1, "ok": True, "value": "awaited"}, b"")]
        )

    def test_framesError(self) -> None:
        """
        A L{FramesError} raised is an error reply with its code, message and
        details; the connection stays usable.
        """
        error = self.assertError(self.call("fail"), "not_found")
        self.assertEqual(error, {"code": "not_found", "message": "nothing here", "path": "a/b"})
        self.assertEqual(self.call("ping", rid=2), [({"id": 2, "ok": True}, b"")])

    def test_deferredFramesError(self) -> None:
        """
        A Deferred failing with L{FramesError} is an error reply with its code.
        """
        self.call("later")
        self.service.pending[0].errback(FramesError(ErrorCode.BUSY, "try later"))
        self.assertError(self.replies(self.transport), "busy")

    def test_coroutineFramesError(self) -> None:
        """
        A coroutine raising L{FramesError} is an error reply with its code.
        """
        self.call("coro")
        self.service.pending[0].errback(FramesError(ErrorCode.CANCELLED, "no"))
        self.assertError(self.replies(self.transport), "cancelled")

    def test_exception(self) -> None:
        """
        Any other exception is logged and sent as C{internal}, without its
        details.
        """
        error = self.assertError(self.call("boom"), "internal")
        self.assertNotIn("bug", error["message"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.call("ping", rid=2), [({"id": 2, "ok": True}, b"")])

    def test_deferredException(self) -> None:
        """
        A Deferred failing with another exception is logged, and C{internal}.
        """
        self.call("later")
        self.service.pending[0].errback(ZeroDivisionError("bug"))
        self.assertError(self.replies(self.transport), "internal")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_badReturn(self) -> None:
        """
        A handler returning something that is not a reply is a bug: logged,
        and C{internal}.
        """
        self.assertError(self.call("badReturn"), "internal")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_notJSON(self) -> None:
        """
        A handler returning fields that are not JSON-able is a bug: logged,
        and C{internal} (not a request left unanswered).
        """
        self.assertError(self.call("notJSON"), "internal")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.call("ping", rid=2), [({"id": 2, "ok": True}, b"")])

    def test_deferredNotJSON(self) -> None:
        """
        The same holds when the fields come from a Deferred.
        """
        self.call("later")
        self.service.pending[0].callback({"value": {1, 2}})
        self.assertError(self.replies(self.transport), "internal")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_handlerRepliesItself(self) -> None:
        """
        A handler may answer through the request and return C{None}; a
        second final reply is an error.
        """
        self.call("hold", rid="h")
        [held] = self.service.held
        self.assertFalse(held.finished)
        held.reply({"by": "hand"}, b"b")
        self.assertTrue(held.finished)
        self.assertEqual(
            self.replies(self.transport), [({"id": "h", "ok": True, "by": "hand"}, b"b")]
        )
        self.assertRaises(RuntimeError, held.reply)
        self.assertRaises(RuntimeError, held.fail, FramesError("x", "y"))
        self.assertRaises(RuntimeError, held.event, "late")
        self.assertEqual(self.transport.value(), b"")

    def test_events(self) -> None:
        """
        Intermediate messages carry the request's id and their event name,
        and come before the final reply.
        """
        self.assertEqual(
            self.call("events", rid=4),
            [
                ({"id": 4, "event": "progress", "n": 1}, b""),
                ({"id": 4, "event": "chunk"}, b"data"),
                ({"id": 4, "ok": True, "done": True}, b""),
            ],
        )

    def test_stream(self) -> None:
        """
        A stream op's sink gets the body as it arrives; the op knows the
        body's length from the start.
        """
        body = bytes(range(256)) * 1024
        data = request("stream", 1, body)
        self.proto.dataReceived(data[:1000])
        [sink] = self.service.sinks
        self.assertEqual(sink.request.bodyLength, len(body))
        self.assertTrue(sink.chunks)
        self.proto.dataReceived(data[1000:])
        self.assertEqual(
            self.replies(self.transport),
            [({"id": 1, "ok": True, "size": len(body), "ends": "00ff"}, b"")],
        )

    def test_streamFramesError(self) -> None:
        """
        A stream op refusing with L{FramesError} gets an error reply; its
        body (even a large one) is read and discarded, and the connection
        stays usable.
        """
        self.proto.dataReceived(
            request("streamFail", 1, b"x" * (THRESHOLD * 3)) + request("ping", 2)
        )
        [error, pong] = self.replies(self.transport)
        self.assertError([error], "no_space")
        self.assertEqual(pong, ({"id": 2, "ok": True}, b""))

    def test_streamException(self) -> None:
        """
        A stream op raising another exception is logged and C{internal}; its
        body is discarded.
        """
        self.proto.dataReceived(request("streamBoom", 1, b"abc") + request("ping", 2))
        [error, pong] = self.replies(self.transport)
        self.assertError([error], "internal")
        self.assertEqual(pong, ({"id": 2, "ok": True}, b""))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_streamNotSink(self) -> None:
        """
        A stream op returning something other than a sink is a bug: logged,
        and C{internal}.
        """
        self.assertError(self.call("streamNotSink", b"abc"), "internal")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_authRequired(self) -> None:
        """
        When the factory requires a login, a non-public op gets
        C{auth_required} (its body is discarded) while public ops such as
        C{ping} work; once logged in, the op is served.
        """
        self.factory.authRequired = True
        self.proto.dataReceived(request("bufferEcho", 1, b"abc") + request("ping", 2, b"p"))
        [error, pong] = self.replies(self.transport)
        self.assertError([error], "auth_required")
        self.assertEqual(pong, ({"id": 2, "ok": True}, b"p"))
        self.proto.user = "alice"
        self.assertEqual(self.call("bufferEcho", b"abc", rid=3)[0][1], b"abc")

    def test_sameIdAfterFinished(self) -> None:
        """
        An id may be reused once its request has finished.
        """
        self.call("ping", rid=1)
        self.assertEqual(self.call("ping", rid=1), [({"id": 1, "ok": True}, b"")])

    def test_lateAnswerAfterViolation(self) -> None:
        """
        A handler answering after the connection was closed for a violation
        sends nothing: the error stays the last message.
        """
        self.call("later", rid=1)
        self.proto.dataReceived(frame(b"[]"))
        self.replies(self.transport)
        self.service.pending[0].callback({"late": True})
        self.assertEqual(self.transport.value(), b"")


class CancellationTests(ServerTestMixin, SynchronousTestCase):
    """
    Requests in flight when the connection is lost are cancelled.
    """

    def setUp(self) -> None:
        self.makeFactory()
        self.proto, self.transport, _ = self.connect()

    def test_notifyCancelled(self) -> None:
        """
        C{notifyCancelled} fires when the connection is lost before the
        final reply; later replies are dropped silently.
        """
        self.proto.dataReceived(request("hold", 1))
        [held] = self.service.held
        d = held.notifyCancelled()
        self.assertNoResult(d)
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertTrue(held.cancelled)
        self.successResultOf(held.notifyCancelled())
        held.reply({"too": "late"})
        held.fail(FramesError("x", "y"))
        held.event("late")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.proto.inFlight, {})

    def test_cancelledStreamedReply(self) -> None:
        """
        A streamed reply after cancellation stops its source and fails.
        """
        self.proto.dataReceived(request("hold", 1))
        [held] = self.service.held
        self.proto.connectionLost(Failure(ConnectionDone()))
        source = BytesSource(b"abc")
        self.failureResultOf(held.reply({}, source), ConnectionError)
        self.assertTrue(source.stopped)
        self.failureResultOf(held.eventStream("e", {}, BytesSource(b"abc")), ConnectionError)

    def test_finishedNotCancelled(self) -> None:
        """
        A request answered before the loss is not cancelled.
        """
        self.proto.dataReceived(request("hold", 1))
        [held] = self.service.held
        d = held.notifyCancelled()
        held.reply()
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        self.assertFalse(held.cancelled)

    def test_deferredAfterLoss(self) -> None:
        """
        A Deferred answer or failure arriving after the loss is dropped,
        without an unhandled error.
        """
        self.proto.dataReceived(request("later", 1) + request("later", 2))
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.service.pending[0].callback({"late": True})
        self.service.pending[1].errback(FramesError("x", "y"))
        self.assertEqual(self.transport.value(), b"")

    def test_streamSinkFailed(self) -> None:
        """
        A stream op's sink is told when the connection is lost mid-body.
        """
        self.proto.dataReceived(request("stream", 1, b"abcdef")[:-2])
        self.proto.connectionLost(Failure(ConnectionDone()))
        [sink] = self.service.sinks
        self.assertEqual(len(sink.failures), 1)
        self.assertTrue(sink.request.cancelled)

    def test_lostMidEcho(self) -> None:
        """
        A large ping lost mid-echo is dropped quietly.
        """
        self.proto.dataReceived(request("ping", 1, b"x" * (THRESHOLD * 2))[:-10])
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_servicesTold(self) -> None:
        """
        Every service hears that the connection closed.
        """
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.service.lost, [self.proto])


class FactoryTests(SynchronousTestCase):
    """
    L{FramesServerFactory} gathers the services' operations.
    """

    def test_pingAlways(self) -> None:
        """
        C{ping} is always served, by L{PingService}.
        """
        factory = FramesServerFactory()
        self.assertEqual(list(factory.operations), ["ping"])
        self.assertIsInstance(factory.services[0], PingService)
        self.assertEqual(factory.limits, Limits())

    def test_operationMarks(self) -> None:
        """
        The operations carry their body policy and limits from the mark.
        """
        ops = FramesServerFactory([SampleService()]).operations
        self.assertEqual((ops["small"].body, ops["small"].maxBody), ("buffer", 10))
        self.assertEqual(ops["stream"].body, "stream")
        self.assertEqual(ops["fields"].body, "none")
        self.assertTrue(ops["ping"].public)
        self.assertFalse(ops["fields"].public)

    def test_duplicateOp(self) -> None:
        """
        Two services defining the same op is a configuration error.
        """
        self.assertRaises(ValueError, FramesServerFactory, [SampleService(), SampleService()])

        class AnotherPing(Service):
            @operation("ping")
            def ping(self, request: Request) -> None:
                pass

        self.assertRaises(ValueError, FramesServerFactory, [AnotherPing()])

    def test_buildProtocol(self) -> None:
        """
        Protocols are L{ServerProtocol}s that know their factory.
        """
        factory = FramesServerFactory()
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertIsInstance(proto, ServerProtocol)
        self.assertIs(proto.factory, factory)


class IOSimTests(ServerTestMixin, SynchronousTestCase):
    """
    The server against a raw framing client, joined in memory by
    L{twisted_frames.testing.connectProtocols}.
    """

    def setUp(self) -> None:
        self.makeFactory()
        self.client = self.makeClient()
        self.server = self.factory.buildProtocol(None)
        self.pump = connectProtocols(self.server, self.client)

    def makeClient(self) -> RecordingProtocol:
        client = RecordingProtocol()
        client.limits = Limits(maxBody=MAX_BODY, bufferThreshold=MAX_BODY)
        client.clock = Clock()
        return client

    def test_greetingAndPings(self) -> None:
        """
        The client sees the greeting, then every ping echoed, up to 1 MiB.
        """
        [(greeting, _)] = self.client.messages
        self.assertEqual(greeting["event"], "hello")
        bodies = [b"", b"small", bytes(range(256)) * 4096]
        for i, body in enumerate(bodies):
            self.client.sendMessage({"op": "ping", "id": i}, body)
        self.pump.flush()
        self.assertEqual(
            self.client.messages[1:], [({"id": i, "ok": True}, b) for i, b in enumerate(bodies)]
        )

    def test_streamedRequestBody(self) -> None:
        """
        A request body streamed by the client reaches a stream op.
        """
        self.client.sendStreamedMessage({"op": "stream", "id": 1}, BytesSource(b"a" * 300_000))
        self.pump.flush()
        self.assertEqual(
            self.client.messages[-1], ({"id": 1, "ok": True, "size": 300_000, "ends": "6161"}, b"")
        )

    def test_violationCloses(self) -> None:
        """
        After a violation the client gets the error and the connection closes
        on both sides.
        """
        lost: list[Failure] = []
        self.client.connectionLost = lost.append  # type: ignore[method-assign]
        self.client.transport.write(frame(b"[]") + frame(b""))
        self.pump.flush()
        header = self.client.messages[-1][0]
        self.assertEqual((header["error"]["code"], header["closing"]), ("bad_header", True))
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.server.inFlight, {})


class RequestTests(SynchronousTestCase):
    """
    L{Request} properties.
    """

    def test_peerAndUser(self) -> None:
        """
        A request knows its peer's address and the connection's user.
        """
        factory = FramesServerFactory([SampleService()], clock=Clock())
        proto = factory.buildProtocol(None)
        peer = IPv4Address("TCP", "10.1.2.3", 5555)
        proto.makeConnection(StringTransport(peerAddress=peer))
        proto.dataReceived(request("hold", 1))
        [held] = factory.services[1].held  # type: ignore[attr-defined]
        self.assertEqual(held.peer, peer)
        self.assertIsNone(held.user)
        proto.user = "alice"
        self.assertEqual(held.user, "alice")
        self.assertEqual((held.op, held.id, held.header), ("hold", 1, {"op": "hold", "id": 1}))


class RequestIdTests(ServerTestMixin, SynchronousTestCase):
    """
    What counts as a request id, and which ids are the same, as
    C{docs/protocol.md} section 3.2 says.
    """

    def setUp(self) -> None:
        # The default limits: a 64 KiB header holds a 5,000-digit number.
        self.makeFactory(Limits())

    def test_negativeZeroIsZero(self) -> None:
        """
        C{-0} is the integer 0: the reply repeats it as C{0}, and it is the
        same id as C{0}.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(frame(b'{"op":"hold","id":-0}') + frame(b""))
        self.assertEqual(list(proto.inFlight), [0])
        proto.dataReceived(request("ping", 0))
        self.assertEqual(
            transport.value(),
            frame(
                b'{"id":0,"ok":false,"error":{"code":"duplicate_id",'
                b'"message":"request id 0 is already in flight"},"closing":true}'
            )
            + frame(b""),
        )

    def test_integerAndStringAreDistinct(self) -> None:
        """
        The integer C{100} and the string C{"100"} are two ids: both may be
        in flight at once, and each reply repeats its own.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(request("hold", 100) + request("hold", "100"))
        self.assertEqual(list(proto.inFlight), [100, "100"])
        for held in self.service.held:
            held.reply({})
        self.assertEqual(
            self.replies(transport),
            [({"id": 100, "ok": True}, b""), ({"id": "100", "ok": True}, b"")],
        )
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_stringLengthInCodePoints(self) -> None:
        """
        A string id's length is counted in code points, not UTF-8 bytes or
        UTF-16 units: 128 of U+1F600 (512 bytes, a surrogate pair escape each)
        is a good id, 129 are not.
        """
        for rid in ("\u00e9" * 128, "\U0001f600" * 128):
            proto, transport, _ = self.connect()
            proto.dataReceived(request("ping", rid))
            self.assertEqual(self.replies(transport), [({"id": rid, "ok": True}, b"")])
        proto, transport, _ = self.connect()
        escaped = b'"' + b"\\ud83d\\ude00" * 128 + b'"'
        proto.dataReceived(frame(b'{"op":"ping","id":' + escaped + b"}") + frame(b""))
        self.assertEqual(self.replies(transport), [({"id": "\U0001f600" * 128, "ok": True}, b"")])
        proto, transport, _ = self.connect()
        proto.dataReceived(request("ping", "\U0001f600" * 129))
        [(header, _)] = self.replies(transport)
        self.assertEqual((header["id"], header["error"]["code"]), (None, "bad_request"))

    def test_numbersWithFractionOrExponentRefused(self) -> None:
        """
        A JSON number written with a fraction or an exponent is not an
        integer id, even when its value is whole (C{1.0}, C{1e2}, C{1E0}).
        """
        for literal in (b"1.0", b"1e2", b"1E0", b"-0.0", b"1e400"):
            proto, transport, _ = self.connect()
            proto.dataReceived(frame(b'{"op":"ping","id":' + literal + b"}") + frame(b""))
            [(header, _)] = self.replies(transport)
            self.assertEqual(
                (header["id"], header["error"]["code"]), (None, "bad_request"), literal
            )
            self.assertTrue(transport.disconnecting)

    def test_thousandsOfDigitsIsBadRequest(self) -> None:
        """
        An integer id of 5,000 digits (beyond the 4,300 digits Python's
        C{int()} converts) is a bad id like any other out-of-range integer:
        C{bad_request} with the usual message, not C{bad_header}.
        """
        for digits in (b"1" * 5000, b"-" + b"9" * 5000, b"1" * 60000):
            proto, transport, _ = self.connect()
            proto.dataReceived(frame(b'{"op":"ping","id":' + digits + b"}") + frame(b""))
            self.assertEqual(
                transport.value(),
                frame(
                    b'{"id":null,"ok":false,"error":{"code":"bad_request","message":'
                    b"\"request 'id' must be an integer 0..2**53-1 or a string of 1..128 "
                    b'characters"},"closing":true}'
                )
                + frame(b""),
            )


class _NoDelayTransport(StringTransport):
    """
    A transport that records C{setTcpNoDelay}, as TCP transports have it.
    """

    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


class NoDelayTests(SynchronousTestCase):
    """
    Nagle's algorithm is off on every connection, both sides.
    """

    def test_server(self) -> None:
        """
        A server connection turns Nagle off as it is made.
        """
        protocol = FramesServerFactory().buildProtocol(None)
        transport = _NoDelayTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.noDelay)

    def test_client(self) -> None:
        """
        A client connection turns Nagle off as it is made.
        """
        from twisted_frames.client import ClientProtocol

        protocol = ClientProtocol()
        transport = _NoDelayTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.noDelay)

    def test_transportWithout(self) -> None:
        """
        A transport without the option (a UNIX socket, TLS wrapper, test
        fake) is fine.
        """
        protocol = FramesServerFactory().buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertTrue(protocol.connected)


class InFlightLimitTests(SynchronousTestCase):
    """
    A connection may have at most C{factory.maxInFlight} requests in flight.
    """

    def test_overLimitCloses(self) -> None:
        """
        One request more than the limit, while the others are unanswered,
        gets one C{busy} error with C{closing} and the connection closes;
        requests up to the limit are accepted.
        """
        waiting: list[defer.Deferred[dict[str, Any]]] = []

        class Slow(Service):
            @operation("slow")
            def slow(self, request: Request) -> defer.Deferred[dict[str, Any]]:
                d: defer.Deferred[dict[str, Any]] = defer.Deferred()
                waiting.append(d)
                return d

        factory = FramesServerFactory([Slow()])
        factory.maxInFlight = 3
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        transport.clear()
        protocol.dataReceived(
            b"".join(wire.encodeMessage({"op": "slow", "id": i}) for i in range(3))
        )
        self.assertEqual((len(waiting), transport.value()), (3, b""))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(wire.encodeMessage({"op": "slow", "id": 3}))
        [(header, body)] = parseMessages(transport.value())
        self.assertEqual(header["error"]["code"], "busy")
        self.assertEqual((header["id"], header["closing"]), (3, True))
        self.assertTrue(transport.disconnecting)

    def test_answeredRequestsFreeTheirPlace(self) -> None:
        """
        Answered requests no longer count: sequential requests never hit the
        limit.
        """
        factory = FramesServerFactory()
        factory.maxInFlight = 1
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        transport.clear()
        protocol.dataReceived(
            b"".join(wire.encodeMessage({"op": "ping", "id": i}, b"x") for i in range(5))
        )
        replies = parseMessages(transport.value())
        self.assertEqual([h["ok"] for h, _ in replies], [True] * 5)
        self.assertFalse(transport.disconnecting)


class SendPressureTests(SynchronousTestCase):
    """
    While the transport cannot take more (the peer is not reading its
    replies), the server stops handling what the peer sends, and stops
    reading the socket once L{FrameProtocol.sendHoldLimit} bytes wait.
    """

    def setUp(self) -> None:
        self.protocol = FramesServerFactory().buildProtocol(None)
        self.protocol.sendHoldLimit = 100
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.transport.clear()

    def test_heldWhileFull(self) -> None:
        """
        Requests that arrive while the write buffer is full wait, unread,
        and are answered in order once it drains.
        """
        producer = self.transport.producer
        producer.pauseProducing()
        self.protocol.dataReceived(wire.encodeMessage({"op": "ping", "id": 1}, b"a"))
        self.protocol.dataReceived(wire.encodeMessage({"op": "ping", "id": 2}, b"b"))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.transport.producerState, "producing")
        producer.resumeProducing()
        self.assertEqual(
            [(h["id"], b) for h, b in parseMessages(self.transport.value())],
            [(1, b"a"), (2, b"b")],
        )

    def test_socketPausedOverLimit(self) -> None:
        """
        Past the hold limit the socket's reading is paused too, and resumed
        with everything delivered once the buffer drains.
        """
        producer = self.transport.producer
        producer.pauseProducing()
        requests = b"".join(
            wire.encodeMessage({"op": "ping", "id": i}, b"x" * 40) for i in range(5)
        )
        self.protocol.dataReceived(requests)
        self.assertEqual(self.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(
            [h["id"] for h, _ in parseMessages(self.transport.value())], list(range(5))
        )

    def test_loseConnectionUnregisters(self) -> None:
        """
        L{FrameProtocol.loseConnection} unregisters the connection's
        producer first (a TLS transport waits for that before closing).
        """
        self.assertIsNotNone(self.transport.producer)
        self.protocol.loseConnection()
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.disconnecting)


class RequestLogTests(ServerTestMixin, SynchronousTestCase):
    """
    The one log line per request.
    """

    def test_controlCharactersEscaped(self) -> None:
        """
        The client's op name and string id are logged with control
        characters escaped (and a backslash doubled), so that a request
        cannot forge a log line or rewrite the terminal showing the log.
        """
        from twisted.logger import capturedLogs, formatEvent

        self.makeFactory()
        proto, transport, _ = self.connect()
        with capturedLogs() as events:
            proto.dataReceived(request("fake\nline\\", "id\r\x1b[2J"))
        [reply] = [h for h, _ in self.replies(transport)]
        self.assertEqual(reply["error"]["code"], ErrorCode.UNKNOWN_OP)
        lines = [line for line in map(formatEvent, events) if " op=" in line]
        [line] = lines
        self.assertIn(r"op=fake\nline\\ id=id\r\x1b[2J ", line)
        self.assertNotIn("\n", line)
        self.assertNotIn("\x1b", line)
