# -*- test-case-name: tests.test_protocol -*-
"""
L{FrameProtocol}: frames to messages and back, with streamed bodies.

Receiving is linear in the bytes received (the stock
C{IntNStringReceiver.dataReceived} re-copies a partial frame on every read,
Twisted ticket #6358, which makes one large frame quadratic).  The header frame
has its own limit, checked as soon as its 4 prefix bytes arrive.  After the
header is parsed, L{FrameProtocol.messageStarted} chooses where the body goes
(a L{BodySink}); body bytes flow there as they arrive, and the sink may pause
reading through the producer it is given.

Sending: L{FrameProtocol.sendMessage} writes a whole message at once;
L{FrameProtocol.sendStreamedMessage} sends a body of known length from an
L{IBodySource}.  Both go through the protocol's L{FrameSender}
(L{twisted_frames.sending}: the send queue, the body in progress, the writes
gathered during a read, the direct send, the write deadline), so frames
never interleave.  Sinks and the C{ping} pipe are in L{twisted_frames.bodies}.

(Why this module is over 600 lines: what is left is one receive state
machine whose pauses (a sink's, the protocol's own as a producer, send
pressure, the end of a turn), deadlines and closing all read and change the
same state; split into modules, each would reach into the others' state.)
"""

from __future__ import annotations

import dataclasses
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver, StringTooLongError
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from ._speedups import recv
from .bodies import BodySink, BufferSink, DiscardSink, Pipe
from .sending import BodyOverrun, FrameSender, IBodySource, SendPressure
from .wire import ErrorCode, Limits, ProtocolViolation

# The send side's public names are the protocol's too (sending.py is where
# they are defined, this module where users of the protocol find them).
__all__ = [
    "BodyOverrun",
    "BodySink",
    "BufferSink",
    "DiscardSink",
    "FrameProtocol",
    "IBodySource",
    "Pipe",
]

_HEADER_PREFIX, _HEADER, _BODY_PREFIX, _BODY = range(4)
_unpackPrefix = wire.PREFIX.unpack_from
_decodeHeader = wire.decodeHeader


@implementer(IPushProducer)
class _ReceiveProducer:
    """
    The handle a sink uses to pause the connection's reading.  It remembers
    whether its own sink paused, so a finished sink can never leave the
    connection paused for ever.
    """

    def __init__(self, protocol: FrameProtocol) -> None:
        self._protocol = protocol
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self._protocol.pauseReceiving()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._protocol.resumeReceiving()

    def stopProducing(self) -> None:
        self.release()
        if self._protocol.transport is not None:
            self._protocol.transport.abortConnection()

    def release(self) -> None:
        self.resumeProducing()


def clockOrReactor(clock: IReactorTime | None) -> IReactorTime:
    """
    @return: C{clock}, or the global reactor when it is C{None} (imported
        late, so that importing this module installs no reactor).
    """
    if clock is None:
        from twisted.internet import reactor

        return cast(IReactorTime, reactor)
    return clock


class FrameProtocol(Int32StringReceiver):
    """
    Two frames make a message: a UTF-8 JSON header, then a body.

    Subclasses override L{messageStarted} (to stream bodies) or
    L{messageReceived} (for whole messages), and L{violationReply} for
    the way a violation is reported.

    @ivar limits: the hard limits applied to what is received.
    @ivar MAX_LENGTH: the header frame limit, as in C{IntNStringReceiver}.
    @ivar closeTimeout: seconds to let an error reply drain before aborting a
        connection being closed for a violation (a peer that never reads must
        not pin it open).
    @ivar frameTimeout: the slowloris deadline, or C{None} for none.  A
        message's header part (length prefix, header, body prefix) must
        arrive within this many seconds of its first byte, and while a body
        is being read (not paused by its sink) each read must come within this
        many seconds of the previous one.
    @ivar writeTimeout: the write deadline, or C{None} for none.  While
        output waits for the peer (in the transport's buffer, or the
        transport has paused this side), the peer must take some of it at
        least every this many seconds; else the connection is aborted
        (L{writeTimedOut}).
    """

    #: A stream transport is also a push producer (pause/resume reading), a
    #: consumer (registerProducer) and abortable; zope interfaces cannot say
    #: "all of these" to a type checker, so it is typed loosely here.
    transport: Any

    limits: Limits = Limits()
    #: Bytes from the peer kept unread while replies cannot be written,
    #: before the socket's reading is paused too.
    sendHoldLimit: int = 1024 * 1024
    #: Whether what the peer sends waits while the transport's write buffer
    #: is full.  True for a server (a client that sends requests but does
    #: not read the replies must not make it buffer them without bound);
    #: a client must keep reading replies while its own writes wait, else a
    #: server echoing or answering as fast as they are read (and pausing its
    #: reading while its replies wait) and the client wait on each other.
    holdsReceivingForSend: bool = True
    closeTimeout: float = 10.0
    frameTimeout: float | None = None
    writeTimeout: float | None = None
    #: Messages handled from one connection's input before the others get a
    #: turn, or C{None}: no limit.  The rest waits, with this connection's
    #: reading paused, for the next reactor iteration; so hundreds of
    #: connections full of pipelined requests cannot keep one iteration
    #: (and every other client's reply) waiting for seconds.
    messagesPerTurn: int | None = None
    #: Body bytes still to come from which the rest of a body is received
    #: off the reactor, by a worker thread reading the socket straight
    #: into the sink's file (L{BodySink.receiveDirect}), or C{None}: never.
    #: Only on a plain TCP connection (L{recv.canReceiveDirect}) or TLS
    #: over one (L{recv.canReceiveTLS}); below
    #: this, the thread's start costs more than the reactor's reads.
    receiveDirectMin: int | None = 1024 * 1024
    clock: IReactorTime | None = None
    _log = Logger()
    _peerName: str | None = None
    #: Whether stringReceived is this class's own (set for each subclass).
    _parsesHeaders = True

    def __init__(self) -> None:
        self._state = _HEADER_PREFIX
        self._prefix = bytearray()
        self._headerBuf = bytearray()
        self._remaining = 0
        self._header: dict[str, Any] = {}
        self._sink: BodySink | None = None
        self._sinkProducer: _ReceiveProducer | None = None
        self._pauseCount = 0
        self._unread: deque[bytes | memoryview] = deque()
        self._unreadBytes = 0
        self._draining = False
        # Send pressure (see _SendPressure): requests wait while the
        # transport's write buffer is full; the socket itself is paused only
        # once sendHoldLimit bytes wait, because a TLS transport buffers the
        # greeting until its handshake is done, and the handshake needs the
        # socket to keep reading.
        self._held = False
        self._heldTransport = False
        self._transportPaused = False
        self._closing = False
        # Everything sent goes through the sender (see sending.py).
        self._sender = FrameSender(self)
        self._closeTimer: IDelayedCall | None = None
        self._frameTimer: IDelayedCall | None = None
        self._frameMark = -1
        self._messagesStarted = 0
        # Where this turn ends (see messagesPerTurn): never, unless set.
        self._turnEnd = sys.maxsize
        self.bytesReceived = 0
        # The body being received off the reactor (see _receiveDirect), and
        # an abandonBody waiting for it to stop.
        self._direct: recv.DirectReceive | None = None
        self._directOff = False
        # A TLS receive waiting for the next turn (see _receiveDirect).
        self._directPending = False
        self._abandonAfterDirect: Failure | None = None
        # The protocol as a producer (pauseProducing and friends): a pause
        # of its own, counted with the sinks' ones.
        self._producer = _ReceiveProducer(self)

    def makeConnection(self, transport: Any) -> None:
        """
        Register the connection's producer (L{SendPressure}) before the
        protocol starts, so that a full write buffer always slows the peer
        down: both the body being sent and the reading of new requests.
        """
        self._sender.connect(transport)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    @property
    def bytesSent(self) -> int:
        """
        Bytes of messages sent or queued on this connection.
        """
        return self._sender.bytesSent

    @property
    def _activeSource(self) -> tuple[IBodySource, Any, defer.Deferred[None]] | None:
        return self._sender.active

    @property
    def _pressure(self) -> SendPressure:
        return self._sender.pressure

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]
        """
        The header frame limit (C{limits.maxHeader}), as
        C{IntNStringReceiver.MAX_LENGTH} is the frame limit there: setting
        it sets that limit (a subclass may also set it as a class attribute).
        """
        return self.limits.maxHeader

    @MAX_LENGTH.setter
    def MAX_LENGTH(self, value: int) -> None:
        self.limits = dataclasses.replace(self.limits, maxHeader=value)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass that sets MAX_LENGTH as Twisted's receivers do (a plain
        # class attribute) sets its header limit, not an ignored attribute.
        super().__init_subclass__(**kwargs)
        value = cls.__dict__.get("MAX_LENGTH")
        if isinstance(value, int):
            cls.limits = dataclasses.replace(cls.limits, maxHeader=value)
            del cls.MAX_LENGTH  # type: ignore[misc]
        # A subclass that overrides stringReceived gets every header frame
        # through it; the others have it parsed in place (see _consume).
        cls._parsesHeaders = cls.stringReceived is FrameProtocol.stringReceived

    @property
    def recvd(self) -> bytes:  # type: ignore[override]
        """
        What C{IntNStringReceiver.recvd} is: the bytes received but not yet
        handed on (a partial prefix or header frame, and what waits unread
        while reading is paused).  Body bytes are handed to their sink as
        they arrive, so a body in progress adds none.  Read-only: the
        receiving state cannot be replaced from outside.
        """
        if self._state == _HEADER:
            pending = wire.PREFIX.pack(len(self._headerBuf) + self._remaining) + self._headerBuf
        else:
            pending = bytes(self._prefix)
        return pending + b"".join(self._unread)

    @property
    def paused(self) -> bool:  # type: ignore[override]
        """
        Whether reading is paused, for whatever reason (L{pauseReceiving}).
        """
        return self._pauseCount > 0

    def pauseProducing(self) -> None:
        """
        C{IPushProducer.pauseProducing}: stop reading through the
        protocol's own pause counting (L{pauseReceiving}), so that a sink's
        pause and this one do not undo each other.  Idempotent, as a
        producer's pause is.
        """
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Undo L{pauseProducing} (reading resumes unless a sink still pauses).
        """
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """
        C{IPushProducer.stopProducing}: the connection is dropped.
        """
        self._producer.stopProducing()

    def sendString(self, string: bytes) -> None:
        """
        Send one frame, C{string} with its length prefix, through the send
        queue: behind a streamed body in progress, never inside it.  Two
        frames make a message; L{sendMessage} is the usual way to send one.
        Nothing is sent once the connection is closing.

        @raise StringTooLongError: if C{string} is over L{wire.MAX_FRAME}.
        """
        if len(string) > wire.MAX_FRAME:
            raise StringTooLongError(
                f"frame of {len(string)} bytes is over the limit of {wire.MAX_FRAME}"
            )
        if self._closing or self.transport is None:
            return
        self._sender.sendEncoded(wire.PREFIX.pack(len(string)) + string)

    def _clock(self) -> IReactorTime:
        return clockOrReactor(self.clock)

    # -- receiving ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Split the stream into frames in time linear in its length.
        """
        if self._closing:
            return
        self.bytesReceived += len(data)
        if self._pauseCount or self._unread or self._held:
            self._unread.append(data)
            self._unreadBytes += len(data)
            if self._held and self._unreadBytes > self.sendHoldLimit and not self._heldTransport:
                self._heldTransport = True
                self._syncTransport()
            return
        if self.messagesPerTurn is not None:
            self._turnEnd = self._messagesStarted + self.messagesPerTurn
        sender = self._sender
        if sender.gathered is None and sender.gathering:
            gathered: list[bytes] = []
            sender.gathered = gathered
            try:
                self._consume(data)
            finally:
                if gathered:
                    sender.sendGathered()
                sender.gathered = None
        else:
            self._consume(data)
        if self._state == _BODY and self.receiveDirectMin is not None:
            self._receiveDirect()
        if self.frameTimeout is not None:
            self._watchFrame()

    def _receiveDirect(self, later: bool = False) -> None:
        """
        At the end of a read within a large body: if the sink can take it
        and the transport is a plain TCP connection, or TLS over one, stop
        the transport reading and let a worker thread receive the rest of
        the body (L{recv.DirectReceive}, L{recv.TLSReceive});
        L{_receivedDirect} hands back.

        @param later: whether this is the later turn of the reactor a TLS
            receive starts on: a read over TLS is delivered from inside the
            TLS layer, which goes on decrypting when it returns, so the
            thread may not take the connection then.
        """
        sink = self._sink
        minimum = self.receiveDirectMin
        if (
            sink is None
            or not sink.receivesDirect
            or minimum is None
            or self._remaining < minimum
            or self._direct is not None
            or self._directPending
            or self._directOff
            or self._pauseCount
            or self._held
            or self._unread
            or self._closing
        ):
            return
        transport = self.transport
        make: type[recv.DirectReceive] = recv.DirectReceive
        if recv.canReceiveDirect(transport):
            pass
        elif not recv.canReceiveTLS(transport):
            self._directOff = True
            return
        elif not later:
            # Reading stays off until then: what the TLS layer still
            # decrypts from this read is delivered as usual meanwhile.
            self._directPending = True
            self._syncTransport()
            transport.transport.reactor.callLater(0, self._receiveDirectLater)
            return
        elif not recv.readyForTLS(transport):
            # Owned by a threaded send, closing...: this read's turn is
            # the reactor's (the next read may try again).
            return
        else:
            make = recv.TLSReceive
        try:
            receive = make(
                transport, self._remaining, self.frameTimeout, self._directProgress(sink)
            )
        except OSError:
            # Out of descriptors: the reactor's reading needs none.
            self._directOff = True
            return
        self._direct = receive
        self._syncTransport()
        d = sink.receiveDirect(receive)
        if d is None:
            self._direct = None
            receive.release()
            self._syncTransport()
            return
        d.addCallback(self._receivedDirect, sink, receive)
        d.addErrback(lambda f: self._log.failure("receiving a body off the reactor", f))

    def _receiveDirectLater(self) -> None:
        """
        The later turn of L{_receiveDirect} over TLS: start the receive if
        the body still wants it, else read again.
        """
        self._directPending = False
        if self.transport is None or self._closing:
            return
        if self._state == _BODY:
            self._receiveDirect(later=True)
        self._syncTransport()
        if self.frameTimeout is not None:
            # The thread keeps the deadline now (or reading does again).
            self._watchFrame()

    def _directProgress(self, sink: BodySink) -> Callable[[int], None]:
        """
        @return: what a receive off the reactor reports its bytes to.
        """

        def progress(count: int) -> None:
            self.bytesReceived += count
            if self._sink is sink:
                sink.bodyProgress(count)
            self.receivedDirect(count)

        return progress

    def _receivedDirect(self, _: object, sink: BodySink, receive: recv.DirectReceive) -> None:
        """
        The worker thread of L{_receiveDirect} has returned: take up the
        body where it left it, as if its bytes had been read here, read
        again, and only then let the receive hand the connection back
        (over TLS that delivers what was decrypted past the body's end, so
        the body must be taken up first).
        """
        self._direct = None
        try:
            self._takeUpDirect(sink, receive)
        finally:
            receive.release()

    def _takeUpDirect(self, sink: BodySink, receive: recv.DirectReceive) -> None:
        if self._sink is not sink or self._state != _BODY:
            # The connection went (or its sink failed) meanwhile.
            if not self._closing:
                self._syncTransport()
            return
        self._remaining -= receive.taken
        if receive.outcome == recv.STALLED:
            self._frameExpired()
            return
        if receive.outcome == recv.LOST:
            # The transport finds out how, reading again (told of a reset
            # the thread saw, which the socket reports only once).
            if receive.reset:
                receive.markLost()
            self._directOff = True
        abandon, self._abandonAfterDirect = self._abandonAfterDirect, None
        if self._remaining == 0:
            self._finishBody(sink, None)
        elif abandon is not None:
            self.abandonBody(abandon)
        if not self._closing:
            self._syncTransport()
        self._drain()

    def receivedDirect(self, count: int) -> None:
        """
        C{count} more bytes of a body were received off the reactor
        (L{receiveDirectMin}); they are already counted in
        C{bytesReceived}.  Called every so often while the worker thread
        receives, for what a read would otherwise tell (an idle deadline).
        """

    def _watchFrame(self) -> None:
        """
        After a read: arm, push back or cancel the L{frameTimeout} deadline.
        Called once per read, not per frame, so it costs nothing per byte.
        """
        timer = self._frameTimer
        idle = self._state == _HEADER_PREFIX and not self._prefix
        if (
            idle
            or self._pauseCount
            or self._held
            or self._closing
            or self.frameTimeout is None
            or self._direct is not None
        ):
            # (A body received off the reactor has its deadline in its thread.)
            if timer is not None:
                if timer.active():
                    timer.cancel()
                self._frameTimer = None
            return
        if timer is not None and timer.active():
            if self._state == _BODY:
                timer.reset(self.frameTimeout)
                return
            if self._frameMark == self._messagesStarted:
                # Still the same header: its deadline runs from its first byte.
                return
            timer.cancel()
        self._frameMark = self._messagesStarted
        self._frameTimer = self._clock().callLater(self.frameTimeout, self._frameExpired)

    def _frameExpired(self) -> None:
        self._frameTimer = None
        what = "body data" if self._state == _BODY else "the rest of a message header"
        self.protocolViolation(
            ProtocolViolation(
                ErrorCode.TIMEOUT, f"waited {self.frameTimeout:g} s for {what}, closing"
            ),
            None,
        )

    def _consume(self, data: bytes | memoryview) -> None:
        """
        Hand C{data} on, frame by frame: each state's step takes what it
        needs from C{pos} and says where the next one starts (C{-1}: stop).
        The steps slice C{data} itself (bytes, or a view kept unread): a
        slice of bytes is its one copy, with no view made for a read of
        small messages.
        """
        end = len(data)
        pos = 0
        unpack = _unpackPrefix
        while pos < end:
            if self._closing:
                return
            if self._pauseCount or self._held or self._messagesStarted >= self._turnEnd:
                self._keepUnread(data, pos, end)
                return
            state = self._state
            if state == _HEADER_PREFIX and end - pos >= 8 and not self._prefix:
                # Fast path: a whole message in this read (the usual case for
                # small ones) is taken in one step, both prefixes read here.
                (length,) = unpack(data, pos)
                bodyAt = pos + 4 + length
                bodyStart = bodyAt + 4
                if 0 < length <= self.limits.maxHeader and bodyStart <= end:
                    (bodyLength,) = unpack(data, bodyAt)
                    if bodyStart + bodyLength <= end:
                        self._state = _BODY_PREFIX
                        header = (
                            data[pos + 4 : bodyAt]
                            if type(data) is bytes
                            else bytes(data[pos + 4 : bodyAt])
                        )
                        if self._parsesHeaders:
                            # stringReceived, without the call: every
                            # message of a small request or reply passes here.
                            try:
                                self._header = _decodeHeader(header)
                            except ProtocolViolation as e:
                                self.protocolViolation(e, None)
                        else:
                            self.stringReceived(header)
                        pos = bodyAt
                        if self._closing or self._pauseCount or self._held:
                            continue
                        self._startBody(bodyLength, data, bodyStart)
                        if self._state == _HEADER_PREFIX:
                            pos = bodyStart + bodyLength
                        else:
                            pos = bodyStart
                        continue
            if state == _BODY:
                pos = self._consumeBody(data, pos, end)
            elif state == _HEADER:
                pos = self._consumeHeader(data, pos, end)
            else:
                pos = self._consumePrefix(state, data, pos, end)
                if pos < 0:
                    return

    def _keepUnread(self, data: bytes | memoryview, pos: int, end: int) -> None:
        """
        Reading is paused, held, or this turn is over: keep the rest of
        the read for later.
        """
        if not self._pauseCount and not self._held:
            self._endTurn()
        # A view, not a copy: a sink pausing at every message of one large
        # read must not make the rest of the read be re-copied each time
        # (quadratic, like ticket #6358).
        self._unread.appendleft(memoryview(data)[pos:])
        self._unreadBytes += end - pos

    def _consumeBody(self, data: bytes | memoryview, pos: int, end: int) -> int:
        """
        Body bytes, to the body's sink.
        """
        take = min(self._remaining, end - pos)
        if take == end and type(data) is bytes:
            chunk = data
        else:
            chunk = bytes(data[pos : pos + take])
        self._remaining -= take
        sink = self._sink
        assert sink is not None
        if self._remaining == 0:
            self._finishBody(sink, chunk)
        else:
            sink.bodyData(chunk)
        return pos + take

    def _consumeHeader(self, data: bytes | memoryview, pos: int, end: int) -> int:
        """
        Part of a header frame split across reads, into the header buffer.
        """
        take = min(self._remaining, end - pos)
        self._headerBuf += data[pos : pos + take]
        self._remaining -= take
        if self._remaining == 0:
            header = bytes(self._headerBuf)
            self._headerBuf = bytearray()
            self._state = _BODY_PREFIX
            self.stringReceived(header)
        return pos + take

    def _consumePrefix(self, state: int, data: bytes | memoryview, pos: int, end: int) -> int:
        """
        A header's or a body's length prefix (perhaps split across reads),
        and what it starts.
        """
        length: int
        if not self._prefix and end - pos >= 4:
            (length,) = wire.PREFIX.unpack_from(data, pos)
            pos += 4
        else:
            take = min(4 - len(self._prefix), end - pos)
            self._prefix += data[pos : pos + take]
            if len(self._prefix) < 4:
                return -1
            pos += take
            (length,) = wire.PREFIX.unpack(self._prefix)
            self._prefix.clear()
        if state != _HEADER_PREFIX:
            # Fast path: a small body entirely in this read is handed over
            # without a sink's bookkeeping.
            self._startBody(length, data, pos)
            return pos + length if self._state == _HEADER_PREFIX else pos
        if length > self.limits.maxHeader:
            self._refuseLength(length)
            return -1
        if 0 < length <= end - pos:
            # Fast path: the whole header frame is in this read (the usual
            # case for small messages), so it is parsed straight from it,
            # without the header buffer.
            self._state = _BODY_PREFIX
            self.stringReceived(bytes(data[pos : pos + length]))
            return pos + length
        self._state = _HEADER
        self._remaining = length
        if length == 0:
            self._state = _BODY_PREFIX
            self.stringReceived(b"")
        return pos

    def _startBody(self, length: int, data: bytes | memoryview, pos: int) -> None:
        self._messagesStarted += 1
        header = self._header
        self._header = {}
        if length > self.limits.maxBody:
            self.protocolViolation(
                wire.ProtocolViolation(
                    ErrorCode.BODY_TOO_LARGE,
                    f"body of {length} bytes is over the limit of {self.limits.maxBody}",
                ),
                header,
            )
            return
        try:
            sink = self.messageStarted(header, length)
        except ProtocolViolation as e:
            self.protocolViolation(e, header)
            return
        if self._closing:
            return
        if type(sink) is BufferSink and len(data) - pos >= length:
            self._state = _HEADER_PREFIX
            sink._done(bytes(data[pos : pos + length]))
            return
        producer = _ReceiveProducer(self)
        self._sink = sink
        self._sinkProducer = producer
        self._state = _BODY
        self._remaining = length
        sink.bodyStarted(length, producer)
        if length == 0 and self._state == _BODY and self._sink is sink:
            self._finishBody(sink, None)

    def _finishBody(self, sink: BodySink, lastChunk: bytes | None) -> None:
        self._state = _HEADER_PREFIX
        self._sink = None
        producer, self._sinkProducer = self._sinkProducer, None
        if lastChunk:
            sink.bodyData(lastChunk)
        sink.bodyFinished()
        if producer is not None:
            producer.release()

    def betweenMessages(self) -> bool:
        """
        Whether nothing of a message is being received: no header or body
        begun, nothing waiting unread.
        """
        return self._state == _HEADER_PREFIX and not self._prefix and not self._unread

    def abandonBody(self, reason: Failure) -> None:
        """
        Fail the sink of the body being received with C{reason}, and read
        the rest of that body into a L{DiscardSink}, so that the stream stays
        in step and the next message can still be read.
        """
        sink, producer = self._sink, self._sinkProducer
        if sink is None or self._state != _BODY:
            return
        if self._direct is not None:
            # Its thread stops first (it may be writing to the sink's file).
            self._abandonAfterDirect = reason
            self._direct.cancel()
            return
        self._sink = DiscardSink()
        self._sinkProducer = _ReceiveProducer(self)
        sink.bodyFailed(reason)
        if producer is not None:
            # The failed sink may have paused reading: its pause goes with it.
            producer.release()

    def stringReceived(self, string: bytes) -> None:
        """
        A header frame: parse it and keep it until its body's prefix arrives.
        """
        try:
            self._header = wire.decodeHeader(string)
        except ProtocolViolation as e:
            self.protocolViolation(e, None)

    def _refuseLength(self, length: int) -> None:
        self.lengthLimitExceeded(length)
        if not self._closing:
            # An override that only dropped the connection, as Twisted's
            # default does: what follows the refused frame cannot be parsed,
            # so nothing more is read.
            self.loseConnectionSoon()

    def lengthLimitExceeded(self, length: int) -> None:
        """
        A header prefix over L{MAX_LENGTH}: refuse before buffering a byte.
        As in C{IntNStringReceiver}, the default closes the connection (with
        a C{header_too_large} error); an override may say something else,
        and nothing more is read from the connection after it either way.
        """
        self.protocolViolation(
            ProtocolViolation(
                ErrorCode.HEADER_TOO_LARGE,
                f"header frame of {length} bytes is over the limit of {self.MAX_LENGTH}",
            ),
            None,
        )

    def messageStarted(self, header: dict[str, Any], bodyLength: int) -> BodySink:
        """
        A header has arrived and its body of C{bodyLength} bytes follows:
        return where it goes.  By default bodies up to the buffer threshold
        are gathered and passed to L{messageReceived}; larger ones are a
        violation, since nothing here would stream them.

        @raise ProtocolViolation: to refuse the message and close.
        """
        if bodyLength > self.limits.bufferThreshold:
            raise ProtocolViolation(
                ErrorCode.BODY_TOO_LARGE,
                f"body of {bodyLength} bytes is over the in-memory limit of "
                f"{self.limits.bufferThreshold}",
            )
        return BufferSink(lambda body: self.messageReceived(header, body))

    def messageReceived(self, header: dict[str, Any], body: bytes) -> None:
        """
        A whole message, for subclasses that do not stream.
        """
        raise NotImplementedError

    def pauseReceiving(self) -> None:
        """
        Stop delivering body bytes (and reading from the socket) until a
        matching L{resumeReceiving}.  Calls nest.
        """
        self._pauseCount += 1
        if self._pauseCount == 1:
            self._syncTransport()
        if self._frameTimer is not None:
            # Not reading is our choice, not the peer's stalling.
            self._watchFrame()

    def resumeReceiving(self) -> None:
        """
        Undo one L{pauseReceiving}; deliver what arrived meanwhile.
        """
        if self._pauseCount == 0:
            return
        self._pauseCount -= 1
        if self._pauseCount:
            return
        if not self._closing:
            self._syncTransport()
        self._drain()

    def _endTurn(self) -> None:
        """
        L{messagesPerTurn} messages were handled: pause reading until the
        next reactor iteration, when the rest is handled.
        """
        self._turnEnd = sys.maxsize
        self.pauseReceiving()
        self._clock().callLater(0, self.resumeReceiving)

    def _holdForSend(self, held: bool) -> None:
        """
        The transport's write buffer filled (C{held}) or drained: stop or
        restart handling what the peer sends.
        """
        if not self.holdsReceivingForSend:
            return
        self._held = held
        if held:
            if self._frameTimer is not None:
                self._watchFrame()
            return
        if self._heldTransport:
            self._heldTransport = False
            if not self._closing:
                self._syncTransport()
        self._drain()

    def _syncTransport(self) -> None:
        """
        Pause or resume the transport's reading to match why we need it
        paused: a sink's pause, or too much held behind send pressure.
        """
        want = (
            self._pauseCount > 0
            or self._heldTransport
            or self._direct is not None
            or self._directPending
        )
        if want == self._transportPaused or self.transport is None:
            return
        self._transportPaused = want
        if want:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _drain(self) -> None:
        """
        Deliver what arrived while reading was paused or held, unless it
        still is (or this is a nested call from within the delivery).
        """
        if self._draining:
            return
        self._draining = True
        if self.messagesPerTurn is not None:
            self._turnEnd = self._messagesStarted + self.messagesPerTurn
        try:
            while self._unread and not self._pauseCount and not self._held and not self._closing:
                item = self._unread.popleft()
                self._unreadBytes -= len(item)
                self._consume(item)
        finally:
            self._draining = False
        if self._state == _BODY and self.receiveDirectMin is not None:
            self._receiveDirect()
        if self.frameTimeout is not None:
            self._watchFrame()

    # -- violations and closing ----------------------------------------------

    def protocolViolation(self, error: FramesErrorLike, header: dict[str, Any] | None) -> None:
        """
        Tell the peer what it broke, once, and close this connection.
        """
        if self._closing:
            return
        self._log.info(
            "protocol violation from {peer}: {code}: {message}",
            peer=self.peerName(),
            code=error.code,
            message=error.message,
        )
        rid = header.get("id") if header else None
        reply = self.violationReply(error, rid)
        self._closing = True
        self._failSink(Failure(error))
        self.closeWith(reply)

    def closeWith(self, reply: dict[str, Any] | None) -> None:
        """
        Close the connection, after sending C{reply} (an error header, the
        last message) if it is not C{None}: the one way out for a violation
        and for a connection the server refuses.
        """
        self._closing = True
        if reply is not None:
            self.sendLast(wire.encodeMessage(reply))
        self.loseConnectionSoon()

    def sendLast(self, data: bytes) -> None:
        """
        Send C{data}, an encoded message, once the connection is closing
        (when L{sendMessage} sends nothing more): at once, or behind the
        body in progress, so that frames never interleave;
        L{loseConnectionSoon} waits for that body (or for L{closeTimeout}).
        """
        self._sender.sendLast(data)

    def violationReply(self, error: FramesErrorLike, requestId: Any) -> dict[str, Any] | None:
        """
        The header of the error message sent before closing, or C{None} to
        send nothing.
        """
        return wire.errorHeader(error, requestId, closing=True)

    def loseConnectionSoon(self) -> None:
        """
        Close after what is written has drained, or abort if it does not
        drain within L{closeTimeout}.
        """
        self._closing = True
        if self.transport is None:
            return
        if self._closeTimer is None and self.closeTimeout is not None:
            self._closeTimer = self._clock().callLater(self.closeTimeout, self._abort)
        if self._sender.active is None:
            self.loseConnection()
        # Else a streamed body is in progress: closing now would cut its frame
        # (and drop the error queued behind it); _flushQueue calls us again.

    def loseConnection(self) -> None:
        """
        Close the connection once what is written has been sent.  Use this
        rather than C{transport.loseConnection()}: it first unregisters the
        connection's producer, which a TLS transport would otherwise wait
        for before closing.
        """
        transport = self.transport
        if transport is None:
            return
        self._sender.unregister(transport)
        transport.loseConnection()

    def _abort(self) -> None:
        self._closeTimer = None
        if self.transport is not None:
            self.transport.abortConnection()

    # -- the write deadline ----------------------------------------------------

    def outputWaiting(self) -> int:
        """
        @return: bytes written but not yet taken by the peer's socket, as
            far as the transport tells (1 when it only says that it is
            full, by pausing this side).
        """
        return self._sender.outputWaiting()

    def outputProgress(self) -> tuple[int, int]:
        """
        A mark of how much the peer has taken so far, for
        L{outputProgressed}: bytes handed to the transport less those it
        still holds, and how often it has drained all it held.
        """
        return self._sender.outputProgress()

    @staticmethod
    def outputProgressed(before: tuple[int, int], after: tuple[int, int]) -> bool:
        """
        Whether the peer took anything between two L{outputProgress} marks.
        (Over TLS what is handed over grows by the records' overhead, so
        the first count may fall; it never rises without the peer taking.)
        """
        return after[0] > before[0] or after[1] != before[1]

    def writeTimedOut(self) -> None:
        """
        The peer took nothing of what waits for it for L{writeTimeout}
        seconds: log one line and abort the connection.  Nothing can be
        said to a peer that does not read; its requests end as on any
        disconnection (L{connectionLost}).
        """
        self._log.info(
            "write timeout: {peer} took nothing for {timeout:g} s with {waiting} bytes "
            "waiting; closing",
            peer=self.peerName(),
            timeout=self.writeTimeout,
            waiting=self.outputWaiting(),
        )
        self._closing = True
        self.transport.abortConnection()

    def _failSink(self, reason: Failure) -> None:
        if self._direct is not None:
            self._direct.cancel()
        sink, self._sink = self._sink, None
        producer, self._sinkProducer = self._sinkProducer, None
        if producer is not None:
            producer.paused = False
        if sink is not None:
            sink.bodyFailed(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        if self._closeTimer is not None and self._closeTimer.active():
            self._closeTimer.cancel()
        self._closeTimer = None
        if self._frameTimer is not None and self._frameTimer.active():
            self._frameTimer.cancel()
        self._frameTimer = None
        self._unread.clear()
        self._unreadBytes = 0
        # Detach the active source before failing the sink: a Pipe is both,
        # and its failure must not be logged as a broken streamed body.
        active = self._sender.takeActive()
        self._failSink(reason)
        self._sender.connectionLost(reason, active)

    def setNoDelay(self) -> None:
        """
        Turn off Nagle's algorithm: a reply is often several messages in a
        row (events, then the final reply) with no answer from the peer in
        between, and Nagle would hold each small one back until the peer's
        delayed ACK, tens of milliseconds later.
        """
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass

    def peerName(self) -> str:
        """
        The peer's address as C{host:port}, for logs (worked out once: it is
        in every request's log line).
        """
        name = self._peerName
        if name is None:
            if self.transport is None:
                return "-"
            peer = self.transport.getPeer()
            host = getattr(peer, "host", None)
            name = str(peer) if host is None else f"{host}:{getattr(peer, 'port', '')}"
            self._peerName = name
        return name

    # -- sending (see sending.py) ----------------------------------------------

    def sendMessage(self, header: dict[str, Any], body: bytes = b"") -> None:
        """
        Send a whole message; it is queued behind a streamed body in progress.
        Once the connection is closing (after a violation, or lost) nothing
        more is sent: a violation's error is the last message.
        """
        if not self._closing:
            self._sender.sendMessage(header, body)

    def _sendEncodedMessage(self, header: bytes, body: bytes = b"") -> None:
        """
        L{sendMessage} of a header already encoded by L{wire}'s encoders
        (the hot paths' own: a reply to C{ping}, a request), with a body of
        at most C{wire.MAX_FRAME} bytes.
        """
        if not self._closing:
            self._sender.sendEncodedMessage(header, body)

    def sendStreamedMessage(
        self, header: dict[str, Any], source: IBodySource
    ) -> defer.Deferred[None]:
        """
        Send C{header}, then a body of C{source.length} bytes produced by
        C{source}, with the transport's backpressure.

        @return: a Deferred that fires when the whole body has been handed to
            the transport, or fails if the source fails or the connection is
            lost (the connection is closed, since the frame is then broken).
        """
        return self._sender.sendStreamedMessage(header, source)


class FramesErrorLike(Protocol):
    code: str
    message: str

    def toJSON(self) -> dict[str, Any]: ...
