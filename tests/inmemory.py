"""
In-memory client/server connections for the security tests: no sockets, a
L{Clock} for every deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.test import iosim

from twisted_frames.auth import AuthService, ClientSecret, UserRecord, makePortal, newSecret
from twisted_frames.client import ClientProtocol, FramesClient
from twisted_frames.policy import ConnectionGuard, ConnectionLimits, FailurePenalties
from twisted_frames.server import FramesServerFactory, Request, Service, operation


class WhoAmIService(Service):
    """
    A non-public op, to show what login unlocks.
    """

    @operation("whoami")
    def whoami(self, request: Request) -> dict[str, Any]:
        """
        Reply with the logged-in user's name.
        """
        return {"user": request.user}


@dataclass
class Server:
    """
    A login-requiring server factory and its parts.
    """

    factory: FramesServerFactory
    auth: AuthService
    guard: ConnectionGuard
    clock: Clock
    alice: ClientSecret


def makeServer(
    limits: ConnectionLimits | None = None,
    records: list[UserRecord] | None = None,
    authRequired: bool = True,
    **authKwargs: Any,
) -> Server:
    """
    A server requiring login, with user C{alice} (unless C{records} says
    otherwise), a L{ConnectionGuard} with no limits by default, and a Clock.
    """
    clock = Clock()
    alice = newSecret("alice")
    users = {r.name: r for r in (records if records is not None else [alice.record()])}
    auth = AuthService(
        makePortal(users), clock=clock, penalties=FailurePenalties(clock), **authKwargs
    )
    guard = ConnectionGuard(limits or ConnectionLimits(None, None, None, None))
    factory = FramesServerFactory([guard, auth, WhoAmIService()], clock=clock)
    factory.authRequired = authRequired
    factory.authMechanisms = ["hmac-sha256"] if authRequired else []
    return Server(factory, auth, guard, clock, alice)


@dataclass
class Connection:
    """
    One in-memory connection: both protocols and the pump between them.
    """

    client: ClientProtocol
    server: Any
    pump: iosim.IOPump
    clientTransport: iosim.FakeTransport
    serverTransport: iosim.FakeTransport

    @property
    def frames(self) -> FramesClient:
        """
        The client API over this connection (after the greeting).
        """
        return FramesClient(self.client)

    def run(self, d: Any) -> defer.Deferred[Any]:
        """
        Wrap a coroutine or Deferred and pump until quiet.
        """
        if not isinstance(d, defer.Deferred):
            d = defer.Deferred.fromCoroutine(d)
        self.pump.flush()
        return d


def connect(
    factory: FramesServerFactory, host: str = "192.0.2.7", port: int = 40000
) -> Connection:
    """
    Connect a L{ClientProtocol} to a protocol from C{factory}, the server
    seeing the peer C{host}.
    """
    addressType = IPv6Address if ":" in host else IPv4Address
    peer = addressType("TCP", host, port)
    server = factory.buildProtocol(peer)
    client = ClientProtocol()
    serverTransport = iosim.FakeTransport(server, True, peerAddress=peer)
    clientTransport = iosim.FakeTransport(client, False)
    pump = iosim.connect(server, serverTransport, client, clientTransport)
    return Connection(client, server, pump, clientTransport, serverTransport)
