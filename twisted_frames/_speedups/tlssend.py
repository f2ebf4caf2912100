# -*- test-case-name: tests.test_tlssend -*-
"""
A body sent over TLS from a worker thread, off the reactor: the thread
reads the file in large chunks, hashes them, encrypts them through the
connection's own pyOpenSSL C{Connection} into its memory BIO, reads the
records out in large reads and sends them on the socket.  cffi releases
the GIL around every OpenSSL call (and C{os.preadv}, the hashes' large
updates and C{socket.send} release it too), so this runs beside the
reactor, which otherwise spends its time on Python work per 16 KiB record
in C{twisted.protocols.tls}.

A pyOpenSSL C{Connection} must never be used from two threads at once.
While a slice runs (L{ThreadedSend.acquire} to L{ThreadedSend.release}),
the thread owns it (L{twisted_frames._speedups.tlsown.TLSOwnership}, shared
with the threaded receive): the TCP transport's reading is stopped (a resume
asked for meanwhile is remembered and applied at the end), and whatever the
reactor would do with the TLS layer (C{write}, C{writeSequence},
C{loseConnection}, C{abortConnection}, C{connectionLost}) is held and
replayed, in order, once the slice ends; an abort or a connection loss
also stops the thread, which then ends its slice within one chunk.  A slice
is taken only when nothing waits before it: the TLS layer's own buffers and
the TCP transport's write buffer are empty.

Ownership goes back to the reactor in slices: after L{SLICE_BYTES} or
L{SLICE_SECONDS}, as soon as the peer has sent something (a cancel, a
ping, a TLS 1.3 ticket or key update, its close: the reactor reads it
before the next slice), and when the socket stays full for the rest of
the slice's time (the records not sent then are handed to the TCP
transport's buffer, and the body waits, as with C{os.sendfile}, until the
socket takes more: the write deadline sees that wait as any other).

Everything here checks the private attributes it relies on
(L{canSendThreaded}) and otherwise, or with the speed paths disabled
(L{twisted_frames._speedups.setEnabled}), is not used: the body goes
through the TLS layer on the reactor as before.  The thread calls no
Twisted API: it is run with the caller's C{runInThread}, whose result
comes back through C{reactor.callFromThread}.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

from . import tlsown
from .tcp import canSendFile, lostHere, waitWritable
from .tlsown import isOwned

#: Cleartext bytes read, hashed and encrypted at a time: large enough that
#: the Python work per chunk is noise, small enough to stay in the CPU's
#: cache between the read, the hash and the encryption.
CHUNK = 256 * 1024
#: Most cleartext bytes of one slice before the reactor gets the
#: connection back (for progress, and to hear the peer).
SLICE_BYTES = 8 * 1024 * 1024
#: Longest a slice keeps the connection (a slow peer's slice ends on time).
SLICE_SECONDS = 0.05

#: What the thread uses of the pyOpenSSL C{Connection}.
_CONNECTION_ATTRIBUTES = ("send", "bio_read")

__all__ = ["ThreadedSend", "canSendThreaded", "isOwned"]

#: Socket errors that mean the connection is gone: the reactor finds it
#: lost once it has the connection back.
_LOST = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})

#: How a slice ended (L{Outcome.status}).
MORE = "more"
BLOCKED = "blocked"
LOST = "lost"
STOPPED = "stopped"
FAILED = "failed"


def canSendThreaded(transport: Any) -> bool:
    """
    @return: whether L{ThreadedSend} may be used on C{transport}: a TLS
        connection a thread may own (L{tlsown.canOwn}) over a TCP
        connection on which a file may be sent around the transport
        (L{twisted_frames._speedups.tcp.canSendFile}).
    """
    return tlsown.canOwn(transport, _CONNECTION_ATTRIBUTES) and canSendFile(transport.transport)


class Outcome:
    """
    What a slice did, for the reactor.

    @ivar sent: cleartext bytes encrypted into the connection (all of them
        are on the wire or in L{rest}).
    @ivar rest: records made but not sent (the socket was full): for the
        TCP transport's buffer.
    @ivar status: how the slice ended: L{MORE} (more may be sent at once),
        L{BLOCKED} (the socket is full), L{LOST} (the connection is gone),
        L{STOPPED} (the reactor stopped it), L{FAILED} (see L{error}).
    @ivar error: what was raised in the thread (reading the file, or by
        OpenSSL), if anything.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.rest = b""
        self.status = MORE
        self.error: BaseException | None = None


class ThreadedSend:
    """
    Send slices of a body over one TLS connection from a worker thread.

    @ivar owned: whether a slice owns the connection now.
    @ivar slices: slices run so far (for tests and measurements).
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.below = transport.transport
        self.slices = 0
        self._stopped = False
        self._wake: tuple[int, int] | None = None
        self._ownership = tlsown.TLSOwnership(transport, self.stop)
        self._buffer = bytearray(CHUNK)

    @property
    def owned(self) -> bool:
        """
        Whether a slice owns the connection now.
        """
        return self._ownership.owned

    def acquire(self) -> bool | None:
        """
        Take the connection for a slice (in the reactor thread), if nothing
        waits before the body: flush what the TLS layer buffers for its
        next reactor iteration, then check that it and the TCP transport
        hold nothing.

        @return: C{True}: the slice may run (call L{run} in a thread, then
            L{release}); C{None}: something is buffered, wait until the
            socket takes it; C{False}: the connection cannot be used so
            (it is closing, or the TLS layer is not in a state this knows),
            send through the TLS layer.
        """
        below = self.below
        if not self._ownership.usable():
            return False
        if below._tempDataLen or below.offset != len(below.dataBuffer):
            return None
        try:
            wake = os.pipe()
        except OSError:
            # Out of descriptors: the TLS layer needs none.
            return False
        os.set_blocking(wake[1], False)
        self._wake = wake
        self.slices += 1
        self._stopped = False
        self._ownership.take()
        return True

    def stop(self) -> None:
        """
        Make the running slice end as soon as it can (from the reactor
        thread): it checks between chunks and wakes from its wait for the
        socket.
        """
        self._stopped = True
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"x")
            except BlockingIOError:
                pass

    def release(self, outcome: Outcome) -> None:
        """
        Give the connection back to the reactor (in the reactor thread)
        after L{run}: the records not sent go to the TCP transport's
        buffer, reading is resumed if it was on (or was asked for), and
        what was held is replayed in order.  A lost connection is left for
        the reactor to find (its socket is watched for writability, which
        reports the error).
        """
        if not self.owned:
            return
        below = self.below
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        if outcome.rest and outcome.status != LOST:
            below.write(outcome.rest)
        self._ownership.give()
        if outcome.status == LOST and below.connected:
            # The socket's reset was read by the thread: see lostHere.
            lostHere(below)
            below.startWriting()
        self._ownership.replay()

    def waitWritable(self, pause: Callable[[], None]) -> None:
        """
        The socket is full (or the TCP transport holds records): pause the
        connection's producer as the TCP transport does when its buffer is
        full, through the TLS layer's wrapper of that producer (which must
        know, to pass the resume on), and have the TCP transport resume it
        once its socket takes more (see
        L{twisted_frames._speedups.tcp.waitWritable}).

        @param pause: pauses the producer when the TCP transport has none
            registered.
        """
        below = self.below
        producer = getattr(below, "producer", None)
        if producer is not None and below.streamingProducer:
            producer.pauseProducing()
        else:
            pause()
        waitWritable(below)

    # -- in the worker thread ------------------------------------------------

    def run(self, fill: Callable[[int, memoryview], None], count: int) -> Outcome:
        """
        Send up to C{count} bytes of the body (one slice), from a worker
        thread, between L{acquire} and L{release}; never raises.

        @param fill: C{fill(done, view)} fills C{view} with the body's next
            bytes, C{done} bytes into the slice, and hashes them.
        """
        outcome = Outcome()
        try:
            self._run(fill, min(count, SLICE_BYTES), outcome)
        except BaseException as e:
            outcome.error = e
            outcome.status = FAILED
        return outcome

    def _run(self, fill: Callable[[int, memoryview], None], count: int, outcome: Outcome) -> None:
        connection = self.transport._tlsConnection
        sock = self.below.socket
        wantRead = sys.modules["OpenSSL.SSL"].WantReadError
        deadline = time.monotonic() + SLICE_SECONDS
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        buffer = self._buffer
        # Records already in the send BIO go first (nothing else is ahead).
        if not self._sendAll(sock, self._records(connection, wantRead), deadline, outcome):
            return
        while outcome.sent < count:
            if self._stopped:
                outcome.status = STOPPED
                return
            if outcome.sent and (time.monotonic() >= deadline or poller.poll(0)):
                # The peer has sent something (or the slice's time is up):
                # the reactor reads it before the next slice.
                return
            view = memoryview(buffer)[: min(len(buffer), count - outcome.sent)]
            fill(outcome.sent, view)
            written = 0
            while written < len(view):
                written += connection.send(view[written:])
            outcome.sent += written
            if not self._sendAll(sock, self._records(connection, wantRead), deadline, outcome):
                return

    @staticmethod
    def _records(connection: Any, wantRead: type[Exception]) -> bytes:
        """
        @return: all the records in the connection's send BIO.
        """
        parts = []
        while True:
            try:
                parts.append(connection.bio_read(CHUNK + 65536))
            except wantRead:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _sendAll(self, sock: Any, data: bytes, deadline: float, outcome: Outcome) -> bool:
        """
        Send C{data} on the (non-blocking) socket, waiting for it to take
        more until C{deadline}, woken by L{stop}.

        @return: whether all was sent; if not, L{Outcome.status} says why
            and L{Outcome.rest} holds what is left.
        """
        view = memoryview(data)
        waiter: Any = None
        while view:
            try:
                view = view[sock.send(view) :]
                continue
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno in _LOST:
                    outcome.status = LOST
                    return False
                raise
            left = deadline - time.monotonic()
            if self._stopped or left <= 0:
                outcome.rest = bytes(view)
                outcome.status = STOPPED if self._stopped else BLOCKED
                return False
            if waiter is None:
                assert self._wake is not None
                waiter = select.poll()
                waiter.register(sock.fileno(), select.POLLOUT)
                waiter.register(self._wake[0], select.POLLIN)
            waiter.poll(max(1, int(left * 1000)))
        return True
