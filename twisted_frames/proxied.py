# -*- test-case-name: tests.test_proxied -*-
"""
Listening behind a load balancer that speaks the PROXY protocol (HAProxy's
C{send-proxy} / C{send-proxy-v2}): C{--listen haproxy:tcp:8007:...}.

Twisted's own wrapper (L{twisted.protocols.haproxy.proxyEndpoint}) reads
the PROXY header and then makes C{getPeer()} return the client's address,
but it connects the wrapped protocol as soon as the balancer connects, B{before}
the header has arrived: the server's C{connectionMade} (where the connection
caps count the connection against its source, and the greeting is sent)
would see the balancer's address, and every client would share the
balancer's per-source cap.  L{ProxiedProtocol} connects the wrapped
protocol only once the header has been read, so everything the server does
with the peer's address (per-source caps, login failure delays, log lines)
sees the client's.  A connection that sends no valid header within
L{ProxiedFactory.headerTimeout} seconds, or anything but a header first, is
closed without a word (it is not the balancer, or not configured to send
the header).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol

# Twisted exports only proxyEndpoint; the wrapper and its parsers are the
# modules behind it (unchanged since Twisted 16), reused rather than copied.
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

#: The prefix of a C{--listen} endpoint string served behind a balancer.
PREFIX = "haproxy:"
#: Seconds a new connection has to send its PROXY header (the balancer
#: sends it at once, in the first packet).
DEFAULT_HEADER_TIMEOUT = 10.0
#: How the two versions of the header start (v1 is known from its first
#: line, v2 from its first 16 bytes).
_SIGNATURES = (V1Parser.PROXYSTR, V2Parser.PREFIX)


def isProxied(description: str) -> bool:
    """
    Whether a C{--listen} endpoint string is served behind a balancer.
    """
    return description[: len(PREFIX)].lower() == PREFIX


def innerDescription(description: str) -> str:
    """
    The endpoint string that actually listens: C{description} without its
    L{PREFIX}, if it has one.
    """
    return description[len(PREFIX) :] if isProxied(description) else description


class ProxiedProtocol(HAProxyProtocolWrapper):
    """
    Reads the PROXY header, then connects the wrapped protocol, whose
    transport's C{getPeer()} and C{getHost()} are then the client's and the
    balancer's frontend's addresses (for a C{LOCAL} or C{UNKNOWN} header, as
    HAProxy's own health checks may send, the balancer's connection's).
    """

    factory: ProxiedFactory
    _buffer = b""
    _deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        """
        Take the transport and wait for the header; the wrapped protocol is
        not connected yet (L{_connectWrapped}).
        """
        # ProtocolWrapper.makeConnection without its last step.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        timeout = self.factory.headerTimeout
        if timeout is not None:
            self._deadline = self.factory.clock.callLater(timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._deadline = None
        self._reject()

    def dataReceived(self, data: bytes) -> None:
        """
        Before the header: gather it (a first read may hold only part of
        it), then connect the wrapped protocol and hand it what followed.
        After: pass everything on.
        """
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._parser is None:
            self._buffer += data
            data, self._buffer = self._buffer, b""
            # v2's signature has newlines too: only a v1 line may be
            # shorter than the 16 bytes that tell v2 apart.
            complete = len(data) >= 16 or (data.startswith(V1Parser.PROXYSTR) and b"\n" in data)
            if not complete:
                if any(s.startswith(data[: len(s)]) for s in _SIGNATURES):
                    self._buffer = data
                    return
                self._reject()
                return
            if data[:12] == V2Parser.PREFIX and data[12] & 0xF0 == 0x20:
                self._parser = V2Parser()
            elif data[:5] == V1Parser.PROXYSTR:
                self._parser = V1Parser()
            else:
                self._reject()
                return
        try:
            self._proxyInfo, remaining = self._parser.feed(data)
        except InvalidProxyHeader:
            self._reject()
            return
        if self._proxyInfo is not None:
            self._connectWrapped()
            if remaining and self.wrappedProtocol is not None:
                self.wrappedProtocol.dataReceived(remaining)

    def _connectWrapped(self) -> None:
        self._cancelDeadline()
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]

    def _cancelDeadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _reject(self) -> None:
        # Not a balancer that sends the header: no reply, nothing logged per
        # connection (a scanner would fill the log).
        self._cancelDeadline()
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """
        Tell the wrapped protocol, if it was ever connected (it is once
        the header has been read).
        """
        self._cancelDeadline()
        if self._proxyInfo is not None:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        else:
            self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]
            self.wrappedProtocol = None  # type: ignore[assignment]


class ProxiedFactory(HAProxyWrappingFactory):
    """
    Wraps the server's factory: each connection is a L{ProxiedProtocol}.

    @ivar headerTimeout: seconds a connection has to send its PROXY header
        (C{None}: no limit).
    @ivar clock: the clock of that deadline.
    """

    protocol = ProxiedProtocol  # type: ignore[assignment]

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime,
        headerTimeout: float | None = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.headerTimeout = headerTimeout


@implementer(IStreamServerEndpoint)
class ProxiedEndpoint:
    """
    An endpoint whose connections start with a PROXY header
    (L{ProxiedFactory}); C{listen} listens on C{wrapped}.
    """

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        clock: IReactorTime,
        headerTimeout: float | None = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        self.wrapped = wrapped
        self.clock = clock
        self.headerTimeout = headerTimeout

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        """
        Listen on the wrapped endpoint with C{protocolFactory} behind a
        L{ProxiedFactory}.
        """
        return self.wrapped.listen(ProxiedFactory(protocolFactory, self.clock, self.headerTimeout))
