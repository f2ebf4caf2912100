# -*- test-case-name: tests.commands.test_process -*-
"""
Process plumbing for the command service: the scrubbed environment, the
launchers that put a command in its own session and directory, process-group
signals, the output pipes and stdin sink that carry backpressure, and
L{RunningCommand}, one command from spawn to final reply.

Why this module is long (about 700 lines): it is one backpressure loop.  The
output pipes pause when the connection's transport is full and
L{RunningCommand} resumes them when it drains; the stdin sink pauses the
connection while the pipe to the process is full; the kill timers end all of
it.  Each piece watches the others' state, and split across modules they
would only reach into each other's private attributes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import abstract, defer, fdesc, main
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..protocol import BodySink
from ..server import Request, ServerProtocol
from .spec import CommandLimits, CommandSpec

#: The C{PATH} commands see.  The server's own C{PATH} is used only at
#: start-up, to resolve C{--allow-command} names to absolute paths.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Variables copied from the server's environment when set; everything else
#: is dropped (no secrets, no C{LD_PRELOAD}, no C{PYTHONPATH}).
ENV_ALLOWLIST = ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "TZ")


def scrubbedEnvironment(
    environ: Mapping[str, str], home: str, extra: Mapping[str, str] = {}
) -> dict[str, str]:
    """
    The environment a command gets: a safe C{PATH}, C{HOME} set to the root,
    the allow-listed locale and time-zone variables, then the command's
    own fixed variables.
    """
    env = {k: environ[k] for k in ENV_ALLOWLIST if k in environ}
    env["PATH"] = SAFE_PATH
    env["HOME"] = home
    env.update(extra)
    return env


def sessionLauncher() -> list[str]:
    """
    The argv prefix that makes a command the leader of a new session, so
    that it and everything it starts can be signalled as one process group.
    Twisted's C{spawnProcess} has no such option: util-linux C{setsid}
    calls C{setsid()} and execs in place (no extra fork, since the child is
    not a group leader); without it, a small Python trampoline does the same.
    """
    found = shutil.which("setsid")
    if found is not None:
        return [found]
    return [sys.executable, "-c", "import os,sys;os.setsid();os.execv(sys.argv[1],sys.argv[1:])"]


def chdirLauncher() -> list[str] | None:
    """
    The argv prefix (C{env -C}) that changes directory before exec, or
    C{None} where C{env} cannot.

    Why: Twisted's C{spawnProcess} uses C{posix_spawnp} only when no working
    directory is given; with one it forks the whole server process and sets
    the child up in Python, which costs several milliseconds per command.
    C{env -C DIR} (coreutils 8.28+) changes directory in the child instead.
    """
    found = shutil.which("env")
    if found is None or "=" in found:
        return None
    try:
        probe = subprocess.run(
            [found, "-C", "/", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [found, "-C"] if probe.returncode == 0 else None


def _killGroup(pgid: int, signum: int) -> None:
    os.killpg(pgid, signum)


def _signalName(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


#: The signature of L{_killGroup}, which tests replace.
KillGroup = Callable[[int, int], None]


class RunOwner(Protocol):
    """
    What a L{RunningCommand} needs of the service that started it (a
    L{twisted_frames.commands.service.CommandService}), named by its shape so
    that this module does not import the service that imports it.
    """

    @property
    def limits(self) -> CommandLimits:
        """
        The limits runs are held to.
        """

    @property
    def reactor(self) -> Any:
        """
        The reactor processes are spawned with and timed by.
        """

    @property
    def killGroup(self) -> KillGroup:
        """
        Signals a process group: C{killGroup(pgid, signum)}.
        """

    def runEnded(self, run: RunningCommand) -> None:
        """
        C{run} has sent its final reply and been reaped.
        """


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
        commands: RunOwner,
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
        metrics = self.request.connection.factory.metrics
        if metrics is not None:
            metrics.commandEnded(exitCode, signum, self.timedOut, self.cancelled)
        if not self.request.cancelled and not self.request.finished:
            self.request.reply(fields)
        self.commands.runEnded(self)
        self.ended.callback(None)
