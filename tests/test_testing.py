"""
Tests for L{twisted_frames.testing}: in-memory client/server pairs.
"""

from __future__ import annotations

import unittest
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_docs import codeBlocks
from twisted_frames.client import ClientProtocol, FramesClient, connect
from twisted_frames.server import FramesServerFactory, Request, Service, operation
from twisted_frames.testing import (
    DEFAULT_PEER,
    MemoryEndpoint,
    connectedPair,
    connectProtocols,
)


class EchoService(Service):
    """
    One op that answers with the address the server sees.
    """

    @operation("where")
    def opWhere(self, request: Request) -> dict[str, Any]:
        """
        Reply with the peer's host.
        """
        peer = request.peer
        return {"host": getattr(peer, "host", None)}


class ConnectedPairTests(SynchronousTestCase):
    """
    L{connectedPair} joins a real client and server.
    """

    def test_fromServices(self) -> None:
        """
        Given services, it builds a factory on a L{Clock}; the client is
        greeted and a request goes both ways once pumped.
        """
        conn = connectedPair([EchoService()])
        self.assertIsInstance(conn.frames, FramesClient)
        self.assertIn("where", conn.client.greeting["ops"])
        d = conn.frames.request("where")
        self.assertNoResult(d)
        conn.pump.flush()
        self.assertEqual(self.successResultOf(d).header["host"], DEFAULT_PEER.host)
        self.assertIs(conn.server.factory.clock, conn.client.clock)
        self.assertIsInstance(conn.client.clock, Clock)

    def test_peer(self) -> None:
        """
        The server sees the peer it is told: a host (IPv4 or IPv6) or an
        address.
        """
        factory = FramesServerFactory([EchoService()], clock=Clock())
        v4 = connectedPair(factory, peer="198.51.100.1")
        v6 = connectedPair(factory, peer="2001:db8::1")
        given = IPv4Address("TCP", "203.0.113.5", 1234)
        self.assertEqual(v4.server.transport.getPeer(), IPv4Address("TCP", "198.51.100.1", 40000))
        self.assertEqual(v6.server.transport.getPeer(), IPv6Address("TCP", "2001:db8::1", 40000))
        self.assertIs(connectedPair(factory, peer=given).server.transport.getPeer(), given)

    def test_clock(self) -> None:
        """
        The pump advances the clock it is given (running C{callLater(0)}
        calls), which the default client's timers use too; a factory on the
        real reactor needs one.
        """
        clock = Clock()
        ran: list[bool] = []
        conn = connectedPair(FramesServerFactory(), clock=clock)
        self.assertIs(conn.client.clock, clock)
        clock.callLater(0, ran.append, True)
        conn.pump.pump()
        self.assertEqual(ran, [True])
        self.assertRaises(TypeError, connectedPair, FramesServerFactory())

    def test_notGreeted(self) -> None:
        """
        With C{greet=False} nothing moves until the pump is pumped; a client
        given is used as it is.
        """
        client = ClientProtocol()
        client.clock = Clock()
        conn = connectedPair([], client=client, greet=False)
        self.assertIs(conn.client, client)
        self.assertIsNone(client.greeting)
        conn.pump.flush()
        self.assertEqual(self.successResultOf(client.greeted)["event"], "hello")

    def test_run(self) -> None:
        """
        C{run} starts a coroutine and pumps until it is done.
        """
        conn = connectedPair([])

        async def ping() -> bytes:
            return await conn.frames.ping(b"hi")

        self.assertEqual(self.successResultOf(conn.run(ping())), b"hi")


class ConnectProtocolsTests(SynchronousTestCase):
    """
    L{connectProtocols} joins any two protocols.
    """

    def test_joined(self) -> None:
        """
        The server's transport reports the peer; the greeting is delivered.
        """
        factory = FramesServerFactory(clock=Clock())
        server, client = factory.buildProtocol(None), ClientProtocol()
        client.clock = Clock()
        connectProtocols(server, client, peer="192.0.2.9")
        self.assertEqual(server.transport.getPeer(), IPv4Address("TCP", "192.0.2.9", 40000))
        self.assertEqual(self.successResultOf(client.greeted)["event"], "hello")


class MemoryEndpointTests(SynchronousTestCase):
    """
    L{MemoryEndpoint} connects in memory, for code that takes an endpoint.
    """

    def test_connect(self) -> None:
        """
        L{twisted_frames.connect} over it gets a greeted client whose
        requests are answered once the endpoint's pump is flushed.
        """
        endpoint = MemoryEndpoint(FramesServerFactory(clock=Clock()))
        client = self.successResultOf(connect(Clock(), endpoint))
        [pump] = endpoint.pumps
        self.assertIs(client.protocol.clock, endpoint.clock)
        d = client.ping(b"x")
        pump.flush()
        self.assertEqual(self.successResultOf(d), b"x")


class DocumentedExampleTests(SynchronousTestCase):
    """
    The example of C{docs/reference/api.md}.
    """

    def test_apiExample(self) -> None:
        """
        Its test case, run, passes.
        """
        api = Path(__file__).resolve().parent.parent / "docs" / "reference" / "api.md"
        [example] = [b for b in codeBlocks(api, "python") if "connectedPair" in b]
        namespace: dict[str, Any] = {}
        exec(example, namespace)
        result = unittest.TestResult()
        namespace["PingTests"]("test_ping").run(result)
        self.assertEqual((result.testsRun, result.errors, result.failures), (1, [], []))
