# -*- test-case-name: tests.test_receive_direct -*-
"""
A body received off the reactor: the rest of a large body read from a
plain TCP connection's socket by a worker thread, into one reused buffer,
and handed to a consumer there (the file sinks hash and write it), with no
trip through the reactor per read.

Twisted's TCP transport reads at most C{bufferSize} bytes per C{doRead}
(what the kernel has at that moment, often 64 KiB or less on loopback), and
each read is a new C{bytes} object through C{dataReceived}, the protocol,
the sink and a writer job: thousands of reactor turns per GiB, on the cores
the sender needs too.  L{DirectReceive} takes the socket for the body's
remaining bytes only while the transport is not reading (the protocol
pauses it first), reads exactly those bytes (the next frame stays in the
kernel for the transport) and gives the socket back.

The thread works on a duplicate of the socket's descriptor, so a
connection closed by the reactor meanwhile never leaves it reading a
reused descriptor; it waits with C{poll} on the socket and on a wake-up
pipe, so L{DirectReceive.cancel} (the connection is lost, the server shuts
down, the reactor stops) ends it at once.  Nothing here calls Twisted from
the thread but C{reactor.callFromThread}.

Only for a real TCP connection in the clear, with the speed paths enabled
(L{canReceiveDirect}); anything else (TLS, in-memory transports of tests,
C{TWISTED_FRAMES_NO_SPEEDUPS=1}) keeps the reactor's reading.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, tcp
from twisted.python.failure import Failure

from . import enabled, tlsown
from .decrypt import recordReader
from .tcp import lostHere

#: The buffer each receive reads into, reused for the whole body: large
#: enough that a hash update and a file write per fill cost nothing per
#: byte, small enough to stay out of the server's memory budget.
BUFFER_SIZE = 2 * 1024 * 1024
#: How often, at most, the thread tells the reactor how many bytes it has
#: received (the byte counters, the idle deadline, a client's progress).
PROGRESS_INTERVAL = 0.1
#: The longest one wait for the socket, even with no wake-up: a bound on
#: how long a lost wake-up could keep a thread (it never should).
MAX_WAIT = 1.0
#: Receives running at once in the process, at most; past it bodies are
#: read by the reactor as before (each receive is a thread and a buffer).
MAX_ACTIVE = 32

#: Why a receive ended before all its bytes arrived.
COMPLETE, CANCELLED, STALLED, LOST = "complete", "cancelled", "stalled", "lost"

# Touched on the reactor thread only.
_active: set[DirectReceive] = set()
_shutdownHooked = False


def canReceiveDirect(transport: Any) -> bool:
    """
    @return: whether a body may be received from C{transport} off the
        reactor: a connected TCP connection of Twisted's own in the clear
        (not TLS, not closing), with the speed paths enabled.
    """
    return bool(
        enabled()
        and isinstance(transport, tcp.Connection)
        and getattr(transport, "connected", False)
        and not getattr(transport, "TLS", True)
        and not getattr(transport, "disconnecting", True)
        and hasattr(transport, "socket")
        and hasattr(transport, "reactor")
        and len(_active) < MAX_ACTIVE
    )


def _cancelAll() -> None:
    for receive in list(_active):
        receive.cancel()


class DirectReceive:
    """
    Receive exactly C{length} bytes from a connection's socket in a thread
    of its own (calling the object starts it, with the consumer), then
    stop.  Its own thread, not one of the reactor's pool: a slow sender
    must not hold a thread that other requests' disk work waits for.

    Made on the reactor thread, while the transport is not reading.  What
    the thread did is read on the reactor thread once it has returned:
    L{taken} bytes were read from the socket (the protocol's stream moved
    on by that much), L{consumed} of them were handed to the consumer, and
    L{outcome} says why it stopped.

    @ivar taken: bytes read off the socket.
    @ivar consumed: bytes the consumer took without raising.
    @ivar reported: bytes already passed to C{progress}.
    @ivar outcome: L{COMPLETE}, L{CANCELLED}, L{STALLED} (nothing arrived
        for C{timeout} seconds) or L{LOST} (the peer closed or reset the
        connection: the transport, reading again, finds it out itself).
    @ivar reset: whether the socket reported an error (a reset) rather
        than the end of the stream; L{markLost} then.
    """

    def __init__(
        self,
        transport: Any,
        length: int,
        timeout: float | None,
        progress: Callable[[int], None],
        bufferSize: int = BUFFER_SIZE,
    ) -> None:
        """
        @raise OSError: no descriptor is left for the receive's duplicate
            of the socket or its wake-up pipe (nothing is held then).
        """
        global _shutdownHooked
        self.length = length
        self.timeout = timeout
        self.taken = 0
        self.consumed = 0
        self.reported = 0
        self.outcome = CANCELLED
        self.reset = False
        self._socketOf = transport
        self._progress = progress
        self._bufferSize = max(1, min(bufferSize, length))
        self._callFromThread = transport.reactor.callFromThread
        self._cancelled = False
        self._fd = os.dup(transport.socket.fileno())
        try:
            self._wakeRead, self._wakeWrite = os.pipe()
        except OSError:
            os.close(self._fd)
            raise
        os.set_blocking(self._wakeWrite, False)
        self._released = False
        _active.add(self)
        if not _shutdownHooked:
            # A reactor stopping waits for its worker threads: wake every
            # receive first, so that none keeps it waiting.
            _shutdownHooked = True
            transport.reactor.addSystemEventTrigger("before", "shutdown", _cancelAll)

    def cancel(self) -> None:
        """
        Stop the thread as soon as it can (at once if it is waiting for the
        socket); safe to call from the reactor thread at any time, also
        before the thread starts or after it has ended.
        """
        self._cancelled = True
        if not self._released:
            try:
                os.write(self._wakeWrite, b"x")
            except OSError:
                pass

    def __call__(self, consume: Callable[[memoryview], None]) -> defer.Deferred[None]:
        """
        Start the thread: it reads the body's bytes and hands them to
        C{consume} in order (in that thread), a buffer at a time.  Call
        once.

        @return: a Deferred firing on the reactor thread once the thread
            has ended, or failing with what C{consume} raised (it is not
            called again; the bytes read with it are counted in L{taken}).
        """
        done: defer.Deferred[None] = defer.Deferred()
        sock = socket.socket(fileno=self._fd)
        self._fd = -1

        def run() -> None:
            failure: Failure | None = None
            try:
                self._receive(sock, consume)
            except BaseException:
                failure = Failure()
            finally:
                sock.close()
                if self.taken > self.reported:
                    self._report()
            self._callFromThread(ended, failure)

        def ended(failure: Failure | None) -> None:
            if failure is None:
                done.callback(None)
            else:
                done.errback(failure)

        threading.Thread(target=run, name="frames-receive", daemon=True).start()
        return done

    def release(self) -> None:
        """
        On the reactor thread, once the thread has ended (or if it never
        started): close what this receive holds.
        """
        if self._released:
            return
        self._released = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        os.close(self._wakeRead)
        os.close(self._wakeWrite)
        _active.discard(self)

    def _receive(self, sock: socket.socket, consume: Callable[[memoryview], None]) -> None:
        view = memoryview(bytearray(self._bufferSize))
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wakeRead, select.POLLIN)
        monotonic = time.monotonic
        lastData = lastReport = monotonic()
        remaining = self.length - self.taken
        filled = 0
        while remaining:
            if self._cancelled:
                self.outcome = CANCELLED
                return
            try:
                n = self._read(sock, view[filled:], min(len(view) - filled, remaining))
            except (BlockingIOError, InterruptedError):
                if filled:
                    # Nothing more yet: hand on what is here meanwhile.
                    self._consume(consume, view[:filled])
                    filled = 0
                    continue
                wait = MAX_WAIT
                if self.timeout is not None:
                    left = self.timeout - (monotonic() - lastData)
                    if left <= 0:
                        self.outcome = STALLED
                        return
                    wait = min(wait, left)
                poller.poll(wait * 1000)
                continue
            except OSError:
                # Reset or similar, which the socket reports only once: see
                # markLost.
                self.reset = True
                n = 0
            if not n:
                if filled:
                    self._consume(consume, view[:filled])
                self.outcome = LOST
                return
            self.taken += n
            filled += n
            remaining -= n
            lastData = now = monotonic()
            if filled == len(view) or not remaining:
                self._consume(consume, view[:filled])
                filled = 0
            if now - lastReport >= PROGRESS_INTERVAL:
                lastReport = now
                self._report()
        self.outcome = COMPLETE

    def markLost(self) -> None:
        """
        On the reactor thread, once the thread has ended with L{reset}:
        the socket's error was read here, so the transport's next read or
        write reports the connection lost, not closed cleanly
        (L{twisted_frames._speedups.tcp.lostHere}).
        """
        lostHere(self._socketOf)

    def _read(self, sock: socket.socket, view: memoryview, count: int) -> int:
        """
        Read up to C{count} body bytes into C{view} (in the thread).

        @return: how many (0: the peer has closed the connection).
        @raise BlockingIOError: nothing to read now.
        @raise OSError: the connection is lost.
        """
        return sock.recv_into(view, count)

    def _consume(self, consume: Callable[[memoryview], None], view: memoryview) -> None:
        consume(view)
        self.consumed += len(view)

    def _report(self) -> None:
        n = self.taken - self.reported
        self.reported = self.taken
        self._callFromThread(self._progress, n)


#: Ciphertext read from the socket at a time over TLS, into one reused
#: buffer: a few records per read.
TLS_READ = 256 * 1024
#: Cleartext asked of pyOpenSSL's C{recv_into} at a time (where the direct
#: record reader of L{twisted_frames._speedups.decrypt} cannot be used):
#: more than a record (16 KiB), small enough that its temporary buffer for
#: it comes from the heap.
TLS_DECRYPT = 64 * 1024
#: What the thread uses of the pyOpenSSL C{Connection}.
_TLS_METHODS = ("recv_into", "bio_write", "bio_read")


def canReceiveTLS(transport: Any) -> bool:
    """
    @return: whether a body may be received from C{transport} off the
        reactor over TLS (L{TLSReceive}): a TLS connection a thread may own
        (L{tlsown.canOwn}), with the speed paths enabled.
    """
    return tlsown.canOwn(transport, _TLS_METHODS) and len(_active) < MAX_ACTIVE


def readyForTLS(transport: Any) -> bool:
    """
    @return: whether a L{TLSReceive} could take C{transport} now (call
        it on the reactor's turn the receive would start on, not from
        inside the TLS layer): no other thread owns it, it is not closing,
        and its TLS layer holds no writes (what it buffers for its next
        reactor iteration is flushed).
    """
    return tlsown.TLSOwnership(transport, lambda: None).usable()


class TLSReceive(DirectReceive):
    """
    A L{DirectReceive} over TLS: the thread owns the TLS connection while
    it receives (from L{__call__} to L{release}), decrypting what it reads
    off the socket itself.  Made and called on the reactor thread, never
    inside a call of the TLS layer (which goes on decrypting when it
    returns): the protocol starts it on a later turn of the reactor.

    @ivar transport: the TLS layer.
    @ivar below: its TCP transport.
    @ivar error: what OpenSSL raised in the thread (the connection is then
        failed with it on L{release}), if anything.
    """

    def __init__(
        self,
        transport: Any,
        length: int,
        timeout: float | None,
        progress: Callable[[int], None],
        bufferSize: int = BUFFER_SIZE,
    ) -> None:
        super().__init__(transport.transport, length, timeout, progress, bufferSize)
        self.transport = transport
        self.below = transport.transport
        self.error: BaseException | None = None
        self._ownership = tlsown.TLSOwnership(transport, self.cancel)
        self._connection = transport._tlsConnection
        self._ssl = sys.modules["OpenSSL.SSL"]
        #: Decrypts every whole record ready into the buffer in one call,
        #: where pyOpenSSL's binding allows (else C{recv_into}, a record a
        #: call).
        self._reader = recordReader(self._connection)
        self._cipher = memoryview(bytearray(TLS_READ))

    @property
    def owned(self) -> bool:
        """
        Whether the thread owns the connection now.
        """
        return self._ownership.owned

    def __call__(self, consume: Callable[[memoryview], None]) -> defer.Deferred[None]:
        """
        Take the connection and start the thread (L{DirectReceive.__call__});
        if the connection cannot be taken now (it is closing, a write is
        buffered in the TLS layer), or the receive was cancelled first,
        take nothing: the Deferred fires at once, with L{taken} 0.
        """
        if (
            self._cancelled
            or self._connection is not self.transport._tlsConnection
            or not self._ownership.usable()
        ):
            self.outcome = CANCELLED
            return defer.succeed(None)
        self._ownership.take()
        return super().__call__(consume)

    def release(self) -> None:
        """
        On the reactor thread, once the thread has ended and the protocol
        has taken up what it received: give the connection back, send the
        records OpenSSL made meanwhile, replay what was held, then let the
        TLS layer decrypt and deliver what is left in the connection
        (beyond the body's end, or the body's rest if it stopped early),
        or fail it with the thread's TLS error.
        """
        owned = self._ownership.owned
        super().release()
        if not owned:
            return
        t = self.transport
        self._ownership.give()
        live = t._tlsConnection is self._connection and not t._lostTLSConnection
        if live:
            records = self._records()
            if records and self.below.connected:
                self.below.write(records)
        self._ownership.replay()
        if not live or t._tlsConnection is not self._connection or t._lostTLSConnection:
            return
        if self.error is not None:
            t._tlsShutdownFinished(Failure(self.error))
        else:
            t._flushReceiveBIO()

    def _records(self) -> bytes:
        """
        @return: all the records in the connection's send BIO.
        """
        parts = []
        while True:
            try:
                parts.append(self._connection.bio_read(TLS_READ))
            except self._ssl.WantReadError:
                return b"".join(parts)

    def _read(self, sock: socket.socket, view: memoryview, count: int) -> int:
        connection = self._connection
        reader = self._reader
        while True:
            n = -1 if reader is None else reader(view, count)
            if n > 0:
                return n
            if n < 0:
                # No direct reader, or something other than data or "needs
                # more": pyOpenSSL reads the same state and says what.
                try:
                    return int(connection.recv_into(view, min(count, TLS_DECRYPT)))
                except self._ssl.WantReadError:
                    pass
                except self._ssl.ZeroReturnError:
                    # The peer's close: the TLS layer reads it again on release.
                    return 0
                except self._ssl.Error as e:
                    self.error = e
                    return 0
            got = sock.recv_into(self._cipher)
            if not got:
                return 0
            connection.bio_write(self._cipher[:got])
