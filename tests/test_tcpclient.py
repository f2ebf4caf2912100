"""
Tests for L{twisted_frames.tcpclient}: connecting to an address and over
TLS as C{twisted.internet.endpoints} does, without that module.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError, NoProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_frames.tcpclient import TCPAddressEndpoint, TLSClientEndpoint
from twisted_frames.tls import clientOptions


class Recorder(Protocol):
    """
    Records what its transport tells it.
    """

    def __init__(self) -> None:
        self.made = 0
        self.data: list[bytes] = []
        self.lost: list[Failure] = []

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """
    A protocol told when each direction of its connection closes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.halves: list[str] = []

    def readConnectionLost(self) -> None:
        self.halves.append("read")

    def writeConnectionLost(self) -> None:
        self.halves.append("write")


class TCPAddressEndpointTests(SynchronousTestCase):
    """
    L{TCPAddressEndpoint} connects with C{reactor.connectTCP}.
    """

    def connect(
        self, host: str = "127.0.0.1", protocol: type[Protocol] = Recorder
    ) -> tuple[MemoryReactorClock, defer.Deferred[Any]]:
        """
        Start connecting through a L{MemoryReactorClock}.
        """
        reactor = MemoryReactorClock()
        endpoint = TCPAddressEndpoint(reactor, host, 8007, timeout=7)
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        return reactor, endpoint.connect(Factory.forProtocol(protocol))

    def test_connects(self) -> None:
        """
        The endpoint asks the reactor for a connection to its address with its
        timeout, and fires with the factory's own protocol once it is
        connected (not before), connected to the transport.
        """
        reactor, d = self.connect()
        [(host, port, factory, timeout, bindAddress)] = reactor.tcpClients
        self.assertEqual((host, port, timeout, bindAddress), ("127.0.0.1", 8007, 7, None))
        self.assertNoResult(d)
        wrapper = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.assertNoResult(d)
        transport = StringTransport()
        wrapper.makeConnection(transport)
        protocol = self.successResultOf(d)
        self.assertIsInstance(protocol, Recorder)
        self.assertIs(protocol.transport, transport)
        self.assertEqual(protocol.made, 1)

    def test_passesThrough(self) -> None:
        """
        Received bytes, the end of the connection, a half-close and the log
        prefix reach the protocol.
        """
        reactor, d = self.connect(protocol=HalfCloser)
        factory = reactor.tcpClients[0][2]
        wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8007))
        wrapper.makeConnection(StringTransport())
        protocol = self.successResultOf(d)
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))
        self.assertEqual(wrapper.logPrefix(), "HalfCloser")
        wrapper.dataReceived(b"abc")
        wrapper.readConnectionLost()
        wrapper.writeConnectionLost()
        reason = Failure(ConnectionRefusedError())
        wrapper.connectionLost(reason)
        self.assertEqual(protocol.data, [b"abc"])
        self.assertEqual(protocol.halves, ["read", "write"])
        self.assertEqual(protocol.lost, [reason])

    def test_ipv6(self) -> None:
        """
        An IPv6 address is passed to C{connectTCP} as it is: the reactor
        connects to IPv6 literals without resolving them.
        """
        reactor, d = self.connect("::1")
        self.assertEqual(reactor.tcpClients[0][0], "::1")
        self.assertEqual(reactor.connectors[0].getDestination(), IPv6Address("TCP", "::1", 8007))

    def test_connectionFailed(self) -> None:
        """
        A connection that cannot be made fails the Deferred with its reason.
        """
        reactor, d = self.connect()
        factory = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)

    def test_cancel(self) -> None:
        """
        Cancelling stops connecting and fails with
        C{ConnectingCancelledError} naming the destination.
        """
        reactor, d = self.connect()
        d.cancel()
        failure = self.failureResultOf(d, ConnectingCancelledError)
        self.assertEqual(failure.value.address, IPv4Address("TCP", "127.0.0.1", 8007))
        self.assertTrue(reactor.connectors[0].stoppedConnecting)

    def test_noProtocol(self) -> None:
        """
        A factory that builds no protocol fails the Deferred with
        C{NoProtocol}, and the reactor gets no protocol to connect.
        """
        reactor = MemoryReactorClock()

        class Refusing(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        d = TCPAddressEndpoint(reactor, "127.0.0.1", 1).connect(Refusing())
        factory = reactor.tcpClients[0][2]
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.failureResultOf(d, NoProtocol)

    def test_connectRaises(self) -> None:
        """
        A reactor whose C{connectTCP} raises gives a failed Deferred, not an
        exception.
        """
        reactor = RaisingMemoryReactor(connectException=ValueError("no"))
        endpoint = TCPAddressEndpoint(reactor, "127.0.0.1", 1)
        self.failureResultOf(endpoint.connect(Factory.forProtocol(Recorder)), ValueError)


class CapturingEndpoint:
    """
    An endpoint that keeps the factory it is asked to connect.
    """

    def __init__(self) -> None:
        self.factory: Any = None
        self.connected: defer.Deferred[Any] = defer.Deferred()

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.factory = factory
        return self.connected


class TLSClientEndpointTests(SynchronousTestCase):
    """
    L{TLSClientEndpoint} puts a TLS layer between the wrapped endpoint and
    the protocol.
    """

    def test_wraps(self) -> None:
        """
        The wrapped endpoint connects a C{TLSMemoryBIOFactory} around the
        factory that starts a client's handshake with the given options (a
        ClientHello naming the server), and the result is the factory's own
        protocol, not the TLS layer.
        """
        inner = CapturingEndpoint()
        endpoint = TLSClientEndpoint(clientOptions("server.example"), inner)
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        d = endpoint.connect(Factory.forProtocol(Recorder))
        self.assertIsInstance(inner.factory, TLSMemoryBIOFactory)
        tlsProtocol = inner.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        tlsProtocol.makeConnection(transport)
        # A handshake record (0x16), TLS major version 3, with the SNI name.
        self.assertEqual(transport.value()[:2], b"\x16\x03")
        self.assertIn(b"server.example", transport.value())
        self.assertNoResult(d)
        inner.connected.callback(tlsProtocol)
        protocol = self.successResultOf(d)
        self.assertIsInstance(protocol, Recorder)
        self.assertIs(protocol, tlsProtocol.wrappedProtocol)
