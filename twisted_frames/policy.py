# -*- test-case-name: tests.test_policy -*-
"""
Connection policy: how many connections, from where, and how fast a source
that keeps failing to log in may try again.

Twisted's own C{policies.LimitConnectionsByPeer} is broken on Python 3 (it
keys on the whole address tuple and never frees entries), so the per-source
limits here are written out, keyed by L{sourceKey}.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .server import Service
from .wire import ErrorCode, FramesError

if TYPE_CHECKING:
    from .server import ServerProtocol

log = Logger(namespace="twisted_frames.policy")

#: Every local (UNIX socket) peer counts as this one source.
LOCAL_SOURCE = "local"


def sourceKey(address: Any) -> str:
    """
    The "source" an address counts against for per-source limits: the IPv4
    address, the IPv6 /64 network (one host usually holds a whole /64, so
    counting single IPv6 addresses would be no limit at all), or
    L{LOCAL_SOURCE} for UNIX sockets.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return LOCAL_SOURCE
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailurePenalties:
    """
    A delay per source that grows with its failed logins: after C{n}
    failures, the next attempt from that source waits until
    C{min(base * factor ** (n - 1), maximum)} seconds after the last failure.
    A source is forgotten C{memory} seconds after its last failure.

    @ivar maxSources: sources remembered at most (the oldest are forgotten
        first), so that many sources cannot exhaust memory.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        base: float = 1.0,
        factor: float = 2.0,
        maximum: float = 8.0,
        memory: float = 600.0,
        maxSources: int = 65536,
    ) -> None:
        self._clockOrNone = clock
        self.base = base
        self.factor = factor
        self.maximum = maximum
        self.memory = memory
        self.maxSources = maxSources
        self._entries: dict[str, tuple[int, float]] = {}

    @property
    def clock(self) -> IReactorTime:
        """
        The clock in use (the reactor unless one was given).
        """
        if self._clockOrNone is None:
            from twisted.internet import reactor

            return cast(IReactorTime, reactor)
        return self._clockOrNone

    def failures(self, source: str) -> int:
        """
        @return: the failures remembered for C{source}.
        """
        entry = self._current(source)
        return entry[0] if entry else 0

    def _current(self, source: str) -> tuple[int, float] | None:
        entry = self._entries.get(source)
        if entry is not None and self.clock.seconds() - entry[1] > self.memory:
            del self._entries[source]
            return None
        return entry

    def delay(self, source: str) -> float:
        """
        @return: seconds the next attempt from C{source} must wait.
        """
        entry = self._current(source)
        if entry is None:
            return 0.0
        failures, last = entry
        penalty = min(self.base * self.factor ** (failures - 1), self.maximum)
        return max(0.0, last + penalty - self.clock.seconds())

    def wait(self, source: str) -> defer.Deferred[None]:
        """
        @return: a Deferred that fires once C{source} may try again.
        """
        seconds = self.delay(source)
        if seconds <= 0:
            return defer.succeed(None)
        return task.deferLater(self.clock, seconds, lambda: None)

    def failed(self, source: str) -> None:
        """
        Record a failed attempt from C{source}.
        """
        entry = self._current(source)
        failures = entry[0] + 1 if entry else 1
        self._entries.pop(source, None)
        self._entries[source] = (failures, self.clock.seconds())
        while len(self._entries) > self.maxSources:
            del self._entries[next(iter(self._entries))]


@dataclass(frozen=True)
class ConnectionLimits:
    """
    Caps on connections (C{None}: no cap).  Unauthenticated ones count only
    when the server requires login.
    """

    maxConnections: int | None = 512
    maxPerSource: int | None = 32
    maxUnauthenticated: int | None = 64
    maxUnauthenticatedPerSource: int | None = 8


#: Descriptors the server holds whatever its load: the standard streams,
#: the log, the reactor's own (epoll, waker pipe), and spare for short-lived
#: ones (a command being spawned, the users file being re-read).
BASE_DESCRIPTORS = 32
#: Per connection: its socket, the file of the one C{get} it may be sending
#: (the others wait without one), and the partial file and directory of the
#: upload it is receiving.
DESCRIPTORS_PER_CONNECTION = 4
#: Per running command: its stdin, stdout and stderr pipes.
DESCRIPTORS_PER_COMMAND = 3
#: Per worker thread: a directory and a file open during one step of a file
#: operation.
DESCRIPTORS_PER_THREAD = 2


def descriptorsNeeded(connections: int, commands: int, threads: int, listeners: int) -> int:
    """
    The most descriptors the server can hold at once under these caps.

    @param connections: connections at once (C{--max-connections}).
    @param commands: commands running at once (C{--max-procs}).
    @param threads: worker threads doing file operations.
    @param listeners: listening ports (TCP and UDP).
    """
    return (
        BASE_DESCRIPTORS
        + listeners
        + connections * DESCRIPTORS_PER_CONNECTION
        + commands * DESCRIPTORS_PER_COMMAND
        + threads * DESCRIPTORS_PER_THREAD
    )


def fitDescriptors(
    limit: int, connections: int | None, commands: int, threads: int, listeners: int
) -> tuple[int, int]:
    """
    Caps no higher than those given whose L{descriptorsNeeded} fits in
    C{limit}: the connection cap is lowered first (no cap, C{None}, becomes
    as many as fit); commands keep at most half of what remains.

    @return: C{(connections, commands)}, the given ones when they fit.
    @raise ValueError: when not even one connection and one command fit.
    """
    if connections is not None and (
        descriptorsNeeded(connections, commands, threads, listeners) <= limit
    ):
        return connections, commands
    spare = limit - descriptorsNeeded(0, 0, threads, listeners)
    if commands * DESCRIPTORS_PER_COMMAND > spare // 2:
        commands = max(1, spare // 2 // DESCRIPTORS_PER_COMMAND)
    fitting = (spare - commands * DESCRIPTORS_PER_COMMAND) // DESCRIPTORS_PER_CONNECTION
    if fitting < 1:
        raise ValueError(
            f"the open-file limit (RLIMIT_NOFILE) of {limit} is too low to serve: "
            f"{descriptorsNeeded(1, 1, threads, listeners)} descriptors are needed for "
            "one connection and one command"
        )
    return (fitting if connections is None else min(connections, fitting)), commands


class ConnectionGuard(Service):
    """
    Refuses connections over the L{ConnectionLimits}: the connection gets one
    C{busy} error message instead of the greeting, and is closed.  Put it
    first among the services, so it refuses before others do any work.
    """

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits if limits is not None else ConnectionLimits()
        self.total = 0
        self.unauthenticated = 0
        self.perSource: Counter[str] = Counter()
        self.unauthenticatedPerSource: Counter[str] = Counter()
        self._counted: dict[ServerProtocol, tuple[str, bool]] = {}

    def _refusal(self, source: str, unauthenticated: bool) -> tuple[str, str] | None:
        """
        @return: the cap a new connection from C{source} is over (its name
            in the metrics) and the message saying so, or C{None}.
        """
        limits = self.limits
        if limits.maxConnections is not None and self.total >= limits.maxConnections:
            return "max_connections", f"too many connections (limit {limits.maxConnections})"
        if limits.maxPerSource is not None and self.perSource[source] >= limits.maxPerSource:
            return (
                "max_per_source",
                f"too many connections from your address (limit {limits.maxPerSource})",
            )
        if not unauthenticated:
            return None
        if (
            limits.maxUnauthenticated is not None
            and self.unauthenticated >= limits.maxUnauthenticated
        ):
            return (
                "max_unauthenticated",
                f"too many connections waiting to log in (limit {limits.maxUnauthenticated})",
            )
        cap = limits.maxUnauthenticatedPerSource
        if cap is not None and self.unauthenticatedPerSource[source] >= cap:
            return (
                "max_unauthenticated_per_source",
                f"too many connections from your address waiting to log in (limit {cap})",
            )
        return None

    def connectionMade(self, connection: ServerProtocol) -> None:
        """
        Count the connection, or refuse it if a limit is reached.
        """
        transport = connection.transport
        source = sourceKey(transport.getPeer() if transport is not None else None)
        unauthenticated = bool(connection.factory.authRequired and connection.user is None)
        refusal = self._refusal(source, unauthenticated)
        if refusal is not None:
            cap, message = refusal
            log.warn(
                "refused connection from {peer}: {reason}",
                peer=connection.peerName(),
                reason=message,
            )
            connection.refuse(FramesError(ErrorCode.BUSY, message), cap)
            return
        self._counted[connection] = (source, unauthenticated)
        self.total += 1
        self.perSource[source] += 1
        if unauthenticated:
            self.unauthenticated += 1
            self.unauthenticatedPerSource[source] += 1

    def userLoggedIn(self, connection: ServerProtocol) -> None:
        """
        The connection no longer counts as unauthenticated.
        """
        counted = self._counted.get(connection)
        if counted is not None and counted[1]:
            self._counted[connection] = (counted[0], False)
            self._uncountUnauthenticated(counted[0])

    def connectionLost(self, connection: ServerProtocol) -> None:
        """
        Release what the connection counted against.
        """
        counted = self._counted.pop(connection, None)
        if counted is None:
            return
        source, unauthenticated = counted
        self.total -= 1
        _decrement(self.perSource, source)
        if unauthenticated:
            self._uncountUnauthenticated(source)

    def _uncountUnauthenticated(self, source: str) -> None:
        self.unauthenticated -= 1
        _decrement(self.unauthenticatedPerSource, source)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
