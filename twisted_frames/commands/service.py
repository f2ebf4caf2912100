# -*- test-case-name: tests.test_commands -*-
"""
The command service: run commands the server allows, never through a shell.

Ops (see C{docs/commands.md} for the wire reference):

  - C{run}: C{argv} names an allowed command and its arguments, as a list.
    The request body is the start of the command's stdin.  Replies: one
    C{started} event, C{stdout}/C{stderr} events as output arrives (each
    body a chunk, in order within its stream), then a final reply with the
    exit code or signal, the elapsed time and whether the run timed out,
    was cancelled or had its output truncated.
  - C{stdin}: more stdin for a run started with C{"stdin": "stream"}; the
    body is the chunk, C{"eof": true} closes it.  The reply (an
    acknowledgement) is sent once the chunk has gone into the pipe, so a
    client that keeps a few chunks in flight never makes the server buffer
    more than that, and the connection stays free to carry a C{cancel}.
  - C{cancel}: signal a run's whole process group, then kill it after a
    grace period.

Every command runs through C{reactor.spawnProcess} in its own session
(hence its own process group) via C{setsid}, with a scrubbed environment and
a working directory confined to the server's root; a wall-clock timeout,
output cap, client disconnect, cancel or server shutdown kill the whole
group (C{SIGTERM}, then C{SIGKILL} after L{CommandLimits.killGrace}).
Output is forwarded with backpressure: while a chunk cannot be handed to the
connection's transport, the process's pipes are not read.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.application.service import Service as ApplicationService
from twisted.internet import abstract, defer, fdesc, main
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..protocol import BodySink
from ..server import Request, ServerProtocol, Service, operation, shuttingDownError
from ..wire import ErrorCode, FramesError, RequestId
from .process import (
    KillGroup,
    _killGroup,
    _signalName,
    chdirLauncher,
    scrubbedEnvironment,
    sessionLauncher,
)
from .spec import CommandLimits, CommandSpec

log = Logger(namespace="twisted_frames.commands")

#: Signals a client may name in C{cancel}.  A cancel always ends in
#: C{SIGKILL} after the grace period, so only signals meant to stop a
#: process make sense here.
CANCEL_SIGNALS = {
    "SIGINT": signal.SIGINT,
    "SIGTERM": signal.SIGTERM,
    "SIGHUP": signal.SIGHUP,
    "SIGQUIT": signal.SIGQUIT,
    "SIGKILL": signal.SIGKILL,
}
#: The largest body of one C{stdin} message.  Clients send smaller chunks
#: (256 KiB) and keep a few in flight; this bounds what one message can
#: make the server buffer.
MAX_STDIN_CHUNK = 4 * 1024 * 1024
#: Stdin bytes the server accepts beyond what the pipe has taken before it
#: pauses reading the connection.  A client keeping its window (see
#: C{twisted_frames.commands.client}) stays below this, so the connection is never paused
#: for stdin and a C{cancel} can always be read; one that does not is
#: throttled instead of growing the server's memory.
STDIN_BACKLOG = 2 * MAX_STDIN_CHUNK

#: Bytes read from a command's stdout or stderr pipe at a time, and the
#: pipe's size.  Every read becomes one message: Twisted's own process
#: pipes read 8 KiB at a time, which makes the per-message cost dominate.
OUTPUT_READ_SIZE = 256 * 1024


@implementer(IPushProducer)
class _OutputChunk:
    """
    One chunk of output as a body source.  It writes at once; if the
    transport paused it meanwhile (its buffer is full), it holds the
    connection's send slot and reports done only when the transport
    resumes it, which is when the run resumes reading the process.
    """

    def __init__(self, data: bytes) -> None:
        self.length = len(data)
        self._data = data
        self._paused = False
        self._done: defer.Deferred[None] | None = None

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        data, self._data = self._data, b""
        consumer.write(data)
        if not self._paused:
            return defer.succeed(None)
        self._done = defer.Deferred()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        done, self._done = self._done, None
        if done is not None:
            done.callback(None)

    def stopProducing(self) -> None:
        # The connection is gone; FrameProtocol fails the message itself.
        self._done = None


class _OutputPipe(abstract.FileDescriptor):
    """
    The read end of a command's stdout or stderr pipe, read in chunks of
    L{OUTPUT_READ_SIZE}; data and EOF go to the run's C{childDataReceived}
    and C{childConnectionLost}, as from Twisted's own process pipes.
    """

    def __init__(self, reactor: Any, fd: int, run: RunningCommand, childFD: int) -> None:
        super().__init__(reactor)
        fdesc.setNonBlocking(fd)  # type: ignore[no-untyped-call]
        self.fd = fd
        self.run = run
        self.childFD = childFD

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, OUTPUT_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.run.childDataReceived(self.childFD, data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        os.close(self.fd)
        self.run.childConnectionLost(self.childFD)

    def pause(self) -> None:
        """
        Stop reading (the pipe fills and the command blocks writing).
        """
        if not self.disconnected:
            self.stopReading()  # type: ignore[no-untyped-call]

    def resume(self) -> None:
        """
        Read again.
        """
        if not self.disconnected:
            self.startReading()  # type: ignore[no-untyped-call]


def _openOutputPipe() -> tuple[int, int]:
    r, w = os.pipe()
    setSize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setSize is not None:
        try:
            fcntl.fcntl(w, setSize, OUTPUT_READ_SIZE)
        except OSError:
            # Over the user's pipe quota: the default size still works.
            pass
    return r, w


@implementer(IPushProducer)
class _StdinPressure:
    """
    Registered with the process's stdin pipe writer: learns when its
    buffer is full and when it has drained.
    """

    def __init__(self, run: RunningCommand) -> None:
        self._run = run

    def pauseProducing(self) -> None:
        # Called on every write while the buffer is over its size: count the
        # backlog from the write that filled it.
        if not self._run.stdinFull:
            self._run.stdinFull = True
            self._run.stdinBacklog = 0

    def resumeProducing(self) -> None:
        self._run.stdinDrained()

    def stopProducing(self) -> None:
        self._run.stdinLost()


class _StdinSink(BodySink):
    """
    A body (the C{run} body, or one C{stdin} message) flowing into a
    process's stdin.  Past L{STDIN_BACKLOG} bytes not yet taken by the
    pipe, the connection's reading is paused (for as long as the pipe stays
    full, even past the end of this body) instead of buffering more.
    """

    def __init__(
        self, run: RunningCommand, connection: ServerProtocol, finished: Callable[[], None]
    ) -> None:
        self._run = run
        self._connection = connection
        self._finished = finished

    def bodyData(self, data: bytes) -> None:
        run = self._run
        run.writeStdin(data)
        if run.stdinFull and run.stdinBacklog > STDIN_BACKLOG and not run.throttling:
            run.throttling = True
            self._connection.pauseReceiving()
            run.whenStdinDrained(self._resume)

    def _resume(self) -> None:
        self._run.throttling = False
        self._connection.resumeReceiving()

    def bodyFinished(self) -> None:
        self._finished()


class RunningCommand(ProcessProtocol):
    """
    One command started by a C{run} request, from spawn to final reply.

    @ivar pid: the process id, which is also its process group id.
    @ivar ended: fires (with C{None}) once the final reply has been sent
        and the process has been reaped.
    """

    def __init__(
        self,
        commands: CommandService,
        request: Request,
        spec: CommandSpec,
        argv: list[str],
        timeout: float,
        maxOutput: int,
    ) -> None:
        self.commands = commands
        self.request = request
        self.spec = spec
        self.argv = argv
        self.timeout = timeout
        self.maxOutput = maxOutput
        self.pid = 0
        self.started = 0.0
        self.outputBytes = {1: 0, 2: 0}
        self.timedOut = False
        self.cancelled = False
        self.truncated = False
        self.exited = False
        self.finished = False
        self.stdinOpen = True
        self.stdinFull = False
        self.stdinBacklog = 0
        self.throttling = False
        self._drainWaiters: list[Callable[[], None]] = []
        self._pendingChunks = 0
        self._outputPipes: list[_OutputPipe] = []
        self._outputOpen: set[int] = set()
        self._endReason: Failure | None = None
        self._ready = False
        self._early: list[tuple[Callable[[Failure], None], Failure]] = []
        self._timer: Any = None
        self._killTimer: Any = None
        self.ended: defer.Deferred[None] = defer.Deferred()

    @property
    def clock(self) -> Any:
        return self.commands.reactor

    @property
    def process(self) -> Any:
        """
        The process transport: stdin is a consumer, the output pipes a
        producer (C{IProcessTransport} does not say so, Twisted's
        implementations do).
        """
        return self.transport

    @property
    def killPending(self) -> bool:
        """
        Whether a C{SIGKILL} of the group is scheduled.
        """
        return self._killTimer is not None and self._killTimer.active()

    # -- starting ------------------------------------------------------------

    def connectionMade(self) -> None:
        # Read the pid now: Twisted forgets it once the process is reaped,
        # which can happen before spawnProcess returns.
        self.pid = self.process.pid
        self.process.registerProducer(_StdinPressure(self), True)

    def setReady(self) -> None:
        """
        The service has registered this run: handle an exit that came
        while it was being set up.
        """
        self._ready = True
        early, self._early = self._early, []
        for handler, reason in early:
            handler(reason)

    def startTimer(self) -> None:
        """
        Arm the wall-clock timeout.
        """
        self._timer = self.clock.callLater(self.timeout, self._timeoutExpired)

    # -- stdin ---------------------------------------------------------------

    def writeStdin(self, data: bytes) -> None:
        """
        Hand stdin bytes to the pipe; they are dropped once stdin is closed
        (by the client's EOF, or because the process closed its end).
        """
        if self.stdinOpen and data:
            self.stdinBacklog += len(data)
            self.process.write(data)

    def closeStdin(self) -> None:
        """
        Send EOF once what is buffered has been written.
        """
        if not self.stdinOpen:
            return
        self.stdinOpen = False
        if self.transport is not None:
            # A producer left registered would keep the pipe open forever.
            self.process.unregisterProducer()
            self.process.closeStdin()
        self.stdinDrained()

    def stdinDrained(self) -> None:
        """
        The pipe writer's buffer is empty (or stdin is gone): release what
        waited for it.
        """
        self.stdinFull = False
        self.stdinBacklog = 0
        waiters, self._drainWaiters = self._drainWaiters, []
        for w in waiters:
            w()

    def stdinLost(self) -> None:
        """
        The process closed its stdin (or exited): later stdin is discarded.
        """
        self.stdinOpen = False
        self.stdinDrained()

    def whenStdinDrained(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once the pipe writer's buffer is empty (now, if it
        is not full).
        """
        if self.stdinFull and self.stdinOpen:
            self._drainWaiters.append(callback)
        else:
            callback()

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 0:
            self.stdinLost()
        elif childFD in self._outputOpen:
            self._outputOpen.discard(childFD)
            self._maybeFinish()

    def attachOutput(self, pipes: list[_OutputPipe]) -> None:
        """
        Read the command's output from the service's own pipes (the final
        reply then also waits for their EOF).
        """
        self._outputPipes = pipes
        for pipe in pipes:
            self._outputOpen.add(pipe.childFD)
            pipe.startReading()  # type: ignore[no-untyped-call]

    # -- output ---------------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self.truncated or childFD not in self.outputBytes:
            return
        room = self.maxOutput - self.outputBytes[1] - self.outputBytes[2]
        overflow = len(data) > room
        if overflow:
            data = data[:room]
        self.outputBytes[childFD] += len(data)
        if data and not self.request.cancelled and not self.request.finished:
            self._sendChunk("stdout" if childFD == 1 else "stderr", data)
        if overflow:
            self.truncated = True
            log.info(
                "run id={rid} {name}: output over {cap} bytes; killing it",
                rid=self.request.id,
                name=self.spec.name,
                cap=self.maxOutput,
            )
            self.terminate(signal.SIGTERM)

    def _sendChunk(self, stream: str, data: bytes) -> None:
        sent = self.request.eventStream(stream, {}, _OutputChunk(data))
        if sent.called:
            sent.addErrback(lambda _: None)
            return
        # The chunk waits for the transport: stop reading the pipes, so
        # output waits in the kernel, not in this process.
        self._pendingChunks += 1
        if self._pendingChunks == 1:
            self._pauseOutput()
        sent.addBoth(self._chunkSent)

    def _chunkSent(self, result: Any) -> None:
        self._pendingChunks -= 1
        if self._pendingChunks == 0:
            self._resumeOutput()

    def _pauseOutput(self) -> None:
        for pipe in self._outputPipes:
            pipe.pause()
        if self.transport is not None:
            self.process.pauseProducing()

    def _resumeOutput(self) -> None:
        for pipe in self._outputPipes:
            pipe.resume()
        if self.transport is not None:
            self.process.resumeProducing()

    # -- stopping ----------------------------------------------------------------

    def terminate(self, signum: int) -> None:
        """
        Signal the whole process group, and kill it after the grace period
        (unless C{signum} already is C{SIGKILL}).
        """
        if (self.finished and signum != signal.SIGKILL) or self.pid <= 0:
            # Never 0 or negative: killpg(0) would signal the server's own
            # process group.
            return
        try:
            self.commands.killGroup(self.pid, signum)
        except ProcessLookupError:
            return
        except OSError as e:
            log.warn("cannot signal process group {pgid}: {e}", pgid=self.pid, e=e)
            return
        if signum == signal.SIGKILL:
            if self._killTimer is not None and self._killTimer.active():
                self._killTimer.cancel()
            self._killTimer = None
        elif self._killTimer is None:
            self._killTimer = self.clock.callLater(self.commands.limits.killGrace, self.killNow)

    def killNow(self) -> None:
        """
        C{SIGKILL} the process group now, if a kill was pending.
        """
        if self._killTimer is None:
            return
        if self._killTimer.active():
            self._killTimer.cancel()
        self._killTimer = None
        try:
            self.commands.killGroup(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def cancel(self, signum: int) -> None:
        """
        The client cancelled the run.
        """
        self.cancelled = True
        self.terminate(signum)

    def _timeoutExpired(self) -> None:
        self._timer = None
        self.timedOut = True
        log.info(
            "run id={rid} {name}: timed out after {t}s; killing its process group",
            rid=self.request.id,
            name=self.spec.name,
            t=self.timeout,
        )
        self.terminate(signal.SIGTERM)
        if self.exited:
            self._closeOutputLater()

    def _closeOutputLater(self) -> None:
        # A process that left its own group (setsid) can hold the output
        # pipes open forever, out of reach of killpg: after the grace
        # period, stop waiting for their EOF so that the run still ends.
        self._timer = self.clock.callLater(self.commands.limits.killGrace, self.closeOutput)

    def closeOutput(self) -> None:
        """
        Stop reading the command's output and drop the stdin not yet
        written: what is still in the pipes is lost and the run ends once
        the process has been reaped.
        """
        self._timer = None
        self.stdinLost()
        # Twisted waits for its stdin writer to flush before it reports the
        # process ended, and a reader outside the group may never read.
        stdin = getattr(self.transport, "pipes", {}).get(0)
        if stdin is not None and not stdin.disconnected:
            stdin.connectionLost(Failure(main.CONNECTION_LOST))
        for pipe in self._outputPipes:
            if not pipe.disconnected:
                pipe.stopReading()  # type: ignore[no-untyped-call]
                pipe.connectionLost(Failure(main.CONNECTION_DONE))
        closeChildFD = getattr(self.transport, "closeChildFD", None)
        if not self._outputPipes and closeChildFD is not None:
            closeChildFD(1)
            closeChildFD(2)

    def shutDown(self) -> None:
        """
        The server is stopping: kill the group, and stop waiting for output
        after the grace period instead of at the timeout.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.terminate(signal.SIGTERM)
        if not self.finished:
            self._closeOutputLater()

    def clientGone(self) -> None:
        """
        The client went away: nobody will read the output.
        """
        self.terminate(signal.SIGTERM)

    def processExited(self, reason: Failure) -> None:
        if not self._ready:
            self._early.append((self.processExited, reason))
            return
        self.exited = True
        # The timeout keeps running until the output has been read: it also
        # bounds the wait for pipes held by processes outside the group.
        if self.timedOut and self._timer is None:
            self._closeOutputLater()
        # Whatever the command left running in its group (background jobs
        # holding its pipes) goes with it: nothing outlives a run.
        self.terminate(signal.SIGTERM)
        self.closeStdin()

    def processEnded(self, reason: Failure) -> None:
        if not self._ready:
            self._early.append((self.processEnded, reason))
            return
        self._endReason = reason
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        """
        Send the final reply once the process has been reaped and all its
        output has been read.
        """
        reason = self._endReason
        if reason is None or self._outputOpen or self.finished:
            return
        self.finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.stdinLost()
        exitCode: int | None = None
        signum: int | None = None
        value = reason.value
        if isinstance(value, ProcessDone):
            exitCode = 0
        elif isinstance(value, ProcessTerminated):
            exitCode = value.exitCode
            signum = value.signal
        elapsed = self.clock.seconds() - self.started
        fields = {
            "exit": exitCode,
            "signal": _signalName(signum) if signum is not None else None,
            "signum": signum,
            "elapsed": round(elapsed, 6),
            "timedOut": self.timedOut,
            "cancelled": self.cancelled,
            "truncated": self.truncated,
            "stdoutBytes": self.outputBytes[1],
            "stderrBytes": self.outputBytes[2],
        }
        log.info(
            "run id={rid} {name} pid={pid}: exit={exit} signal={signal} "
            "elapsed={elapsed:.3f}s timedOut={timedOut} cancelled={cancelled} "
            "truncated={truncated}",
            rid=self.request.id,
            name=self.spec.name,
            pid=self.pid,
            **fields,
        )
        if not self.request.cancelled and not self.request.finished:
            self.request.reply(fields)
        self.commands.runEnded(self)
        self.ended.callback(None)


def _hashable(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


class CommandService(Service, ApplicationService):
    """
    The C{run}, C{stdin} and C{cancel} ops, and (as a Twisted service) the
    owner of every process they start: stopping it kills them all.

    @ivar commands: allowed command name to L{CommandSpec}.
    """

    def __init__(
        self,
        reactor: Any,
        root: str,
        commands: Iterable[CommandSpec] = (),
        limits: CommandLimits | None = None,
        environ: Mapping[str, str] | None = None,
        killGroup: KillGroup = _killGroup,
        launcher: list[str] | None = None,
        outputPipes: bool = True,
    ) -> None:
        self.reactor = reactor
        self.root = os.path.realpath(root)
        self.commands: dict[str, CommandSpec] = {}
        for spec in commands:
            if spec.name in self.commands:
                raise ValueError(f"command {spec.name!r} is defined twice")
            self.commands[spec.name] = spec
        self.limits = limits or CommandLimits()
        self.environ = dict(os.environ if environ is None else environ)
        self.killGroup = killGroup
        self.launcher = sessionLauncher() if launcher is None else launcher
        # Only with the default launcher: env would read a leading NAME=VALUE
        # argument as an assignment, and ours never has one.
        self.chdir = chdirLauncher() if launcher is None else None
        self.outputPipes = outputPipes
        self.runs: dict[ServerProtocol, dict[RequestId, RunningCommand]] = {}
        self.ended: list[RunningCommand] = []
        self.count = 0
        self.stopping = False

    # -- ops ------------------------------------------------------------------

    @operation("run", body="stream")
    def opRun(self, request: Request) -> BodySink:
        """
        Start an allowed command; its stdin is the request body (and, with
        C{"stdin": "stream"}, the C{stdin} messages that follow).
        """
        header = request.header
        argv = header.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT, "'argv' must be a non-empty list of strings"
            )
        if any("\0" in a for a in argv):
            raise FramesError(ErrorCode.INVALID_ARGUMENT, "arguments cannot contain NUL")
        spec = self.commands.get(argv[0])
        if spec is None:
            log.warn(
                "refused command {name!r} from {peer} (user {user}): not allowed",
                name=argv[0],
                peer=request.connection.peerName(),
                user=request.user or "-",
            )
            raise FramesError(
                ErrorCode.COMMAND_NOT_ALLOWED,
                f"command {argv[0]!r} is not allowed on this server",
                command=argv[0],
            )
        self._checkUser(request, spec)
        timeout = self._timeoutFor(header, spec)
        maxOutput = self._maxOutputFor(header, spec)
        stdinMode = header.get("stdin", "close")
        if stdinMode not in ("close", "stream"):
            raise FramesError(ErrorCode.INVALID_ARGUMENT, "'stdin' must be 'close' or 'stream'")
        cwd = self._cwdFor(header, spec)
        if self.stopping:
            raise shuttingDownError()
        mine = self.runs.get(request.connection, {})
        if len(mine) >= self.limits.maxProcsPerConnection:
            raise FramesError(
                ErrorCode.BUSY,
                f"at most {self.limits.maxProcsPerConnection} commands may run per connection",
            )
        if self.count >= self.limits.maxProcs:
            raise FramesError(
                ErrorCode.BUSY, f"the server is running its maximum of {self.limits.maxProcs}"
            )
        run = RunningCommand(self, request, spec, argv, timeout, maxOutput)
        run.started = self.reactor.seconds()
        command = [*self.launcher, spec.path, *spec.args, *argv[1:]]
        env = scrubbedEnvironment(self.environ, self.root, spec.env)
        try:
            self._spawn(run, command, env, cwd)
        except OSError as e:
            log.warn("cannot start {name}: {e}", name=spec.name, e=e)
            raise FramesError(
                ErrorCode.IO_ERROR, f"cannot start {spec.name!r}: {e.strerror or e}"
            ) from e
        self.runs.setdefault(request.connection, {})[request.id] = run
        self.count += 1
        run.startTimer()
        log.info(
            "run id={rid} {name} pid={pid} argc={argc} for {peer} (user {user})",
            rid=request.id,
            name=spec.name,
            pid=run.pid,
            argc=len(argv),
            peer=request.connection.peerName(),
            user=request.user or "-",
        )
        request.event("started", {"pid": run.pid, "timeout": timeout, "maxOutput": maxOutput})
        run.setReady()
        if stdinMode == "close":
            return _StdinSink(run, request.connection, run.closeStdin)
        return _StdinSink(run, request.connection, lambda: None)

    @operation("stdin", body="stream", maxBody=MAX_STDIN_CHUNK)
    def opStdin(self, request: Request) -> BodySink:
        """
        More stdin for a run started with C{"stdin": "stream"}; acknowledged
        once the chunk is in the pipe.
        """
        run = self._findRun(request)
        if request.bodyLength > MAX_STDIN_CHUNK:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"a stdin chunk is at most {MAX_STDIN_CHUNK} bytes ({request.bodyLength} sent)",
            )
        eof = request.header.get("eof", False)
        if not isinstance(eof, bool):
            raise FramesError(ErrorCode.INVALID_ARGUMENT, "'eof' must be true or false")

        def acknowledge() -> None:
            if not request.finished:
                request.reply({"run": run.request.id, "closed": not run.stdinOpen})

        def finished() -> None:
            if eof:
                run.closeStdin()
                acknowledge()
            else:
                run.whenStdinDrained(acknowledge)

        return _StdinSink(run, request.connection, finished)

    @operation("cancel")
    def opCancel(self, request: Request) -> dict[str, Any]:
        """
        Signal a run's process group (C{SIGTERM} unless C{signal} names
        another), then kill it after the grace period.
        """
        run = self._findRun(request)
        name = request.header.get("signal", "SIGTERM")
        if isinstance(name, str) and not name.startswith("SIG"):
            name = "SIG" + name
        if not isinstance(name, str) or name.upper() not in CANCEL_SIGNALS:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"'signal' must be one of {sorted(CANCEL_SIGNALS)}",
            )
        name = name.upper()
        log.info(
            "run id={rid} {cmd}: cancelled with {sig}",
            rid=run.request.id,
            cmd=run.spec.name,
            sig=name,
        )
        run.cancel(CANCEL_SIGNALS[name])
        return {"run": run.request.id, "signal": name}

    def _spawn(
        self, run: RunningCommand, command: list[str], env: dict[str, str], cwd: str
    ) -> Any:
        path: str | None = cwd
        if self.chdir is not None:
            command = [*self.chdir, cwd, *command]
            path = None
        if not self.outputPipes:
            return self.reactor.spawnProcess(run, command[0], command, env=env, path=path)
        outRead, outWrite = _openOutputPipe()
        errRead, errWrite = _openOutputPipe()
        try:
            transport = self.reactor.spawnProcess(
                run,
                command[0],
                command,
                env=env,
                path=path,
                childFDs={0: "w", 1: outWrite, 2: errWrite},
            )
        except BaseException:
            os.close(outRead)
            os.close(errRead)
            raise
        finally:
            # Only the child may hold the write ends, or EOF never comes.
            os.close(outWrite)
            os.close(errWrite)
        run.attachOutput(
            [
                _OutputPipe(self.reactor, outRead, run, 1),
                _OutputPipe(self.reactor, errRead, run, 2),
            ]
        )
        return transport

    # -- request checks ---------------------------------------------------------

    def _findRun(self, request: Request) -> RunningCommand:
        rid = request.header.get("run")
        run = (
            self.runs.get(request.connection, {}).get(rid) if isinstance(rid, int | str) else None
        )
        if run is None:
            raise FramesError(
                ErrorCode.NOT_FOUND,
                f"no running command with request id {rid!r} on this connection",
                run=rid if _hashable(rid) else None,
            )
        return run

    def _checkUser(self, request: Request, spec: CommandSpec) -> None:
        if spec.users is None:
            return
        if request.user is None:
            log.warn(
                "refused command {name!r} from {peer}: restricted to users, caller anonymous",
                name=spec.name,
                peer=request.connection.peerName(),
            )
            raise FramesError(
                ErrorCode.AUTH_REQUIRED, f"command {spec.name!r} needs a logged-in user"
            )
        if request.user not in spec.users:
            log.warn(
                "refused command {name!r} from {peer}: user {user} not allowed",
                name=spec.name,
                peer=request.connection.peerName(),
                user=request.user,
            )
            raise FramesError(
                ErrorCode.COMMAND_NOT_ALLOWED,
                f"user {request.user!r} may not run {spec.name!r}",
                command=spec.name,
            )

    def _timeoutFor(self, header: dict[str, Any], spec: CommandSpec) -> float:
        limit = spec.timeout if spec.timeout is not None else self.limits.maxTimeout
        asked = header.get("timeout")
        if asked is None:
            return min(self.limits.timeout, limit)
        if isinstance(asked, bool) or not isinstance(asked, int | float) or not asked > 0:
            raise FramesError(ErrorCode.INVALID_ARGUMENT, "'timeout' must be a positive number")
        if asked > limit:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"'timeout' may be at most {limit:g} s for {spec.name!r}",
                maxTimeout=limit,
            )
        return float(asked)

    def _maxOutputFor(self, header: dict[str, Any], spec: CommandSpec) -> int:
        limit = spec.maxOutput if spec.maxOutput is not None else self.limits.maxOutput
        asked = header.get("maxOutput")
        if asked is None:
            return limit
        if isinstance(asked, bool) or not isinstance(asked, int) or asked < 0:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT, "'maxOutput' must be a whole number of bytes"
            )
        return min(asked, limit)

    def _cwdFor(self, header: dict[str, Any], spec: CommandSpec) -> str:
        relative = header.get("cwd", spec.cwd)
        if relative is None:
            return self.root
        if not isinstance(relative, str) or "\0" in relative:
            raise FramesError(ErrorCode.INVALID_ARGUMENT, "'cwd' must be a relative path")
        if os.path.isabs(relative):
            raise FramesError(
                ErrorCode.FORBIDDEN_PATH, "'cwd' must be relative to the server's root"
            )
        resolved = os.path.realpath(os.path.join(self.root, relative))
        if os.path.commonpath([resolved, self.root]) != self.root:
            raise FramesError(
                ErrorCode.FORBIDDEN_PATH, f"'cwd' {relative!r} leads outside the root"
            )
        if not os.path.exists(resolved):
            raise FramesError(ErrorCode.NOT_FOUND, f"'cwd' {relative!r} does not exist")
        if not os.path.isdir(resolved):
            raise FramesError(ErrorCode.NOT_A_DIRECTORY, f"'cwd' {relative!r} is not a directory")
        return resolved

    # -- lifetime ------------------------------------------------------------

    def runEnded(self, run: RunningCommand) -> None:
        """
        Forget a finished run.
        """
        mine = self.runs.get(run.request.connection)
        if mine is not None and mine.get(run.request.id) is run:
            del mine[run.request.id]
            self.count -= 1
            if not mine:
                del self.runs[run.request.connection]
        if run.killPending:
            self.ended = [r for r in self.ended if r.killPending]
            self.ended.append(run)

    def connectionLost(self, connection: ServerProtocol) -> None:
        """
        Kill the process groups of every run of a lost connection.
        """
        for run in list(self.runs.get(connection, {}).values()):
            run.clientGone()

    def stopService(self) -> defer.Deferred[None]:
        """
        Refuse new runs, kill every process group, and fire once all have
        ended.
        """
        ApplicationService.stopService(self)  # type: ignore[no-untyped-call]
        self.stopping = True
        runs = [run for mine in self.runs.values() for run in mine.values()]
        for run in runs:
            run.shutDown()
        d = defer.DeferredList([run.ended for run in runs], consumeErrors=True)

        def killLeftovers(_: object) -> None:
            # Background jobs of finished runs still within their grace
            # period: the server is going, so they go now.
            for run in self.lingering():
                run.killNow()

        return d.addCallback(killLeftovers)

    def lingering(self) -> list[RunningCommand]:
        """
        Finished runs whose process group still has a C{SIGKILL} pending.
        """
        self.ended = [run for run in self.ended if run.killPending]
        return list(self.ended)
