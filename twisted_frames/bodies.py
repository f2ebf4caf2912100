# -*- test-case-name: tests.test_protocol -*-
"""
Where bodies go and come from: L{BodySink} and its stock kinds (in memory,
discarded), and L{Pipe}, a sink that is also a body source (the C{ping}
echo).  A L{twisted_frames.protocol.FrameProtocol} asks its
C{messageStarted} for a sink for each body it receives, and streams a body
it sends from an L{twisted_frames.sending.IBodySource}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer


class BodySink:
    """
    Where one incoming body goes.  Subclass and override; every hook is
    called at most once except L{bodyData}.

    The sink may call C{producer.pauseProducing()} to stop the connection
    reading (because its destination is busy) and C{resumeProducing()} later.

    @cvar stopsAtShutdown: whether a server that is shutting down cuts this
        body short (L{FrameProtocol.abandonBody}) and answers its request
        C{shutting_down} at once, instead of reading it to its end within
        the grace period: true for uploads, whose partial file is kept for
        resuming; false where the body's bytes are answered as they come
        (the C{ping} echo) or feed a command that is being stopped anyway.
    """

    stopsAtShutdown = False

    #: Whether L{receiveDirect} may be offered now (a sink whose bytes go
    #: to a file may say so, as a property, once it is ready for them).
    receivesDirect = False

    def receiveDirect(self, receive: DirectReceiver) -> defer.Deferred[None] | None:
        """
        Offer to receive the rest of the body off the reactor: the sink
        calls C{receive(consume)} once everything it was already given by
        L{bodyData} is written; that starts a thread which calls
        C{consume(view)} with each piece (a C{memoryview} of a reused
        buffer, valid only during the call; it may raise to stop the
        receive) and returns a Deferred firing once the thread has ended,
        or failing with what C{consume} raised.  The sink handles that
        failure as it would a failed write (its request's error), and fires
        the Deferred it returns here (never with a failure) once the
        receive has ended.  Only offered while
        L{receivesDirect} is true; the protocol then counts the bytes and
        calls L{bodyFinished} as usual.

        @return: C{None} to refuse (the body goes on through L{bodyData}).
        """
        return None

    def bodyProgress(self, count: int) -> None:
        """
        C{count} more bytes of the body were received off the reactor (and
        are given to C{consume}, not to L{bodyData}): for progress reports.
        """

    def bodyStarted(self, length: int, producer: IPushProducer) -> None:
        """
        The body's length is known; its bytes follow.
        """

    def bodyData(self, data: bytes) -> None:
        """
        Some of the body's bytes, in order.
        """

    def bodyFinished(self) -> None:
        """
        All C{length} bytes have been delivered.
        """

    def bodyFailed(self, reason: Failure) -> None:
        """
        The connection was lost before the body was complete.
        """


#: What L{BodySink.receiveDirect} is given: called with C{consume}, it
#: starts a thread that reads the body's bytes and calls C{consume} with
#: them, and returns a Deferred firing once that thread has ended.
DirectReceiver = Callable[[Callable[[memoryview], None]], "defer.Deferred[None]"]


class BufferSink(BodySink):
    """
    Gather a (small) body in memory and hand it over whole.
    """

    def __init__(self, done: Any) -> None:
        self._chunks: list[bytes] = []
        self._done = done

    def bodyData(self, data: bytes) -> None:
        self._chunks.append(data)

    def bodyFinished(self) -> None:
        chunks, self._chunks = self._chunks, []
        self._done(chunks[0] if len(chunks) == 1 else b"".join(chunks))


class DiscardSink(BodySink):
    """
    Read a body and throw it away: used after a request-level error, so that
    the connection stays in step and usable.
    """


@implementer(IPushProducer)
class Pipe(BodySink):
    """
    A sink that is also a body source: what is received is sent on as it
    arrives (the C{ping} echo).  When the sending side is paused, the
    receiving side is paused too, so nothing piles up in between.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self._consumer: Any = None
        self._receive: IPushProducer | None = None
        self._held: list[bytes] = []
        self._sendPaused = False
        self._finished = False
        self._failure: Failure | None = None
        self._done: defer.Deferred[None] = defer.Deferred()

    # BodySink side
    def bodyStarted(self, length: int, producer: IPushProducer) -> None:
        self._receive = producer
        if self._consumer is None or self._sendPaused:
            producer.pauseProducing()

    def bodyData(self, data: bytes) -> None:
        if self._consumer is None or self._sendPaused or self._held:
            self._held.append(data)
            if self._receive is not None:
                self._receive.pauseProducing()
        else:
            self._consumer.write(data)

    def bodyFinished(self) -> None:
        self._finished = True
        self._maybeDone()

    def bodyFailed(self, reason: Failure) -> None:
        self._fail(reason)

    def _fail(self, reason: Failure) -> None:
        self._held = []
        if self._consumer is None:
            # Not started: nobody waits on _done yet (failing it now would be
            # an unhandled error); startProducing, if it comes, reports this.
            self._failure = reason
        elif not self._done.called:
            self._done.errback(reason)

    # body source side
    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        if self._failure is not None:
            return defer.fail(self._failure)
        self._consumer = consumer
        self._flush()
        return self._done

    def pauseProducing(self) -> None:
        self._sendPaused = True
        if self._receive is not None:
            self._receive.pauseProducing()

    def resumeProducing(self) -> None:
        self._sendPaused = False
        self._flush()

    def stopProducing(self) -> None:
        self._fail(Failure(ConnectionError("stopped")))

    def _flush(self) -> None:
        while self._held and not self._sendPaused and self._consumer is not None:
            self._consumer.write(self._held.pop(0))
        if not self._held and not self._sendPaused and self._receive is not None:
            self._receive.resumeProducing()
        self._maybeDone()

    def _maybeDone(self) -> None:
        if self._finished and not self._held and self._consumer and not self._done.called:
            self._done.callback(None)
