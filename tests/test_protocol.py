"""
Tests for L{twisted_frames.protocol}: frames to messages and back.

As in Twisted's C{twisted/protocols/test/test_basic.py}, the framing cases live
in a mixin and run with every way of splitting the stream into reads: all of
it in one C{dataReceived}, one byte at a time, and in odd-sized chunks.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.protocol import (
    BodyOverrun,
    BodySink,
    BufferSink,
    FrameProtocol,
    Pipe,
)
from twisted_frames.sending import SendPressure
from twisted_frames.wire import ErrorCode, Limits

Message = tuple[dict[str, Any], bytes]

fast = settings(max_examples=40, deadline=None, database=None)


def parseFrames(data: bytes) -> tuple[list[bytes], bytes]:
    """
    Split C{data} into complete frames.

    @return: the frames, and the bytes of an incomplete last frame.
    """
    frames = []
    pos = 0
    while len(data) - pos >= 4:
        (length,) = wire.PREFIX.unpack_from(data, pos)
        if len(data) - pos - 4 < length:
            break
        frames.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames, data[pos:]


def parseMessages(data: bytes) -> list[Message]:
    """
    Parse what a protocol wrote into C{(header, body)} messages.

    @raise AssertionError: if C{data} is not a whole number of messages.
    """
    frames, rest = parseFrames(data)
    if rest or len(frames) % 2:
        raise AssertionError(f"not whole messages: {len(frames)} frames, {len(rest)} extra bytes")
    return [(wire.decodeHeader(frames[i]), frames[i + 1]) for i in range(0, len(frames), 2)]


def encodeAll(messages: Iterable[Message]) -> bytes:
    """
    The wire bytes of several messages, back to back.
    """
    return b"".join(wire.encodeMessage(h, b) for h, b in messages)


class RecordingSink(BodySink):
    """
    A sink that records every hook call.
    """

    def __init__(self) -> None:
        self.length: int | None = None
        self.producer: IPushProducer | None = None
        self.chunks: list[bytes] = []
        self.finished = 0
        self.failures: list[Failure] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def bodyStarted(self, length: int, producer: IPushProducer) -> None:
        self.length = length
        self.producer = producer

    def bodyData(self, data: bytes) -> None:
        assert self.finished == 0, "data after bodyFinished"
        self.chunks.append(data)

    def bodyFinished(self) -> None:
        self.finished += 1

    def bodyFailed(self, reason: Failure) -> None:
        self.failures.append(reason)


class PausingSink(RecordingSink):
    """
    A sink whose destination is busy: it pauses the connection when it starts
    (optionally) and after every chunk of data, until L{resume} is called.
    """

    def __init__(self, pauseOnStart: bool = True, pauseOnData: bool = True) -> None:
        super().__init__()
        self.pauseOnStart = pauseOnStart
        self.pauseOnData = pauseOnData
        self.paused = False

    def pause(self) -> None:
        assert self.producer is not None
        self.paused = True
        self.producer.pauseProducing()

    def resume(self) -> None:
        assert self.producer is not None
        self.paused = False
        self.producer.resumeProducing()

    def bodyStarted(self, length: int, producer: IPushProducer) -> None:
        super().bodyStarted(length, producer)
        if self.pauseOnStart:
            self.pause()

    def bodyData(self, data: bytes) -> None:
        super().bodyData(data)
        if self.pauseOnData:
            self.pause()


SinkFactory = Callable[[dict[str, Any], int], BodySink | None]


class RecordingProtocol(FrameProtocol):
    """
    A L{FrameProtocol} that records whole messages, and streams a body to
    the sink C{sinkFactory} returns, if it returns one.
    """

    limits = Limits(maxHeader=1024, maxBody=1 << 20, bufferThreshold=4096)

    def __init__(self, sinkFactory: SinkFactory | None = None) -> None:
        super().__init__()
        self.sinkFactory = sinkFactory
        self.messages: list[Message] = []
        self.sinks: list[BodySink] = []

    def messageStarted(self, header: dict[str, Any], bodyLength: int) -> BodySink:
        if self.sinkFactory is not None:
            sink = self.sinkFactory(header, bodyLength)
            if sink is not None:
                self.sinks.append(sink)
                return sink
        return super().messageStarted(header, bodyLength)

    def messageReceived(self, header: dict[str, Any], body: bytes) -> None:
        self.messages.append((header, body))


def connect(
    proto: FrameProtocol | None = None, transport: StringTransport | None = None
) -> tuple[Any, StringTransport, Clock]:
    """
    Connect a protocol (by default a L{RecordingProtocol}) to a
    L{StringTransport}, with a L{Clock} for its timers.
    """
    if proto is None:
        proto = RecordingProtocol()
    if transport is None:
        transport = StringTransport()
    clock = Clock()
    proto.clock = clock
    proto.makeConnection(transport)
    return proto, transport, clock


def streamSinks(header: dict[str, Any], length: int) -> BodySink | None:
    """
    Stream the bodies of messages whose header says C{"stream": true}.
    """
    return RecordingSink() if header.get("stream") else None


class ManualSource:
    """
    A body source the test drives by hand through C{consumer}.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.consumer: Any = None
        self.done: defer.Deferred[None] = defer.Deferred()
        self.paused = False
        self.stopped = False

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        self.consumer = consumer
        return self.done

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class BytesSource(ManualSource):
    """
    A source that writes C{data} at once, and claims C{length} bytes (by
    default C{len(data)}, but it may lie).
    """

    def __init__(self, data: bytes, length: int | None = None) -> None:
        super().__init__(len(data) if length is None else length)
        self.data = data

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)


SAMPLE: list[Message] = [
    ({"op": "ping", "id": 1}, b""),
    ({}, b"body"),
    ({"u": "é\u2603\U0001f600", "n": None, "l": [1, 2.5, {"x": True}]}, bytes(range(256))),
    ({"id": "s"}, b"\x00\x00\x00\x00"),
    ({"big": "x" * 900}, b"y" * 4096),
]


class FramingTestsMixin:
    """
    Framing properties that must hold however the stream is split into reads.
    Subclasses define L{deliver}.
    """

    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]

    def deliver(self, proto: FrameProtocol, data: bytes) -> None:
        raise NotImplementedError

    def assertViolation(
        self, transport: StringTransport, code: str, requestId: Any = None
    ) -> None:
        [(header, body)] = parseMessages(transport.value())
        self.assertEqual(header["error"]["code"], code)
        self.assertEqual(
            header,
            {
                "id": requestId,
                "ok": False,
                "error": {"code": code, "message": header["error"]["message"]},
                "closing": True,
            },
        )
        self.assertEqual(body, b"")
        self.assertTrue(transport.disconnecting)

    def test_messages(self) -> None:
        """
        Messages arrive whole and in order, with empty and binary bodies.
        """
        proto, transport, _ = connect()
        self.deliver(proto, encodeAll(SAMPLE))
        self.assertEqual(proto.messages, SAMPLE)
        self.assertEqual(proto.bytesReceived, len(encodeAll(SAMPLE)))
        self.assertFalse(transport.disconnecting)

    def test_streamedBody(self) -> None:
        """
        A body the protocol streams reaches its sink in order and complete,
        between the messages before and after it.
        """
        proto, _, _ = connect(RecordingProtocol(streamSinks))
        body = bytes(range(256)) * 40
        messages = [SAMPLE[1], ({"stream": True}, body), SAMPLE[2]]
        self.deliver(proto, encodeAll(messages))
        [sink] = proto.sinks
        self.assertEqual((sink.length, sink.data, sink.finished), (len(body), body, 1))
        self.assertEqual(proto.messages, [SAMPLE[1], SAMPLE[2]])

    def test_emptyStreamedBody(self) -> None:
        """
        An empty streamed body starts and finishes its sink with no data.
        """
        proto, _, _ = connect(RecordingProtocol(streamSinks))
        self.deliver(proto, encodeAll([({"stream": True}, b""), SAMPLE[1]]))
        [sink] = proto.sinks
        self.assertEqual((sink.length, sink.data, sink.finished), (0, b"", 1))
        self.assertEqual(proto.messages, [SAMPLE[1]])

    def test_headerAtLimit(self) -> None:
        """
        A header of exactly C{maxHeader} bytes is accepted.
        """
        proto, _, _ = connect()
        base = len(wire.encodeHeader({"p": ""}))
        header = {"p": "x" * (proto.limits.maxHeader - base)}
        self.assertEqual(len(wire.encodeHeader(header)), proto.limits.maxHeader)
        self.deliver(proto, wire.encodeMessage(header, b"b"))
        self.assertEqual(proto.messages, [(header, b"b")])

    def test_zeroLengthHeader(self) -> None:
        """
        An empty header frame is not a JSON object: C{bad_header}, after the
        messages before it were delivered, and nothing after it is read.
        """
        proto, transport, _ = connect()
        data = wire.encodeMessage(*SAMPLE[0]) + b"\x00\x00\x00\x00"
        self.deliver(proto, data + b"\x00\x00\x00\x00" + wire.encodeMessage(*SAMPLE[1]))
        self.assertEqual(proto.messages, [SAMPLE[0]])
        self.assertViolation(transport, "bad_header")

    def test_badHeaders(self) -> None:
        """
        A header frame that is not a UTF-8 JSON object is C{bad_header} with
        a null id, and the rest of the stream is ignored.
        """
        for bad in (b"\xff", b"{", b"[1]", b'"op"', b'{"a":NaN}'):
            proto, transport, _ = connect()
            self.deliver(proto, wire.encodeFrame(bad) + wire.encodeMessage(*SAMPLE[1]))
            self.assertEqual(proto.messages, [])
            self.assertViolation(transport, "bad_header")

    def test_headerTooLarge(self) -> None:
        """
        A header prefix over C{maxHeader} is refused with
        C{header_too_large} from its 4 prefix bytes alone.
        """
        proto, transport, _ = connect()
        self.deliver(proto, wire.encodePrefix(proto.limits.maxHeader + 1))
        self.assertViolation(transport, "header_too_large")

    def test_bodyTooLarge(self) -> None:
        """
        A body prefix over C{maxBody} is refused with C{body_too_large} from
        the prefix alone, echoing the header's id.
        """
        proto, transport, _ = connect()
        header = wire.encodeFrame(wire.encodeHeader({"op": "x", "id": 5}))
        self.deliver(proto, header + wire.encodePrefix(proto.limits.maxBody + 1))
        self.assertViolation(transport, "body_too_large", 5)

    def test_bodyOverBufferThreshold(self) -> None:
        """
        By default a body over the in-memory threshold is C{body_too_large}:
        nothing would stream it.
        """
        proto, transport, _ = connect()
        header = wire.encodeFrame(wire.encodeHeader({"id": "a"}))
        self.deliver(proto, header + wire.encodePrefix(proto.limits.bufferThreshold + 1))
        self.assertViolation(transport, "body_too_large", "a")

    def test_invalidIdNotEchoed(self) -> None:
        """
        An id that is not a valid request id is sent back as null.
        """
        proto, transport, _ = connect()
        header = wire.encodeFrame(wire.encodeHeader({"id": [1]}))
        self.deliver(proto, header + wire.encodePrefix(proto.limits.maxBody + 1))
        self.assertViolation(transport, "body_too_large", None)


class WholeReadTests(FramingTestsMixin, SynchronousTestCase):
    """
    The framing cases with the whole stream coalesced in one read.
    """

    def deliver(self, proto: FrameProtocol, data: bytes) -> None:
        proto.dataReceived(data)


class ByteAtATimeTests(FramingTestsMixin, SynchronousTestCase):
    """
    The framing cases with the stream fed one byte at a time.
    """

    def deliver(self, proto: FrameProtocol, data: bytes) -> None:
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])


class OddChunkTests(FramingTestsMixin, SynchronousTestCase):
    """
    The framing cases with the stream fed in 7-byte reads, so that frame
    boundaries fall at every offset within a read.
    """

    def deliver(self, proto: FrameProtocol, data: bytes) -> None:
        for i in range(0, len(data), 7):
            proto.dataReceived(data[i : i + 7])


class WholeMessageStepTests(SynchronousTestCase):
    """
    A message entirely in one read is taken in one step, both of its
    prefixes read there; what is split across reads, or meets a pause
    between its header and its body, goes the step-by-step way.
    """

    def countPrefixSteps(self) -> list[int]:
        calls: list[int] = []
        step = FrameProtocol._consumePrefix

        def counting(proto: FrameProtocol, *args: Any) -> int:
            calls.append(args[0])
            return step(proto, *args)

        self.patch(FrameProtocol, "_consumePrefix", counting)
        return calls

    def test_wholeMessages(self) -> None:
        """
        Whole messages, several in one read, need no prefix step.
        """
        calls = self.countPrefixSteps()
        proto, _, _ = connect()
        proto.dataReceived(encodeAll([({"id": 1}, b"abc"), ({"id": 2}, b""), ({"id": 3}, b"d")]))
        self.assertEqual(
            proto.messages, [({"id": 1}, b"abc"), ({"id": 2}, b""), ({"id": 3}, b"d")]
        )
        self.assertEqual(calls, [])

    def test_splitMessage(self) -> None:
        """
        A message whose body is not all in the read is taken step by step.
        """
        calls = self.countPrefixSteps()
        proto, _, _ = connect()
        data = wire.encodeMessage({"id": 1}, b"abcdef")
        proto.dataReceived(data[:-2])
        proto.dataReceived(data[-2:])
        self.assertEqual(proto.messages, [({"id": 1}, b"abcdef")])
        self.assertNotEqual(calls, [])

    def test_pauseAfterHeader(self) -> None:
        """
        Reading paused while the header is handled (by an override of
        C{stringReceived}) holds the body back until it resumes.
        """

        class Pausing(RecordingProtocol):
            def stringReceived(self, string: bytes) -> None:
                super().stringReceived(string)
                self.pauseReceiving()

        proto, _, _ = connect(Pausing())
        proto.dataReceived(wire.encodeMessage({"id": 1}, b"abc"))
        self.assertEqual(proto.messages, [])
        proto.resumeReceiving()
        self.assertEqual(proto.messages, [({"id": 1}, b"abc")])

    def test_headerParsedInPlace(self) -> None:
        """
        The header of a whole message in one read is parsed in place, not
        through C{stringReceived}, when the class does not override it;
        a header split across reads still goes through it.
        """
        proto, _, _ = connect()
        headers: list[bytes] = []

        def stringReceived(string: bytes) -> None:
            headers.append(string)
            FrameProtocol.stringReceived(proto, string)

        # On the instance: the class's own method stays the stock one.
        proto.stringReceived = stringReceived  # type: ignore[method-assign]
        proto.dataReceived(encodeAll([({"id": 1}, b"abc"), ({"id": 2}, b"")]))
        self.assertEqual(headers, [])
        data = wire.encodeMessage({"id": 3}, b"d")
        proto.dataReceived(data[:6])
        proto.dataReceived(data[6:])
        self.assertEqual(headers, [b'{"id":3}'])
        self.assertEqual(
            proto.messages, [({"id": 1}, b"abc"), ({"id": 2}, b""), ({"id": 3}, b"d")]
        )

    def test_overriddenStringReceived(self) -> None:
        """
        A subclass that overrides C{stringReceived} gets every header frame
        through it, whole messages in one read included, in a memoryview's
        read as in a bytes one.
        """

        class Seeing(RecordingProtocol):
            def stringReceived(self, string: bytes) -> None:
                seen.append(string)
                super().stringReceived(string)

        seen: list[bytes] = []
        proto, _, _ = connect(Seeing())
        data = encodeAll([({"id": 1}, b"abc"), ({"id": 2}, b"")])
        proto.dataReceived(data)
        proto.pauseReceiving()
        proto.dataReceived(data)
        proto.resumeReceiving()
        self.assertEqual(seen, [b'{"id":1}', b'{"id":2}'] * 2)
        self.assertEqual(proto.messages, [({"id": 1}, b"abc"), ({"id": 2}, b"")] * 2)
        self.assertTrue(FrameProtocol._parsesHeaders)
        self.assertTrue(RecordingProtocol._parsesHeaders)
        self.assertFalse(Seeing._parsesHeaders)

    def test_badHeaderInPlace(self) -> None:
        """
        A header parsed in place that is not JSON is a C{bad_header}
        violation, as through C{stringReceived}.
        """
        proto, transport, _ = connect()
        bad = b"{nope"
        proto.dataReceived(wire.PREFIX.pack(len(bad)) + bad + wire.PREFIX.pack(0))
        self.assertEqual(proto.messages, [])
        frames, _ = parseFrames(transport.value())
        self.assertEqual(wire.decodeHeader(frames[0])["error"]["code"], ErrorCode.BAD_HEADER)


class RandomSplitTests(SynchronousTestCase):
    """
    Any split of a stream into reads gives the same messages.
    """

    stream = [SAMPLE[0], ({"stream": True}, b"0123456789" * 30), SAMPLE[1], SAMPLE[2]]

    @staticmethod
    def split(data: bytes, cuts: list[int]) -> list[bytes]:
        points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        return [data[a:b] for a, b in zip(points, points[1:], strict=False)]

    @fast
    @given(st.lists(st.integers(min_value=0), max_size=30))
    def test_randomSplits(self, cuts: list[int]) -> None:
        """
        Whatever the read boundaries, buffered and streamed bodies arrive
        exactly as in a single read.
        """
        proto, _, _ = connect(RecordingProtocol(streamSinks))
        for chunk in self.split(encodeAll(self.stream), cuts):
            proto.dataReceived(chunk)
        [sink] = proto.sinks
        self.assertEqual(sink.data, self.stream[1][1])
        self.assertEqual(sink.finished, 1)
        self.assertEqual(proto.messages, [self.stream[0], *self.stream[2:]])

    @fast
    @given(st.lists(st.integers(min_value=0), max_size=30))
    def test_randomSplitsWithPauses(self, cuts: list[int]) -> None:
        """
        With a sink that pauses the connection after every chunk and is
        resumed only between reads, any split still delivers every byte
        once and in order.
        """
        sinks: list[PausingSink] = []

        def factory(header: dict[str, Any], length: int) -> BodySink | None:
            if header.get("stream"):
                sinks.append(PausingSink())
                return sinks[-1]
            return None

        proto, transport, _ = connect(RecordingProtocol(factory))

        def settle() -> None:
            while any(s.paused for s in sinks):
                for s in sinks:
                    if s.paused:
                        s.resume()

        for chunk in self.split(encodeAll(self.stream), cuts):
            proto.dataReceived(chunk)
            settle()
        self.assertEqual(sinks[0].data, self.stream[1][1])
        self.assertEqual(sinks[0].finished, 1)
        self.assertEqual(proto.messages, [self.stream[0], *self.stream[2:]])
        self.assertEqual(transport.producerState, "producing")


class HeaderPrefixTests(SynchronousTestCase):
    """
    The header limit is enforced before any of the header is buffered.
    """

    def test_violationOnFourthByte(self) -> None:
        """
        Three bytes of an oversized prefix do nothing; the fourth triggers
        C{header_too_large} at once, with no header byte sent.
        """
        proto, transport, _ = connect()
        prefix = wire.encodePrefix(proto.limits.maxHeader + 1)
        for byte in prefix[:3]:
            proto.dataReceived(bytes([byte]))
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(prefix[3:])
        [(header, _)] = parseMessages(transport.value())
        self.assertEqual(header["error"]["code"], "header_too_large")
        self.assertTrue(transport.disconnecting)

    def test_maxLengthIsHeaderLimit(self) -> None:
        """
        C{MAX_LENGTH}, as in C{IntNStringReceiver}, is the header limit.
        """
        proto = RecordingProtocol()
        self.assertEqual(proto.MAX_LENGTH, proto.limits.maxHeader)
        proto.limits = Limits(maxHeader=10)
        self.assertEqual(proto.MAX_LENGTH, 10)

    def test_hugePrefix(self) -> None:
        """
        The largest possible prefix is refused just the same.
        """
        proto, transport, _ = connect()
        proto.dataReceived(b"\xff\xff\xff\xff")
        [(header, _)] = parseMessages(transport.value())
        self.assertEqual(header["error"]["code"], "header_too_large")


class LinearReceiveTests(SynchronousTestCase):
    """
    Receiving is linear: a large frame fed in many reads is not re-copied
    as it accumulates (Twisted ticket #6358).  Checked structurally, not by
    timing.
    """

    def test_streamedChunksNotCopied(self) -> None:
        """
        Each read that is all body reaches the sink as the very same bytes
        object: nothing is accumulated or re-joined.
        """
        proto, _, _ = connect(RecordingProtocol(streamSinks))
        chunks = [bytes([i]) * 1000 for i in range(200)]
        proto.dataReceived(
            wire.encodeFrame(wire.encodeHeader({"stream": True}))
            + wire.encodePrefix(sum(map(len, chunks)))
        )
        for chunk in chunks:
            proto.dataReceived(chunk)
        [sink] = proto.sinks
        self.assertEqual(len(sink.chunks), len(chunks))
        for received, sent in zip(sink.chunks, chunks, strict=True):
            self.assertIs(received, sent)
        self.assertEqual(sink.finished, 1)

    def test_heldBytesNotCopied(self) -> None:
        """
        When a sink pauses in the middle of a large read, the rest of the read
        is held as a view of it, not a copy: a sink pausing at every message
        of one read does not re-copy the read's remainder each time.
        """
        sinks: list[PausingSink] = []

        def factory(header: dict[str, Any], length: int) -> BodySink:
            sinks.append(PausingSink(pauseOnData=False))
            return sinks[-1]

        proto, _, _ = connect(RecordingProtocol(factory))
        messages = [({"n": i}, bytes([i]) * 10) for i in range(50)]
        data = encodeAll(messages)
        proto.dataReceived(data)
        for sink in sinks:
            # Private state, inspected on purpose: what is held while paused.
            [held] = proto._unread
            self.assertIsInstance(held, memoryview)
            self.assertIs(held.obj, data)
            sink.resume()
        self.assertEqual([s.data for s in sinks], [body for _, body in messages])
        self.assertEqual(len(proto._unread), 0)

    def test_bufferedChunksKeptUntilEnd(self) -> None:
        """
        An in-memory body fed in many reads is joined once, at the end: its
        sink never hands over a partial body.
        """
        proto, _, _ = connect()
        body = b"z" * 4000
        data = wire.encodeMessage({}, body)
        for i in range(0, len(data), 10):
            proto.dataReceived(data[i : i + 10])
            if i + 10 < len(data):
                self.assertEqual(proto.messages, [])
        self.assertEqual(proto.messages, [({}, body)])


class BackpressureTests(SynchronousTestCase):
    """
    A sink may pause the connection's reading; bytes that arrive meanwhile
    are held and delivered, in order, on resume.
    """

    def setUp(self) -> None:
        self.sinks: list[PausingSink] = []

        def factory(header: dict[str, Any], length: int) -> BodySink | None:
            if "sink" in header:
                sink = PausingSink(**header["sink"])
                self.sinks.append(sink)
                return sink
            return None

        self.proto, self.transport, _ = connect(RecordingProtocol(factory))

    def test_pauseOnStart(self) -> None:
        """
        A sink that pauses as its body starts pauses the transport; the body
        and the next message are held until it resumes.
        """
        body = b"abcdefghij" * 10
        self.proto.dataReceived(encodeAll([({"sink": {"pauseOnData": False}}, body), SAMPLE[1]]))
        [sink] = self.sinks
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual((sink.chunks, self.proto.messages), ([], []))
        sink.resume()
        self.assertEqual((sink.data, sink.finished), (body, 1))
        self.assertEqual(self.proto.messages, [SAMPLE[1]])
        self.assertEqual(self.transport.producerState, "producing")

    def test_bytesAfterPauseHeld(self) -> None:
        """
        Bytes arriving after the sink paused (in the same read or later
        reads) are held, then delivered in order after each resume.
        """
        body = bytes(range(200))
        data = encodeAll([({"sink": {"pauseOnStart": False}}, body), SAMPLE[1]])
        split = len(data) - len(wire.encodeMessage(*SAMPLE[1])) - 150
        self.proto.dataReceived(data[:split])
        [sink] = self.sinks
        self.assertEqual(sink.data, body[:50])
        self.assertEqual(self.transport.producerState, "paused")
        for i in range(split, len(data), 30):
            self.proto.dataReceived(data[i : i + 30])
        self.assertEqual(sink.data, body[:50])
        delivered = []
        while sink.paused:
            sink.resume()
            delivered.append(len(sink.data))
        # One held read per resume (the sink pauses after each chunk).
        self.assertEqual(delivered[:5], [80, 110, 140, 170, 200])
        self.assertEqual(sink.data, body)
        self.assertEqual(sink.finished, 1)
        self.assertEqual(self.proto.messages, [SAMPLE[1]])
        self.assertEqual(self.transport.producerState, "producing")

    def test_finishedSinkReleasesPause(self) -> None:
        """
        A sink still paused when its body is complete cannot leave the
        connection paused for ever: the next message is read.
        """
        self.proto.dataReceived(
            encodeAll([({"sink": {"pauseOnStart": False}}, b"last"), SAMPLE[1]])
        )
        [sink] = self.sinks
        self.assertTrue(sink.paused)
        self.assertEqual(sink.finished, 1)
        self.assertEqual(self.proto.messages, [SAMPLE[1]])
        self.assertEqual(self.transport.producerState, "producing")

    def test_pausesNest(self) -> None:
        """
        Pauses by the application and by a sink nest: reading resumes only
        when both have resumed.
        """
        self.proto.pauseReceiving()
        self.assertEqual(self.transport.producerState, "paused")
        self.proto.dataReceived(encodeAll([({"sink": {}}, b"data"), SAMPLE[1]]))
        self.assertEqual(self.sinks, [])
        self.proto.resumeReceiving()
        [sink] = self.sinks
        self.assertTrue(sink.paused)
        self.proto.pauseReceiving()
        sink.resume()
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(sink.chunks, [])
        self.proto.resumeReceiving()
        self.assertEqual(sink.data, b"data")
        self.assertEqual(self.proto.messages, [SAMPLE[1]])
        self.assertEqual(self.transport.producerState, "producing")

    def test_unpairedResumeIgnored(self) -> None:
        """
        Resuming when not paused does nothing (and does not let a later pause
        go unnoticed).
        """
        self.proto.resumeReceiving()
        self.proto.pauseReceiving()
        self.assertEqual(self.transport.producerState, "paused")
        self.proto.resumeReceiving()
        self.assertEqual(self.transport.producerState, "producing")

    def test_sinkStopAborts(self) -> None:
        """
        A sink that stops its producer aborts the connection.
        """
        self.proto.dataReceived(wire.encodeMessage({"sink": {"pauseOnStart": False}}, b"ab")[:-1])
        [sink] = self.sinks
        assert sink.producer is not None
        sink.producer.stopProducing()
        self.assertTrue(self.transport.disconnected)

    def test_unreadDroppedOnLoss(self) -> None:
        """
        Bytes held while paused are dropped when the connection is lost,
        and the sink is told its body failed.
        """
        self.proto.dataReceived(encodeAll([({"sink": {}}, b"data"), SAMPLE[1]]))
        [sink] = self.sinks
        self.proto.connectionLost(Failure(ConnectionDone()))
        sink.resume()
        self.assertEqual((sink.chunks, self.proto.messages), ([], []))
        self.assertEqual(len(sink.failures), 1)


class PipeProtocol(RecordingProtocol):
    """
    Echoes the body of each message whose header has C{"pipe"} through a
    L{Pipe}, and sends C{"slow"} messages' bodies from a L{ManualSource}.
    """

    def __init__(self) -> None:
        super().__init__(self.sinkFor)
        self.sent: list[defer.Deferred[None]] = []
        self.sources: list[ManualSource] = []

    def sinkFor(self, header: dict[str, Any], length: int) -> BodySink | None:
        if "pipe" in header:
            pipe = Pipe(length)
            self.sent.append(self.sendStreamedMessage({"echo": header["pipe"]}, pipe))
            return pipe
        return None


class PipeTests(SynchronousTestCase):
    """
    L{Pipe} sends on what it receives, and couples the two directions'
    backpressure.
    """

    def setUp(self) -> None:
        self.proto, self.transport, _ = connect(PipeProtocol())

    def test_echo(self) -> None:
        """
        A body piped back arrives intact, in a frame of the right length.
        """
        body = bytes(range(256)) * 100
        data = wire.encodeMessage({"pipe": 1}, body)
        for i in range(0, len(data), 1000):
            self.proto.dataReceived(data[i : i + 1000])
        self.assertEqual(parseMessages(self.transport.value()), [({"echo": 1}, body)])
        self.successResultOf(self.proto.sent[0])
        self.assertIsNone(self.proto._activeSource)

    def test_sendPausedPausesReceiving(self) -> None:
        """
        When the transport pauses the pipe (the peer is not reading), the
        pipe pauses reading; resuming it sends what was held and reads on.
        """
        body = b"0123456789" * 30
        data = encodeAll([({"pipe": 1}, body), ({}, b"after")])
        head = len(data) - len(body) - len(wire.encodeMessage({}, b"after"))
        self.proto.dataReceived(data[: head + 100])
        assert self.proto._activeSource is not None
        self.assertIsInstance(self.proto._activeSource[0], Pipe)
        # The transport pauses the connection's producer, which pauses the
        # pipe being sent.
        pipe = self.transport.producer
        pipe.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.proto.dataReceived(data[head + 100 :])
        frames, partial = parseFrames(self.transport.value())
        self.assertEqual(partial, wire.encodePrefix(len(body)) + body[:100])
        self.assertEqual(self.proto.messages, [])
        pipe.resumeProducing()
        self.assertEqual(parseMessages(self.transport.value()), [({"echo": 1}, body)])
        self.assertEqual(self.proto.messages, [({}, b"after")])
        self.assertEqual(self.transport.producerState, "producing")

    def test_waitsForItsTurn(self) -> None:
        """
        A pipe whose reply is queued behind another streamed message holds
        reading paused until its turn comes, then echoes everything.
        """
        source = ManualSource(3)
        first = self.proto.sendStreamedMessage({"first": True}, source)
        body = b"q" * 500
        self.proto.dataReceived(wire.encodeMessage({"pipe": 2}, body))
        self.assertEqual(self.transport.producerState, "paused")
        source.consumer.write(b"abc")
        source.done.callback(None)
        self.successResultOf(first)
        self.assertEqual(
            parseMessages(self.transport.value()), [({"first": True}, b"abc"), ({"echo": 2}, body)]
        )
        self.successResultOf(self.proto.sent[0])
        self.assertEqual(self.transport.producerState, "producing")

    def test_lostBeforeItsTurn(self) -> None:
        """
        A pipe lost before its turn fails its send without leaving an
        unhandled error behind.
        """
        source = ManualSource(3)
        first = self.proto.sendStreamedMessage({"first": True}, source)
        self.proto.dataReceived(wire.encodeMessage({"pipe": 2}, b"q" * 500)[:-10])
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(first, ConnectionDone)
        self.failureResultOf(self.proto.sent[0], ConnectionDone)
        self.assertTrue(source.stopped)
        del self.proto.sinks[:]
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_lostMidEcho(self) -> None:
        """
        A pipe lost while echoing fails its send.
        """
        self.proto.dataReceived(wire.encodeMessage({"pipe": 2}, b"q" * 500)[:-10])
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(self.proto.sent[0], ConnectionDone)


class SendingTests(SynchronousTestCase):
    """
    Messages go out whole; a streamed body holds back what is sent after
    it, so frames never interleave.
    """

    def setUp(self) -> None:
        self.proto, self.transport, self.clock = connect()

    def test_sendMessage(self) -> None:
        """
        C{sendMessage} writes the two frames of the message, small or large.
        """
        self.proto.sendMessage({"a": 1}, b"xy")
        self.proto.sendMessage({"b": 2}, b"L" * 70000)
        self.proto.sendMessage({"c": 3})
        self.assertEqual(
            parseMessages(self.transport.value()),
            [({"a": 1}, b"xy"), ({"b": 2}, b"L" * 70000), ({"c": 3}, b"")],
        )
        self.assertEqual(self.proto.bytesSent, len(self.transport.value()))

    def test_queuedBehindStream(self) -> None:
        """
        Messages sent while a streamed body is in progress (small, large, or
        streamed themselves) are written after it, in the order sent.
        """
        source = ManualSource(6)
        first = self.proto.sendStreamedMessage({"n": 1}, source)
        # The transport's producer is the connection's for its whole life;
        # it passes pauses on to the source being sent.
        self.assertIsInstance(self.transport.producer, SendPressure)
        self.assertTrue(self.transport.streaming)
        assert self.proto._activeSource is not None
        self.assertIs(self.proto._activeSource[0], source)
        self.proto.sendMessage({"n": 2}, b"small")
        self.proto.sendMessage({"n": 3}, b"B" * 70000)
        last = self.proto.sendStreamedMessage({"n": 4}, BytesSource(b"streamed"))
        self.proto.sendMessage({"n": 5})
        source.consumer.write(b"abc")
        frames, partial = parseFrames(self.transport.value())
        self.assertEqual(frames, [b'{"n":1}'])
        self.assertEqual(partial, wire.encodePrefix(6) + b"abc")
        source.consumer.write(b"def")
        source.done.callback(None)
        self.assertEqual(
            parseMessages(self.transport.value()),
            [
                ({"n": 1}, b"abcdef"),
                ({"n": 2}, b"small"),
                ({"n": 3}, b"B" * 70000),
                ({"n": 4}, b"streamed"),
                ({"n": 5}, b""),
            ],
        )
        self.successResultOf(first)
        self.successResultOf(last)
        self.assertIsNone(self.proto._activeSource)
        self.assertEqual(self.proto.bytesSent, len(self.transport.value()))

    def test_sourceWritesTooMuch(self) -> None:
        """
        A source writing more than its length is refused with
        L{BodyOverrun}; the connection is aborted and the send fails.
        """
        d = self.proto.sendStreamedMessage({}, BytesSource(b"12345", length=4))
        self.proto.sendMessage({"after": True})
        self.failureResultOf(d, BodyOverrun)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(BodyOverrun)), 1)
        frames, partial = parseFrames(self.transport.value())
        self.assertEqual((frames, partial), ([b"{}"], wire.encodePrefix(4)))

    def test_sourceWritesTooLittle(self) -> None:
        """
        A source finishing short of its length corrupts the frame: the
        connection is aborted and the send fails with L{BodyOverrun}.
        """
        d = self.proto.sendStreamedMessage({}, BytesSource(b"123", length=4))
        self.failureResultOf(d, BodyOverrun)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(BodyOverrun)), 1)

    def test_overrunLaterWrite(self) -> None:
        """
        An overrun in a later write raises to the source; when the source
        then finishes, the connection is aborted.
        """
        source = ManualSource(4)
        d = self.proto.sendStreamedMessage({}, source)
        source.consumer.write(b"12")
        self.assertRaises(BodyOverrun, source.consumer.write, b"345")
        source.done.callback(None)
        self.failureResultOf(d, BodyOverrun)
        self.assertTrue(self.transport.disconnected)
        self.flushLoggedErrors(BodyOverrun)

    def test_sourceFails(self) -> None:
        """
        A source whose Deferred fails aborts the connection; the send fails
        with its error, which is logged; nothing queued is sent.
        """
        source = ManualSource(4)
        d = self.proto.sendStreamedMessage({}, source)
        self.proto.sendMessage({"after": True})
        source.done.errback(ValueError("disk on fire"))
        self.failureResultOf(d, ValueError)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertNotIn(b"after", self.transport.value())

    def test_sourceRaises(self) -> None:
        """
        A source raising from C{startProducing} is a failed send, as above.
        """

        class Raising(ManualSource):
            def startProducing(self, consumer: Any) -> defer.Deferred[None]:
                raise OSError("gone")

        d = self.proto.sendStreamedMessage({}, Raising(1))
        self.failureResultOf(d, OSError)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_lengthOutOfRange(self) -> None:
        """
        A source longer than a frame can say, or of negative length, is a
        C{ValueError} before anything is written.
        """
        self.assertRaises(ValueError, self.proto.sendStreamedMessage, {}, ManualSource(-1))
        self.assertRaises(
            ValueError, self.proto.sendStreamedMessage, {}, ManualSource(wire.MAX_FRAME + 1)
        )
        self.assertEqual(self.transport.value(), b"")

    def test_bodyTooLong(self) -> None:
        """
        A body over 4 GiB - 1 cannot be one message: C{ValueError}.
        """

        class Huge(bytes):
            def __len__(self) -> int:
                return wire.MAX_FRAME + 1

        self.assertRaises(ValueError, self.proto.sendMessage, {}, Huge())
        self.assertEqual(self.transport.value(), b"")

    def test_headerNotJSON(self) -> None:
        """
        A header that cannot be JSON is a C{ValueError}, and nothing is
        written.
        """
        self.assertRaises(ValueError, self.proto.sendMessage, {"x": {1, 2}})
        self.assertRaises(ValueError, self.proto.sendStreamedMessage, {"x": b""}, ManualSource(0))
        self.assertEqual(self.transport.value(), b"")

    def test_lostWhileStreaming(self) -> None:
        """
        Losing the connection stops the active source and fails it and every
        queued streamed send.
        """
        source = ManualSource(4)
        queued = ManualSource(4)
        d1 = self.proto.sendStreamedMessage({}, source)
        d2 = self.proto.sendStreamedMessage({}, queued)
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(source.stopped)
        self.failureResultOf(d1, ConnectionDone)
        self.failureResultOf(d2, ConnectionDone)
        self.assertIsNone(queued.consumer)

    def test_peerName(self) -> None:
        """
        The peer is named C{host:port} in logs.
        """
        self.assertEqual(self.proto.peerName(), "192.168.1.1:54321")


class ConnectionLostTests(SynchronousTestCase):
    """
    A connection lost mid-body tells the sink.
    """

    def test_midBody(self) -> None:
        """
        The sink of a body in progress gets C{bodyFailed} with the reason,
        once, and never C{bodyFinished}.
        """
        proto, _, _ = connect(RecordingProtocol(streamSinks))
        proto.dataReceived(wire.encodeMessage({"stream": True}, b"abcdef")[:-3])
        reason = Failure(ConnectionDone("bye"))
        proto.connectionLost(reason)
        [sink] = proto.sinks
        self.assertEqual(sink.failures, [reason])
        self.assertEqual((sink.data, sink.finished), (b"abc", 0))
        proto.connectionLost(reason)
        self.assertEqual(sink.failures, [reason])

    def test_dataAfterLossIgnored(self) -> None:
        """
        Bytes delivered after the connection is lost are ignored.
        """
        proto, _, _ = connect()
        proto.connectionLost(Failure(ConnectionDone()))
        proto.dataReceived(wire.encodeMessage({}, b""))
        self.assertEqual(proto.messages, [])

    def test_betweenMessages(self) -> None:
        """
        A loss between messages fails no sink.
        """
        proto, _, _ = connect(RecordingProtocol(streamSinks))
        proto.dataReceived(wire.encodeMessage({"stream": True}, b"abc"))
        proto.connectionLost(Failure(ConnectionDone()))
        [sink] = proto.sinks
        self.assertEqual((sink.finished, sink.failures), (1, []))


class ClosingTests(SynchronousTestCase):
    """
    After a violation the error is the last message, and a peer that never
    reads cannot hold the connection open.
    """

    def setUp(self) -> None:
        self.proto, self.transport, self.clock = connect()

    def violate(self) -> None:
        self.proto.dataReceived(wire.encodeFrame(b"[]"))

    def test_abortAfterCloseTimeout(self) -> None:
        """
        The connection is closed at once, and aborted if it has not gone
        after C{closeTimeout} seconds.
        """
        self.violate()
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(self.proto.closeTimeout - 0.5)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.5)
        self.assertTrue(self.transport.disconnected)

    def test_lossCancelsTimer(self) -> None:
        """
        A connection that closes in time leaves no timer behind.
        """
        self.violate()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTimeout(self) -> None:
        """
        With C{closeTimeout = None} no abort is scheduled.
        """
        self.proto.closeTimeout = None  # type: ignore[assignment]
        self.violate()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneErrorOnly(self) -> None:
        """
        Several violations in one read give one error message.
        """
        self.proto.dataReceived(wire.encodeFrame(b"[]") * 3 + b"\xff\xff\xff\xff")
        self.assertEqual(len(parseMessages(self.transport.value())), 1)

    def test_errorIsLastMessage(self) -> None:
        """
        Nothing is sent after the violation's error message.
        """
        self.violate()
        self.proto.sendMessage({"late": True}, b"x")
        d = self.proto.sendStreamedMessage({"late": True}, BytesSource(b"x"))
        self.failureResultOf(d, ConnectionError)
        [(header, _)] = parseMessages(self.transport.value())
        self.assertEqual(header["closing"], True)

    def test_violationWhileStreaming(self) -> None:
        """
        A violation while a streamed body is being sent does not cut that
        frame: the error follows the body, then the connection closes.
        """
        source = ManualSource(4)
        d = self.proto.sendStreamedMessage({"n": 1}, source)
        self.violate()
        self.assertFalse(self.transport.disconnecting)
        source.consumer.write(b"abcd")
        source.done.callback(None)
        self.successResultOf(d)
        [first, (error, _)] = parseMessages(self.transport.value())
        self.assertEqual(first, ({"n": 1}, b"abcd"))
        self.assertEqual((error["error"]["code"], error["closing"]), ("bad_header", True))
        self.assertTrue(self.transport.disconnecting)

    def test_violationWhileStreamingTimesOut(self) -> None:
        """
        If the body in progress never finishes, the connection is aborted
        after C{closeTimeout} anyway.
        """
        self.proto.sendStreamedMessage({"n": 1}, ManualSource(4)).addErrback(lambda _: None)
        self.violate()
        self.clock.advance(self.proto.closeTimeout)
        self.assertTrue(self.transport.disconnected)

    def test_customViolationReply(self) -> None:
        """
        C{violationReply} returning C{None} closes without an error message.
        """
        self.proto.violationReply = lambda error, rid: None  # type: ignore[method-assign]
        self.violate()
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)


class BufferSinkTests(SynchronousTestCase):
    """
    L{BufferSink} gathers a body and hands it over whole.
    """

    def test_gathers(self) -> None:
        """
        Chunks are joined and passed to the callback once finished.
        """
        got: list[bytes] = []
        sink = BufferSink(got.append)
        sink.bodyData(b"ab")
        sink.bodyData(b"cd")
        self.assertEqual(got, [])
        sink.bodyFinished()
        self.assertEqual(got, [b"abcd"])

    def test_singleChunkNotCopied(self) -> None:
        """
        A body that came in one chunk is handed over as that object.
        """
        got: list[bytes] = []
        sink = BufferSink(got.append)
        chunk = b"x" * 100
        sink.bodyData(chunk)
        sink.bodyFinished()
        self.assertIs(got[0], chunk)
