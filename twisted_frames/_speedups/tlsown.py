# -*- test-case-name: tests.test_tlssend -*-
"""
A worker thread owning a TLS connection's pyOpenSSL C{Connection} while the
reactor holds off it: what the threaded send (L{twisted_frames._speedups.tlssend})
and the threaded receive (L{twisted_frames._speedups.recv.TLSReceive}) share.

A pyOpenSSL C{Connection} must never be used from two threads at once.
While a thread owns it (L{TLSOwnership.take} to L{TLSOwnership.give}), the
TCP transport's reading is stopped (a resume asked for meanwhile is
remembered and applied at the end), and whatever the reactor would do with
the TLS layer (C{write}, C{writeSequence}, C{loseConnection},
C{abortConnection}, C{connectionLost}, C{unregisterProducer},
C{stopProducing}) is held and replayed, in order, afterwards
(L{TLSOwnership.replay}); an abort, a connection loss or a stop also calls
the owner's C{stop}, which ends the thread soon.

Everything here checks the private attributes it relies on (L{canOwn});
otherwise the callers leave the connection to the TLS layer on the reactor.
"""

from __future__ import annotations

import select
import sys
from collections.abc import Callable
from typing import Any
from weakref import WeakSet

from twisted.internet import tcp

from . import enabled

#: What is read of the TLS layer (C{TLSMemoryBIOProtocol}).
_TLS_ATTRIBUTES = (
    "_tlsConnection",
    "_appSendBuffer",
    "_lostTLSConnection",
    "_handshakeDone",
    "_aborted",
    "_aggregator",
    "disconnecting",
    "transport",
)
#: What the TLS layer does that touches its C{Connection}: held while a
#: thread owns it and replayed after.
_HELD = (
    "write",
    "writeSequence",
    "loseConnection",
    "abortConnection",
    "connectionLost",
    "unregisterProducer",
    "stopProducing",
)
#: What the reactor does with the TCP transport that is held: its reading
#: (a read of a readiness event polled before reading stopped is dropped;
#: the socket is still readable afterwards).
_BELOW_HELD = ("startReading", "stopReading", "doRead")
#: Of the first, what also stops the thread.
_STOPPING = frozenset({"abortConnection", "connectionLost", "stopProducing"})

#: The TLS transports a thread owns now.
_owned: WeakSet[Any] = WeakSet()


def isOwned(transport: Any) -> bool:
    """
    @return: whether a thread owns C{transport} now: nothing but its
        (held) public methods may be used.
    """
    return transport in _owned


def tlsModule() -> Any:
    """
    @return: C{twisted.protocols.tls} if something has imported it (see
        L{twisted_frames._speedups.tls}), else C{None}.
    """
    return sys.modules.get("twisted.protocols.tls")


def canOwn(transport: Any, connectionMethods: tuple[str, ...]) -> bool:
    """
    @param connectionMethods: what the thread calls on the pyOpenSSL
        C{Connection}.

    @return: whether L{TLSOwnership} may be used on C{transport}: a
        C{BufferingTLSTransport} with the private state this relies on,
        whose C{Connection} has C{connectionMethods}, over a connected TCP
        connection of Twisted's own with a socket, C{poll} available, and
        the speed paths enabled.
    """
    tls = tlsModule()
    if not enabled() or tls is None or not hasattr(select, "poll"):
        return False
    buffering = getattr(tls, "BufferingTLSTransport", None)
    if buffering is None or not isinstance(transport, buffering):
        return False
    if not all(hasattr(transport, name) for name in _TLS_ATTRIBUTES):
        return False
    connection = transport._tlsConnection
    below = transport.transport
    return (
        connection is not None
        and all(callable(getattr(connection, name, None)) for name in connectionMethods)
        and callable(getattr(transport._aggregator, "flush", None))
        and all(callable(getattr(transport, name, None)) for name in _HELD)
        and isinstance(below, tcp.Connection)
        and getattr(below, "connected", False)
        and hasattr(below, "socket")
        and callable(getattr(below, "startReading", None))
        and callable(getattr(below, "stopReading", None))
    )


class TLSOwnership:
    """
    One TLS connection's C{Connection}, taken from the reactor for a
    thread and given back.  Used on the reactor thread only.

    @ivar transport: the TLS layer.
    @ivar below: its TCP transport.
    @ivar owned: whether a thread owns the connection now.
    """

    def __init__(self, transport: Any, stop: Callable[[], None]) -> None:
        """
        @param stop: called (on the reactor thread) when the reactor aborts
            or loses the connection, or stops its producer, while owned:
            it should make the thread end soon.
        """
        self.transport = transport
        self.below = transport.transport
        self.owned = False
        self._stop = stop
        self._held: list[tuple[str, tuple[Any, ...]]] = []
        self._saved: dict[str, Any] = {}
        self._reading = False

    def usable(self) -> bool:
        """
        Whether the connection may be taken now: the TLS layer is in a state
        this knows (handshake done, not closing), no other thread owns it
        (a body sent and one received at once) and, after flushing what it
        buffers for its next reactor iteration, holds no writes.
        """
        t = self.transport
        below = self.below
        if (
            self.owned
            or isOwned(t)
            or t._tlsConnection is None
            or not t._handshakeDone
            or t._lostTLSConnection
            or t._aborted
            or t.disconnecting
            or t.transport is not below
            or not below.connected
            or below.disconnecting
            or getattr(below, "_aborting", True)
            or getattr(below, "_writeDisconnecting", True)
            or getattr(below, "_writeDisconnected", True)
        ):
            return False
        t._aggregator.flush()
        return not t._appSendBuffer

    def take(self) -> None:
        """
        Own the connection (after L{usable}): stop the TCP transport
        reading and hold what the reactor would do with the TLS layer.
        """
        t = self.transport
        below = self.below
        self.owned = True
        _owned.add(t)
        self._reading = below in below.reactor.getReaders()
        below.stopReading()
        self._held = []
        self._saved = {name: vars(t).get(name) for name in _HELD}
        for name in _BELOW_HELD:
            self._saved[name] = vars(below).get(name)

        def holder(name: str) -> Callable[..., None]:
            def held(*args: Any) -> None:
                self._held.append((name, args))
                if name in _STOPPING:
                    self._stop()

            return held

        for name in _HELD:
            setattr(t, name, holder(name))

        def startReading() -> None:
            self._reading = True

        def stopReading() -> None:
            self._reading = False

        def doRead() -> None:
            # An event the reactor polled before reading was stopped: the
            # socket is still readable once reading resumes.
            self._reading = self._reading

        below.startReading = startReading
        below.stopReading = stopReading
        below.doRead = doRead

    def give(self) -> None:
        """
        Give the connection back (once the thread has ended): put back what
        L{take} replaced and resume reading if it was on (or was asked
        for).  What was held waits for L{replay}.
        """
        if not self.owned:
            return
        self.owned = False
        _owned.discard(self.transport)
        for obj, names in ((self.transport, _HELD), (self.below, _BELOW_HELD)):
            for name in names:
                saved = self._saved[name]
                if saved is None:
                    vars(obj).pop(name, None)
                else:
                    setattr(obj, name, saved)
        self._saved = {}
        if self._reading and self.below.connected:
            self.below.startReading()

    def replay(self) -> None:
        """
        After L{give}: do, in order, what was held.
        """
        held, self._held = self._held, []
        for name, args in held:
            getattr(self.transport, name)(*args)
