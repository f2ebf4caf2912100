# -*- test-case-name: tests.test_speedups -*-
"""
What the protocol does with the private state of Twisted's TLS layer
(C{twisted.protocols.tls}): the writes gathered during a read handed to
OpenSSL at once instead of a reactor iteration later, and the records
OpenSSL makes sent straight to the socket when its TCP transport has
nothing buffered (the direct send of L{twisted_frames._speedups.tcp},
under TLS).

C{BufferingTLSTransport} (what C{TLSMemoryBIOFactory} builds) puts every
write in a buffer that a C{callLater(0)} flushes on the next reactor
iteration: one delayed call and one iteration of latency per reply.  The
protocol already gathers what it writes while it handles a read into one
write (L{twisted_frames.sending}), so that write may go to the TLS layer at
once, behind whatever the buffer holds.  Below it, C{_flushSendBIO} hands
each record to C{transport.write}, which buffers it and asks the reactor
to watch the socket; L{sendRecordsDirect} makes it send the record with
one C{send()} when nothing waits before it.

Each checks the attributes it relies on (they are private, so they may
change between Twisted versions) and otherwise, or with the speed paths
disabled (L{twisted_frames._speedups.setEnabled}), leaves the TLS layer as
it is: writes through C{transport.write}.
"""

from __future__ import annotations

import sys
from typing import Any

from . import enabled
from .tcp import canSendDirect, sendDirect
from .tlssend import isOwned

#: How much C{_flushSendBIO} reads from the send BIO at a time, as Twisted does.
_BIO_READ = 2**15


def _tlsModule() -> Any:
    """
    @return: C{twisted.protocols.tls} if something has imported it, else
        C{None}.  Nothing here imports it (nor pyOpenSSL): a transport can
        only be a TLS one once it is loaded, and a C{frames} command without
        TLS must not pay for importing pyOpenSSL (see L{twisted_frames.cli}).
    """
    return sys.modules.get("twisted.protocols.tls")


def canWriteUnbuffered(transport: Any) -> bool:
    """
    @return: whether L{writeUnbuffered} may be used on C{transport}: a
        C{BufferingTLSTransport} with the buffer it is known to have.
    """
    tls = _tlsModule()
    if tls is None or not enabled():
        return False
    buffering = getattr(tls, "BufferingTLSTransport", None)
    aggregator = getattr(tls, "_AggregateSmallWrites", None)
    return (
        buffering is not None
        and aggregator is not None
        and callable(getattr(tls.TLSMemoryBIOProtocol, "write", None))
        and isinstance(transport, buffering)
        and isinstance(getattr(transport, "_aggregator", None), aggregator)
        and callable(getattr(transport._aggregator, "flush", None))
    )


def writeUnbuffered(transport: Any, data: bytes) -> None:
    """
    Write C{data} through C{transport}'s TLS layer now, behind what its
    buffer already holds (flushed first, so that order is kept); once the
    connection is lost (its buffer replaced), as its own C{write}, which
    drops it.
    """
    tls = _tlsModule()
    aggregator = transport._aggregator
    if not isinstance(aggregator, tls._AggregateSmallWrites) or isOwned(transport):
        # Lost, or a body is being sent from a worker thread (see
        # twisted_frames._speedups.tlssend): its write holds this.
        transport.write(data)
        return
    aggregator.flush()
    # The write below the buffering: encrypt and hand the records on now.
    tls.TLSMemoryBIOProtocol.write(transport, data)


def sendRecordsDirect(transport: Any) -> bool:
    """
    Make C{transport}'s TLS layer send the records it makes straight to
    the socket of its TCP transport when that has nothing buffered (the
    rest, or all of it otherwise, through the TCP transport's C{write}).

    @return: whether it was done: C{transport} is a C{TLSMemoryBIOProtocol}
        over a TCP connection (L{canSendDirect}) with the attributes this
        relies on, and the speed paths are enabled.
    """
    tls = _tlsModule()
    if not (enabled() and tls is not None and isinstance(transport, tls.TLSMemoryBIOProtocol)):
        return False
    # Loaded with twisted.protocols.tls.
    WantReadError = sys.modules["OpenSSL.SSL"].WantReadError
    below = getattr(transport, "transport", None)
    connection = getattr(transport, "_tlsConnection", None)
    if (
        below is None
        or connection is None
        or not canSendDirect(below)
        or not callable(getattr(transport, "_flushSendBIO", None))
        or not callable(getattr(connection, "bio_read", None))
    ):
        return False

    def flushSendBIO() -> None:
        # Twisted's own, but for the direct send.
        try:
            data = connection.bio_read(_BIO_READ)
        except WantReadError:
            return
        rest = sendDirect(below, data)
        if rest:
            below.write(rest)

    transport._flushSendBIO = flushSendBIO  # type: ignore[method-assign]
    return True
