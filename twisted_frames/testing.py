# -*- test-case-name: tests.test_testing -*-
"""
In-memory client/server connections, for testing code that uses
twisted-frames (in the manner of C{treq.testing}).

A real L{ServerProtocol} and a real L{ClientProtocol} are joined by
L{twisted.test.iosim} transports: no sockets, no reactor.  Bytes move only
when the test pumps them, and every timer runs on a L{Clock} the test
advances, so a test stays synchronous and deterministic::

    pair = connectedPair([MyService()])
    d = pair.frames.request("echo", {"text": "hi"})
    pair.pump.flush()
    reply = self.successResultOf(d)

L{connectedPair} joins plain connections, L{connectedTLSPair} runs TLS
(in memory too) under them, L{connectProtocols} joins any two protocols,
and L{MemoryEndpoint} is a client endpoint that connects in memory, for
code that takes an endpoint (such as L{twisted_frames.connect}).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer

from .client import ClientProtocol, FramesClient
from .protocol import FrameProtocol
from .server import FramesServerFactory, ServerProtocol, Service

__all__ = [
    "DEFAULT_PEER",
    "Connection",
    "MemoryEndpoint",
    "connectProtocols",
    "connectedPair",
    "connectedTLSPair",
]


#: The address the server sees its in-memory peer connect from, unless told
#: otherwise (TEST-NET-1, RFC 5737: it can never be a real peer).
DEFAULT_PEER = IPv4Address("TCP", "192.0.2.7", 40000)


def _peerAddress(peer: IAddress | str | None) -> IAddress:
    if peer is None:
        return DEFAULT_PEER
    if isinstance(peer, str):
        addressType = IPv6Address if ":" in peer else IPv4Address
        return addressType("TCP", peer, DEFAULT_PEER.port)
    return peer


def _serverFactory(server: FramesServerFactory | Iterable[Service]) -> FramesServerFactory:
    if isinstance(server, FramesServerFactory):
        return server
    return FramesServerFactory(server, clock=Clock())


def connectProtocols(
    server: IProtocol,
    client: IProtocol,
    clock: Clock | None = None,
    peer: IAddress | str | None = None,
    greet: bool = True,
) -> iosim.IOPump:
    """
    Join two protocols with in-memory transports.

    @param server: the accepting side; its transport's C{getPeer()} is
        C{peer}.
    @param client: the connecting side.
    @param clock: advanced by zero each time the pump moves bytes, so calls
        scheduled with C{callLater(0, ...)} on it run; by default a clock of
        the pump's own.
    @param peer: the client's address as the server sees it: an address, a
        host (IPv4 or IPv6, port 40000), or C{None} for L{DEFAULT_PEER}.
    @param greet: flush the pump once before returning, so the server's
        greeting (and a TLS handshake) has been delivered.
    @return: the pump that moves bytes between them.
    """
    serverTransport = iosim.FakeTransport(server, True, peerAddress=_peerAddress(peer))
    clientTransport = iosim.FakeTransport(client, False)
    pump = iosim.connect(
        server, serverTransport, client, clientTransport, greet=greet, clock=clock
    )
    return cast(iosim.IOPump, pump)


@dataclass
class Connection:
    """
    One in-memory connection between a L{ClientProtocol} and a
    L{ServerProtocol}.

    @ivar client: the client's protocol.
    @ivar server: the server's protocol (under TLS, the protocol TLS wraps).
    @ivar pump: moves bytes between them; nothing moves until it is pumped.
    @ivar clientTransport: the client's transport.
    @ivar serverTransport: the server's transport.
    """

    client: ClientProtocol
    server: ServerProtocol
    pump: iosim.IOPump
    clientTransport: iosim.FakeTransport
    serverTransport: iosim.FakeTransport

    @property
    def frames(self) -> FramesClient:
        """
        The client API over this connection (once greeted, which it is
        unless the pair was made with C{greet=False}).
        """
        return FramesClient(self.client)

    def run(self, d: Any) -> defer.Deferred[Any]:
        """
        Start a coroutine (or take a Deferred) and pump until nothing moves.

        @param d: a coroutine or a C{Deferred}.
        @return: a C{Deferred} for its result, usually fired by now.
        """
        if not isinstance(d, defer.Deferred):
            d = defer.Deferred.fromCoroutine(d)
        self.pump.flush()
        return cast(defer.Deferred[Any], d)


def _newClient(client: ClientProtocol | None, clock: Clock) -> ClientProtocol:
    if client is None:
        client = ClientProtocol()
        client.clock = clock
    return client


def _pumpClock(factory: FramesServerFactory, clock: Clock | None) -> Clock:
    if clock is not None:
        return clock
    if isinstance(factory.clock, Clock):
        return factory.clock
    raise TypeError("give a Clock: the server factory's clock is not one")


def connectedPair(
    server: FramesServerFactory | Iterable[Service],
    clock: Clock | None = None,
    peer: IAddress | str | None = None,
    client: ClientProtocol | None = None,
    greet: bool = True,
) -> Connection:
    """
    Connect a client to a server, in memory.

    @param server: the server's factory, or the services for a new one
        (with a L{Clock} of its own).
    @param clock: the clock the pump advances by zero as it moves bytes (and
        the default client's timers run on); by default the factory's, which
        must then be a L{Clock}.
    @param peer: the client's address as the server sees it (see
        L{connectProtocols}).
    @param client: the client's protocol; by default a new L{ClientProtocol}
        whose timers run on C{clock}.
    @param greet: deliver the server's greeting before returning.
    @return: the connection.
    """
    factory = _serverFactory(server)
    clock = _pumpClock(factory, clock)
    address = _peerAddress(peer)
    serverProtocol = factory.buildProtocol(address)
    clientProtocol = _newClient(client, clock)
    pump = connectProtocols(serverProtocol, clientProtocol, clock, address, greet)
    return Connection(clientProtocol, serverProtocol, pump, pump.clientIO, pump.serverIO)


@implementer(IProtocolFactory)
class _OneProtocol:
    """
    A factory handing out one given protocol, for the client's TLS layer.
    """

    def __init__(self, protocol: IProtocol) -> None:
        self.protocol = protocol

    def buildProtocol(self, addr: IAddress) -> IProtocol:
        return self.protocol

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


def connectedTLSPair(
    server: FramesServerFactory | Iterable[Service],
    serverOptions: Any,
    clientOptions: Any,
    clock: Clock | None = None,
    peer: IAddress | str | None = None,
    client: ClientProtocol | None = None,
) -> Connection:
    """
    Like L{connectedPair}, with TLS on both sides, in memory too.

    The TLS layers batch their writes with C{callLater(0)} on C{clock},
    which the pump advances, so pumping runs the handshake.

    @param serverOptions: the server's TLS options (for instance from
        L{twisted_frames.tls.serverOptions}).
    @param clientOptions: the client's (for instance from
        L{twisted_frames.tls.clientOptions}).
    @return: the connection; its C{server} is the frames protocol under
        the server's TLS layer.
    """
    factory = _serverFactory(server)
    clock = _pumpClock(factory, clock)
    address = _peerAddress(peer)
    clientProtocol = _newClient(client, clock)
    serverTLS = TLSMemoryBIOFactory(serverOptions, False, factory, clock=clock).buildProtocol(
        address
    )
    clientTLS = TLSMemoryBIOFactory(
        clientOptions, True, _OneProtocol(clientProtocol), clock=clock
    ).buildProtocol(address)
    assert serverTLS is not None and clientTLS is not None
    # Taken now: a failed handshake drops the TLS layer's reference to it.
    serverProtocol = cast(ServerProtocol, serverTLS.wrappedProtocol)
    pump = connectProtocols(serverTLS, clientTLS, clock, address)
    return Connection(clientProtocol, serverProtocol, pump, pump.clientIO, pump.serverIO)


@dataclass
class MemoryEndpoint:
    """
    A client endpoint (C{IStreamClientEndpoint}) that connects at once, in
    memory, to a server factory.

    @ivar serverFactory: builds the server's side of each connection.
    @ivar clock: the clock the pumps advance (see L{connectProtocols}) and
        a frames client's timers run on.
    @ivar pumps: the pump of each connection made, in order.
    """

    serverFactory: IProtocolFactory
    clock: Clock = field(default_factory=Clock)
    pumps: list[iosim.IOPump] = field(default_factory=list)

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        """
        Build both protocols, join them and deliver the greeting.

        @return: a C{Deferred} that has fired with the client's protocol.
        """
        client = protocolFactory.buildProtocol(DEFAULT_PEER)
        server = self.serverFactory.buildProtocol(DEFAULT_PEER)
        assert client is not None and server is not None
        if isinstance(client, FrameProtocol):
            client.clock = self.clock
        self.pumps.append(connectProtocols(server, client, self.clock))
        return defer.succeed(client)
