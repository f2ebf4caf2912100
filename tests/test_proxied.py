"""
Tests for L{twisted_frames.proxied}: C{--listen haproxy:...}, where the
peer's address is the client's from the PROXY header, for the connection
caps, the login failure delays and the log lines.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import security, tap, wire
from twisted_frames.policy import ConnectionGuard
from twisted_frames.proxied import ProxiedEndpoint, innerDescription, isProxied
from twisted_frames.server import ServerProtocol

#: The balancer's address: every connection comes from it.
BALANCER = IPv4Address("TCP", "127.0.0.1", 40000)


def v1Header(client: str, port: int) -> bytes:
    """
    A PROXY protocol v1 header for a TCP connection from C{client:port}.
    """
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 8007\r\n".encode()


def v2Header(client: str, port: int) -> bytes:
    """
    A PROXY protocol v2 header (PROXY command, TCP over IPv4) for a
    connection from C{client:port}.
    """
    addresses = socket.inet_aton(client) + socket.inet_aton("127.0.0.1")
    addresses += struct.pack("!HH", port, 8007)
    return (
        b"\r\n\r\n\x00\r\nQUIT\n"
        + bytes([0x21, 0x11])
        + struct.pack("!H", len(addresses))
        + addresses
    )


def messages(data: bytes) -> list[dict[str, Any]]:
    """
    The headers of the messages in C{data} (each a header frame and a body
    frame).
    """
    headers = []
    while data:
        (n,) = struct.unpack("!I", data[:4])
        headers.append(json.loads(data[4 : 4 + n]))
        (m,) = struct.unpack("!I", data[4 + n : 8 + n])
        data = data[8 + n + m :]
    return headers


class ProxiedServerTests(SynchronousTestCase):
    """
    A server built by L{tap.makeService} with C{--listen haproxy:tcp:...},
    its connections fed through L{StringTransport}s that all come from the
    balancer's address.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.root = self.mktemp()
        os.makedirs(self.root)

    def serve(self, *args: str) -> Any:
        """
        Build and start the server; return the factory it listens with.
        """
        options = tap.Options()
        options.parseOptions(
            ["--listen", "haproxy:tcp:0:interface=127.0.0.1", "--udp", "0", "--root", self.root]
            + list(args)
        )
        service = tap.makeService(options, self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.guard = next(s for s in service.factory.services if isinstance(s, ConnectionGuard))
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        return factory

    def connect(self, factory: Any) -> tuple[Any, StringTransport]:
        """
        A new connection from the balancer.
        """
        transport = StringTransport(peerAddress=BALANCER)
        protocol = factory.buildProtocol(BALANCER)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_greetingWaitsForTheHeader(self) -> None:
        """
        Nothing is sent and nothing counted before the PROXY header; once it
        has come, the connection counts against the client's address, not
        the balancer's, and the greeting follows.
        """
        factory = self.serve()
        protocol, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.guard.total, 0)
        protocol.dataReceived(v1Header("203.0.113.7", 5555))
        self.assertEqual(dict(self.guard.perSource), {"203.0.113.7": 1})
        [greeting] = messages(transport.value())
        self.assertIn("version", greeting)
        server = protocol.wrappedProtocol
        self.assertIsInstance(server, ServerProtocol)
        self.assertEqual(server.peerName(), "203.0.113.7:5555")

    def test_headerByteByByte(self) -> None:
        """
        A header that arrives one byte at a time, v1 or v2, is read whole;
        the request coalesced after it is served.
        """
        factory = self.serve()
        header = wire.encodeHeader({"op": "ping", "id": 1})
        ping = struct.pack("!I", len(header)) + header + struct.pack("!I", 0)
        for header in (v1Header("198.51.100.9", 1), v2Header("198.51.100.9", 2)):
            protocol, transport = self.connect(factory)
            data = header + ping
            for i in range(len(header)):
                protocol.dataReceived(data[i : i + 1])
            protocol.dataReceived(data[len(header) :])
            self.reactor.advance(0)
            replies = messages(transport.value())
            self.assertEqual(replies[1].get("id"), 1, replies)
            self.assertFalse(transport.disconnecting)
        self.assertEqual(dict(self.guard.perSource), {"198.51.100.9": 2})

    def test_perSourceCapIsTheClients(self) -> None:
        """
        C{--max-per-source 1}: a second connection from the same client is
        refused C{busy}, while another client through the same balancer is
        served.
        """
        factory = self.serve("--max-per-source", "1")
        first, _ = self.connect(factory)
        first.dataReceived(v1Header("203.0.113.7", 1000))
        second, refused = self.connect(factory)
        second.dataReceived(v1Header("203.0.113.7", 1001))
        other, served = self.connect(factory)
        other.dataReceived(v2Header("192.0.2.1", 1002))
        [error] = messages(refused.value())
        self.assertEqual(error["error"]["code"], "busy")
        self.assertIn("version", messages(served.value())[0])
        self.assertEqual(dict(self.guard.perSource), {"203.0.113.7": 1, "192.0.2.1": 1})

    def test_notAHeaderIsAborted(self) -> None:
        """
        A connection that starts with anything but a PROXY header is aborted
        without a reply, and the server never sees it.
        """
        factory = self.serve()
        for data in (b"\x00\x00\x00\x10{", b"GET / HTTP/1.0\r\n", b"PROXY garbage\r\n"):
            protocol, transport = self.connect(factory)
            protocol.dataReceived(data)
            self.assertEqual(transport.value(), b"")
            self.assertTrue(transport.disconnected, data)
            protocol.connectionLost(None)
        self.assertEqual(self.guard.total, 0)

    def test_headerDeadline(self) -> None:
        """
        A connection that sends no header within the frame timeout is
        aborted.
        """
        factory = self.serve("--frame-timeout", "5")
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"PROXY TCP4")
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.guard.total, 0)

    def test_lostAfterTheHeaderIsReleased(self) -> None:
        """
        A connection lost after its header releases its place in the caps.
        """
        factory = self.serve()
        protocol, transport = self.connect(factory)
        protocol.dataReceived(v1Header("203.0.113.7", 1))
        self.assertEqual(self.guard.total, 1)
        protocol.connectionLost(None)
        self.assertEqual(self.guard.total, 0)


class DescriptionTests(SynchronousTestCase):
    """
    C{haproxy:} endpoint strings in the options.
    """

    def test_prefix(self) -> None:
        """
        L{isProxied} knows the prefix in any case; L{innerDescription} strips
        it.
        """
        self.assertTrue(isProxied("HAProxy:tcp:1"))
        self.assertFalse(isProxied("tcp:1"))
        self.assertEqual(innerDescription("haproxy:tcp:1:interface=::1"), "tcp:1:interface=::1")
        self.assertEqual(innerDescription("unix:/x"), "unix:/x")

    def test_localIsTheInnerEndpoint(self) -> None:
        """
        A C{haproxy:} endpoint is local when the endpoint it wraps is.
        """
        self.assertTrue(security.isLocalEndpoint("haproxy:tcp:8007:interface=127.0.0.1"))
        self.assertFalse(security.isLocalEndpoint("haproxy:tcp:8007"))

    def test_backlogAdded(self) -> None:
        """
        The C{--backlog} is added to a wrapped TCP endpoint too.
        """
        options = tap.Options()
        options.parseOptions(["--listen", "haproxy:tcp:0:interface=127.0.0.1", "--udp", "0"])
        self.assertEqual(options["listen"], ["haproxy:tcp:0:interface=127.0.0.1:backlog=128"])

    def test_endpoint(self) -> None:
        """
        L{tap.listenEndpoint} wraps the inner endpoint of a C{haproxy:}
        string in a L{ProxiedEndpoint}, and leaves others as Twisted parses
        them.
        """
        reactor = MemoryReactorClock()
        proxied = tap.listenEndpoint(reactor, "haproxy:tcp:0", 3.0)
        self.assertIsInstance(proxied, ProxiedEndpoint)
        assert isinstance(proxied, ProxiedEndpoint)
        self.assertEqual(proxied.headerTimeout, 3.0)
        self.assertNotIsInstance(tap.listenEndpoint(reactor, "tcp:0", 3.0), ProxiedEndpoint)
        with self.assertRaises(SystemExit) as e:
            tap.listenEndpoint(reactor, "haproxy:nonsense:1", 3.0)
        self.assertIn("bad --listen 'haproxy:nonsense:1'", str(e.exception))
