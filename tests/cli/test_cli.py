"""
End-to-end tests of the C{frames} CLI against the real C{twistd frameserver},
both as subprocesses on ports the kernel chose.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import ServerProcess, frames, freeUDPPort
from twisted_frames import wire
from twisted_frames.cli.base import (
    EXIT_CONNECT,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    UI,
    Interruption,
    resumeCommand,
    shellQuote,
)
from twisted_frames.cli.main import buildParser
from twisted_frames.client import ClientProtocol, FramesClient

GREETING = {"event": "hello", "protocol": "twisted-frames", "version": wire.PROTOCOL_VERSION}


class ParserTests(SynchronousTestCase):
    """
    The argument parser.
    """

    def test_serverFromEnvironment(self) -> None:
        """
        C{FRAMES_SERVER} sets the default server; C{--server} overrides it.
        """
        old = os.environ.get("FRAMES_SERVER")
        os.environ["FRAMES_SERVER"] = "example.invalid:1234"
        try:
            self.assertEqual(buildParser().parse_args(["ping"]).server, "example.invalid:1234")
            self.assertEqual(buildParser().parse_args(["--server", "h:1", "ping"]).server, "h:1")
        finally:
            if old is None:
                del os.environ["FRAMES_SERVER"]
            else:
                os.environ["FRAMES_SERVER"] = old

    def test_defaultServer(self) -> None:
        """
        Without C{FRAMES_SERVER} the default is the server's default address.
        """
        old = os.environ.pop("FRAMES_SERVER", None)
        try:
            self.assertEqual(buildParser().parse_args(["ping"]).server, "127.0.0.1:8007")
        finally:
            if old is not None:
                os.environ["FRAMES_SERVER"] = old


class EndToEndTests(SynchronousTestCase):
    """
    C{frames ping} and C{frames udp-echo} against a real server.
    """

    def setUp(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        self.server = ServerProcess(root, udp=True).__enter__()
        self.addCleanup(self.server.stop)

    def test_ping(self) -> None:
        """
        C{frames ping} prints a pong line naming the server and exits 0.
        """
        result = frames("ping", server=self.server.address)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout.decode(), r"^pong from .+ \(protocol twisted-frames v1\)")

    def test_pingJSON(self) -> None:
        """
        C{--json ping --size N --count C} prints one JSON object with the
        round-trip times of C{C} echoes of C{N} random bytes.
        """
        result = frames(
            "--json", "ping", "--size", "300000", "-c", "3", server=self.server.address
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        [line] = result.stdout.decode().splitlines()
        data = json.loads(line)
        self.assertEqual((data["ok"], data["bytes"], data["count"]), (True, 300000, 3))
        self.assertEqual(len(data["rtt_ms"]), 3)

    def test_udpEcho(self) -> None:
        """
        C{frames udp-echo} sends one datagram and prints the one that comes
        back.
        """
        assert self.server.udpPort is not None
        result = frames(
            "udp-echo", "hi there", "--port", str(self.server.udpPort), server=self.server.address
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode(), "hi there\n")

    def test_udpEchoNoAnswer(self) -> None:
        """
        With nobody answering, C{udp-echo} retries, then exits with the
        timeout status and one line on stderr.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            result = frames(
                "udp-echo",
                "x",
                "--port",
                str(port),
                "--udp-timeout",
                "0.05",
                "--retries",
                "1",
                server="127.0.0.1:1",
            )
        self.assertEqual(result.returncode, EXIT_TIMEOUT)
        [line] = result.stderr.decode().splitlines()
        self.assertTrue(line.startswith("frames: udp-echo: "), line)


class FailureTests(SynchronousTestCase):
    """
    Failures are one line on stderr and a distinct exit status.
    """

    def test_connectionRefused(self) -> None:
        """
        Nobody listening: exit 3, one line naming the server.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = frames("ping", server=f"127.0.0.1:{port}")
        self.assertEqual(result.returncode, EXIT_CONNECT)
        self.assertEqual(
            result.stderr.decode(),
            f"frames: cannot connect to 127.0.0.1:{port}: Connection refused\n",
        )

    def test_badServerAddress(self) -> None:
        """
        A malformed C{--server}: exit 2, one line.
        """
        result = frames("ping", server="host:notaport")
        self.assertEqual(result.returncode, EXIT_USAGE)
        self.assertEqual(len(result.stderr.decode().splitlines()), 1)

    def test_silentServerTimesOut(self) -> None:
        """
        A server that accepts but never greets: exit 4 after C{--timeout}.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            result = frames("--timeout", "0.3", "ping", server=f"127.0.0.1:{port}")
        self.assertEqual(result.returncode, EXIT_TIMEOUT, result.stderr)
        self.assertIn("no answer", result.stderr.decode())

    def test_jsonError(self) -> None:
        """
        With C{--json}, a failure is also one JSON object on stdout.
        """
        result = frames(
            "--json",
            "udp-echo",
            "x",
            "--port",
            str(freeUDPPort()),
            "--udp-timeout",
            "0.05",
            "--retries",
            "0",
            server="127.0.0.1:1",
        )
        self.assertEqual(result.returncode, EXIT_TIMEOUT)
        data = json.loads(result.stdout)
        self.assertEqual(data["ok"], False)
        self.assertEqual(data["error"]["code"], "timeout")

    def test_lostSaysReasonOnce(self) -> None:
        """
        A request on a connection already closed (no closing message from
        the server) gives its reason once, not after Twisted's generic one
        (C{lost: Connection was closed cleanly: connection is closed}).
        """
        from twisted_frames.cli.main import _failed

        args = buildParser().parse_args(["--server", "127.0.0.1:9", "ls"])
        err = io.StringIO()
        code = _failed(ConnectionDone("connection is closed"), args, UI(False, io.StringIO(), err))
        self.assertEqual(code, EXIT_CONNECT)
        self.assertEqual(
            err.getvalue(), "frames: ls: connection to 127.0.0.1:9 lost: connection is closed\n"
        )


class ResumeCommandTests(SynchronousTestCase):
    """
    The command printed to resume an interrupted transfer can be pasted
    into a shell as it is.
    """

    def test_sameFlags(self) -> None:
        """
        L{resumeCommand} repeats the server, output and security flags, and
        a timeout that is not the default.
        """
        args = buildParser().parse_args(
            ["--server", "h:1", "--json", "--timeout", "5", "--tls", "--ca", "c.pem", "ping"]
        )
        self.assertEqual(
            resumeCommand(args, ["get", "--resume", "a", "b"]),
            ["frames", "--server", "h:1", "--json", "--timeout", "5", "--tls", "--ca", "c.pem"]
            + ["get", "--resume", "a", "b"],
        )
        plain = buildParser().parse_args(["--server", "h:1", "ping"])
        self.assertEqual(resumeCommand(plain, ["x"]), ["frames", "--server", "h:1", "x"])

    def test_shellQuoteRoundTrip(self) -> None:
        """
        L{shellQuote} gives one line of printable text that a POSIX shell
        (bash here) turns back into the exact word, for names with spaces,
        quotes, backslashes, control and non-ASCII characters.
        """
        if shutil.which("bash") is None:
            raise SkipTest("needs bash")
        words = [
            "plain.txt",
            "with space",
            "it's",
            'a"b$c`d',
            "back\\slash",
            "two\nlines",
            "esc\x1b[2J\r\t",
            "é日\U0001f600",
            "nel\x85 and it's \\n",
            "raw\udcff",
        ]
        for word in words:
            quoted = shellQuote(word)
            self.assertTrue(quoted.isprintable(), quoted)
            out = subprocess.run(
                ["bash", "-c", f"printf '%s' {quoted}"], capture_output=True, check=True
            ).stdout
            self.assertEqual(out, os.fsencode(word), quoted)
        self.assertEqual(shellQuote("a b"), "'a b'")
        self.assertEqual(shellQuote("a\nb"), "$'a\\nb'")


class InterruptionTests(SynchronousTestCase):
    """
    L{Interruption} with fake connections (no signal is sent, no process
    exits).
    """

    def setUp(self) -> None:
        self.args = buildParser().parse_args(["--server", "h:1", "get", "a b", "c"])
        self.out, self.err = io.StringIO(), io.StringIO()
        self.interruption = Interruption(Clock(), self.args, UI(False, self.out, self.err))
        self.interruption.windDown = None

    def client(self) -> FramesClient:
        """
        A greeted client on a L{StringTransport}.
        """
        protocol = ClientProtocol()
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(wire.encodeMessage(GREETING))
        return FramesClient(protocol)

    def test_abortsConnections(self) -> None:
        """
        An interruption aborts every open connection of the command, and
        one opened after it at once; the command itself is not cancelled.
        """
        first, closed = self.client(), self.client()
        closed.protocol.connectionLost(Failure(ConnectionDone()))
        self.interruption.track(first)
        self.interruption.track(closed)
        command: defer.Deferred[None] = defer.Deferred()
        self.interruption.command = command
        self.interruption.interrupt(signal.SIGINT)
        self.assertTrue(first.protocol.transport.disconnected)
        self.assertNoResult(command)
        late = self.client()
        self.interruption.track(late)
        self.assertTrue(late.protocol.transport.disconnected)

    def test_cancelsWithoutConnection(self) -> None:
        """
        Interrupted while no connection is open (connecting), the command
        is cancelled.
        """
        command: defer.Deferred[None] = defer.Deferred()
        self.interruption.command = command
        self.interruption.interrupt(signal.SIGTERM)
        self.failureResultOf(command, defer.CancelledError)

    def test_report(self) -> None:
        """
        The report is one line, once: what, the signal, the partial if it
        exists, and the resume command, shell-quoted; the status is 128+N.
        """
        partial = self.mktemp()
        open(partial, "w").close()
        self.interruption.during("get a b", ["get", "--resume", "a b", "c"], partial)
        self.interruption.interrupt(signal.SIGTERM)
        self.assertEqual(self.interruption.report(), 143)
        self.assertEqual(self.interruption.report(), 143)
        self.assertEqual(
            self.err.getvalue(),
            f"frames: get a b interrupted (SIGTERM); partial {partial} kept; "
            "resume with: frames --server h:1 get --resume 'a b' c\n",
        )
        self.interruption.completed(0)
        self.assertEqual(self.interruption.exitCode, 143)

    def test_completedKeepsStatus(self) -> None:
        """
        A command that ended before any report keeps its status.
        """
        self.interruption.interrupt(signal.SIGINT)
        self.interruption.completed(0)
        self.assertEqual(self.interruption.exitCode, 0)
