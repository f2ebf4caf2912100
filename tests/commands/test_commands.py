"""
Unit tests of the command service with fakes only: a clock that records
C{spawnProcess} calls, fake process transports, and a client and server
joined in memory by C{iosim}.  Real processes are in
C{tests/commands/test_process.py}.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from typing import Any

from twisted.application import service as appservice
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.client import FramesClient
from twisted_frames.commands.client import CommandResult, startCommand
from twisted_frames.commands.options import configureCommands
from twisted_frames.commands.process import SAFE_PATH, scrubbedEnvironment
from twisted_frames.commands.service import CommandService
from twisted_frames.commands.spec import (
    CommandLimits,
    CommandSpec,
    loadCommandsFile,
    resolveCommand,
)
from twisted_frames.server import FramesServerFactory
from twisted_frames.tap import Options
from twisted_frames.testing import connectedPair
from twisted_frames.wire import ErrorCode, FramesError


class FakeProcess:
    """
    A process transport that records what the service does to it.
    """

    def __init__(self, proto: Any, pid: int) -> None:
        self.proto = proto
        self.pid = pid
        self.written: list[bytes] = []
        self.stdinClosed = False
        self.paused = False
        self.producer: Any = None
        self.full = False

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.full and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> None:
        """
        The pipe took everything: resume the registered producer.
        """
        self.full = False
        if self.producer is not None:
            self.producer.resumeProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def output(self, fd: int, data: bytes) -> None:
        self.proto.childDataReceived(fd, data)

    def end(self, exitCode: int | None = 0, signum: int | None = None) -> None:
        """
        The process exits (with C{exitCode}, or killed by C{signum}) and its
        pipes close.
        """
        if signum is None and exitCode == 0:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(exitCode, signum))
        self.proto.processExited(reason)
        self.proto.childConnectionLost(0)
        self.proto.processEnded(reason)


class ProcessClock(Clock):
    """
    A clock that is also a process reactor: C{spawnProcess} is recorded and
    answered with a L{FakeProcess}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []
        self.exitAtOnce: int | None = None

    def spawnProcess(
        self, proto: Any, executable: str, args: list[str], env: Any = None, path: Any = None
    ) -> FakeProcess:
        process = FakeProcess(proto, 4000 + len(self.spawned))
        self.spawned.append(
            {"executable": executable, "args": args, "env": env, "path": path, "process": process}
        )
        proto.makeConnection(process)
        if self.exitAtOnce is not None:
            # Twisted may reap a quick child before spawnProcess returns.
            process.end(self.exitAtOnce)
            process.pid = None  # type: ignore[assignment]
        return process


class CommandServiceMixin:
    """
    A command service behind a frames server, with a client talking to it
    in memory.
    """

    def setUp(self) -> None:
        self.clock = ProcessClock()
        self.root = os.path.realpath(tempfile.mkdtemp())
        self.addCleanup(os.rmdir, self.root)  # type: ignore[attr-defined]
        self.kills: list[tuple[int, int]] = []
        self.specs = [
            CommandSpec("sh", "/bin/sh"),
            CommandSpec("echo", "/bin/echo", args=("-n",)),
            CommandSpec("deploy", "/bin/true", users=frozenset({"alice"})),
        ]
        self.limits = CommandLimits(
            timeout=10, maxTimeout=100, maxOutput=1000, maxProcsPerConnection=2, maxProcs=3
        )
        self.service = self.makeService()
        self.factory = FramesServerFactory([self.service], clock=self.clock)
        self.client, self.server, self.pump = self.connect()

    def makeService(self, **kwargs: Any) -> CommandService:
        return CommandService(
            self.clock,
            self.root,
            kwargs.pop("specs", self.specs),
            kwargs.pop("limits", self.limits),
            environ={"PATH": "/secret/bin", "SECRET": "x", "LANG": "C.UTF-8", "TZ": "UTC"},
            killGroup=lambda pgid, sig: self.kills.append((pgid, sig)),
            launcher=["/usr/bin/setsid"],
            outputPipes=False,
        )

    def connect(self) -> tuple[FramesClient, Any, iosim.IOPump]:
        conn = connectedPair(self.factory)
        return conn.frames, conn.server, conn.pump

    def request(
        self,
        op: str,
        fields: dict[str, Any],
        body: bytes = b"",
        client: Any = None,
        pump: Any = None,
    ) -> tuple[list[Any], list[tuple[dict[str, Any], bytes]]]:
        """
        Send a request; return the list its outcome lands in and the list
        of its events.
        """
        outcome: list[Any] = []
        events: list[tuple[dict[str, Any], bytes]] = []
        (client or self.client).request(
            op, fields, body, onEvent=lambda h, b: events.append((h, b))
        ).addBoth(outcome.append)
        (pump or self.pump).flush()
        return outcome, events

    def error(self, outcome: list[Any]) -> FramesError:
        assert len(outcome) == 1, outcome
        assert isinstance(outcome[0], Failure), outcome
        value = outcome[0].value
        assert isinstance(value, FramesError)
        return value

    def process(self, index: int = -1) -> FakeProcess:
        p: FakeProcess = self.clock.spawned[index]["process"]
        return p


class RunTests(CommandServiceMixin, SynchronousTestCase):
    """
    The C{run} op: what is spawned, and how it is refused.
    """

    def test_argvPassedVerbatim(self) -> None:
        """
        Arguments with shell metacharacters reach C{spawnProcess} as they
        are, after the session launcher, the resolved path and the fixed
        arguments; nothing is joined into a shell string.
        """
        tricky = ["; rm -rf /", "$(id)", "`id`", "a\nb", "-n", "--", "*", "'\"", ""]
        self.request("run", {"argv": ["echo", *tricky]})
        [spawned] = self.clock.spawned
        self.assertEqual(spawned["executable"], "/usr/bin/setsid")
        self.assertEqual(spawned["args"], ["/usr/bin/setsid", "/bin/echo", "-n", *tricky])

    def test_environmentScrubbed(self) -> None:
        """
        The command's environment has a safe C{PATH}, C{HOME} at the root
        and only the allow-listed variables of the server's environment.
        """
        self.request("run", {"argv": ["sh"]})
        env = self.clock.spawned[0]["env"]
        self.assertEqual(
            env, {"PATH": SAFE_PATH, "HOME": self.root, "LANG": "C.UTF-8", "TZ": "UTC"}
        )

    def test_commandEnvironmentAdded(self) -> None:
        """
        A command's fixed C{env} is added to the scrubbed environment.
        """
        self.assertEqual(
            scrubbedEnvironment({"SECRET": "1", "TZ": "UTC"}, "/r", {"MODE": "x"}),
            {"PATH": SAFE_PATH, "HOME": "/r", "TZ": "UTC", "MODE": "x"},
        )

    def test_workingDirectoryIsRoot(self) -> None:
        """
        By default a command runs in the server's root.
        """
        self.request("run", {"argv": ["sh"]})
        self.assertEqual(self.clock.spawned[0]["path"], self.root)

    def test_workingDirectoryConfined(self) -> None:
        """
        A C{cwd} inside the root is used; one leading outside it (by
        C{..}, an absolute path or a symlink) is refused with
        C{forbidden_path}; a missing one with C{not_found}.
        """
        sub = os.path.join(self.root, "sub")
        os.mkdir(sub)
        self.addCleanup(os.rmdir, sub)
        link = os.path.join(self.root, "out")
        os.symlink("/", link)
        self.addCleanup(os.unlink, link)
        self.request("run", {"argv": ["sh"], "cwd": "sub"})
        self.assertEqual(self.clock.spawned[0]["path"], sub)
        for cwd, code in [
            ("..", ErrorCode.FORBIDDEN_PATH),
            ("sub/../..", ErrorCode.FORBIDDEN_PATH),
            ("/tmp", ErrorCode.FORBIDDEN_PATH),
            ("out", ErrorCode.FORBIDDEN_PATH),
            ("missing", ErrorCode.NOT_FOUND),
            (5, ErrorCode.INVALID_ARGUMENT),
        ]:
            outcome, _ = self.request("run", {"argv": ["sh"], "cwd": cwd})
            self.assertEqual(self.error(outcome).code, code, cwd)
        self.assertEqual(len(self.clock.spawned), 1)

    def test_notAllowed(self) -> None:
        """
        A command not on the allowlist is refused with
        C{command_not_allowed}, nothing is spawned, the refusal is logged,
        and the connection stays usable.
        """
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        outcome, _ = self.request("run", {"argv": ["rm", "-rf", "/"]}, b"stdin data")
        error = self.error(outcome)
        self.assertEqual(error.code, ErrorCode.COMMAND_NOT_ALLOWED)
        self.assertIn("'rm'", error.message)
        self.assertEqual(self.clock.spawned, [])
        self.assertTrue(
            any(e.get("log_format", "").startswith("refused command") for e in logged), logged
        )
        outcome, _ = self.request("run", {"argv": ["sh"]})
        self.assertEqual(len(self.clock.spawned), 1)

    def test_pathIsNotAName(self) -> None:
        """
        A client naming the allowed executable by its path instead of its
        allowed name is refused: only names on the list run.
        """
        outcome, _ = self.request("run", {"argv": ["/bin/sh"]})
        self.assertEqual(self.error(outcome).code, ErrorCode.COMMAND_NOT_ALLOWED)

    def test_badArgv(self) -> None:
        """
        C{argv} must be a non-empty list of strings without NUL.
        """
        for argv in [None, "sh -c ls", [], ["sh", 1], ["sh", "a\0b"], {"0": "sh"}]:
            outcome, _ = self.request("run", {"argv": argv})
            self.assertEqual(self.error(outcome).code, ErrorCode.INVALID_ARGUMENT, argv)
        self.assertEqual(self.clock.spawned, [])

    def test_badStdinMode(self) -> None:
        """
        C{stdin} is C{"close"} or C{"stream"}.
        """
        outcome, _ = self.request("run", {"argv": ["sh"], "stdin": "later"})
        self.assertEqual(self.error(outcome).code, ErrorCode.INVALID_ARGUMENT)

    def test_users(self) -> None:
        """
        A command restricted to users refuses an anonymous caller with
        C{auth_required} and a user not on its list with
        C{command_not_allowed}; a listed user may run it.
        """
        outcome, _ = self.request("run", {"argv": ["deploy"]})
        self.assertEqual(self.error(outcome).code, ErrorCode.AUTH_REQUIRED)
        self.server.user = "bob"
        outcome, _ = self.request("run", {"argv": ["deploy"]})
        self.assertEqual(self.error(outcome).code, ErrorCode.COMMAND_NOT_ALLOWED)
        self.server.user = "alice"
        self.request("run", {"argv": ["deploy"]})
        self.assertEqual(len(self.clock.spawned), 1)

    def test_startedEvent(self) -> None:
        """
        Once spawned, a C{started} event gives the pid and the timeout and
        output cap that apply.
        """
        _, events = self.request("run", {"argv": ["sh"]})
        [(header, body)] = events
        self.assertEqual(header["event"], "started")
        self.assertEqual(header["pid"], self.process().pid)
        self.assertEqual(header["timeout"], 10)
        self.assertEqual(header["maxOutput"], 1000)

    def test_exitCode(self) -> None:
        """
        The final reply carries the exit code, no signal, and the elapsed
        time on the server's clock.
        """
        outcome, _ = self.request("run", {"argv": ["sh", "-c", "exit 3"]})
        self.clock.advance(1.5)
        self.process().end(3)
        self.pump.flush()
        [reply] = outcome
        h = reply.header
        self.assertEqual((h["ok"], h["exit"], h["signal"], h["signum"]), (True, 3, None, None))
        self.assertEqual(h["elapsed"], 1.5)
        self.assertFalse(h["timedOut"] or h["cancelled"] or h["truncated"])

    def test_exitZero(self) -> None:
        """
        A clean exit is C{exit: 0}.
        """
        outcome, _ = self.request("run", {"argv": ["sh"]})
        self.process().end(0)
        self.pump.flush()
        self.assertEqual(outcome[0].header["exit"], 0)

    def test_signal(self) -> None:
        """
        Death by signal is C{exit: null} with the signal's name and number.
        """
        outcome, _ = self.request("run", {"argv": ["sh"]})
        self.process().end(None, signal.SIGSEGV)
        self.pump.flush()
        h = outcome[0].header
        self.assertEqual((h["exit"], h["signal"], h["signum"]), (None, "SIGSEGV", 11))

    def test_exitDuringSpawn(self) -> None:
        """
        A process reaped before C{spawnProcess} returns still gets its
        C{started} event first, then its reply; its group (not the
        server's: never pgid 0) is signalled, and the run is forgotten.
        """
        self.clock.exitAtOnce = 5
        outcome, events = self.request("run", {"argv": ["sh"]})
        self.assertEqual([h["event"] for h, _ in events], ["started"])
        self.assertEqual(events[0][0]["pid"], 4000)
        self.assertEqual(outcome[0].header["exit"], 5)
        self.assertEqual(self.kills, [(4000, signal.SIGTERM)])
        self.assertEqual((self.service.count, self.service.runs), (0, {}))

    def test_leftoversKilledAtExit(self) -> None:
        """
        When the command exits, whatever is left in its process group gets
        C{SIGTERM}, then C{SIGKILL} after the grace period.
        """
        self.request("run", {"argv": ["sh"]})
        process = self.process()
        process.end(0)
        self.assertEqual(self.kills, [(process.pid, signal.SIGTERM)])
        self.clock.advance(self.limits.killGrace)
        self.assertEqual(self.kills[-1], (process.pid, signal.SIGKILL))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OutputTests(CommandServiceMixin, SynchronousTestCase):
    """
    Output forwarding: order, separation, cap.
    """

    def test_streamsSeparateAndOrdered(self) -> None:
        """
        Each chunk of stdout and stderr is forwarded as its own event as it
        arrives, before the process ends.
        """
        outcome, events = self.request("run", {"argv": ["sh"]})
        process = self.process()
        chunks = [(1, b"out1"), (2, b"err1"), (1, b"out2"), (2, b"err2")]
        for fd, data in chunks:
            process.output(fd, data)
        self.pump.flush()
        self.assertEqual(outcome, [])
        self.assertEqual(
            [(h["event"], b) for h, b in events[1:]],
            [("stdout" if fd == 1 else "stderr", data) for fd, data in chunks],
        )
        process.end(0)
        self.pump.flush()
        self.assertEqual(outcome[0].header["stdoutBytes"], 8)
        self.assertEqual(outcome[0].header["stderrBytes"], 8)

    def test_outputCap(self) -> None:
        """
        Output beyond the cap (stdout and stderr together) is cut at the
        cap exactly, the group is killed, later output is dropped, and the
        reply says it was truncated.
        """
        outcome, events = self.request("run", {"argv": ["sh"]})
        process = self.process()
        process.output(1, b"a" * 600)
        process.output(2, b"b" * 600)
        process.output(1, b"c" * 10)
        self.assertEqual(self.kills, [(process.pid, signal.SIGTERM)])
        process.end(None, signal.SIGTERM)
        self.pump.flush()
        self.assertEqual([b for _, b in events[1:]], [b"a" * 600, b"b" * 400])
        h = outcome[0].header
        self.assertTrue(h["truncated"])
        self.assertEqual(h["stdoutBytes"] + h["stderrBytes"], 1000)

    def test_clientAsksSmallerCap(self) -> None:
        """
        A client may lower the cap, not raise it.
        """
        _, events = self.request("run", {"argv": ["sh"], "maxOutput": 5})
        self.assertEqual(events[0][0]["maxOutput"], 5)
        _, events = self.request("run", {"argv": ["sh"], "maxOutput": 10**9})
        self.assertEqual(events[0][0]["maxOutput"], 1000)
        outcome, _ = self.request("run", {"argv": ["sh"], "maxOutput": -1})
        self.assertEqual(self.error(outcome).code, ErrorCode.INVALID_ARGUMENT)

    def test_backpressure(self) -> None:
        """
        While the connection's transport is full (it paused the chunk being
        sent), the process's pipes are not read; they are again once the
        transport drains.  Nothing is lost or reordered.
        """
        server = self.factory.buildProtocol(None)
        transport = FullTransport()
        server.makeConnection(transport)
        server.dataReceived(wire.encodeMessage({"op": "run", "id": 1, "argv": ["sh"]}, b""))
        process = self.process()
        process.output(1, b"first")
        self.assertFalse(process.paused)
        transport.full = True
        process.output(1, b"second")
        self.assertTrue(process.paused)
        transport.full = False
        transport.producer.resumeProducing()
        self.assertFalse(process.paused)
        process.output(2, b"third")
        process.end(0)
        messages = decodeMessages(transport.value())
        self.assertEqual(
            [(h.get("event"), b) for h, b in messages[1:]],
            [
                ("started", b""),
                ("stdout", b"first"),
                ("stdout", b"second"),
                ("stderr", b"third"),
                (None, b""),
            ],
        )
        self.assertEqual(messages[-1][0]["exit"], 0)


class FullTransport(StringTransport):
    """
    A transport that pauses its streaming producer on every write while
    C{full} is set, as a socket transport does over its buffer size.
    """

    full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.full and self.producer is not None and self.streaming:
            self.producer.pauseProducing()


def decodeMessages(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """
    Split a byte stream into (header, body) messages.
    """
    out = []
    pos = 0
    while pos < len(data):
        (n,) = wire.PREFIX.unpack_from(data, pos)
        header = json.loads(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
        (m,) = wire.PREFIX.unpack_from(data, pos)
        out.append((header, data[pos + 4 : pos + 4 + m]))
        pos += 4 + m
    return out


class LimitTests(CommandServiceMixin, SynchronousTestCase):
    """
    Timeouts, process caps, disconnect and shutdown.
    """

    def test_timeout(self) -> None:
        """
        At the timeout the whole process group gets C{SIGTERM}, then
        C{SIGKILL} after the grace period; the reply says it timed out.
        """
        outcome, _ = self.request("run", {"argv": ["sh"]})
        process = self.process()
        self.clock.advance(9.9)
        self.assertEqual(self.kills, [])
        self.clock.advance(0.1)
        self.assertEqual(self.kills, [(process.pid, signal.SIGTERM)])
        self.clock.advance(self.limits.killGrace)
        self.assertEqual(self.kills[-1], (process.pid, signal.SIGKILL))
        process.end(None, signal.SIGKILL)
        self.pump.flush()
        h = outcome[0].header
        self.assertTrue(h["timedOut"])
        self.assertEqual(h["signal"], "SIGKILL")

    def test_clientTimeout(self) -> None:
        """
        A client may ask for any timeout up to the maximum; more, or a
        non-positive one, is C{invalid_argument}.
        """
        _, events = self.request("run", {"argv": ["sh"], "timeout": 50})
        self.assertEqual(events[0][0]["timeout"], 50)
        self.clock.advance(49)
        self.assertEqual(self.kills, [])
        for bad in [101, 0, -1, "5", True]:
            outcome, _ = self.request("run", {"argv": ["sh"], "timeout": bad})
            self.assertEqual(self.error(outcome).code, ErrorCode.INVALID_ARGUMENT, bad)

    def test_commandTimeout(self) -> None:
        """
        A command's own timeout is its default and its maximum.
        """
        service = self.makeService(specs=[CommandSpec("sh", "/bin/sh", timeout=3)])
        self.factory = FramesServerFactory([service], clock=self.clock)
        self.client, self.server, self.pump = self.connect()
        _, events = self.request("run", {"argv": ["sh"]})
        self.assertEqual(events[0][0]["timeout"], 3)
        outcome, _ = self.request("run", {"argv": ["sh"], "timeout": 4})
        self.assertEqual(self.error(outcome).code, ErrorCode.INVALID_ARGUMENT)

    def test_capPerConnection(self) -> None:
        """
        Beyond C{maxProcsPerConnection} running commands, C{run} is
        C{busy}; once one ends, another may start.
        """
        self.request("run", {"argv": ["sh"]})
        self.request("run", {"argv": ["sh"]})
        outcome, _ = self.request("run", {"argv": ["sh"]})
        self.assertEqual(self.error(outcome).code, ErrorCode.BUSY)
        self.process(0).end(0)
        self.request("run", {"argv": ["sh"]})
        self.assertEqual(len(self.clock.spawned), 3)

    def test_capPerServer(self) -> None:
        """
        Beyond C{maxProcs} running commands on the server, C{run} is
        C{busy}, whichever connection asks.
        """
        self.request("run", {"argv": ["sh"]})
        self.request("run", {"argv": ["sh"]})
        other, _, pump = self.connect()
        self.request("run", {"argv": ["sh"]}, client=other, pump=pump)
        outcome, _ = self.request("run", {"argv": ["sh"]}, client=other, pump=pump)
        self.assertEqual(self.error(outcome).code, ErrorCode.BUSY)
        self.assertEqual(len(self.clock.spawned), 3)

    def test_disconnectKills(self) -> None:
        """
        When the client disconnects, every process group it started gets
        C{SIGTERM}, then C{SIGKILL}.
        """
        self.request("run", {"argv": ["sh"]})
        self.request("run", {"argv": ["sh"]})
        self.server.connectionLost(Failure(ConnectionError("gone")))
        pids = [self.process(0).pid, self.process(1).pid]
        self.assertEqual(self.kills, [(pid, signal.SIGTERM) for pid in pids])
        self.clock.advance(self.limits.killGrace)
        self.assertEqual(self.kills[2:], [(pid, signal.SIGKILL) for pid in pids])
        self.process(0).end(None, signal.SIGTERM)
        self.process(1).end(None, signal.SIGKILL)
        self.assertEqual(self.service.count, 0)

    def test_shutdownKillsAll(self) -> None:
        """
        Stopping the service kills every process group and fires once all
        have ended; no run starts after that.
        """
        parent = appservice.MultiService()
        self.service.setServiceParent(parent)
        parent.startService()
        self.request("run", {"argv": ["sh"]})
        stopped: list[Any] = []
        parent.stopService().addBoth(stopped.append)
        self.assertEqual(self.kills, [(self.process().pid, signal.SIGTERM)])
        self.assertEqual(stopped, [])
        self.process().end(None, signal.SIGTERM)
        self.assertEqual(len(stopped), 1)
        self.assertNotIsInstance(stopped[0], Failure)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        outcome, _ = self.request("run", {"argv": ["sh"]})
        self.assertEqual(self.error(outcome).code, ErrorCode.SHUTTING_DOWN)


class CancelTests(CommandServiceMixin, SynchronousTestCase):
    """
    The C{cancel} op.
    """

    def test_cancel(self) -> None:
        """
        C{cancel} sends the named signal to the run's process group, then
        C{SIGKILL} after the grace period; the run's reply says cancelled.
        """
        outcome, _ = self.request("run", {"argv": ["sh"]})
        process = self.process()
        cancelled, _ = self.request("cancel", {"run": 1, "signal": "INT"})
        self.assertEqual(cancelled[0].header, {"id": 2, "ok": True, "run": 1, "signal": "SIGINT"})
        self.assertEqual(self.kills, [(process.pid, signal.SIGINT)])
        self.clock.advance(self.limits.killGrace)
        self.assertEqual(self.kills[-1], (process.pid, signal.SIGKILL))
        process.end(None, signal.SIGINT)
        self.pump.flush()
        self.assertTrue(outcome[0].header["cancelled"])
        self.assertEqual(outcome[0].header["signal"], "SIGINT")

    def test_cancelUnknown(self) -> None:
        """
        Cancelling a run that is not running on this connection is
        C{not_found}; a signal outside the list is C{invalid_argument}.
        """
        outcome, _ = self.request("cancel", {"run": 99})
        self.assertEqual(self.error(outcome).code, ErrorCode.NOT_FOUND)
        self.request("run", {"argv": ["sh"]})
        other, _, otherPump = self.connect()
        outcome, _ = self.request("cancel", {"run": 2}, client=other, pump=otherPump)
        self.assertEqual(self.error(outcome).code, ErrorCode.NOT_FOUND)
        outcome, _ = self.request("cancel", {"run": 2, "signal": "SIGSTOP"})
        self.assertEqual(self.error(outcome).code, ErrorCode.INVALID_ARGUMENT)
        self.assertEqual(self.kills, [])

    def test_clientCancel(self) -> None:
        """
        L{CommandRun.cancel} names the run's request id.
        """
        handle = startCommand(self.client, ["sh"])
        self.pump.flush()
        answer: list[Any] = []
        handle.cancel("SIGQUIT").addBoth(answer.append)
        self.pump.flush()
        self.assertEqual(answer[0].header["run"], handle.id)
        self.assertEqual(self.kills, [(self.process().pid, signal.SIGQUIT)])
        self.assertEqual(handle.pid, self.process().pid)


class StdinTests(CommandServiceMixin, SynchronousTestCase):
    """
    Stdin: the C{run} body, and C{stdin} messages.
    """

    def test_runBody(self) -> None:
        """
        The C{run} body is written to stdin, which is then closed.
        """
        self.request("run", {"argv": ["sh"]}, b"echo hi")
        process = self.process()
        self.assertEqual(b"".join(process.written), b"echo hi")
        self.assertTrue(process.stdinClosed)
        self.assertIsNone(process.producer)

    def test_emptyStdinClosed(self) -> None:
        """
        Without a body, stdin is closed at once (C{cat} gets EOF).
        """
        self.request("run", {"argv": ["sh"]})
        self.assertTrue(self.process().stdinClosed)

    def test_streamed(self) -> None:
        """
        With C{"stdin": "stream"}, C{stdin} messages append to stdin, each
        acknowledged; the one with C{eof} closes it.
        """
        self.request("run", {"argv": ["sh"], "stdin": "stream"}, b"a")
        process = self.process()
        self.assertFalse(process.stdinClosed)
        acks, _ = self.request("stdin", {"run": 1}, b"b")
        self.assertEqual(acks[0].header, {"id": 2, "ok": True, "run": 1, "closed": False})
        acks, _ = self.request("stdin", {"run": 1, "eof": True}, b"c")
        self.assertTrue(process.stdinClosed)
        self.assertEqual(acks[0].header["closed"], True)
        self.assertEqual(b"".join(process.written), b"abc")

    def test_ackWaitsForDrain(self) -> None:
        """
        A C{stdin} chunk is acknowledged only when the pipe has taken it,
        so a client keeping a window never makes the server buffer more.
        """
        self.request("run", {"argv": ["sh"], "stdin": "stream"})
        process = self.process()
        process.full = True
        acks, _ = self.request("stdin", {"run": 1}, b"x" * 100)
        self.assertEqual(acks, [])
        process.drain()
        self.pump.flush()
        self.assertEqual(acks[0].header["closed"], False)

    def test_overWindowPausesConnection(self) -> None:
        """
        A client that sends more than the backlog allows while the pipe is
        full has the connection's reading paused until the pipe drains.
        """
        from twisted_frames.commands import process as commands

        self.patch(commands, "STDIN_BACKLOG", 10)
        self.request("run", {"argv": ["sh"], "stdin": "stream"})
        process = self.process()
        process.full = True
        self.request("stdin", {"run": 1}, b"x" * 8)
        self.request("stdin", {"run": 1}, b"x" * 8)
        self.assertEqual(self.server._pauseCount, 0)
        self.request("stdin", {"run": 1}, b"x" * 8)
        self.assertEqual(self.server._pauseCount, 1)
        process.drain()
        self.assertEqual(self.server._pauseCount, 0)

    def test_stdinAfterProcessClosedIt(self) -> None:
        """
        Stdin sent after the process closed its stdin is dropped and
        acknowledged with C{closed: true}.
        """
        self.request("run", {"argv": ["sh"], "stdin": "stream"})
        process = self.process()
        process.proto.childConnectionLost(0)
        acks, _ = self.request("stdin", {"run": 1}, b"late")
        self.assertEqual(acks[0].header["closed"], True)
        self.assertEqual(process.written, [])

    def test_stdinUnknownRun(self) -> None:
        """
        C{stdin} for no running command is C{not_found}, and its body is
        read and dropped, keeping the connection in step.
        """
        outcome, _ = self.request("stdin", {"run": 7}, b"data")
        self.assertEqual(self.error(outcome).code, ErrorCode.NOT_FOUND)
        outcome, _ = self.request("run", {"argv": ["sh"]})
        self.assertEqual(len(self.clock.spawned), 1)


class ClientTests(CommandServiceMixin, SynchronousTestCase):
    """
    The client library over the in-memory connection.
    """

    def test_gathered(self) -> None:
        """
        Without handlers, output is gathered in the result.
        """
        handle = startCommand(self.client, ["sh", "-c", "x"], stdin=b"in")
        self.pump.flush()
        self.process().output(1, b"o1")
        self.process().output(2, b"e1")
        self.process().output(1, b"o2")
        self.process().end(2)
        self.pump.flush()
        results: list[CommandResult] = []
        handle.result.addCallback(results.append)
        [result] = results
        self.assertEqual((result.stdout, result.stderr, result.exit), (b"o1o2", b"e1", 2))
        self.assertEqual(b"".join(self.process().written), b"in")

    def test_handlers(self) -> None:
        """
        With handlers, each chunk goes to them as it arrives.
        """
        out: list[bytes] = []
        startCommand(self.client, ["sh"], onStdout=out.append, onStderr=out.append)
        self.pump.flush()
        self.process().output(1, b"a")
        self.pump.flush()
        self.assertEqual(out, [b"a"])

    def test_status(self) -> None:
        """
        L{CommandResult.status} is the exit code, or 128 + the signal.
        """
        base = dict(elapsed=0.0, timedOut=False, cancelled=False, truncated=False)
        self.assertEqual(CommandResult(exit=3, signal=None, signum=None, **base).status, 3)
        self.assertEqual(CommandResult(exit=None, signal="SIGKILL", signum=9, **base).status, 137)

    def test_refusedFails(self) -> None:
        """
        A refused command fails the result with the server's error.
        """
        handle = startCommand(self.client, ["nope"])
        self.pump.flush()
        failures: list[Failure] = []
        handle.result.addErrback(failures.append)
        self.assertEqual(failures[0].value.code, ErrorCode.COMMAND_NOT_ALLOWED)


class ConfigTests(SynchronousTestCase):
    """
    The allowlist: C{--allow-command}, C{--commands FILE}, limits.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)

    def write(self, name: str, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=name, dir=self.directory)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def test_resolveOnPath(self) -> None:
        """
        A bare name is resolved on the given PATH to an absolute path.
        """
        spec = resolveCommand("sh", "/nonexistent:/bin:/usr/bin")
        self.assertTrue(os.path.isabs(spec.path))
        self.assertEqual(spec.name, "sh")
        with self.assertRaises(ValueError):
            resolveCommand("no-such-command-here", "/bin")

    def test_toml(self) -> None:
        """
        A TOML file gives path, fixed args, users, timeout, cap, cwd, env;
        a missing path is resolved on the PATH.
        """
        path = self.write(
            ".toml",
            '[commands.greet]\npath = "/bin/echo"\nargs = ["hello"]\nusers = ["alice"]\n'
            'timeout = 5\nmax-output = 100\ncwd = "jobs"\nenv = { MODE = "x" }\n'
            "[commands.sh]\n",
        )
        greet, sh = loadCommandsFile(path, "/bin:/usr/bin")
        self.assertEqual(
            greet,
            CommandSpec(
                "greet",
                "/bin/echo",
                ("hello",),
                frozenset({"alice"}),
                5.0,
                100,
                "jobs",
                {"MODE": "x"},
            ),
        )
        self.assertEqual(sh.name, "sh")
        self.assertTrue(os.path.isabs(sh.path))

    def test_json(self) -> None:
        """
        A C{.json} file has the same shape.
        """
        path = self.write(".json", json.dumps({"commands": {"e": {"path": "/bin/echo"}}}))
        self.assertEqual(loadCommandsFile(path), [CommandSpec("e", "/bin/echo")])

    def test_badFiles(self) -> None:
        """
        Every malformed entry is refused with a message naming it.
        """
        cases = {
            "[commands.x]\npath = 'relative'\n": "absolute",
            "[commands.x]\npath = '/nonexistent/x'\n": "executable",
            "[commands.no-such-command-anywhere]\n": "not found",
            "[commands.sh]\nargs = 'a b'\n": "args",
            "[commands.sh]\ntimeout = -1\n": "timeout",
            "[commands.sh]\nmax-output = 1.5\n": "max-output",
            "[commands.sh]\ncwd = '/abs'\n": "cwd",
            "[commands.sh]\nusers = 'alice'\n": "users",
            '[commands.sh]\nenv = { A = "x\\u0000y" }\n': "'env'",
            '[commands.sh]\nenv = { "A\\u0000" = "x" }\n': "'env'",
            '[commands.sh]\nenv = { "" = "x" }\n': "'env'",
            '[commands.sh]\ncwd = "a\\u0000b"\n': "cwd",
            "[commands.sh]\ncolour = 'red'\n": "unknown keys",
            "[other]\n": "only a 'commands' table",
            "not toml at all [": "not valid TOML",
        }
        for text, expected in cases.items():
            with self.assertRaises(ValueError) as caught:
                loadCommandsFile(self.write(".toml", text), "/bin:/usr/bin")
            self.assertIn(expected, str(caught.exception), text)
        with self.assertRaises(ValueError) as caught:
            loadCommandsFile("/nonexistent/commands.toml")
        self.assertIn("cannot read", str(caught.exception))

    def test_jsonNullsAndBooleans(self) -> None:
        """
        In a JSON file, C{null} leaves an optional key (C{users},
        C{timeout}, C{max-output}, C{cwd}) at its default, but is no
        C{path}, C{args} or C{env}; a boolean is no number.
        """
        [spec] = loadCommandsFile(
            self.write(
                ".json",
                '{"commands": {"sh": {"users": null, "timeout": null, '
                '"max-output": null, "cwd": null, "args": ["-c"], "env": {"A": "b"}}}}',
            ),
            "/bin:/usr/bin",
        )
        self.assertEqual(
            (spec.users, spec.timeout, spec.maxOutput, spec.cwd, spec.args, dict(spec.env)),
            (None, None, None, None, ("-c",), {"A": "b"}),
        )
        for entry, expected in [
            ('{"path": null}', "'path' must be an absolute path"),
            ('{"args": null}', "'args' must be a list of strings"),
            ('{"env": null}', "'env' must be a table of strings (no '=' in names, no NUL)"),
            ('{"timeout": true}', "'timeout' must be a positive number of seconds"),
            ('{"max-output": false}', "'max-output' must be a whole number of bytes"),
        ]:
            path = self.write(".json", '{"commands": {"sh": ' + entry + "}}")
            with self.assertRaises(ValueError) as caught:
                loadCommandsFile(path, "/bin:/usr/bin")
            self.assertEqual(str(caught.exception), f"{path}: command 'sh': {expected}", entry)

    def test_tapOptions(self) -> None:
        """
        C{--allow-command} (repeatable) and the limit options reach the
        parsed options; an unknown command stops start-up with one line.
        """
        options = Options()
        options.parseOptions(
            [
                "--allow-command",
                "sh",
                "--allow-command=true",
                "--command-timeout",
                "5",
                "--command-max-timeout",
                "50",
                "--max-output",
                "1000",
                "--max-procs-per-conn",
                "2",
                "--max-procs",
                "7",
            ]
        )
        self.assertEqual([s.name for s in options["command-specs"]], ["sh", "true"])
        limits = options["command-limits"]
        self.assertEqual(
            (
                limits.timeout,
                limits.maxTimeout,
                limits.maxOutput,
                limits.maxProcsPerConnection,
                limits.maxProcs,
            ),
            (5.0, 50.0, 1000, 2, 7),
        )
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--allow-command", "no-such-command-anywhere"])
        self.assertIn("not found", str(caught.exception))
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--allow-command", "sh", "--allow-command", "sh"])
        self.assertIn("twice", str(caught.exception))

    def test_noCommandsByDefault(self) -> None:
        """
        Without options, nothing is allowed.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["command-specs"], [])

    def test_configureDefaultTimeoutClamped(self) -> None:
        """
        A default timeout over the maximum is lowered to it.
        """
        config: dict[str, Any] = {
            "command-timeout": 60.0,
            "command-max-timeout": 10.0,
            "max-output": 5,
            "max-procs-per-conn": 1,
            "max-procs": 1,
        }
        configureCommands(config)
        self.assertEqual(config["command-limits"].timeout, 10.0)

    def test_twiceInService(self) -> None:
        """
        A service refuses the same name twice.
        """
        with self.assertRaises(ValueError):
            CommandService(Clock(), "/", [CommandSpec("a", "/x"), CommandSpec("a", "/y")])

    def test_makeServiceHasCommands(self) -> None:
        """
        The tap's service answers C{run} and is a child service (so that
        stopping the server kills commands).
        """
        from twisted.internet.testing import MemoryReactor

        from twisted_frames.tap import makeService

        options = Options()
        root = os.path.join(self.directory, "root")
        os.makedirs(root)
        options.parseOptions(["--allow-command", "sh", "--root", root, "--udp", "0"])
        top = makeService(options, MemoryReactor())
        self.assertIn("run", top.factory.operations)
        children = [s for s in top if isinstance(s, CommandService)]
        self.assertEqual(len(children), 1)
        self.assertEqual(list(children[0].commands), ["sh"])
