"""
Clients that stop reading: the write deadline (C{--write-timeout}), the idle
timeout with requests the peer never reads, one open file per connection for
pipelined C{get}s, and caps that fit C{RLIMIT_NOFILE}.

Synchronous, with a C{Clock} and a TCP-like transport whose "socket" takes
only what the test lets the peer read (the real-socket version is in
C{tests/test_stall_loopback.py}).
"""

from __future__ import annotations

import os
import resource
from typing import Any

from twisted.internet import abstract, defer, error, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.loopback import openFilesOf
from tests.test_protocol import parseMessages
from tests.test_tap import existingRoot
from twisted_frames import policy, wire
from twisted_frames.files.service import FileService
from twisted_frames.policy import ConnectionGuard
from twisted_frames.server import LOST_LOG_BATCH, FramesServerFactory
from twisted_frames.tap import Options, fitDescriptorLimit, makeService

MiB = 1024 * 1024


class SocketTransport(abstract.FileDescriptor):
    """
    A TCP-like transport over no socket: Twisted's own write buffering and
    producer pausing (L{abstract.FileDescriptor}), with a "socket" that takes
    only the bytes the test lets the peer read (C{allowance}).
    """

    def __init__(self) -> None:
        super().__init__(MemoryReactor())
        self.connected = 1
        self.allowance = 0
        self.taken = 0
        self.aborted = False
        self.protocol: Any = None

    def writeSomeData(self, data: bytes) -> int:
        n = min(len(data), self.allowance)
        self.allowance -= n
        self.taken += n
        return n

    def abortConnection(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        self.connected = 0
        self.disconnected = 1
        self.protocol.connectionLost(Failure(error.ConnectionAborted()))

    def loseConnection(self, reason: Any = None) -> None:
        self.disconnecting = True

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.7", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8007)


def captureLog(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    @return: a list that receives every log event until C{case} ends.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def connectInMemory(**settings: Any) -> tuple[task.Clock, Any, StringTransport]:
    """
    A ping-only server connection over a C{StringTransport}, with a
    C{Clock}; C{settings} are set on its factory first.
    """
    clock = task.Clock()
    factory = FramesServerFactory(clock=clock)
    for name, value in settings.items():
        setattr(factory, name, value)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return clock, protocol, transport


class QueuedRunner:
    """
    Worker threads that run their jobs only when told (L{runPending}), as a
    busy pool would: so that, as in a real server, a read full of pipelined
    requests is parsed before any of their files is opened.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def __call__(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def runPending(self) -> None:
        while self.jobs:
            f, args, d = self.jobs.pop(0)
            try:
                result = f(*args)
            except BaseException:
                d.errback()
            else:
                d.callback(result)


def request(rid: int, op: str, **fields: Any) -> bytes:
    return wire.encodeMessage({"op": op, "id": rid, **fields})


class _Server:
    """
    A file server on a L{SocketTransport}, with a C{Clock}.
    """

    def __init__(self, case: SynchronousTestCase, writeTimeout: float | None) -> None:
        self.root = case.mktemp()
        os.makedirs(self.root)
        self.big = os.path.join(os.path.abspath(self.root), "big.bin")
        with open(self.big, "wb") as f:
            f.write(os.urandom(3 * MiB))
        self.clock = task.Clock()
        self.runner = QueuedRunner()
        self.files = FileService(self.root, runInThread=self.runner, clock=self.clock)
        self.factory = FramesServerFactory([self.files], clock=self.clock)
        self.factory.writeTimeout = writeTimeout
        self.protocol = self.factory.buildProtocol(None)
        self.transport = SocketTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        case.addCleanup(self.close)

    def close(self) -> None:
        """
        Drop the connection and let its requests end, so that none is left
        waiting when the test is over.
        """
        self.transport.abortConnection()
        self.runner.runPending()

    def pipelineGets(self, count: int) -> None:
        """
        The peer sends C{count} gets of the file in one read.
        """
        self.protocol.dataReceived(
            b"".join(request(i, "get", path="big.bin") for i in range(1, count + 1))
        )
        self.runner.runPending()

    def peerReads(self, n: int) -> None:
        """
        The peer reads C{n} bytes; the server carries on.
        """
        t = self.transport
        t.allowance += n
        self.runner.runPending()
        while t.allowance and (len(t.dataBuffer) - t.offset + t._tempDataLen):
            t.doWrite()
            self.runner.runPending()

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """
        Let C{seconds} pass in steps (a C{Clock} runs every call of one
        advance at its end time, unlike a reactor).
        """
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.runner.runPending()


class WriteDeadlineTests(SynchronousTestCase):
    """
    L{FrameProtocol.writeTimeout}: progress is the peer taking bytes.
    """

    def setUp(self) -> None:
        self.events = captureLog(self)

    def test_stalledReaderCut(self) -> None:
        """
        A peer that pipelines gets and reads nothing is cut off
        C{writeTimeout} seconds after the server first had data for it, with
        one log line; its requests end as on a disconnection and every file
        is closed.
        """
        s = _Server(self, writeTimeout=10)
        s.pipelineGets(5)
        self.assertTrue(s.protocol._pressure.paused)
        self.assertEqual(len(s.protocol.inFlight), 5)
        s.advance(9.9)
        self.assertFalse(s.transport.aborted)
        s.advance(0.1)
        self.assertTrue(s.transport.aborted)
        lines = [e for e in self.events if "write timeout" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["peer"], "192.0.2.7:40000")
        self.assertEqual(s.protocol.inFlight, {})
        self.assertEqual(openFilesOf(s.big), 0)
        self.assertEqual(s.files._getTurns, {})
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_slowSteadyReaderKept(self) -> None:
        """
        A peer that takes a little every few seconds (never enough for the
        transport to drain and resume the connection) is never cut, and
        gets all of its file; once it stops reading, the deadline runs from
        the last bytes it took.
        """
        s = _Server(self, writeTimeout=10)
        s.pipelineGets(1)
        for _ in range(40):
            s.advance(5)
            s.peerReads(1024)
        self.assertFalse(s.transport.aborted)
        self.assertEqual(s.transport.taken, 40 * 1024)
        s.advance(9.9)
        self.assertFalse(s.transport.aborted)
        s.advance(2.6)
        self.assertTrue(s.transport.aborted)

    def test_readerCatchesUp(self) -> None:
        """
        A peer that reads everything in the end gets the whole file and the
        final reply; with nothing left to send, no check stays scheduled.
        """
        s = _Server(self, writeTimeout=10)
        s.pipelineGets(1)
        while s.transport.dataBuffer or s.transport._tempDataLen:
            s.advance(8)
            s.peerReads(256 * 1024)
        self.assertFalse(s.transport.aborted)
        self.assertEqual(s.protocol.inFlight, {})
        self.assertGreater(s.transport.taken, 3 * MiB)
        s.advance(10)
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_noDeadline(self) -> None:
        """
        C{writeTimeout = None}: the server waits for a stalled peer for as
        long as the other deadlines allow.
        """
        s = _Server(self, writeTimeout=None)
        s.pipelineGets(2)
        s.advance(3600)
        self.assertFalse(s.transport.aborted)

    def test_pausedInMemoryTransport(self) -> None:
        """
        Over a transport that does not show its buffer (here
        C{StringTransport}), waiting output is what its producer pause says:
        paused for the whole deadline is cut, a resume in time is progress.
        (Progress is noticed by checks every quarter of the deadline, so the
        cut comes between one and one and a quarter deadlines after it.)
        """
        clock, protocol, transport = connectInMemory(writeTimeout=4)
        transport.producer.pauseProducing()
        clock.pump([1, 1, 1])
        transport.producer.resumeProducing()
        transport.producer.pauseProducing()
        clock.pump([1, 1, 1, 1])
        self.assertFalse(transport.disconnected)
        clock.advance(1)
        self.assertTrue(transport.disconnected)


class IdleTimeoutTests(SynchronousTestCase):
    """
    The idle timeout is not defeated by requests whose output the peer
    leaves unread.
    """

    def test_unreadRequestsIdle(self) -> None:
        """
        With no write deadline, gets the peer never reads still let the idle
        timeout close the connection (within two idle periods, then the
        close timeout, since nothing drains).
        """
        s = _Server(self, writeTimeout=None)
        s.factory.idleTimeout = 5
        s.protocol.setTimeout(5)
        s.pipelineGets(3)
        s.advance(10)
        self.assertTrue(s.protocol._closing)
        s.advance(s.protocol.closeTimeout)
        self.assertTrue(s.transport.aborted)
        self.assertEqual(openFilesOf(s.big), 0)

    def test_busyReaderNotIdle(self) -> None:
        """
        A peer that sends nothing but keeps reading a long download is not
        idle.
        """
        s = _Server(self, writeTimeout=None)
        s.factory.idleTimeout = 5
        s.protocol.setTimeout(5)
        s.pipelineGets(1)
        for _ in range(20):
            s.advance(2)
            s.peerReads(4096)
        self.assertFalse(s.protocol._closing)


class LazyOpenTests(SynchronousTestCase):
    """
    A C{get} waiting behind another on its connection holds no file.
    """

    def test_oneFilePerConnection(self) -> None:
        """
        Of many pipelined gets, only the one being sent has its file open;
        the next opens it when the previous is done.
        """
        s = _Server(self, writeTimeout=None)
        s.pipelineGets(50)
        self.assertEqual(len(s.protocol.inFlight), 50)
        self.assertEqual(openFilesOf(s.big), 1)
        s.peerReads(8 * MiB)
        self.assertEqual(len(s.protocol.inFlight), 48)
        self.assertEqual(openFilesOf(s.big), 1)
        s.protocol.transport.abortConnection()
        s.runner.runPending()
        self.assertEqual(openFilesOf(s.big), 0)

    def test_waitingGetsAnsweredAtShutdownOpenNothing(self) -> None:
        """
        Gets still waiting for their turn when the shutdown grace ends are
        answered C{shutting_down} and never open their file afterwards,
        when the connection goes: their service sees them cancelled, as on
        a lost connection.
        """
        s = _Server(self, writeTimeout=None)
        s.factory.shutdownGrace = 1.0
        s.pipelineGets(50)
        s.factory.shutDown()
        s.clock.advance(1.0)
        self.assertEqual(s.protocol.inFlight, {})
        s.transport.abortConnection()
        opens = [job for job in s.runner.jobs if job[0] == s.files.root.openForRead]
        self.assertEqual(opens, [])
        s.runner.runPending()
        self.assertEqual(openFilesOf(s.big), 0)


class TurnTests(SynchronousTestCase):
    """
    L{FrameProtocol.messagesPerTurn}: one connection's pipelined requests
    are handled a batch per reactor iteration, with its reading paused in
    between.
    """

    def test_batches(self) -> None:
        """
        100 pipelined pings in one read: 32 are answered in the read, the
        rest later (a reactor runs one batch per iteration; a C{Clock} runs
        them all in one advance), with the socket's reading paused in
        between; nothing is lost or reordered.
        """
        clock, protocol, transport = connectInMemory(messagesPerTurn=32)
        transport.clear()
        protocol.dataReceived(b"".join(request(i, "ping") for i in range(100)))

        def replies() -> list[Any]:
            return [h["id"] for h, _ in parseMessages(transport.value())]

        self.assertEqual(replies(), list(range(32)))
        self.assertEqual(transport.producerState, "paused")
        clock.advance(0)
        self.assertEqual(replies(), list(range(100)))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(clock.getDelayedCalls(), [])


class ClosedLogTests(SynchronousTestCase):
    """
    A connection lost with many requests in flight logs them a batch per
    reactor iteration.
    """

    def test_batches(self) -> None:
        """
        200 gets waiting when the connection is lost: every request is
        ended at once (and no file stays open), their lines come
        C{LOST_LOG_BATCH} per iteration, and the connection's closing line
        comes last.
        """
        events = captureLog(self)
        s = _Server(self, writeTimeout=None)
        s.pipelineGets(200)
        requests = [s.protocol.inFlight[i] for i in range(1, 201)]
        s.transport.abortConnection()
        s.runner.runPending()
        self.assertTrue(all(r.cancelled for r in requests))
        self.assertEqual(openFilesOf(s.big), 0)

        def lines() -> list[str]:
            return [
                e.get("log_text") or e["log_format"]
                for e in events
                if "outcome=" in e.get("log_text", "") or "connection closed" in e["log_format"]
            ]

        self.assertEqual(len(lines()), LOST_LOG_BATCH)
        s.clock.advance(0)
        self.assertEqual(len(lines()), 201)
        self.assertIn("op=get id=200 ", lines()[199])
        self.assertIn("outcome=disconnected", lines()[199])
        self.assertIn("connection closed", lines()[200])


class WriteTimeoutOptionTests(SynchronousTestCase):
    """
    C{twistd frameserver --write-timeout}.
    """

    def factory(self, *argv: str) -> FramesServerFactory:
        options = Options()
        options.parseOptions(["--root", existingRoot(self), "--udp", "0", *argv])
        reactor = MemoryReactorClock()
        top = makeService(options, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        factory: FramesServerFactory = reactor.tcpServers[0][1]
        return factory

    def test_default(self) -> None:
        """
        The default is 60 s, and it reaches every connection.
        """
        factory = self.factory()
        self.assertEqual(factory.writeTimeout, 60.0)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(protocol.writeTimeout, 60.0)

    def test_given(self) -> None:
        """
        A number of seconds is taken as given; 0 means none.
        """
        self.assertEqual(self.factory("--write-timeout", "7.5").writeTimeout, 7.5)
        self.assertIsNone(self.factory("--write-timeout", "0").writeTimeout)

    def test_bad(self) -> None:
        """
        A value that is not a number of seconds stops start-up with one line.
        """
        with self.assertRaises(SystemExit) as e:
            Options().parseOptions(["--write-timeout", "soon"])
        self.assertIn("--write-timeout must be a number of seconds", str(e.exception))


class _RLimit:
    """
    A stand-in for the C{resource} module's open-file limit.
    """

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int, settable: bool = True) -> None:
        self.limits = (soft, hard)
        self.settable = settable
        self.set: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if not self.settable:
            raise ValueError("not allowed")
        self.set.append(limits)
        self.limits = limits


class DescriptorBudgetTests(SynchronousTestCase):
    """
    L{policy.descriptorsNeeded}, L{policy.fitDescriptors} and
    L{fitDescriptorLimit}.
    """

    def setUp(self) -> None:
        self.events = captureLog(self)

    def test_needed(self) -> None:
        """
        The worst case adds up the base, listeners, and what every
        connection, command and worker thread can hold.
        """
        self.assertEqual(
            policy.descriptorsNeeded(512, 32, 10, 2),
            policy.BASE_DESCRIPTORS + 2 + 512 * 4 + 32 * 3 + 10 * 2,
        )
        self.assertEqual(policy.descriptorsNeeded(512, 32, 10, 2), 2198)

    def test_fits(self) -> None:
        """
        Caps that fit are kept; otherwise connections are lowered to what
        fits, and commands only when they would take over half of it.
        """
        self.assertEqual(policy.fitDescriptors(2198, 512, 32, 10, 2), (512, 32))
        self.assertEqual(policy.fitDescriptors(1024, 512, 32, 10, 2), (218, 32))
        self.assertLessEqual(policy.descriptorsNeeded(218, 32, 10, 2), 1024)
        self.assertGreater(policy.descriptorsNeeded(219, 32, 10, 2), 1024)
        self.assertEqual(policy.fitDescriptors(1024, None, 32, 10, 2), (218, 32))
        self.assertEqual(policy.fitDescriptors(1024, 10, 1000, 10, 2), (10, 161))
        self.assertRaises(ValueError, policy.fitDescriptors, 60, 512, 32, 10, 2)

    def options(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--root", existingRoot(self), "--udp", "0", *argv])
        return options

    def logged(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "RLIMIT_NOFILE" in e.get("log_format", "")]

    def test_enough(self) -> None:
        """
        A limit that holds the worst case is left alone, silently.
        """
        options = self.options()
        rlimit = _RLimit(20000, 20000)
        fitDescriptorLimit(options, MemoryReactor(), rlimit)
        self.assertEqual((rlimit.set, self.logged()), ([], []))
        self.assertEqual(options["max-connections"], 512)

    def test_raised(self) -> None:
        """
        A soft limit too low for the caps is raised as far as they need
        (within the hard limit), with one log line; the caps stay.
        """
        options = self.options()
        rlimit = _RLimit(1024, 4096)
        fitDescriptorLimit(options, MemoryReactor(), rlimit)
        self.assertEqual(rlimit.set, [(2197, 4096)])
        self.assertEqual(options["max-connections"], 512)
        self.assertEqual(len(self.logged()), 1)

    def test_lowered(self) -> None:
        """
        A hard limit too low for the caps lowers them to what fits, with one
        warning that names the old and new values; the guard the server is
        built with uses the lowered cap.
        """
        options = self.options("--max-procs", "40", "--max-connections", "0")
        rlimit = _RLimit(1024, 1024)
        self.patch(resource, "getrlimit", rlimit.getrlimit)
        self.patch(resource, "setrlimit", rlimit.setrlimit)
        reactor = MemoryReactorClock()
        top = makeService(options, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        [line] = self.logged()
        self.assertEqual(line["log_level"], LogLevel.warn)
        self.assertEqual((line["newConnections"], line["newProcs"]), (212, 40))
        self.assertEqual(options["max-connections"], 212)
        factory = reactor.tcpServers[0][1]
        guard = next(s for s in factory.services if isinstance(s, ConnectionGuard))
        self.assertEqual(guard.limits.maxConnections, 212)
        self.assertLessEqual(policy.descriptorsNeeded(212, 40, 10, 1), 1024)

    def test_tooLow(self) -> None:
        """
        A limit that cannot hold one connection stops start-up with one line.
        """
        with self.assertRaises(SystemExit) as e:
            fitDescriptorLimit(self.options(), MemoryReactor(), _RLimit(40, 40))
        self.assertIn("RLIMIT_NOFILE", str(e.exception))
