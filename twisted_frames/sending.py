# -*- test-case-name: tests.test_protocol -*-
"""
The send side of L{twisted_frames.protocol.FrameProtocol}, apart from its
framing of what is received, as AMP keeps C{BinaryBoxProtocol}'s framing
apart from C{BoxDispatcher}'s matching: L{FrameSender} holds the send queue,
the body being streamed, the writes gathered during a read, the direct send
and the write deadline's watch.

Messages are queued behind a body in progress, so frames never interleave.
A streamed body comes from an L{IBodySource}, paused through the connection's
producer (L{SendPressure}) when the transport's buffer is full, so that a
slow peer pauses the source instead of growing a buffer.

What is written while a read is being handled (the replies to the requests
in it, the next request a client sends from a reply's callback) is gathered
and, at the end of the read, sent with one C{send()} straight to the socket
when the TCP transport has nothing buffered (L{twisted_frames._speedups.tcp}).
A file body may go around the transport: with C{os.sendfile} over plain TCP
(L{_BodyConsumer.sendFile}), and over TLS encrypted and sent from a worker
thread, one slice at a time (L{_BodyConsumer.sendThreaded}, see
L{twisted_frames._speedups.tlssend}).

The write deadline (C{FrameProtocol.writeTimeout}) closes a connection whose
peer takes none of what waits for it for that long: progress is bytes leaving
the transport's buffer (or the transport resuming the connection's
producer), not bytes written into it, so a peer that reads slowly but
steadily is never cut.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from ._speedups import tcp as _tcp
from ._speedups.tcp import canSendDirect, sendBeforeStartTLS, sendDirect, unsent
from ._speedups.tls import canWriteUnbuffered, sendRecordsDirect, writeUnbuffered
from ._speedups.tlssend import BLOCKED, FAILED, MORE, Outcome, ThreadedSend, canSendThreaded

#: Bytes gathered while handling one read before they are sent anyway (a
#: read full of pipelined requests must not gather all their replies).
GATHER_LIMIT = 64 * 1024

#: A body to stream, queued: its encoded header, its source, and the
#: Deferred that fires once it is sent.
_Streamed = tuple[bytes, "IBodySource", None, "defer.Deferred[None]"]


class SenderOwner(Protocol):
    """
    What a L{FrameSender} sees of its protocol (a C{FrameProtocol}): the
    transport, the clock, whether the connection is closing, and the hooks
    it calls back.
    """

    transport: Any
    writeTimeout: float | None
    _closing: bool
    _log: Logger

    def _clock(self) -> IReactorTime: ...

    def peerName(self) -> str: ...

    def _holdForSend(self, held: bool) -> None: ...

    def loseConnectionSoon(self) -> None: ...

    def writeTimedOut(self) -> None: ...

    @staticmethod
    def outputProgressed(before: tuple[int, int], after: tuple[int, int]) -> bool: ...


class IBodySource(Protocol):
    """
    A body of known length to send, in the shape of Twisted's
    C{IBodyProducer}: it writes exactly C{length} bytes to the consumer it is
    given, honours pause/resume, and fires the returned Deferred when done.
    """

    length: int

    def startProducing(self, consumer: Any) -> defer.Deferred[Any]: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class BodyOverrun(Exception):
    """
    A body source wrote more or fewer bytes than it declared: the frame on the
    wire is corrupt and the connection must close.
    """


@implementer(IPushProducer)
class SendPressure:
    """
    The connection's producer, registered with its transport for the whole
    connection: the transport pauses it when its write buffer is full.  It
    passes that on to the body source being sent, if any, and (on a server;
    see C{FrameProtocol.holdsReceivingForSend}) stops reading from the peer,
    so a peer that keeps sending requests but does not read the replies
    cannot make this side buffer replies without bound.
    """

    def __init__(self, sender: FrameSender) -> None:
        self._sender = sender
        self.paused = False

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        sender = self._sender
        if sender.active is not None:
            sender.active[0].pauseProducing()
        sender.protocol._holdForSend(True)
        sender.watchWrites()

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        sender = self._sender
        # The transport drained its whole buffer: the peer is reading.
        sender.resumes += 1
        if sender.active is not None:
            sender.active[0].resumeProducing()
        sender.protocol._holdForSend(False)

    def stopProducing(self) -> None:
        """
        The transport is going away; L{FrameSender.connectionLost} stops
        the active source.
        """


class _BodyConsumer:
    """
    The consumer a body source writes to: counts bytes so that a source that
    lies about its length cannot corrupt the framing silently.
    """

    def __init__(self, sender: FrameSender, length: int) -> None:
        self._sender = sender
        self.remaining = length
        self._threaded: ThreadedSend | None = None

    def write(self, data: bytes) -> None:
        if len(data) > self.remaining:
            raise BodyOverrun(f"body source wrote {len(data) - self.remaining} bytes too many")
        self.remaining -= len(data)
        if self._sender.protocol.transport is not None:
            self._sender.emit(data)

    def canSendFile(self) -> bool:
        """
        @return: whether L{sendFile} may be used: the connection is plain
            TCP and its transport's state is what the file send relies on.
        """
        t = self._sender.protocol.transport
        return self._sender.fileSend and t is not None and not t.TLS

    def sendFile(self, fd: int, offset: int, count: int) -> int | None:
        """
        Send up to C{count} bytes of the body from file C{fd} at C{offset}
        with C{os.sendfile}, straight from the page cache to the socket
        (only where L{canSendFile}), at most the transport's send slice
        per turn of the reactor.  After each send, and when nothing can go
        now (the transport still holds bytes before these, or the socket
        is full), the connection's producer is paused and resumed once the
        socket takes more, which resumes the source: the write deadline
        sees that wait as any other.

        @return: the bytes sent (0: the file ended first), or C{None}
            when the source has been paused until more can be sent.
        """
        if count > self.remaining:
            raise BodyOverrun(f"body source sent {count - self.remaining} bytes too many")
        sender = self._sender
        t = sender.protocol.transport
        if t is None:
            return None
        if sender.gathered:
            # Written during this read, before the body: it goes first.
            sender.sendGathered()
        # At most one send slice per turn of the reactor, as the transport's
        # own doWrite sends: one call filling the whole socket buffer would
        # hold the reactor thread for milliseconds.
        sent = _tcp.sendFile(t, fd, offset, min(count, _tcp.sendLimit(t)))
        if sent == -1:
            # The connection is going: connectionLost stops the source.
            return None
        if sent:
            self.remaining -= sent
            sender.handed += sent
        if sent != 0:
            sender.waitWritable()
        return sent

    def canSendThreaded(self) -> bool:
        """
        @return: whether L{sendThreaded} may be used: the connection is TLS
            over TCP, with the private state the threaded send relies on
            (L{twisted_frames._speedups.tlssend}).
        """
        t = self._sender.protocol.transport
        return self._sender.threadedSend and t is not None and canSendThreaded(t)

    def sendThreaded(
        self,
        count: int,
        fill: Callable[[int, memoryview], None],
        runInThread: Callable[..., defer.Deferred[Any]],
    ) -> defer.Deferred[int | None]:
        """
        Send up to C{count} bytes of the body over TLS from a worker thread
        (only where L{canSendThreaded}): one slice of
        L{twisted_frames._speedups.tlssend.ThreadedSend}, with C{fill}
        giving the bytes (in that thread) and C{runInThread} running it.
        When something is buffered before the body, or the socket stays
        full, the connection's producer is paused and resumed once the
        socket takes more, which resumes the source, as for L{sendFile}.

        The slice starts on a later turn of the reactor, never inside a
        call of the TLS layer (which goes on using its connection when it
        returns).

        @return: a Deferred firing, on a later turn of the reactor (so that
            what the peer sent meanwhile is read first), with the bytes
            sent, C{None} when the source has been paused until more can
            be sent (or the connection is going: C{connectionLost} stops
            the source), or -1 when the body must go through the TLS layer
            instead; failing with what reading the file raised.
        """
        if count > self.remaining:
            raise BodyOverrun(f"body source sent {count - self.remaining} bytes too many")
        sender = self._sender
        t = sender.protocol.transport
        if t is None:
            return defer.succeed(None)
        if sender.gathered:
            sender.sendGathered()
        threaded = self._threaded
        if threaded is None or threaded.transport is not t:
            threaded = self._threaded = ThreadedSend(t)
        reactor = threaded.below.reactor
        done: defer.Deferred[int | None] = defer.Deferred()

        def start() -> None:
            active = sender.active
            if active is None or active[1] is not self or sender.protocol.transport is not t:
                # Stopped meanwhile: connectionLost stops the source.
                done.callback(None)
                return
            try:
                acquired = threaded.acquire()
            except Exception:
                done.errback(Failure())
                return
            if acquired is None:
                threaded.waitWritable(sender.pressure.pauseProducing)
                done.callback(None)
            elif not acquired:
                done.callback(-1)
            else:
                runInThread(threaded.run, fill, count).addBoth(finished)

        def finished(result: Outcome | Failure) -> None:
            if isinstance(result, Failure):
                outcome = Outcome()
                outcome.status = FAILED
                outcome.error = result.value
            else:
                outcome = result
            threaded.release(outcome)
            self.remaining -= outcome.sent
            sender.handed += outcome.sent
            if outcome.status == FAILED:
                assert outcome.error is not None
                done.errback(Failure(outcome.error))
                return
            if outcome.status == BLOCKED:
                threaded.waitWritable(sender.pressure.pauseProducing)
            sent = outcome.sent if outcome.status in (MORE, BLOCKED) else None
            # From the reactor thread, callFromThread runs after the next
            # poll for I/O: the peer's data is read before the next slice.
            reactor.callFromThread(done.callback, sent)

        # Never from inside the TLS layer (a reply read from the peer
        # starting the body): it would go on using the connection on
        # return, while the thread owns it.
        reactor.callLater(0, start)
        return done

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Sources are registered with the transport by the protocol itself.
        """

    def unregisterProducer(self) -> None:
        """
        See L{registerProducer}.
        """


class FrameSender:
    """
    Everything a C{FrameProtocol} sends goes through its sender, which
    sees the protocol as a L{SenderOwner}.

    @ivar queue: what waits behind the body in progress: encoded bytes, or
        a body to stream.
    @ivar active: the body being streamed (source, consumer, Deferred).
    @ivar gathered: the writes gathered during a read, or C{None} outside
        one.
    @ivar handed: bytes given to the transport.
    @ivar resumes: how often the transport resumed L{pressure}.
    @ivar bytesSent: bytes of messages sent or queued.
    """

    def __init__(self, protocol: SenderOwner) -> None:
        self.protocol = protocol
        self.queue: deque[bytes | _Streamed] = deque()
        self.active: tuple[IBodySource, _BodyConsumer, defer.Deferred[None]] | None = None
        self.gathered: list[bytes] | None = None
        self._gatheredBytes = 0
        self.directSend = False
        self.fileSend = False
        self.tlsUnbuffered = False
        self.threadedSend = False
        self.gathering = True
        self.pressure = SendPressure(self)
        self.pressureRegistered = False
        self.handed = 0
        self.resumes = 0
        self.bytesSent = 0
        # Write deadline: a check runs every quarter of it while output
        # waits for the peer (see FrameProtocol.writeTimeout).
        self._writeTimer: IDelayedCall | None = None
        self._writeMark = (0, 0)
        self._writeStalledSince = 0.0

    def connect(self, transport: Any) -> None:
        """
        Register L{pressure} with C{transport}, and choose how to write to
        it: straight to its socket where possible (under TLS: what is
        gathered to the TLS layer at once, and its records to the socket,
        see L{twisted_frames._speedups.tls}), and gathering writes during a
        read only where C{startTLS} sends them first (else each goes out as
        it is written).
        """
        register = getattr(transport, "registerProducer", None)
        if register is not None:
            register(self.pressure, True)
            self.pressureRegistered = True
        self.directSend = canSendDirect(transport)
        self.fileSend = _tcp.canSendFile(transport)
        if not self.directSend:
            self.tlsUnbuffered = canWriteUnbuffered(transport)
            sendRecordsDirect(transport)
            self.threadedSend = canSendThreaded(transport)
        self.gathering = sendBeforeStartTLS(transport, self.sendGathered)

    def unregister(self, transport: Any) -> None:
        """
        Send what is gathered and unregister L{pressure}, before the
        connection closes (a TLS transport would wait for the producer).
        """
        self.sendGathered()
        if self.pressureRegistered:
            self.pressureRegistered = False
            transport.unregisterProducer()

    # -- writing ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Write C{data}, counted in L{bytesSent}.
        """
        self.bytesSent += len(data)
        self.emit(data)

    def emit(self, data: bytes) -> None:
        """
        Write C{data}: gathered while a read is handled, else through the
        transport.
        """
        gathered = self.gathered
        if gathered is None:
            self.handed += len(data)
            self.protocol.transport.write(data)
            self.watchWrites()
            return
        gathered.append(data)
        self._gatheredBytes += len(data)
        if self._gatheredBytes >= GATHER_LIMIT:
            self.sendGathered()

    def sendGathered(self) -> None:
        """
        Send what was gathered, in one C{send()} straight to the socket when
        the transport has nothing buffered before it (so order is kept);
        the rest, or all of it otherwise, through the transport.
        """
        gathered = self.gathered
        if not gathered:
            return
        data = gathered[0] if len(gathered) == 1 else b"".join(gathered)
        gathered.clear()
        self._gatheredBytes = 0
        t = self.protocol.transport
        if t is None:
            return
        self.handed += len(data)
        if self.directSend:
            data = sendDirect(t, data)
            if not data:
                return
        elif self.tlsUnbuffered:
            writeUnbuffered(t, data)
            self.watchWrites()
            return
        t.write(data)
        self.watchWrites()

    def waitWritable(self) -> None:
        """
        A body sent around the transport (L{_BodyConsumer.sendFile}) found
        the socket full: pause as if the transport's buffer were full, and
        have the transport resume L{pressure} once its socket can take
        more.
        """
        _tcp.waitWritable(self.protocol.transport)
        self.pressure.pauseProducing()

    # -- messages ----------------------------------------------------------------

    def sendEncoded(self, data: bytes) -> None:
        """
        Send encoded frames at once, or queued behind the body in progress.
        """
        if self.active is None and not self.queue:
            self.write(data)
        else:
            self.queue.append(data)

    def sendMessage(self, header: dict[str, Any], body: bytes) -> None:
        """
        See C{FrameProtocol.sendMessage}.
        """
        if len(body) > wire.MAX_FRAME:
            raise ValueError("body is over 4 GiB - 1: send it as several messages")
        self.sendEncodedMessage(wire.encodeHeader(header), body)

    def sendEncodedMessage(self, h: bytes, body: bytes) -> None:
        """
        L{sendMessage} of a header already encoded, C{h} (by
        L{twisted_frames.wire}), and a body of at most C{wire.MAX_FRAME}
        bytes.
        """
        pack = wire.PREFIX.pack
        if len(body) <= 65536:
            data = pack(len(h)) + h + pack(len(body)) + body
            if self.active is None and not self.queue:
                if self.protocol.transport is None:
                    return
                gathered = self.gathered
                if gathered is not None and self._gatheredBytes + len(data) < GATHER_LIMIT:
                    # write(), for the usual case: gathered during a read.
                    self.bytesSent += len(data)
                    gathered.append(data)
                    self._gatheredBytes += len(data)
                else:
                    self.write(data)
            else:
                self.queue.append(data)
        else:
            head = pack(len(h)) + h + pack(len(body))
            if self.active is None and not self.queue:
                if self.protocol.transport is not None:
                    self.write(head)
                    self.write(body)
            else:
                self.queue.append(head)
                self.queue.append(body)

    def sendStreamedMessage(
        self, header: dict[str, Any], source: IBodySource
    ) -> defer.Deferred[None]:
        """
        See C{FrameProtocol.sendStreamedMessage}.
        """
        if not 0 <= source.length <= wire.MAX_FRAME:
            raise ValueError(f"body length {source.length} out of range")
        d: defer.Deferred[None] = defer.Deferred()
        item = (wire.encodeHeader(header), source, None, d)
        if self.protocol._closing:
            d.errback(Failure(ConnectionError("connection is closing")))
        elif self.active is None and not self.queue:
            self._startSource(item)
        else:
            self.queue.append(item)
        return d

    def sendLast(self, data: bytes) -> None:
        """
        See C{FrameProtocol.sendLast}.
        """
        if self.protocol.transport is None:
            return
        if self.active is None:
            self.write(data)
        else:
            self.queue.append(data)

    def _startSource(self, item: _Streamed) -> None:
        h, source, _, d = item
        assert self.protocol.transport is not None
        self.write(wire.PREFIX.pack(len(h)) + h + wire.PREFIX.pack(source.length))
        consumer = _BodyConsumer(self, source.length)
        self.active = (source, consumer, d)
        self.bytesSent += source.length
        try:
            if self.pressure.paused:
                # The transport's buffer is already full (the header above
                # may have filled it): the source starts paused.
                source.pauseProducing()
            started = source.startProducing(consumer)
        except BaseException:
            started = defer.fail()
        started.addCallbacks(
            lambda _: self._sourceDone(source, None),
            lambda f: self._sourceDone(source, f),
        )

    def _sourceDone(self, source: IBodySource, failure: Failure | None) -> None:
        active = self.active
        if active is None or active[0] is not source:
            return None
        _, consumer, d = active
        self.active = None
        if failure is None and consumer.remaining:
            failure = Failure(BodyOverrun(f"body source stopped {consumer.remaining} bytes short"))
        protocol = self.protocol
        if failure is not None:
            # Half a frame is on the wire: nothing after it could be parsed.
            protocol._log.failure(
                "streamed body failed; closing {peer}", failure, peer=protocol.peerName()
            )
            protocol._closing = True
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            d.errback(failure)
            return None
        self._flushQueue()
        d.callback(None)
        return None

    def _flushQueue(self) -> None:
        protocol = self.protocol
        while self.queue and self.active is None and protocol.transport is not None:
            item = self.queue.popleft()
            if isinstance(item, tuple):
                self._startSource(item)
            else:
                self.write(item)
        if protocol._closing and self.active is None and not self.queue:
            protocol.loseConnectionSoon()

    def takeActive(self) -> tuple[IBodySource, _BodyConsumer, defer.Deferred[None]] | None:
        """
        Detach the body being streamed (the connection is lost), for
        L{connectionLost}.
        """
        active, self.active = self.active, None
        return active

    def connectionLost(
        self,
        reason: Failure,
        active: tuple[IBodySource, _BodyConsumer, defer.Deferred[None]] | None,
    ) -> None:
        """
        Stop the write deadline and C{active} (from L{takeActive}), and fail
        every queued streamed body with C{reason}.
        """
        if self._writeTimer is not None and self._writeTimer.active():
            self._writeTimer.cancel()
        self._writeTimer = None
        if active is not None:
            source, _, d = active
            source.stopProducing()
            if not d.called:
                d.errback(reason)
        queue, self.queue = self.queue, deque()
        for item in queue:
            if isinstance(item, tuple):
                item[3].errback(reason)

    # -- the write deadline ------------------------------------------------------

    def outputWaiting(self) -> int:
        """
        See C{FrameProtocol.outputWaiting}.
        """
        return unsent(self.protocol.transport) or int(self.pressure.paused)

    def outputProgress(self) -> tuple[int, int]:
        """
        See C{FrameProtocol.outputProgress}.
        """
        return (self.handed - unsent(self.protocol.transport), self.resumes)

    def watchWrites(self) -> None:
        """
        Output waits for the peer: start the write deadline's checks, unless
        they run already or there is no deadline.
        """
        protocol = self.protocol
        if self._writeTimer is not None or protocol.writeTimeout is None:
            return
        clock = protocol._clock()
        self._writeMark = self.outputProgress()
        self._writeStalledSince = clock.seconds()
        self._writeTimer = clock.callLater(protocol.writeTimeout / 4, self._checkWrite)

    def _checkWrite(self) -> None:
        """
        Every quarter of the write deadline while output waits: note whether
        the peer took some, and give up once it has taken none for the
        whole deadline.  Stops when nothing waits (the next write re-arms).
        """
        self._writeTimer = None
        protocol = self.protocol
        timeout = protocol.writeTimeout
        if timeout is None or protocol._closing or protocol.transport is None:
            return
        if not self.outputWaiting():
            return
        clock = protocol._clock()
        now = clock.seconds()
        progress = self.outputProgress()
        if protocol.outputProgressed(self._writeMark, progress):
            self._writeStalledSince = now
        self._writeMark = progress
        left = timeout - (now - self._writeStalledSince)
        if left <= timeout * 1e-6:
            protocol.writeTimedOut()
            return
        self._writeTimer = clock.callLater(min(timeout / 4, left), self._checkWrite)
