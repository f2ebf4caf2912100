"""
Tests for connection limits and deadlines: L{twisted_frames.policy}, the idle
timeout of L{ServerProtocol} and the frame deadline of L{FrameProtocol}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.inmemory import makeServer
from twisted_frames import wire
from twisted_frames.auth.client import login
from twisted_frames.policy import ConnectionLimits, FailurePenalties, sourceKey
from twisted_frames.testing import Connection, connectedPair
from twisted_frames.wire import FramesError


class SourceKeyTests(SynchronousTestCase):
    """
    What counts as one source.
    """

    def test_sources(self) -> None:
        """
        IPv4 addresses count alone, IPv6 addresses by /64, IPv4-mapped IPv6
        as IPv4, UNIX sockets all as one local source.
        """
        self.assertEqual(sourceKey(IPv4Address("TCP", "192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(
            sourceKey(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 1)),
            sourceKey(IPv6Address("TCP", "2001:db8:1:2:bbbb::9", 1)),
        )
        self.assertNotEqual(
            sourceKey(IPv6Address("TCP", "2001:db8:1:2::1", 1)),
            sourceKey(IPv6Address("TCP", "2001:db8:1:3::1", 1)),
        )
        self.assertEqual(sourceKey(IPv6Address("TCP", "::ffff:192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(sourceKey(UNIXAddress(b"/run/x")), "local")
        self.assertEqual(sourceKey(None), "local")


class PenaltyTests(SynchronousTestCase):
    """
    L{FailurePenalties} on its own.
    """

    def test_memoryBounded(self) -> None:
        """
        No more than C{maxSources} sources are remembered; the oldest go.
        """
        from twisted.internet.task import Clock

        p = FailurePenalties(Clock(), maxSources=3)
        for n in range(5):
            p.failed(f"s{n}")
        self.assertEqual([p.failures(f"s{n}") for n in range(5)], [0, 0, 1, 1, 1])


class LimitTests(SynchronousTestCase):
    """
    L{ConnectionGuard} caps.
    """

    def refused(self, conn: Connection) -> FramesError:
        f = self.failureResultOf(conn.client.greeted, FramesError)
        conn.pump.flush()
        self.assertTrue(conn.client.isClosed)
        self.assertEqual(f.value.code, "busy")
        return f.value

    def test_total(self) -> None:
        """
        Past C{maxConnections} a connection is refused with C{busy} instead
        of a greeting; when one closes, there is room again.
        """
        server = makeServer(
            ConnectionLimits(
                maxConnections=2,
                maxPerSource=None,
                maxUnauthenticated=None,
                maxUnauthenticatedPerSource=None,
            )
        )
        a = connectedPair(server.factory, peer="192.0.2.1")
        connectedPair(server.factory, peer="192.0.2.2")
        error = self.refused(connectedPair(server.factory, peer="192.0.2.3"))
        self.assertIn("too many connections (limit 2)", error.message)
        a.clientTransport.loseConnection()
        a.pump.flush()
        self.successResultOf(connectedPair(server.factory, peer="192.0.2.3").client.greeted)
        self.assertEqual(server.guard.total, 2)

    def test_perSource(self) -> None:
        """
        Past C{maxPerSource} from one address a connection is refused; other
        addresses are not affected.
        """
        server = makeServer(
            ConnectionLimits(
                maxConnections=None,
                maxPerSource=2,
                maxUnauthenticated=None,
                maxUnauthenticatedPerSource=None,
            )
        )
        connectedPair(server.factory)
        connectedPair(server.factory)
        error = self.refused(connectedPair(server.factory))
        self.assertIn("from your address (limit 2)", error.message)
        self.successResultOf(connectedPair(server.factory, peer="198.51.100.1").client.greeted)

    def test_unauthenticatedTotal(self) -> None:
        """
        Past C{maxUnauthenticated} connections waiting to log in, more are
        refused; logging in frees the slot.
        """
        server = makeServer(
            ConnectionLimits(
                maxConnections=None,
                maxPerSource=None,
                maxUnauthenticated=2,
                maxUnauthenticatedPerSource=None,
            )
        )
        a = connectedPair(server.factory, peer="192.0.2.1")
        connectedPair(server.factory, peer="192.0.2.2")
        error = self.refused(connectedPair(server.factory, peer="192.0.2.3"))
        self.assertIn("waiting to log in (limit 2)", error.message)
        self.successResultOf(a.run(login(a.frames, server.alice)))
        self.assertEqual(server.guard.unauthenticated, 1)
        self.successResultOf(connectedPair(server.factory, peer="192.0.2.3").client.greeted)

    def test_unauthenticatedPerSource(self) -> None:
        """
        Past C{maxUnauthenticatedPerSource} from one address, more are
        refused; logged-in connections from it do not count.
        """
        server = makeServer(
            ConnectionLimits(
                maxConnections=None,
                maxPerSource=None,
                maxUnauthenticated=None,
                maxUnauthenticatedPerSource=1,
            )
        )
        a = connectedPair(server.factory)
        error = self.refused(connectedPair(server.factory))
        self.assertIn("from your address waiting to log in (limit 1)", error.message)
        self.successResultOf(a.run(login(a.frames, server.alice)))
        self.successResultOf(connectedPair(server.factory).client.greeted)
        self.successResultOf(connectedPair(server.factory, peer="198.51.100.1").client.greeted)

    def test_noLoginNoUnauthenticatedCap(self) -> None:
        """
        When login is not required, the unauthenticated caps do not apply.
        """
        server = makeServer(ConnectionLimits(None, None, 1, 1), authRequired=False)
        for _ in range(3):
            self.successResultOf(connectedPair(server.factory).client.greeted)

    def test_countsReleased(self) -> None:
        """
        Closed and refused connections leave no count behind.
        """
        server = makeServer(ConnectionLimits(2, 2, 2, 2))
        conns = [connectedPair(server.factory) for _ in range(3)]
        self.refused(conns[2])
        for c in conns:
            c.clientTransport.loseConnection()
            c.pump.flush()
        self.assertEqual((server.guard.total, server.guard.unauthenticated), (0, 0))
        self.assertEqual(
            (dict(server.guard.perSource), dict(server.guard.unauthenticatedPerSource)), ({}, {})
        )


class IdleTimeoutTests(SynchronousTestCase):
    """
    The idle timeout (L{TimeoutMixin} on L{ServerProtocol}).
    """

    def setUp(self) -> None:
        self.server = makeServer(authRequired=False)
        self.server.factory.idleTimeout = 30

    def test_idleClosed(self) -> None:
        """
        A connection that sends nothing for the idle timeout is told why and
        closed; traffic restarts the timer.
        """
        conn = connectedPair(self.server.factory)
        self.server.clock.advance(20)
        self.successResultOf(conn.run(conn.frames.ping(b"x")))
        self.server.clock.advance(29)
        conn.pump.flush()
        self.assertFalse(conn.client.isClosed)
        self.server.clock.advance(1)
        conn.pump.flush()
        self.assertTrue(conn.client.isClosed)
        assert conn.client.serverError is not None
        self.assertEqual(conn.client.serverError.code, "timeout")
        # Exactly as docs/protocol.md and docs/security.md quote it.
        self.assertEqual(conn.client.serverError.message, "idle for 30 s, closing")

    def test_busyIsNotIdle(self) -> None:
        """
        A request still being worked on keeps the connection open.
        """
        conn = connectedPair(self.server.factory)
        conn.server.inFlight["pretend"] = object()
        self.server.clock.advance(100)
        conn.pump.flush()
        self.assertFalse(conn.client.isClosed)
        del conn.server.inFlight["pretend"]
        self.server.clock.advance(30)
        conn.pump.flush()
        self.assertTrue(conn.client.isClosed)


class FrameDeadlineTests(SynchronousTestCase):
    """
    The slowloris deadline (L{FrameProtocol.frameTimeout}).
    """

    def setUp(self) -> None:
        self.server = makeServer(authRequired=False)
        self.server.factory.frameTimeout = 10
        self.conn = connectedPair(self.server.factory)
        self.wire = self.conn.clientTransport

    def unsentRequest(self) -> tuple[bytes, Any]:
        """
        The bytes of a client C{ping} request, captured instead of sent, so
        a test can drip them; the client still expects its reply.
        """
        real = self.conn.client.transport
        capture = StringTransport()
        self.conn.client.transport = capture
        d = self.conn.client.request("ping")
        self.conn.client.transport = real
        d.addErrback(lambda _: None)
        return capture.value(), d

    def send(self, data: bytes) -> None:
        self.wire.write(data)
        self.conn.pump.flush()

    def assertClosedFor(self, what: str) -> None:
        """
        The connection was closed with the frame deadline's C{timeout}
        message, exactly as docs/protocol.md and docs/security.md quote it,
        for C{what} it waited for.
        """
        self.conn.pump.flush()
        self.assertTrue(self.conn.client.isClosed)
        assert self.conn.client.serverError is not None
        self.assertEqual(self.conn.client.serverError.code, "timeout")
        self.assertEqual(self.conn.client.serverError.message, f"waited 10 s for {what}, closing")

    def test_slowHeader(self) -> None:
        """
        A header dripped one byte at a time, each within the deadline, is
        still cut off 10 s after its first byte.
        """
        message = wire.encodeMessage({"op": "ping", "id": 1})
        for n in range(10):
            self.send(message[n : n + 1])
            self.server.clock.advance(0.99)
        self.server.clock.advance(0.1)
        self.assertClosedFor("the rest of a message header")

    def test_stalledBody(self) -> None:
        """
        A body that stops arriving is cut off 10 s after its last bytes;
        bytes arriving push the deadline back.
        """
        h = wire.encodeHeader({"op": "ping", "id": 1})
        self.send(wire.encodeFrame(h) + wire.encodePrefix(1000) + b"x" * 100)
        for _ in range(5):
            self.server.clock.advance(9)
            self.send(b"x" * 100)
        self.assertFalse(self.conn.client.isClosed)
        self.server.clock.advance(10)
        self.assertClosedFor("body data")

    def test_wholeMessagesNeverTimeOut(self) -> None:
        """
        A connection between messages is not under the frame deadline (the
        idle timeout is for that), and each new header gets its own 10 s.
        """
        self.successResultOf(self.conn.run(self.conn.frames.ping(b"a")))
        self.server.clock.advance(100)
        message, _ = self.unsentRequest()
        second, _ = self.unsentRequest()
        self.send(message[:5])
        self.server.clock.advance(9)
        self.send(message[5:] + second[:3])
        self.server.clock.advance(9)
        self.assertFalse(self.conn.client.isClosed)
        self.server.clock.advance(1)
        self.assertClosedFor("the rest of a message header")

    def test_pausedByUsIsNotStalling(self) -> None:
        """
        While the server itself has paused reading (a busy sink), the
        deadline does not run.
        """
        h = wire.encodeHeader({"op": "ping", "id": 1})
        self.send(wire.encodeFrame(h) + wire.encodePrefix(1000) + b"x" * 100)
        self.conn.server.pauseReceiving()
        self.server.clock.advance(100)
        self.conn.pump.flush()
        self.assertFalse(self.conn.client.isClosed)
        self.conn.server.resumeReceiving()
        self.server.clock.advance(10)
        self.assertClosedFor("body data")
