# -*- test-case-name: tests.test_udp -*-
"""
UDP echo: a contrast to the framed TCP protocol.

TCP delivers a stream of bytes, so L{twisted_frames.protocol} has to frame it. UDP
delivers datagrams: each C{sendto} arrives as one C{recvfrom} or not at all, so the
boundaries are kept without any framing, but a datagram can be lost, duplicated,
reordered or (if the receiver's buffer is too small) truncated.

Server::

    port = listenEcho(reactor, 8007, upper=True)

Client::

    reply = await udpEcho(reactor, "localhost", 8007, b"hello")

The server answers each datagram with exactly one datagram, never larger than the
request (so it cannot be used to amplify a reflection attack), drops datagrams over
L{EchoProtocol.maxDatagram} bytes and rate-limits each source host with a token
bucket.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

__all__ = [
    "EchoClientProtocol",
    "EchoProtocol",
    "EchoTimeout",
    "listenEcho",
    "udpEcho",
]

_log = Logger(namespace="twisted_frames.udp")

# Largest UDP payload over IPv6 (65535 minus the 8-byte UDP header); IPv4's is 65507.
# The client reads with a buffer this big so that no reply is ever truncated.
_MAX_UDP_PAYLOAD = 65527


# Twisted's interfaces are zope.interface classes whose methods have no "self", so
# mypy (without the mypy-zope plugin) cannot type-check calls made through them.
# Public signatures use the interfaces, as Twisted's documentation does; internally
# we cast to these structural types, which list only what this module calls.


class _DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class _Clock(Protocol):
    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Any, *args: object, **kwargs: object
    ) -> _DelayedCall: ...


class _ClientReactor(_Clock, Protocol):
    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str, maxPacketSize: int
    ) -> _ListeningPort: ...

    def resolve(self, name: str) -> Deferred[str]: ...


class _ServerReactor(Protocol):
    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str, maxPacketSize: int
    ) -> IListeningPort: ...


class _ListeningPort(Protocol):
    def stopListening(self) -> Deferred[None] | None: ...


class _DatagramWriter(Protocol):
    def write(self, datagram: bytes, addr: tuple[str, int]) -> object: ...


class DatagramMetrics(Protocol):
    """
    What counts the echo's datagrams (L{twisted_frames.metrics.Metrics}).
    """

    def udpAnswered(self) -> None: ...

    def udpDropped(self, reason: str) -> None: ...


def _defaultClock() -> IReactorTime:
    # Imported late so that merely importing this module installs no reactor.
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)


@dataclass(slots=True)
class _Bucket:
    """
    The token bucket of one source host.

    @ivar tokens: Datagrams the host may still send right now (fractional).
    @ivar stamp: When C{tokens} was last brought up to date, in clock seconds.
    """

    tokens: float
    stamp: float


class EchoProtocol(DatagramProtocol):
    """
    Answer each datagram with exactly one datagram holding the same bytes.

    The reply is never larger than the request, so a spoofed request cannot make
    this server send more bytes to a victim than the spoofer sent itself.

    Datagrams larger than C{maxDatagram} are dropped and counted in
    C{droppedOversize}. To see such a datagram at all the port must read with a
    buffer bigger than C{maxDatagram}: Twisted's UDP port reads at most
    C{maxPacketSize} bytes (8192 by default) and the kernel silently truncates the
    rest, which would make an oversize datagram look like an acceptable one. So
    listen with C{maxPacketSize=}L{readSize} or more, as L{listenEcho} does.

    Each source host (the address, not the port, since a sender can pick any
    port) gets a token bucket holding up to C{burst} datagrams and refilled at
    C{rate} datagrams a second; datagrams over the limit are dropped and counted
    in C{droppedRateLimited}.

    @cvar maxSources: How many source hosts to remember. Source addresses of UDP
        are trivially spoofed, so the table is bounded: when it is full the least
        recently seen host is forgotten, which gives it a full bucket if it comes
        back. Memory stays bounded and a host sending often stays limited.
    @cvar dropLogInterval: Drops are logged at most once per this many seconds,
        as a summary (see C{_dropped} for why).

    @ivar upper: Whether replies are ASCII upper-cased (C{bytes.upper}, which
        never changes the length).
    @ivar maxDatagram: The largest datagram answered, in bytes.
    @ivar rate: Datagrams per second each source host may send on average.
    @ivar burst: Datagrams a source host may send at once after being idle.
    @ivar received: Datagrams received, including those dropped.
    @ivar echoed: Datagrams answered.
    @ivar droppedOversize: Datagrams dropped for being larger than C{maxDatagram}.
    @ivar droppedRateLimited: Datagrams dropped by the rate limit.
    """

    maxSources: int = 4096
    dropLogInterval: float = 60.0

    def __init__(
        self,
        *,
        upper: bool = False,
        # 8 KiB: Twisted's default UDP read size and well under the 64 KiB UDP
        # maximum; larger datagrams are fragmented by IP and often lost anyway.
        maxDatagram: int = 8192,
        # 50/s with bursts of 100 is generous for an interactive echo client and
        # caps what one spoofed source address can reflect at 400 KiB/s.
        rate: float = 50.0,
        burst: int = 100,
        clock: IReactorTime | None = None,
        metrics: DatagramMetrics | None = None,
    ) -> None:
        """
        @param upper: Upper-case (ASCII) each reply.
        @param maxDatagram: Drop datagrams larger than this many bytes.
        @param rate: Token-bucket refill rate per source host, datagrams/second.
        @param burst: Token-bucket size per source host, in datagrams.
        @param clock: The clock for the rate limit; the global reactor if C{None}
            (looked up when first needed, not at construction).
        @param metrics: Told of every datagram answered or dropped, if given.
        @raise ValueError: If C{maxDatagram} is negative, C{rate} is not positive
            or C{burst} is less than 1.
        """
        if maxDatagram < 0:
            raise ValueError(f"maxDatagram must be >= 0, not {maxDatagram!r}")
        if not rate > 0:
            raise ValueError(f"rate must be > 0, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst!r}")
        self.upper = upper
        self.maxDatagram = maxDatagram
        self.rate = rate
        self.burst = burst
        self._clockOrNone = clock
        self.metrics = metrics
        self.received = 0
        self.echoed = 0
        self.droppedOversize = 0
        self.droppedRateLimited = 0
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._lastDropLog: float | None = None
        self._unloggedDrops = 0

    @property
    def readSize(self) -> int:
        """
        The C{maxPacketSize} to listen with: one byte more than
        C{maxDatagram}, so that a larger datagram is seen as such and
        dropped, not truncated into an acceptable one.
        """
        return self.maxDatagram + 1

    @property
    def trackedSources(self) -> int:
        """
        How many source hosts the rate limiter currently remembers (at most
        C{maxSources}).
        """
        return len(self._sources)

    def _clock(self) -> _Clock:
        if self._clockOrNone is None:
            self._clockOrNone = _defaultClock()
        return cast(_Clock, self._clockOrNone)

    def startProtocol(self) -> None:
        """
        Warn if the port reads with a buffer too small to notice oversize
        datagrams (they would be truncated and answered instead of dropped).
        """
        maxPacketSize = getattr(self.transport, "maxPacketSize", None)
        if isinstance(maxPacketSize, int) and maxPacketSize <= self.maxDatagram:
            _log.warn(
                "UDP port reads at most {maxPacketSize} bytes, not more than "
                "maxDatagram={maxDatagram}: larger datagrams will be truncated and "
                "answered instead of dropped; listen with "
                "maxPacketSize={needed} (see listenEcho)",
                maxPacketSize=maxPacketSize,
                maxDatagram=self.maxDatagram,
                needed=self.readSize,
            )

    def stopProtocol(self) -> None:
        """
        Log the drops not yet reported, so the summary is complete.
        """
        if self._unloggedDrops:
            self._logDrops(None, None, None)

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """
        Echo C{datagram} back to C{addr} unless it is oversize or over the source
        host's rate limit.

        @param datagram: The datagram received.
        @param addr: The sender's C{(host, port)}.
        """
        self.received += 1
        host = addr[0]
        if len(datagram) > self.maxDatagram:
            self.droppedOversize += 1
            if self.metrics is not None:
                self.metrics.udpDropped("oversize")
            self._dropped("oversize", host, len(datagram))
            return
        if not self._takeToken(host):
            self.droppedRateLimited += 1
            if self.metrics is not None:
                self.metrics.udpDropped("rate_limited")
            self._dropped("rate-limited", host, len(datagram))
            return
        reply = datagram.upper() if self.upper else datagram
        cast(_DatagramWriter, self.transport).write(reply, addr)
        self.echoed += 1
        if self.metrics is not None:
            self.metrics.udpAnswered()

    def _takeToken(self, host: str) -> bool:
        """
        Spend one token of C{host}'s bucket, refilled for the time elapsed.

        @return: C{False} if the bucket had less than one token.
        """
        now = self._clock().seconds()
        bucket = self._sources.pop(host, None)
        if bucket is None:
            bucket = _Bucket(tokens=float(self.burst), stamp=now)
            while self._sources and len(self._sources) >= self.maxSources:
                self._sources.popitem(last=False)
        else:
            # max(): a clock that steps backwards must not drain the bucket.
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.stamp = now
        # Re-inserting keeps the dict ordered from least to most recently seen.
        self._sources[host] = bucket
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _dropped(self, reason: str, host: str, size: int) -> None:
        """
        Count a dropped datagram for the log summary.

        One log line per drop would let anyone flood the log by flooding the
        port, and one line per source per minute would not help either because
        source addresses can be spoofed at will. So drops are summarised: the
        first drop is logged at once, later ones at most once per
        C{dropLogInterval} seconds with a count, and any remainder when the
        protocol stops. The counters always hold the exact totals.
        """
        self._unloggedDrops += 1
        now = self._clock().seconds()
        if self._lastDropLog is None or now - self._lastDropLog >= self.dropLogInterval:
            self._lastDropLog = now
            self._logDrops(reason, host, size)

    def _logDrops(self, reason: str | None, host: str | None, size: int | None) -> None:
        _log.warn(
            "Dropped {count} datagram(s) since the last report ({oversize} oversize and "
            "{rateLimited} rate-limited in all); latest: {reason} from {host}, "
            "{size} bytes",
            count=self._unloggedDrops,
            oversize=self.droppedOversize,
            rateLimited=self.droppedRateLimited,
            reason=reason,
            host=host,
            size=size,
        )
        self._unloggedDrops = 0


class _EchoOptions(TypedDict, total=False):
    upper: bool
    maxDatagram: int
    rate: float
    burst: int
    clock: IReactorTime | None
    metrics: DatagramMetrics | None


def listenEcho(
    reactor: IReactorUDP,
    port: int,
    interface: str = "127.0.0.1",
    **kwargs: Unpack[_EchoOptions],
) -> IListeningPort:
    """
    Listen for UDP echo requests.

    The port reads with C{maxPacketSize=}L{EchoProtocol.readSize}, so that a
    datagram larger than C{maxDatagram} is seen as such and dropped, not
    truncated.

    @param reactor: The reactor to listen with.
    @param port: The UDP port number; 0 picks a free one (see C{getHost()}).
    @param interface: The local address to bind; loopback by default, so that
        exposing the service to the network is a deliberate choice.
    @param kwargs: Passed to L{EchoProtocol}.
    @return: The listening port; its C{protocol} attribute is the
        L{EchoProtocol} with the counters.
    """
    proto = EchoProtocol(**kwargs)
    return cast(_ServerReactor, reactor).listenUDP(
        port, proto, interface=interface, maxPacketSize=proto.readSize
    )


class EchoTimeout(Exception):
    """
    No reply came back from the echo server.

    @ivar host: The server's address.
    @ivar port: The server's port.
    @ivar tries: How many times the request was sent.
    @ivar timeout: How long each try waited, in seconds.
    """

    def __init__(self, host: str, port: int, tries: int, timeout: float) -> None:
        """
        @param host: The server's address.
        @param port: The server's port.
        @param tries: How many times the request was sent.
        @param timeout: How long each try waited, in seconds.
        """
        super().__init__(
            f"no UDP echo reply from {host}:{port} after {tries} "
            f"{'try' if tries == 1 else 'tries'} of {timeout:g}s each "
            f"({tries * timeout:g}s in all)"
        )
        self.host = host
        self.port = port
        self.tries = tries
        self.timeout = timeout


class EchoClientProtocol(DatagramProtocol):
    """
    Send one echo request and wait for its reply, re-sending if none comes.

    Call L{sendRequest} once the protocol is listening. Datagrams from any address
    other than C{peer} are ignored, as are any after the first reply (a late reply
    to an earlier try).

    @ivar peer: The server's C{(address, port)}; the address is an IP literal in
        canonical form.
    @ivar message: The request datagram.
    @ivar timeout: Seconds to wait for a reply to each try.
    @ivar retries: How many times to re-send after the first try.
    @ivar tries: How many times the request has been sent so far.
    @ivar reply: Fires with the reply datagram, or fails with L{EchoTimeout}, with
        an error from the transport, with L{ConnectionDone} if the port stops
        first, or with L{twisted.internet.defer.CancelledError} if cancelled.
    """

    def __init__(
        self,
        peer: tuple[str, int],
        message: bytes,
        *,
        timeout: float = 1.0,
        retries: int = 3,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param peer: The server's C{(address, port)}; the address must be an IPv4
            or IPv6 literal (L{udpEcho} resolves names).
        @param message: The request datagram.
        @param timeout: Seconds to wait for a reply to each try.
        @param retries: How many times to re-send after the first try.
        @param clock: The clock for the timeouts; the global reactor if C{None}.
        @raise ValueError: If the address is not an IP literal, C{timeout} is not
            positive or C{retries} is negative.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, not {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries!r}")
        # Canonical form, as recvfrom() reports it, so that addresses compare equal.
        self.peer = (str(ipaddress.ip_address(peer[0])), peer[1])
        self.message = message
        self.timeout = timeout
        self.retries = retries
        self.tries = 0
        self.reply: Deferred[bytes] = Deferred(self._cancel)
        self._clockOrNone = clock
        self._timer: _DelayedCall | None = None

    def _clock(self) -> _Clock:
        if self._clockOrNone is None:
            self._clockOrNone = _defaultClock()
        return cast(_Clock, self._clockOrNone)

    def sendRequest(self) -> Deferred[bytes]:
        """
        Send the request for the first time and start the timer.

        @return: L{reply}.
        @raise Exception: Whatever the transport's C{write} raises, e.g.
            L{twisted.internet.error.MessageLengthError}.
        """
        self._send()
        return self.reply

    def _send(self) -> None:
        self.tries += 1
        cast(_DatagramWriter, self.transport).write(self.message, self.peer)
        self._timer = self._clock().callLater(self.timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        if self.tries > self.retries:
            self.reply.errback(EchoTimeout(*self.peer, tries=self.tries, timeout=self.timeout))
            return
        try:
            self._send()
        except Exception as e:
            self.reply.errback(e)

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _cancel(self, reply: Deferred[bytes]) -> None:
        # Deferred then fails itself with CancelledError.
        self._stopTimer()

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """
        Fire L{reply} with the first datagram from C{peer}; ignore others.

        @param datagram: The datagram received.
        @param addr: The sender's C{(host, port)}.
        """
        if addr != self.peer or self.reply.called:
            _log.debug("Ignored a datagram from {addr}", addr=addr)
            return
        self._stopTimer()
        self.reply.callback(datagram)

    def stopProtocol(self) -> None:
        """
        Stop the timer; fail L{reply} if no reply came before the port stopped.
        """
        self._stopTimer()
        if not self.reply.called:
            self.reply.errback(ConnectionDone("UDP port stopped before a reply came"))


def udpEcho(
    reactor: IReactorUDP,
    host: str,
    port: int,
    message: bytes,
    timeout: float = 1.0,
    retries: int = 3,
) -> Deferred[bytes]:
    """
    Send C{message} to a UDP echo server and return its reply.

    The request goes out from a fresh ephemeral port, which is closed (and
    C{stopListening} waited for) before the result fires, whatever it is. The
    request is sent up to C{1 + retries} times, C{timeout} seconds apart, because
    UDP may lose the request or the reply. Datagrams from other addresses are
    ignored. Cancelling the result stops the timer and closes the port.

    @param reactor: Must also provide
        L{IReactorTime<twisted.internet.interfaces.IReactorTime>}, and
        L{IReactorPluggableResolver<twisted.internet.interfaces.IReactorPluggableResolver>}
        if C{host} is a name.
    @param host: An IPv4 or IPv6 literal, or a host name, which is resolved with
        C{reactor.resolve} and so to an IPv4 address only.
    @param port: The server's UDP port.
    @param message: The request; one datagram, so at most 65507 bytes over IPv4.
    @param timeout: Seconds to wait for a reply to each try.
    @param retries: How many times to re-send after the first try.
    @return: Fires with the reply, or fails with L{EchoTimeout} if none came, or
        with the error from resolving, listening or sending.
    @raise ValueError: If C{timeout} is not positive or C{retries} is negative.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, not {timeout!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries!r}")
    return Deferred.fromCoroutine(
        _udpEcho(cast(_ClientReactor, reactor), host, port, message, timeout, retries)
    )


async def _udpEcho(
    reactor: _ClientReactor,
    host: str,
    port: int,
    message: bytes,
    timeout: float,
    retries: int,
) -> bytes:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = ipaddress.ip_address(await reactor.resolve(host))
    proto = EchoClientProtocol(
        (str(address), port),
        message,
        timeout=timeout,
        retries=retries,
        clock=cast(IReactorTime, reactor),
    )
    # The local socket's family must match the server's address.
    interface = "::" if address.version == 6 else ""
    # Read with the largest possible buffer: a reply is never truncated.
    listening = reactor.listenUDP(0, proto, interface=interface, maxPacketSize=_MAX_UDP_PAYLOAD)
    try:
        return await proto.sendRequest()
    finally:
        # The port closes in a later reactor iteration: wait for it, so that no
        # socket or delayed call outlives the result.
        stopped = listening.stopListening()
        if stopped is not None:
            await stopped
