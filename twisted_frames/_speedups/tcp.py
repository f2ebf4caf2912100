# -*- test-case-name: tests.test_speedups -*-
"""
What the protocol does with C{twisted.internet.tcp.Connection}'s private
state: a send straight to the socket when its buffer is empty (the direct
send), a file sent with C{os.sendfile} the same way (L{sendFile}), the count
of bytes its buffer still holds (for the write deadline), and a
C{startTLS} that first sends what is gathered.

Each checks that the attributes it relies on are there (they are private,
so they may change between Twisted versions) and otherwise, or with the
speed paths disabled (L{twisted_frames._speedups.setEnabled}), falls back to
the public API: C{transport.write}, and plain C{transport.startTLS} with
nothing held back from it.  The buffered count, which the write deadline
needs, is read wherever its attributes are there (without them the count is
0, as for in-memory transports).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any
from weakref import WeakSet

from twisted.internet import abstract, main, tcp

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
    "socket",
    "SEND_LIMIT",
)
#: The send a plain TCP connection makes (L{sendDirect} makes it itself).
_tcpWriteSomeData = tcp.Connection.writeSomeData
#: The errors of a send that C{writeSomeData} reports as nothing sent.
_TRY_LATER = (errno.EWOULDBLOCK, errno.ENOBUFS)
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


def _nothingBefore(t: Any) -> bool:
    """
    @return: whether bytes sent straight to the socket of C{t} now go out
        in order: it is connected, not closing, not TLS, and its buffer is
        empty.
    """
    return bool(
        t.connected
        and not t.TLS
        and not t.disconnecting
        and not t._aborting
        and not t._writeDisconnecting
        and not t._writeDisconnected
        and not t._tempDataLen
        and t.offset == len(t.dataBuffer)
    )


def sendDirect(t: Any, data: bytes) -> bytes:
    """
    Send C{data} with one C{send()} straight to the socket of C{t} (for
    which L{canSendDirect} is true) when nothing waits in its buffer before
    it, so that order is kept: the transport's own C{write} would buffer it,
    ask the reactor to watch the socket for writability and send it on the
    next loop iteration.

    A plain TCP connection's own C{writeSomeData} is what this does,
    without its two Python calls and its C{memoryview} (each taking a
    share of a small message's cost): C{socket.send} of up to its
    C{SEND_LIMIT} bytes (Python retries an interrupted send itself), a
    socket that cannot take them now sending none.  A transport whose class
    has a C{writeSomeData} of its own (a UNIX socket's passes descriptors
    along), or more than C{SEND_LIMIT} bytes, goes through that method.

    @return: what the socket did not take, for C{t.write}: all of C{data}
        when it was not sent (or the connection is lost, which the
        transport's own write finds out and closes the usual way).
    """
    if not _nothingBefore(t):
        return data
    if type(t).writeSomeData is _tcpWriteSomeData and len(data) <= t.SEND_LIMIT:
        try:
            sent = t.socket.send(data)
        except OSError as e:
            if e.args[0] in _TRY_LATER:
                return data
            sent = main.CONNECTION_LOST
    else:
        sent = t.writeSomeData(data)
    if type(sent) is int:
        return data[sent:] if sent else data
    # The socket's error (a reset) is gone with this send: see lostHere.
    lostHere(t)
    return data


def lostHere(t: Any) -> None:
    """
    The socket of TCP connection C{t} reported the connection reset (or
    its writing side gone) to a send or receive made around the transport.
    The kernel reports such an error once: the transport's next read would
    find a clean end of the stream, and the connection would end as
    "closed cleanly".  Its next read or write (whichever the reactor calls
    first) reports it lost instead, as it would had it met the error
    itself.
    """

    def lost() -> Exception:
        return main.CONNECTION_LOST

    t.doRead = t.doWrite = lost


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


#: Socket errors after which the reactor, not the file sender, finds the
#: connection lost (it watches the socket for writability and reads the
#: error there, as for any write).
_LOST = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


def canSendFile(transport: Any) -> bool:
    """
    @return: whether L{sendFile} may be used on C{transport}: what
        L{canSendDirect} needs, C{os.sendfile}, and the producer state
        L{waitWritable} sets.
    """
    return (
        canSendDirect(transport)
        and hasattr(os, "sendfile")
        and hasattr(transport, "producerPaused")
        and hasattr(transport, "startWriting")
    )


def sendFile(t: Any, fd: int, offset: int, count: int) -> int | None:
    """
    Send up to C{count} bytes of file C{fd} from C{offset} with
    C{os.sendfile} straight to the socket of C{t} (for which
    L{canSendFile} is true), when nothing waits in its buffer before them.

    A connection that is closing once its output drains (C{disconnecting})
    still gets the file: the body must be completed before it closes.

    @return: the bytes sent (0: the file ended first); C{None} when
        nothing can be sent now (something is buffered, or the socket is
        full): call L{waitWritable} then; or -1 when nothing can be sent
        any more (the connection is lost or aborted, or its writing side
        shut): the reactor is about to end it.
    @raise OSError: on an error of the file.
    """
    if not t.connected or t.TLS or t._aborting or t._writeDisconnecting or t._writeDisconnected:
        return -1
    if t._tempDataLen or t.offset != len(t.dataBuffer):
        return None
    try:
        return os.sendfile(t.fileno(), fd, offset, count)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in _LOST:
            lostHere(t)
            return None
        raise


def sendLimit(t: Any) -> int:
    """
    @return: the most C{t}'s own C{doWrite} sends at once (its
        C{SEND_LIMIT}).
    """
    return int(getattr(t, "SEND_LIMIT", 128 * 1024))


def waitWritable(t: Any) -> None:
    """
    Have C{t} resume its (paused) streaming producer once its socket can
    take more: its C{doWrite} does that when its buffer is empty and
    C{producerPaused} is set, so the socket is watched for writability
    with nothing buffered.
    """
    t.producerPaused = True
    if t.connected:
        t.startWriting()
