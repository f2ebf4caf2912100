"""
Graceful shutdown, with fakes only: L{FramesServerFactory.shutDown} and
L{ServerProtocol.beginShutdown} over L{StringTransport} and a C{Clock};
the command service's final reply through L{tap.FrameServerService} in
memory (C{iosim}); the C{--shutdown-grace} option.  The real server is in
C{test_shutdown_process.py}.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

from twisted.application import service as appservice
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import tap
from twisted_frames.protocol import BodySink
from twisted_frames.server import (
    SHUTTING_DOWN_MESSAGE,
    FramesServerFactory,
    Request,
    ServerProtocol,
    operation,
)
from twisted_frames.wire import ErrorCode

from .commands.test_commands import CommandServiceMixin
from .test_protocol import ManualSource
from .test_server import CountingSink, SampleService, ServerTestMixin, request
from .test_tap import UDPMemoryReactor, existingRoot

ROOT = Path(__file__).resolve().parent.parent

#: The message that closes a connection at shutdown.
CLOSING = {
    "id": None,
    "ok": False,
    "error": {"code": "shutting_down", "message": SHUTTING_DOWN_MESSAGE},
    "closing": True,
}


def shuttingDown(rid: Any) -> dict[str, Any]:
    """
    The header of a request's C{shutting_down} error reply.
    """
    return {
        "id": rid,
        "ok": False,
        "error": {"code": "shutting_down", "message": SHUTTING_DOWN_MESSAGE},
    }


class UploadLikeSink(CountingSink):
    """
    A sink that a shutdown cuts short, as an upload's is.
    """

    stopsAtShutdown = True


class ShutdownService(SampleService):
    """
    L{SampleService} plus an op whose body a shutdown cuts short.
    """

    @operation("upload", body="stream")
    def upload(self, request: Request) -> BodySink:
        sink = UploadLikeSink(request)
        self.sinks.append(sink)
        return sink


class ShutdownTests(ServerTestMixin, SynchronousTestCase):
    """
    What each connection does between L{FramesServerFactory.shutDown} and
    its close.
    """

    def setUp(self) -> None:
        self.service = ShutdownService()
        self.clock = Clock()
        self.factory = FramesServerFactory([self.service], clock=self.clock)
        self.factory.shutdownGrace = 10.0
        self.factory.shutdownFlush = 1.0
        self.proto, self.transport, _ = self.connect()

    def lose(self, proto: ServerProtocol | None = None) -> None:
        """
        The transport finished closing (a L{StringTransport} never does by
        itself).
        """
        (proto or self.proto).connectionLost(Failure(ConnectionDone()))

    def test_noConnections(self) -> None:
        """
        With no connection open, the shutdown is done at once and leaves no
        timer behind.
        """
        self.lose()
        self.successResultOf(self.factory.shutDown())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idleClosedAtOnce(self) -> None:
        """
        A connection with nothing in flight gets the closing
        C{shutting_down} message and is closed; the shutdown is done once it
        has closed.
        """
        d = self.factory.shutDown()
        self.assertEqual(self.replies(self.transport), [(CLOSING, b"")])
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(d)
        self.lose()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_inFlightFinishesThenCloses(self) -> None:
        """
        A request in flight may finish: its final reply is written, then
        the closing message, then the connection closes.
        """
        self.proto.dataReceived(request("hold", 1))
        d = self.factory.shutDown()
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        [held] = self.service.held
        held.reply({"done": True})
        self.clock.advance(0)
        self.assertEqual(
            self.replies(self.transport),
            [({"id": 1, "ok": True, "done": True}, b""), (CLOSING, b"")],
        )
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.successResultOf(d)

    def test_closingMessageAfterStreamedEvent(self) -> None:
        """
        A request that finishes while a streamed event of it is still being
        sent (a command's last output chunk to a slow reader): the closing
        message follows that event's body and the final reply, instead of
        being dropped.
        """
        self.proto.dataReceived(request("hold", 1))
        d = self.factory.shutDown()
        [held] = self.service.held
        source = ManualSource(3)
        held.eventStream("out", {}, source)
        held.reply({"done": True})
        self.clock.advance(0)
        self.assertFalse(self.transport.disconnecting)
        source.consumer.write(b"abc")
        source.done.callback(None)
        self.assertEqual(
            self.replies(self.transport),
            [
                ({"id": 1, "event": "out"}, b"abc"),
                ({"id": 1, "ok": True, "done": True}, b""),
                (CLOSING, b""),
            ],
        )
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.successResultOf(d)

    def test_newRequestRefused(self) -> None:
        """
        A request that arrives during the shutdown is answered
        C{shutting_down} and not run; the connection stays open for the one
        still in flight.
        """
        self.proto.dataReceived(request("hold", 1))
        self.factory.shutDown()
        self.proto.dataReceived(request("hold", 2) + request("fields", 3))
        self.assertEqual(
            self.replies(self.transport), [(shuttingDown(2), b""), (shuttingDown(3), b"")]
        )
        self.assertEqual(len(self.service.held), 1)
        self.clock.advance(0)
        self.assertFalse(self.transport.disconnecting)

    def test_newRequestBodyDropped(self) -> None:
        """
        The body of a request refused during the shutdown is read and
        dropped (no sink is made for it), and the connection closes only
        once that body has ended, so that the stream stays in step.
        """
        message = request("upload", 1, b"x" * 1000)
        self.proto.dataReceived(request("hold", 9))
        self.factory.shutDown()
        self.proto.dataReceived(message[:-500])
        self.assertEqual(self.replies(self.transport), [(shuttingDown(1), b"")])
        self.assertEqual(self.service.sinks, [])
        self.service.held[0].reply()
        self.clock.advance(0)
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(message[-500:])
        self.assertEqual(
            self.replies(self.transport), [({"id": 9, "ok": True}, b""), (CLOSING, b"")]
        )
        self.assertTrue(self.transport.disconnecting)

    def test_uploadCutShort(self) -> None:
        """
        A body whose sink stops at shutdown (an upload) is cut short: the
        sink fails with C{shutting_down} (and gets no more bytes), the
        request is answered C{shutting_down} at once, and the rest of the
        body is read and dropped before the connection closes.
        """
        message = request("upload", 1, b"x" * 1000)
        self.proto.dataReceived(message[:-600])
        [sink] = self.service.sinks
        received = sum(map(len, sink.chunks))
        self.factory.shutDown()
        [failure] = sink.failures
        self.assertEqual(failure.value.code, ErrorCode.SHUTTING_DOWN)
        self.assertEqual(self.replies(self.transport), [(shuttingDown(1), b"")])
        self.clock.advance(0)
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(message[-600:])
        self.assertEqual(sum(map(len, sink.chunks)), received)
        self.assertEqual(self.replies(self.transport), [(CLOSING, b"")])
        self.assertTrue(self.transport.disconnecting)

    def test_otherBodyFinishes(self) -> None:
        """
        A body whose sink does not stop at shutdown is read to its end and
        answered as usual; then the connection closes.
        """
        message = request("stream", 1, b"ab" * 500)
        self.proto.dataReceived(message[:-600])
        self.factory.shutDown()
        self.assertEqual(self.transport.value(), b"")
        self.proto.dataReceived(message[-600:])
        self.clock.advance(0)
        self.assertEqual(
            self.replies(self.transport),
            [({"id": 1, "ok": True, "size": 1000, "ends": "6162"}, b""), (CLOSING, b"")],
        )
        self.assertEqual(self.service.sinks[0].failures, [])

    def test_graceExpired(self) -> None:
        """
        At the end of the grace period a request still in flight is
        answered C{shutting_down} and the connection is closed; a late
        answer from its service is dropped.
        """
        self.proto.dataReceived(request("later", 1))
        d = self.factory.shutDown()
        self.clock.advance(9.9)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.replies(self.transport), [(shuttingDown(1), b""), (CLOSING, b"")])
        self.assertTrue(self.transport.disconnecting)
        self.service.pending[0].callback({"late": True})
        self.assertEqual(self.transport.value(), b"")
        self.lose()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_peerNotReadingAborted(self) -> None:
        """
        A connection closed at the end of the grace period whose last
        replies cannot be written (its peer does not read, so the close
        never completes) is aborted once the flush time is over too.
        """
        self.proto.dataReceived(request("hold", 1))
        d = self.factory.shutDown()
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnected)
        self.assertNoResult(d)
        self.lose()
        self.successResultOf(d)

    def test_connectionDuringShutdown(self) -> None:
        """
        A connection accepted after the shutdown began (just before the port
        closed) is refused with the closing message, without a greeting.
        """
        self.factory.shutDown()
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertEqual(self.replies(transport), [(CLOSING, b"")])
        self.assertTrue(transport.disconnecting)

    def test_everyWaiterFires(self) -> None:
        """
        C{shutDown} may be called again; every call's Deferred fires once
        the connections are closed.
        """
        first = self.factory.shutDown()
        second = self.factory.shutDown()
        self.assertNoResult(second)
        self.lose()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(self.factory.shutDown())


class _NeverStops(appservice.Service):
    """
    A service whose stop never completes.
    """

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred()


class ServiceStopTests(ServerTestMixin, SynchronousTestCase):
    """
    L{tap.FrameServerService.stopService}: what twistd waits for.
    """

    def setUp(self) -> None:
        self.makeFactory()
        self.factory.shutdownGrace = 5.0
        self.top = tap.FrameServerService(self.factory)

    def test_waitsForConnections(self) -> None:
        """
        The stop waits until every connection has closed.
        """
        proto, transport, _ = self.connect()
        self.top.startService()
        d = self.top.stopService()
        self.assertNoResult(d)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bounded(self) -> None:
        """
        A child that never stops does not hold the shutdown past the grace
        period and the flush time.
        """
        _NeverStops().setServiceParent(self.top)
        self.top.startService()
        d = self.top.stopService()
        self.clock.advance(5.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.successResultOf(d)


class CommandShutdownTests(CommandServiceMixin, SynchronousTestCase):
    """
    A command running at shutdown: stopped, and its final reply is sent
    before its connection closes.
    """

    def test_killedCommandReplies(self) -> None:
        """
        A command that ignores C{SIGTERM} gets C{SIGKILL} after the kill
        grace; its final reply (killed by C{SIGKILL}) reaches the client,
        then the connection closes with C{shutting_down}, and the stop is
        done.  A request sent meanwhile is answered C{shutting_down}.
        """
        self.factory.shutdownGrace = 10.0
        top = tap.FrameServerService(self.factory)
        self.service.setServiceParent(top)
        top.startService()
        outcome, events = self.request("run", {"argv": ["sh"]})
        process = self.process()
        stopped = top.stopService()
        self.assertEqual(self.kills, [(process.pid, signal.SIGTERM)])
        refused, _ = self.request("cancel", {"run": 1})
        self.assertEqual(self.error(refused).code, ErrorCode.SHUTTING_DOWN)
        self.assertEqual(outcome, [])
        self.clock.advance(self.limits.killGrace)
        self.assertEqual(self.kills[-1], (process.pid, signal.SIGKILL))
        process.end(None, signal.SIGKILL)
        self.clock.advance(0)
        self.pump.flush()
        [reply] = outcome
        self.assertEqual(reply.header["signal"], "SIGKILL")
        self.assertEqual(reply.header["signum"], signal.SIGKILL)
        self.assertEqual(self.client.protocol.serverError.code, ErrorCode.SHUTTING_DOWN)
        self.assertTrue(self.client.protocol.isClosed)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ShutdownGraceOptionTests(SynchronousTestCase):
    """
    C{--shutdown-grace}.
    """

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_default(self) -> None:
        """
        The default is 10 s, and it reaches the factory.
        """
        options = self.parse("--root", existingRoot(self))
        self.assertEqual(options["shutdown-grace"], 10)
        service = tap.makeService(options, UDPMemoryReactor())
        self.assertEqual(service.factory.shutdownGrace, 10.0)

    def test_set(self) -> None:
        """
        C{--shutdown-grace N} sets the factory's grace period.
        """
        options = self.parse("--shutdown-grace", "30", "--root", existingRoot(self))
        self.assertEqual(tap.makeService(options, UDPMemoryReactor()).factory.shutdownGrace, 30)

    def test_range(self) -> None:
        """
        The grace is a whole number of seconds in 0..3600; 0 (close at once)
        is allowed when no command may run.
        """
        self.assertEqual(self.parse("--shutdown-grace", "0")["shutdown-grace"], 0)
        for bad in ("-1", "3601", "1.5", "x"):
            with self.assertRaises(SystemExit) as e:
                self.parse("--shutdown-grace", bad)
            self.assertIn("--shutdown-grace", str(e.exception.code))

    def test_largerThanKillGrace(self) -> None:
        """
        With commands allowed, the grace must be larger than the command
        kill grace, or a command killed at shutdown could not reply.
        """
        with self.assertRaises(SystemExit) as e:
            self.parse("--allow-command", "sh", "--shutdown-grace", "2")
        message = str(e.exception.code)
        self.assertIn("--shutdown-grace must be larger than the command kill grace (2 s)", message)
        self.assertNotIn("\n", message)
        self.assertEqual(
            self.parse("--allow-command", "sh", "--shutdown-grace", "3")["shutdown-grace"], 3
        )


class DeployUnitTests(SynchronousTestCase):
    """
    The deployment guide's systemd unit and the shutdown grace.
    """

    def test_stopTimeoutCoversGrace(self) -> None:
        """
        The unit gives the server longer to stop than its grace period and
        flush time (systemd would otherwise kill it before it has answered
        its clients), and signals only the server on stop.
        """
        unit = (ROOT / "docs" / "howto" / "frameserver.service").read_text(encoding="utf-8")
        settings = dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.M))
        grace = re.search(r"--shutdown-grace[ =](\d+)", unit)
        seconds = int(grace.group(1)) if grace else tap.DEFAULT_SHUTDOWN_GRACE
        self.assertGreater(
            float(settings["TimeoutStopSec"]), seconds + FramesServerFactory.shutdownFlush
        )
        self.assertEqual(settings["KillMode"], "mixed")
