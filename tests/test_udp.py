"""
Tests for L{twisted_frames.udp}.

The L{SynchronousTestCase} classes run the protocols and L{udpEcho} in memory with
L{FakeDatagramTransport}, L{Clock} and a fake UDP reactor. The plain pytest
functions at the end use real loopback sockets and the real reactor through
pytest-twisted; Trial ignores them (see the pitfall in the style guide).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis.strategies import binary, booleans
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, DNSLookupError, MessageLengthError
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.udp import EchoClientProtocol, EchoProtocol, EchoTimeout, listenEcho, udpEcho

CLIENT = ("192.0.2.1", 40000)
SERVER = ("192.0.2.9", 7)


class _SizedTransport(FakeDatagramTransport):
    """
    A L{FakeDatagramTransport} that reports the read size of a real UDP port.
    """

    def __init__(self, maxPacketSize: int) -> None:
        super().__init__()
        self.maxPacketSize = maxPacketSize


class _FailingTransport(FakeDatagramTransport):
    """
    A L{FakeDatagramTransport} whose C{write} fails after C{okWrites} writes.
    """

    def __init__(self, okWrites: int) -> None:
        super().__init__()
        self.okWrites = okWrites

    def write(self, packet: bytes, addr: object = None) -> None:
        if len(self.written) >= self.okWrites:
            raise MessageLengthError("message too long")
        super().write(packet, addr)


class _FakePort:
    """
    What L{_FakeUDPReactor.listenUDP} returns: a protocol attached to a
    L{FakeDatagramTransport}, stopped by C{stopListening}.
    """

    def __init__(
        self, port: int, protocol: DatagramProtocol, interface: str, maxPacketSize: int
    ) -> None:
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self.transport = FakeDatagramTransport()
        self.stopped = False
        protocol.makeConnection(self.transport)

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        self.protocol.doStop()
        return succeed(None)


class _FakeUDPReactor(Clock):
    """
    A L{Clock} that can also listen on UDP (in memory) and resolve names from a
    dictionary.
    """

    def __init__(self, names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.names = names or {}
        self.ports: list[_FakePort] = []

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> _FakePort:
        listening = _FakePort(port, protocol, interface, maxPacketSize)
        self.ports.append(listening)
        return listening

    def resolve(self, name: str) -> Deferred[str]:
        if name in self.names:
            return succeed(self.names[name])
        return fail(DNSLookupError(name))

    def asUDP(self) -> IReactorUDP:
        return cast(IReactorUDP, self)


def _ours(events: Sequence[LogEvent]) -> list[LogEvent]:
    """
    The log events of C{twisted_frames.udp} among C{events}, leaving out
    Twisted's own (such as "Starting protocol").
    """
    return [e for e in events if e.get("log_namespace") == "twisted_frames.udp"]


def _echo(clock: Clock | None = None, **kwargs: Any) -> tuple[EchoProtocol, FakeDatagramTransport]:
    """
    Make an L{EchoProtocol} attached to a L{FakeDatagramTransport}.
    """
    proto = EchoProtocol(clock=cast(IReactorTime, clock or Clock()), **kwargs)
    transport = FakeDatagramTransport()
    proto.makeConnection(transport)
    return proto, transport


class EchoProtocolTests(SynchronousTestCase):
    """
    Tests for L{EchoProtocol}.
    """

    def test_boundariesKept(self) -> None:
        """
        Each datagram gets exactly one reply holding the same bytes: three in,
        three out, in order, none merged or split.
        """
        proto, transport = _echo()
        datagrams = [b"one", b"two two", b"three three three"]
        for datagram in datagrams:
            proto.datagramReceived(datagram, CLIENT)
        self.assertEqual(transport.written, [(d, CLIENT) for d in datagrams])
        self.assertEqual((proto.received, proto.echoed), (3, 3))

    def test_replyGoesToSender(self) -> None:
        """
        Each reply goes to the address its request came from.
        """
        proto, transport = _echo()
        other = ("192.0.2.2", 50000)
        proto.datagramReceived(b"a", CLIENT)
        proto.datagramReceived(b"b", other)
        self.assertEqual(transport.written, [(b"a", CLIENT), (b"b", other)])

    def test_upper(self) -> None:
        """
        With C{upper=True} the reply is ASCII upper-cased; other bytes are kept.
        """
        proto, transport = _echo(upper=True)
        proto.datagramReceived(b"hello, World! \xe9\xff", CLIENT)
        self.assertEqual(transport.written, [(b"HELLO, WORLD! \xe9\xff", CLIENT)])

    def test_emptyDatagram(self) -> None:
        """
        An empty datagram is a datagram: it is echoed as an empty datagram.
        """
        proto, transport = _echo()
        proto.datagramReceived(b"", CLIENT)
        self.assertEqual(transport.written, [(b"", CLIENT)])
        self.assertEqual(proto.echoed, 1)

    @given(binary(max_size=300), booleans())
    def test_replyNeverLarger(self, datagram: bytes, upper: bool) -> None:
        """
        Whatever comes in, at most one datagram goes out, no larger than the
        request; it is answered if and only if it is within C{maxDatagram}.
        """
        proto, transport = _echo(upper=upper, maxDatagram=256)
        proto.datagramReceived(datagram, CLIENT)
        self.assertLessEqual(len(transport.written), 1)
        for reply, addr in transport.written:
            self.assertLessEqual(len(reply), len(datagram))
            self.assertEqual(addr, CLIENT)
        self.assertEqual(len(transport.written), int(len(datagram) <= 256))

    def test_oversizeDropped(self) -> None:
        """
        A datagram larger than C{maxDatagram} is dropped and counted; one of
        exactly C{maxDatagram} bytes is answered.
        """
        proto, transport = _echo(maxDatagram=4)
        proto.datagramReceived(b"12345", CLIENT)
        proto.datagramReceived(b"1234", CLIENT)
        self.assertEqual(transport.written, [(b"1234", CLIENT)])
        self.assertEqual(
            (proto.received, proto.echoed, proto.droppedOversize, proto.droppedRateLimited),
            (2, 1, 1, 0),
        )

    def test_rateLimit(self) -> None:
        """
        A source host may send C{burst} datagrams at once, then C{rate} per
        second; the rest are dropped and counted. The bucket refills with time
        but never beyond C{burst}.
        """
        clock = Clock()
        proto, transport = _echo(clock, rate=2.0, burst=3)
        for _ in range(5):
            proto.datagramReceived(b"x", CLIENT)
        self.assertEqual((proto.echoed, proto.droppedRateLimited), (3, 2))

        clock.advance(0.5)
        proto.datagramReceived(b"x", CLIENT)
        proto.datagramReceived(b"x", CLIENT)
        self.assertEqual((proto.echoed, proto.droppedRateLimited), (4, 3))

        clock.advance(1000)
        for _ in range(5):
            proto.datagramReceived(b"x", CLIENT)
        self.assertEqual((proto.echoed, proto.droppedRateLimited), (7, 5))
        self.assertEqual(len(transport.written), proto.echoed)
        self.assertEqual(proto.received, 12)

    def test_rateLimitPerHost(self) -> None:
        """
        The limit is per source host: one host at its limit does not limit
        another, while another port of the same host shares the host's bucket.
        """
        proto, transport = _echo(rate=1.0, burst=1)
        proto.datagramReceived(b"a", CLIENT)
        proto.datagramReceived(b"b", (CLIENT[0], CLIENT[1] + 1))
        proto.datagramReceived(b"c", ("192.0.2.2", CLIENT[1]))
        self.assertEqual(transport.written, [(b"a", CLIENT), (b"c", ("192.0.2.2", CLIENT[1]))])
        self.assertEqual(proto.droppedRateLimited, 1)

    def test_sourceTableBounded(self) -> None:
        """
        The rate limiter remembers at most C{maxSources} hosts, forgetting the
        least recently seen: a forgotten host starts again with a full bucket,
        a recently seen one stays limited.
        """
        proto, transport = _echo(rate=0.001, burst=1)
        proto.maxSources = 3
        for i in range(100):
            proto.datagramReceived(b"x", (f"198.51.100.{i}", 1))
        self.assertEqual(proto.trackedSources, 3)
        self.assertEqual(proto.echoed, 100)

        proto.datagramReceived(b"x", ("198.51.100.99", 1))
        self.assertEqual(proto.droppedRateLimited, 1)
        proto.datagramReceived(b"x", ("198.51.100.0", 1))
        self.assertEqual(proto.echoed, 101)
        self.assertEqual(proto.trackedSources, 3)

    def test_defaultSourceBound(self) -> None:
        """
        By default at most 4096 source hosts are remembered.
        """
        proto, transport = _echo()
        for i in range(5000):
            proto.datagramReceived(b"", (f"10.0.{i // 256}.{i % 256}", 1))
        self.assertEqual(proto.trackedSources, 4096)
        self.assertEqual(proto.echoed, 5000)

    def test_dropsLoggedAsSummary(self) -> None:
        """
        Drops are not logged one line each: the first is logged at once, later
        ones in one summary line per C{dropLogInterval}, and the remainder when
        the protocol stops.
        """
        clock = Clock()
        proto, transport = _echo(clock, maxDatagram=0)
        with capturedLogs() as events:
            for _ in range(100):
                proto.datagramReceived(b"x", CLIENT)
            self.assertEqual(len(_ours(events)), 1)
            clock.advance(proto.dropLogInterval)
            proto.datagramReceived(b"x", CLIENT)
            self.assertEqual([e["count"] for e in _ours(events)], [1, 100])
            proto.datagramReceived(b"x", CLIENT)
            proto.doStop()
        ours = _ours(events)
        self.assertEqual([e["count"] for e in ours], [1, 100, 1])
        self.assertEqual({e["log_level"] for e in ours}, {LogLevel.warn})
        self.assertEqual(proto.droppedOversize, 102)

    def test_warnsIfReadBufferTooSmall(self) -> None:
        """
        Starting on a port that reads no more than C{maxDatagram} bytes logs a
        warning, since oversize datagrams would arrive truncated; a port reading
        C{maxDatagram + 1} bytes does not.
        """
        for maxPacketSize, warnings in [(8192, 1), (8193, 0)]:
            with capturedLogs() as events:
                EchoProtocol().makeConnection(_SizedTransport(maxPacketSize))
            self.assertEqual(len(_ours(events)), warnings)

    def test_invalidArguments(self) -> None:
        """
        Nonsensical limits are rejected with L{ValueError}.
        """
        for kwargs in [{"maxDatagram": -1}, {"rate": 0.0}, {"burst": 0}]:
            self.assertRaises(ValueError, EchoProtocol, **kwargs)


class ListenEchoTests(SynchronousTestCase):
    """
    Tests for L{listenEcho}.
    """

    def test_readsOneByteMoreThanCap(self) -> None:
        """
        L{listenEcho} listens on loopback with C{maxPacketSize = maxDatagram + 1}
        and passes its keyword arguments to L{EchoProtocol}.
        """
        reactor = _FakeUDPReactor()
        listenEcho(reactor.asUDP(), 0, maxDatagram=100, upper=True)
        [port] = reactor.ports
        self.assertEqual((port.port, port.interface, port.maxPacketSize), (0, "127.0.0.1", 101))
        proto = port.protocol
        assert isinstance(proto, EchoProtocol)
        self.assertEqual((proto.maxDatagram, proto.upper), (100, True))

    def test_interface(self) -> None:
        """
        The interface can be chosen.
        """
        reactor = _FakeUDPReactor()
        listenEcho(reactor.asUDP(), 7, interface="::1")
        self.assertEqual(reactor.ports[0].interface, "::1")


def _client(
    clock: Clock, transport: FakeDatagramTransport | None = None, **kwargs: Any
) -> EchoClientProtocol:
    """
    Make an L{EchoClientProtocol} for C{SERVER} attached to C{transport}.
    """
    proto = EchoClientProtocol(SERVER, b"ping", clock=cast(IReactorTime, clock), **kwargs)
    proto.makeConnection(transport or FakeDatagramTransport())
    return proto


class EchoClientProtocolTests(SynchronousTestCase):
    """
    Tests for L{EchoClientProtocol}.
    """

    def test_reply(self) -> None:
        """
        The request is sent once to the server; the server's reply fires the
        result and stops the timer.
        """
        clock = Clock()
        transport = FakeDatagramTransport()
        proto = _client(clock, transport)
        d = proto.sendRequest()
        self.assertEqual(transport.written, [(b"ping", SERVER)])
        self.assertNoResult(d)
        proto.datagramReceived(b"PING", SERVER)
        self.assertEqual(self.successResultOf(d), b"PING")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_retriesThenTimeout(self) -> None:
        """
        Without a reply the request is re-sent every C{timeout} seconds,
        C{retries} times, then the result fails with L{EchoTimeout}.
        """
        clock = Clock()
        transport = FakeDatagramTransport()
        proto = _client(clock, transport, timeout=0.5, retries=2)
        d = proto.sendRequest()
        clock.advance(0.5)
        clock.advance(0.5)
        self.assertEqual(len(transport.written), 3)
        self.assertNoResult(d)
        clock.advance(0.5)
        error = self.failureResultOf(d, EchoTimeout).value
        self.assertEqual((error.tries, error.timeout), (3, 0.5))
        self.assertEqual(len(transport.written), 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_noRetries(self) -> None:
        """
        With C{retries=0} the request is sent once.
        """
        clock = Clock()
        transport = FakeDatagramTransport()
        proto = _client(clock, transport, timeout=1.0, retries=0)
        d = proto.sendRequest()
        clock.advance(1.0)
        self.assertEqual(self.failureResultOf(d, EchoTimeout).value.tries, 1)
        self.assertEqual(len(transport.written), 1)

    def test_replyToRetry(self) -> None:
        """
        A reply after a re-send is accepted.
        """
        clock = Clock()
        proto = _client(clock)
        d = proto.sendRequest()
        clock.advance(1.0)
        proto.datagramReceived(b"late", SERVER)
        self.assertEqual(self.successResultOf(d), b"late")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ignoresOtherAddresses(self) -> None:
        """
        Datagrams from another host, or from another port of the server's host,
        are ignored; so is a second reply.
        """
        clock = Clock()
        proto = _client(clock)
        d = proto.sendRequest()
        proto.datagramReceived(b"spoof", ("192.0.2.66", SERVER[1]))
        proto.datagramReceived(b"spoof", (SERVER[0], SERVER[1] + 1))
        self.assertNoResult(d)
        proto.datagramReceived(b"real", SERVER)
        proto.datagramReceived(b"duplicate", SERVER)
        self.assertEqual(self.successResultOf(d), b"real")

    def test_canonicalAddress(self) -> None:
        """
        The server's address is compared in canonical form, as C{recvfrom}
        reports it.
        """
        proto = EchoClientProtocol(("0:0::1", 7), b"x", clock=cast(IReactorTime, Clock()))
        proto.makeConnection(FakeDatagramTransport())
        d = proto.sendRequest()
        proto.datagramReceived(b"x", ("::1", 7))
        self.assertEqual(self.successResultOf(d), b"x")

    def test_cancel(self) -> None:
        """
        Cancelling the result stops the timer.
        """
        clock = Clock()
        proto = _client(clock)
        d = proto.sendRequest()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stoppedBeforeReply(self) -> None:
        """
        If the port stops before a reply, the result fails with
        L{ConnectionDone} and the timer is stopped.
        """
        clock = Clock()
        proto = _client(clock)
        d = proto.sendRequest()
        proto.doStop()
        self.failureResultOf(d, ConnectionDone)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_sendErrorOnRetry(self) -> None:
        """
        An error from the transport when re-sending fails the result.
        """
        clock = Clock()
        proto = _client(clock, _FailingTransport(okWrites=1))
        d = proto.sendRequest()
        clock.advance(1.0)
        self.failureResultOf(d, MessageLengthError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_invalidArguments(self) -> None:
        """
        A host name instead of an IP literal, a non-positive timeout and a
        negative retry count are rejected with L{ValueError}.
        """
        self.assertRaises(ValueError, EchoClientProtocol, ("localhost", 7), b"")
        self.assertRaises(ValueError, EchoClientProtocol, SERVER, b"", timeout=0)
        self.assertRaises(ValueError, EchoClientProtocol, SERVER, b"", retries=-1)

    def test_timeoutMessage(self) -> None:
        """
        L{EchoTimeout} says where, how many tries and how long.
        """
        self.assertEqual(
            str(EchoTimeout("127.0.0.1", 7, 4, 0.25)),
            "no UDP echo reply from 127.0.0.1:7 after 4 tries of 0.25s each (1s in all)",
        )
        self.assertIn("after 1 try of", str(EchoTimeout("127.0.0.1", 7, 1, 1.0)))


class UDPEchoTests(SynchronousTestCase):
    """
    Tests for L{udpEcho} with an in-memory reactor.
    """

    def test_success(self) -> None:
        """
        L{udpEcho} sends from an ephemeral port that reads whole datagrams of
        any size, fires with the reply and closes the port, leaving no delayed
        call.
        """
        reactor = _FakeUDPReactor()
        d = udpEcho(reactor.asUDP(), "127.0.0.1", 7, b"hi")
        [port] = reactor.ports
        self.assertEqual((port.port, port.interface, port.maxPacketSize), (0, "", 65527))
        self.assertEqual(port.transport.written, [(b"hi", ("127.0.0.1", 7))])
        port.protocol.datagramReceived(b"hi", ("127.0.0.1", 7))
        self.assertEqual(self.successResultOf(d), b"hi")
        self.assertTrue(port.stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        Without a reply, L{udpEcho} sends C{1 + retries} times, fails with
        L{EchoTimeout} and closes the port, leaving no delayed call.
        """
        reactor = _FakeUDPReactor()
        d = udpEcho(reactor.asUDP(), "127.0.0.1", 7, b"hi", timeout=0.1, retries=3)
        reactor.pump([0.1] * 4)
        self.assertEqual(self.failureResultOf(d, EchoTimeout).value.tries, 4)
        [port] = reactor.ports
        self.assertEqual(len(port.transport.written), 4)
        self.assertTrue(port.stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_resolvesNames(self) -> None:
        """
        A host name is resolved and the request sent to its address; a reply
        from that address is accepted.
        """
        reactor = _FakeUDPReactor({"echo.example": "192.0.2.7"})
        d = udpEcho(reactor.asUDP(), "echo.example", 7, b"hi")
        [port] = reactor.ports
        self.assertEqual(port.transport.written, [(b"hi", ("192.0.2.7", 7))])
        port.protocol.datagramReceived(b"hi", ("192.0.2.7", 7))
        self.assertEqual(self.successResultOf(d), b"hi")

    def test_resolutionFails(self) -> None:
        """
        If the name cannot be resolved the result fails and no port is opened.
        """
        reactor = _FakeUDPReactor()
        d = udpEcho(reactor.asUDP(), "nowhere.example", 7, b"hi")
        self.failureResultOf(d, DNSLookupError)
        self.assertEqual(reactor.ports, [])

    def test_ipv6(self) -> None:
        """
        For an IPv6 server the local port is an IPv6 one.
        """
        reactor = _FakeUDPReactor()
        d = udpEcho(reactor.asUDP(), "::1", 7, b"hi")
        self.assertEqual(reactor.ports[0].interface, "::")
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_cancel(self) -> None:
        """
        Cancelling the result closes the port and leaves no delayed call.
        """
        reactor = _FakeUDPReactor()
        d = udpEcho(reactor.asUDP(), "127.0.0.1", 7, b"hi")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(reactor.ports[0].stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_invalidArguments(self) -> None:
        """
        A non-positive timeout or a negative retry count is rejected at once.
        """
        reactor = _FakeUDPReactor()
        self.assertRaises(ValueError, udpEcho, reactor.asUDP(), "127.0.0.1", 7, b"", timeout=0)
        self.assertRaises(ValueError, udpEcho, reactor.asUDP(), "127.0.0.1", 7, b"", retries=-1)
        self.assertEqual(reactor.ports, [])


# Real loopback tests: pytest functions, so that pytest-twisted alone owns the
# reactor. Ports are always 0 (the kernel picks a free one) and nothing sleeps.


def _reactor() -> IReactorUDP:
    """
    The global reactor, imported late so that pytest-twisted installs it first.
    """
    from twisted.internet import reactor

    return cast(IReactorUDP, reactor)


class _Silent(DatagramProtocol):
    """
    A UDP server that records what it receives and never replies.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.received.append(datagram)


async def _stop(port: Any) -> None:
    """
    Stop a listening port and wait until it is closed.
    """
    stopped = port.stopListening()
    if stopped is not None:
        await stopped


@pytest_twisted.ensureDeferred
async def test_loopbackRoundTrip() -> None:
    """
    A request to the echo server on loopback comes back unchanged, including
    an empty one.
    """
    reactor = _reactor()
    port: Any = listenEcho(reactor, 0)
    try:
        number = port.getHost().port
        assert await udpEcho(reactor, "127.0.0.1", number, b"hello") == b"hello"
        assert await udpEcho(reactor, "127.0.0.1", number, b"") == b""
        assert port.protocol.echoed == 2
    finally:
        await _stop(port)


@pytest_twisted.ensureDeferred
async def test_loopbackHostName() -> None:
    """
    The client resolves a host name ("localhost") and gets the upper-cased
    reply.
    """
    reactor = _reactor()
    port: Any = listenEcho(reactor, 0, upper=True)
    try:
        number = port.getHost().port
        assert await udpEcho(reactor, "localhost", number, b"hello") == b"HELLO"
    finally:
        await _stop(port)


@pytest_twisted.ensureDeferred
async def test_loopbackTimeout() -> None:
    """
    Against a server that never replies, the client sends C{1 + retries} times
    and fails with L{EchoTimeout}.
    """
    reactor = _reactor()
    silent = _Silent()
    port: Any = reactor.listenUDP(0, silent, interface="127.0.0.1")
    try:
        number = port.getHost().port
        with pytest.raises(EchoTimeout) as caught:
            await udpEcho(reactor, "127.0.0.1", number, b"anyone?", timeout=0.05, retries=2)
        assert caught.value.tries == 3
        assert silent.received == [b"anyone?"] * 3
    finally:
        await _stop(port)


@pytest_twisted.ensureDeferred
async def test_loopbackOversize() -> None:
    """
    A datagram over the server's cap gets no reply, so the client times out,
    and the server counts it, however much larger it is; one at the cap is
    answered.
    """
    reactor = _reactor()
    port: Any = listenEcho(reactor, 0, maxDatagram=16)
    try:
        number = port.getHost().port
        proto = port.protocol
        for size in [17, 1000]:
            with pytest.raises(EchoTimeout):
                await udpEcho(reactor, "127.0.0.1", number, b"x" * size, timeout=0.05, retries=1)
        assert proto.droppedOversize == 4
        assert await udpEcho(reactor, "127.0.0.1", number, b"x" * 16) == b"x" * 16
        assert (proto.received, proto.echoed) == (5, 1)
    finally:
        await _stop(port)


@pytest_twisted.ensureDeferred
async def test_loopbackTruncation() -> None:
    """
    UDP truncates a datagram larger than the receiver's read buffer. With
    L{listenEcho} (which reads C{maxDatagram + 1} bytes) a 9000-byte request to
    the default 8192-byte cap is dropped; on a port with Twisted's default
    8192-byte buffer the same request is silently cut to 8192 bytes and the
    truncated datagram is echoed.
    """
    reactor = _reactor()
    request = bytes(range(256)) * 35 + b"tail"
    port: Any = listenEcho(reactor, 0)
    try:
        with pytest.raises(EchoTimeout):
            await udpEcho(
                reactor, "127.0.0.1", port.getHost().port, request, timeout=0.05, retries=0
            )
        assert port.protocol.droppedOversize == 1
    finally:
        await _stop(port)

    proto = EchoProtocol()
    with capturedLogs() as events:
        naive: Any = reactor.listenUDP(0, proto, interface="127.0.0.1")
    try:
        assert len(_ours(events)) == 1
        reply = await udpEcho(reactor, "127.0.0.1", naive.getHost().port, request)
        assert reply == request[:8192]
        assert proto.droppedOversize == 0
    finally:
        await _stop(naive)
