# -*- test-case-name: tests.test_tcpclient -*-
"""
Client endpoints for an IP address, with or without TLS, that do what
C{twisted.internet.endpoints}' C{TCP4ClientEndpoint}/C{TCP6ClientEndpoint}
and C{wrapClientTLS} do without importing that module.

C{twisted.internet.endpoints} loads the endpoint-string parser, the plugin
system, zip imports, systemd and stdio support, and its C{HostnameEndpoint}
resolves even an address with C{getaddrinfo} in the reactor's thread pool:
start-up time of the C{frames} client, spent before a byte is sent, for a
connection that is one C{reactor.connectTCP}.  A C{HOST:PORT} whose host is a name still goes
through C{HostnameEndpoint} (both address families, tried in turn), and an
endpoint string through C{clientFromString}: see
L{twisted_frames.client.connect}.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer, error
from twisted.internet.interfaces import (
    IConnector,
    IFileDescriptorReceiver,
    IHalfCloseableProtocol,
    IHandshakeListener,
    ILoggingContext,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer


class _Connected(Protocol):
    """
    Connects the protocol it stands in front of and fires a Deferred with it
    once the connection is made; then passes everything through (as
    C{endpoints._WrappingProtocol} does).
    """

    def __init__(self, connected: defer.Deferred[IProtocol], wrapped: IProtocol) -> None:
        self._connected = connected
        self._wrapped = wrapped
        for iface in (IHalfCloseableProtocol, IFileDescriptorReceiver, IHandshakeListener):
            if iface.providedBy(wrapped):
                directlyProvides(self, iface)

    def logPrefix(self) -> str:
        if ILoggingContext.providedBy(self._wrapped):
            prefix: str = self._wrapped.logPrefix()  # type: ignore[attr-defined]
            return prefix
        return self._wrapped.__class__.__name__

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._wrapped.makeConnection(self.transport)
        self._connected.callback(self._wrapped)

    def dataReceived(self, data: bytes) -> None:
        self._wrapped.dataReceived(data)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._wrapped.fileDescriptorReceived(descriptor)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._wrapped.connectionLost(reason)

    def readConnectionLost(self) -> None:
        self._wrapped.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self._wrapped.writeConnectionLost()  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        self._wrapped.handshakeCompleted()  # type: ignore[attr-defined]


class _Connecting(ClientFactory):
    """
    Builds the wrapped factory's protocol behind a L{_Connected}, and fails
    L{connected} if the connection cannot be made or is cancelled (as
    C{endpoints._WrappingFactory} does).

    @ivar connected: fires with the connected protocol.
    """

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self._wrapped = wrapped
        self._connector: IConnector | None = None
        self.connected: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)

    def startedConnecting(self, connector: IConnector) -> None:
        self._connector = connector

    def _cancel(self, connected: defer.Deferred[IProtocol]) -> None:
        # connectTCP calls startedConnecting before it returns, so before
        # anyone holds this Deferred.
        assert self._connector is not None
        connected.errback(error.ConnectingCancelledError(self._connector.getDestination()))
        self._connector.stopConnecting()

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        try:
            protocol = self._wrapped.buildProtocol(addr)
            if protocol is None:
                raise error.NoProtocol()
        except BaseException:
            self.connected.errback()
            return None
        return _Connected(self.connected, protocol)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.connected.called:
            self.connected.errback(reason)


@implementer(IStreamClientEndpoint)
class TCPAddressEndpoint:
    """
    Connect to an IPv4 or IPv6 address (no name to resolve) with
    C{reactor.connectTCP}.
    """

    def __init__(self, reactor: Any, host: str, port: int, timeout: float = 30) -> None:
        """
        @param host: an IPv4 or IPv6 address.
        @param timeout: seconds for the connection to be made.
        """
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        """
        Connect, as C{TCP4ClientEndpoint.connect} does.

        @return: a Deferred firing with the connected protocol, or failing
            with the connection's error (C{ConnectingCancelledError} when
            cancelled).
        """
        try:
            factory = _Connecting(protocolFactory)
            self._reactor.connectTCP(self._host, self._port, factory, timeout=self._timeout)
        except BaseException:
            return defer.fail()
        return factory.connected


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """
    TLS over another endpoint, as C{endpoints.wrapClientTLS} makes it.
    """

    def __init__(
        self, connectionCreator: IOpenSSLClientConnectionCreator, wrapped: IStreamClientEndpoint
    ) -> None:
        self._creator = connectionCreator
        self._wrapped = wrapped

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        """
        Connect the wrapped endpoint with C{protocolFactory}'s protocols
        behind a C{TLSMemoryBIOProtocol}.

        @return: a Deferred firing with C{protocolFactory}'s protocol.
        """
        # Here, not at the top: it imports pyOpenSSL, which only TLS needs.
        from twisted.protocols.tls import TLSMemoryBIOFactory

        def unwrap(protocol: IProtocol) -> IProtocol:
            inner: IProtocol = cast(Any, protocol).wrappedProtocol
            return inner

        factory = TLSMemoryBIOFactory(self._creator, True, protocolFactory)
        return self._wrapped.connect(factory).addCallback(unwrap)
