# -*- test-case-name: tests.test_speedups -*-
"""
What the protocol does with C{twisted.internet.tcp.Connection}'s private
state: a send straight to the socket when its buffer is empty (the direct
send), the count of bytes its buffer still holds (for the write deadline),
and a C{startTLS} that first sends what is gathered.

Each checks that the attributes it relies on are there (they are private,
so they may change between Twisted versions) and otherwise, or with the
speed paths disabled (L{twisted_frames._speedups.setEnabled}), falls back to
the public API: C{transport.write}, and plain C{transport.startTLS} with
nothing held back from it.  The buffered count, which the write deadline
needs, is read wherever its attributes are there (without them the count is
0, as for in-memory transports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakSet

from twisted.internet import abstract, tcp

from . import enabled

#: What the direct send reads of a connection, besides its public state.
_DIRECT_ATTRIBUTES = (
    "TLS",
    "connected",
    "disconnecting",
    "dataBuffer",
    "offset",
    "_tempDataLen",
    "_aborting",
    "_writeDisconnecting",
    "_writeDisconnected",
    "writeSomeData",
)
#: What the count of buffered bytes reads.
_BUFFER_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataLen")


def canSendDirect(transport: Any) -> bool:
    """
    @return: whether L{sendDirect} may be used on C{transport}: a TCP
        connection with the private state it reads.
    """
    return (
        enabled()
        and isinstance(transport, tcp.Connection)
        and all(hasattr(transport, name) for name in _DIRECT_ATTRIBUTES)
    )


def sendDirect(t: Any, data: bytes) -> bytes:
    """
    Send C{data} with one C{send()} straight to the socket of C{t} (for
    which L{canSendDirect} is true) when nothing waits in its buffer before
    it, so that order is kept: the transport's own C{write} would buffer it,
    ask the reactor to watch the socket for writability and send it on the
    next loop iteration.

    @return: what the socket did not take, for C{t.write}: all of C{data}
        when it was not sent (or the connection is lost, which the
        transport's own write finds out and closes the usual way).
    """
    if (
        t.connected
        and not t.TLS
        and not t.disconnecting
        and not t._aborting
        and not t._writeDisconnecting
        and not t._writeDisconnected
        and not t._tempDataLen
        and t.offset == len(t.dataBuffer)
    ):
        sent = t.writeSomeData(data)
        if type(sent) is int:
            return data[sent:] if sent else data
    return data


def unsent(transport: Any) -> int:
    """
    @return: bytes the transport holds that its socket has not taken: in
        the TCP transport's buffer (under the TLS layer, if any); 0 for
        transports that do not say (in-memory ones, and any whose buffer
        is no longer kept in these attributes).
    """
    t = transport
    if not isinstance(t, abstract.FileDescriptor):
        t = getattr(t, "transport", None)
        if not isinstance(t, abstract.FileDescriptor):
            return 0
    # Not a speed path but the write deadline's measure: read whatever the
    # switch says, wherever the attributes are there.
    if not all(hasattr(t, name) for name in _BUFFER_ATTRIBUTES):
        return 0
    return len(t.dataBuffer) - t.offset + t._tempDataLen  # type: ignore[attr-defined,no-any-return]


def sendBeforeStartTLS(transport: Any, send: Callable[[], None]) -> bool:
    """
    Make C{transport.startTLS} call C{send} first: what was written before
    TLS starts must go out before it, in the clear (the reply to a
    STARTTLS-style request), not be encrypted with what follows.

    @return: whether writes may be held back from C{transport} (it has no
        C{startTLS}, or its C{startTLS} now sends them first); C{False}
        where the method cannot be wrapped, or the speed paths are
        disabled, and C{startTLS} stays as it is.
    """
    startTLS = getattr(transport, "startTLS", None)
    if startTLS is None:
        return True
    if not enabled():
        return False

    def sendThenStartTLS(*args: Any, **kwargs: Any) -> Any:
        send()
        return startTLS(*args, **kwargs)

    try:
        transport.startTLS = sendThenStartTLS
    except AttributeError:
        return False
    return True


_tuned: WeakSet[Any] = WeakSet()


def tuneOnce(connection: Any, tune: Callable[[Any], None]) -> None:
    """
    Call C{tune} with C{connection}'s transport, once per connection
    (remembered here, not as an attribute set on the connection).
    """
    if connection not in _tuned:
        _tuned.add(connection)
        tune(connection.transport)
