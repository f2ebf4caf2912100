"""
Tests for what L{twisted_frames.protocol.FrameProtocol} inherits from
C{Int32StringReceiver}: each inherited method or attribute either means what
Twisted documents for it or works through the protocol's own machinery.
"""

from __future__ import annotations

from twisted.protocols.basic import StringTooLongError
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.wire import Limits

from .test_protocol import (
    ManualSource,
    PausingSink,
    RecordingProtocol,
    connect,
    parseFrames,
    parseMessages,
)


class SendStringTests(SynchronousTestCase):
    """
    C{sendString} goes through the send queue.
    """

    def test_sendStringWaitsForStreamedBody(self) -> None:
        """
        A frame sent with C{sendString} while a streamed body is in progress
        goes out after that body, not inside it.
        """
        proto, transport, _ = connect()
        source = ManualSource(4)
        d = proto.sendStreamedMessage({"id": 1}, source)
        source.consumer.write(b"ab")
        proto.sendString(b"H")
        proto.sendString(b"B")
        source.consumer.write(b"cd")
        source.done.callback(None)
        self.successResultOf(d)
        frames, rest = parseFrames(transport.value())
        self.assertEqual(rest, b"")
        self.assertEqual(frames[1:], [b"abcd", b"H", b"B"])

    def test_sendStringAtOnce(self) -> None:
        """
        With nothing in progress, C{sendString} writes the frame at once.
        """
        proto, transport, _ = connect()
        proto.sendString(b"hello")
        self.assertEqual(transport.value(), wire.encodeFrame(b"hello"))

    def test_sendStringNothingWhenClosing(self) -> None:
        """
        Once the connection is closing, as with L{FrameProtocol.sendMessage},
        nothing more is sent.
        """
        proto, transport, _ = connect()
        proto.loseConnectionSoon()
        proto.sendString(b"late")
        self.assertEqual(transport.value(), b"")

    def test_sendStringTooLong(self) -> None:
        """
        A frame too long for its prefix is refused with
        C{StringTooLongError}, as Twisted's C{sendString} refuses it.
        """
        proto, transport, _ = connect()

        class Huge(bytes):
            def __len__(self) -> int:
                return wire.MAX_FRAME + 1

        self.assertRaises(StringTooLongError, proto.sendString, Huge(b"x"))
        self.assertEqual(transport.value(), b"")


class ProducerTests(SynchronousTestCase):
    """
    C{pauseProducing}/C{resumeProducing} use the protocol's pause counting.
    """

    def test_resumeProducingKeepsSinkPause(self) -> None:
        """
        A sink's pause holds through a C{pauseProducing}/C{resumeProducing}
        pair from elsewhere: the transport stays paused until the sink too
        resumes.
        """
        sink = PausingSink(pauseOnStart=True, pauseOnData=False)
        proto, transport, _ = connect(RecordingProtocol(lambda h, n: sink))
        proto.dataReceived(wire.encodePrefix(2) + b"{}" + wire.encodePrefix(3))
        self.assertEqual(transport.producerState, "paused")
        proto.pauseProducing()
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertTrue(proto.paused)
        sink.resume()
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(proto.paused)

    def test_pauseProducingHoldsInput(self) -> None:
        """
        While paused with C{pauseProducing}, what arrives is kept and
        delivered on C{resumeProducing}; a second pause needs no second
        resume, as with any push producer.
        """
        proto, transport, _ = connect()
        proto.pauseProducing()
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(wire.encodeMessage({"id": 1}, b"x"))
        self.assertEqual(proto.messages, [])
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(proto.messages, [({"id": 1}, b"x")])


class LengthLimitTests(SynchronousTestCase):
    """
    C{MAX_LENGTH} and C{lengthLimitExceeded} as Twisted documents them.
    """

    def test_setMaxLength(self) -> None:
        """
        Setting C{MAX_LENGTH} sets the header frame limit.
        """
        proto, transport, _ = connect()
        proto.MAX_LENGTH = 10
        self.assertEqual(proto.limits.maxHeader, 10)
        proto.dataReceived(wire.encodeMessage({"p": "x" * 20}))
        [(header, _)] = parseMessages(transport.value())
        self.assertEqual(header["error"]["code"], "header_too_large")

    def test_maxLengthClassAttribute(self) -> None:
        """
        A subclass that sets C{MAX_LENGTH} as a class attribute, the way
        Twisted's receivers are configured, gets that header limit.
        """

        class Small(RecordingProtocol):
            MAX_LENGTH = 10

        proto, transport, _ = connect(Small())
        self.assertEqual(proto.MAX_LENGTH, 10)
        self.assertEqual(proto.limits.maxHeader, 10)
        self.assertEqual(RecordingProtocol.limits.maxHeader, 1024)
        proto.dataReceived(wire.encodeMessage({"p": "x" * 20}))
        [(header, _)] = parseMessages(transport.value())
        self.assertEqual(header["error"]["code"], "header_too_large")

    def test_overriddenLengthLimitExceeded(self) -> None:
        """
        An override of C{lengthLimitExceeded} that drops the connection the
        way Twisted's default does is given the length, and nothing after
        the refused frame is parsed as frames.
        """
        lengths = []

        class Dropping(RecordingProtocol):
            limits = Limits(maxHeader=10)

            def lengthLimitExceeded(self, length: int) -> None:
                lengths.append(length)
                self.transport.loseConnection()

        proto, transport, _ = connect(Dropping())
        inner = wire.encodeMessage({"id": 2})
        proto.dataReceived(wire.encodePrefix(len(inner) + 20))
        proto.dataReceived(inner)
        self.assertEqual(lengths, [len(inner) + 20])
        self.assertEqual(proto.messages, [])
        self.assertTrue(transport.disconnecting)


class RecvdTests(SynchronousTestCase):
    """
    C{recvd} is what has been received and not yet handed on.
    """

    def test_partialHeader(self) -> None:
        """
        A partial header frame, prefix included, is in C{recvd}.
        """
        proto, _, _ = connect()
        data = wire.encodeMessage({"id": 1}, b"body")
        proto.dataReceived(data[:6])
        self.assertEqual(proto.recvd, data[:6])
        proto.dataReceived(data[6:])
        self.assertEqual(proto.recvd, b"")
        self.assertEqual(len(proto.messages), 1)

    def test_partialPrefixAndUnread(self) -> None:
        """
        A partial prefix, then what waits unread while reading is paused.
        """
        proto, _, _ = connect()
        proto.dataReceived(b"\x00\x00")
        self.assertEqual(proto.recvd, b"\x00\x00")
        proto.pauseProducing()
        proto.dataReceived(b"\x00\x02{}")
        self.assertEqual(proto.recvd, b"\x00\x00\x00\x02{}")
