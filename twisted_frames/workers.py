# -*- test-case-name: tests.test_workers -*-
"""
C{twistd frameserver --workers N}: N server processes sharing each
listening socket, supervised by the main process.

The main process listens (in C{privilegedStartService}, so a port below
1024 can be bound before twistd drops privileges), never accepts, and
spawns the workers with C{reactor.spawnProcess}, handing each listening
descriptor down at the same number (C{childFDs}).  Each worker is the same
C{twistd frameserver} with the same options and C{--workers 1}; it finds
the descriptors in the L{WORKER_ENV} environment variable and adopts them
(C{adoptStreamPort}, C{adoptDatagramPort} for the UDP echo) instead of
listening itself.  Why shared descriptors rather than C{SO_REUSEPORT}:

  - one socket, one accept queue: a connection waiting in the queue of a
    worker that dies is accepted by another worker, where with
    C{SO_REUSEPORT} the kernel resets the connections queued on the dead
    worker's socket;
  - the port stays bound while a worker restarts (no refused connections
    in between), C{tcp:0} gives every worker the one port, and UNIX sockets
    work (C{SO_REUSEPORT} has neither);
  - it needs nothing from the platform beyond what Twisted's
    C{IReactorSocket} already needs.

The kernel hands each new connection to one of the workers waiting in
C{accept()}; it does not balance their load, which evens out once there are
many connections.

Supervision (L{Supervisor}): a worker that exits is logged with its status
and started again; one that dies soon after starting waits longer each time
(L{Supervisor.backoff}), and if it dies L{Supervisor.giveUpAfter} times in a
row without ever becoming ready the main process stops with status 1 (the
configuration cannot work; a supervisor such as systemd then sees it).
Stopping (twistd does on C{SIGTERM}) closes the main process's copies of the
sockets, sends C{SIGTERM} to every worker, each of which shuts down
gracefully as a single server does, and waits for them (C{SIGKILL} after
their grace period and some more).  A worker whose main process is gone
(killed with C{SIGKILL}) sees its standard input close and stops too.

Workers log in JSON on their standard output; the main process reads each
event and logs it again as its own, with C{log_system} C{worker N} and a
C{worker} field, so one log has everything.

Metrics: with C{metrics=True} the supervisor makes a fresh directory for
C{prometheus_client}'s multiprocess mode before the first worker starts,
passes it to every worker as C{PROMETHEUS_MULTIPROC_DIR}, marks each
worker that exits dead in it, and removes it once the last worker has
stopped; L{Supervisor.metricsDir} is the directory the main process reads
to serve the sum.  The workers are started with C{--metrics worker} in
place of the endpoint (L{twisted_frames.tap.makeSupervisor}), so that only
the main process listens on it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import abstract, defer, error, main
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

#: The environment variable that makes C{twistd frameserver} a worker: the
#: JSON of L{WorkerSockets}.
WORKER_ENV = "TWISTED_FRAMES_WORKER"
#: Runs twistd in a worker (the module has no C{__main__} guard, so C{-m}
#: would not start it).
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
#: The field of the event a worker logs once it serves.
READY_FIELD = "frames_worker_ready"

log = Logger(namespace="twisted_frames.workers")


@dataclass(frozen=True)
class WorkerSockets:
    """
    What a worker is given: its number, and the listening descriptors it
    adopts, as C{(descriptor, address family)}.

    @ivar listen: one per C{--listen}, in order.
    @ivar udp: the UDP echo's, or C{None}.
    """

    index: int
    listen: tuple[tuple[int, int], ...]
    udp: tuple[int, int] | None = None

    def toJSON(self) -> str:
        """
        The value of L{WORKER_ENV} for this worker.
        """
        return json.dumps({"index": self.index, "listen": self.listen, "udp": self.udp})

    @classmethod
    def fromEnviron(cls, environ: Mapping[str, str]) -> WorkerSockets | None:
        """
        The sockets of this process, if it is a worker.

        @raise SystemExit: if L{WORKER_ENV} is set but not valid.
        """
        value = environ.get(WORKER_ENV)
        if value is None:
            return None
        try:
            data = json.loads(value)
            udp = data["udp"]
            return cls(
                int(data["index"]),
                tuple((int(fd), int(family)) for fd, family in data["listen"]),
                None if udp is None else (int(udp[0]), int(udp[1])),
            )
        except (ValueError, TypeError, KeyError, IndexError):
            raise SystemExit(f"twistd frameserver: bad {WORKER_ENV}={value!r}") from None


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A worker's endpoint: "listening" adopts a socket its main process
    listens on.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        """
        Adopt the socket (C{adoptStreamPort} duplicates the descriptor; the
        inherited one is closed, so the worker holds one copy).
        """

        def adopt() -> IListeningPort:
            try:
                port: IListeningPort = self.reactor.adoptStreamPort(
                    self.fd, self.family, protocolFactory
                )
            finally:
                os.close(self.fd)
            if self.family == socket.AF_UNIX:
                _keepSocketFile(port)
            return port

        return defer.execute(adopt)


def _keepSocketFile(port: Any) -> None:
    """
    A UNIX socket's file belongs to the main process, which removes it (and
    its lock file) when it stops: a worker that stops listening closes its
    copy of the socket and leaves the file alone.  Twisted's UNIX port
    always removes the file when its socket closes, so that step is left
    out for this port.
    """
    from twisted.internet import tcp

    port.connectionLost = types.MethodType(tcp.Port.connectionLost, port)


def adoptDatagram(reactor: Any, fd: int, family: int, protocol: Any, maxPacketSize: int) -> Any:
    """
    Adopt the main process's UDP socket in a worker, as L{AdoptedEndpoint}
    does for stream sockets.
    """
    try:
        return reactor.adoptDatagramPort(fd, family, protocol, maxPacketSize)
    finally:
        os.close(fd)


class _NeverAccepting(Factory):
    """
    The factory of the main process's listening ports, which never accept
    (they stop reading at once); if one did, the connection is closed.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return None


class SharedPorts(service.Service):
    """
    The main process's listening sockets: one stream port per C{--listen}
    (listened on by Twisted from the endpoint strings, then never read) and
    the UDP echo's.

    @ivar listen: the listening ports, once started.
    """

    def __init__(
        self,
        reactor: Any,
        listen: Sequence[Any],
        udp: tuple[int, str] | None,
        describe: Callable[[Any], None],
    ) -> None:
        """
        @param listen: the endpoints to listen on.
        @param udp: the UDP echo's C{(port, interface)}, or C{None}.
        @param describe: called with each stream port once it listens (to
            log its address).
        """
        self.reactor = reactor
        self.endpoints = list(listen)
        self.udpAddress = udp
        self.describe = describe
        self.listen: list[Any] = []
        self.udp: Any = None

    def privilegedStartService(self) -> None:
        """
        Listen on everything, synchronously (a failure stops start-up).
        """
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        for endpoint in self.endpoints:
            d = endpoint.listen(_NeverAccepting())
            failures: list[Failure] = []
            d.addCallbacks(self.listen.append, failures.append)
            if failures:
                failures[0].raiseException()
            self.listen[-1].stopReading()
            self.describe(self.listen[-1])
        if self.udpAddress is not None:
            port, interface = self.udpAddress
            self.udp = self.reactor.listenUDP(port, DatagramProtocol(), interface=interface)
            self.udp.stopReading()
            address = self.udp.getHost()
            log.info("udp echo listening on {host}:{port}", host=address.host, port=address.port)

    def sockets(self, index: int) -> WorkerSockets:
        """
        What worker C{index} is given.
        """
        udp = None if self.udp is None else (self.udp.fileno(), self.udp.socket.family)
        return WorkerSockets(index, tuple((p.fileno(), p.socket.family) for p in self.listen), udp)

    def stopService(self) -> defer.Deferred[Any]:
        """
        Close the main process's copies (the workers keep theirs until they
        have stopped listening).
        """
        super().stopService()  # type: ignore[no-untyped-call]
        ports = [*self.listen, *([self.udp] if self.udp is not None else [])]
        self.listen, self.udp = [], None
        stopped = [
            defer.maybeDeferred(p.stopListening).addErrback(
                lambda f: log.failure("closing a listening socket", f)
            )
            for p in ports
        ]
        return defer.gatherResults(stopped)


class _ParentWatch(abstract.FileDescriptor):
    """
    A worker's standard input, a pipe from its main process that is never
    written: it reads end-of-file once the main process is gone.
    """

    def __init__(self, reactor: Any, fd: int, gone: Callable[[], None]) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.gone = gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        return None if data else main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self.gone()


class WorkerService(service.Service):
    """
    Added last to a worker's services: logs that the worker serves (the
    main process waits for this line), watches for the main process going
    away, and leaves C{SIGINT} to the main process (a Ctrl-C in a terminal
    reaches the whole process group; the main process then stops the
    workers in order).
    """

    def __init__(self, reactor: Any, index: int, stdin: int = 0) -> None:
        self.reactor = reactor
        self.index = index
        self.stdin = stdin
        self.watch: _ParentWatch | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.watch = _ParentWatch(self.reactor, self.stdin, self._parentGone)
        self.watch.startReading()  # type: ignore[no-untyped-call]
        self.reactor.callWhenRunning(_ignoreSIGINT)
        log.info(
            "worker {worker} ready (pid {pid})",
            worker=self.index,
            pid=os.getpid(),
            **{READY_FIELD: True},
        )

    def _parentGone(self) -> None:
        if not self.running:
            return
        log.warn("the main process is gone: stopping")
        self.reactor.stop()

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.stopReading()  # type: ignore[no-untyped-call]
        return None


def _ignoreSIGINT() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _WorkerProtocol(ProcessProtocol):
    """
    One worker process, seen from the main process: its log events are
    logged again here, its end is reported to the L{Supervisor}.
    """

    def __init__(self, supervisor: Supervisor, worker: _Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            self._event(line)

    def _event(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            self._text(line)
            return
        if not isinstance(event, dict):
            self._text(line)
            return
        # Every observer expects these, which Twisted's own events have.
        event.setdefault("log_time", time.time())
        event.setdefault("log_namespace", "twisted_frames.workers")
        if not isinstance(event.get("log_level"), LogLevel):
            event["log_level"] = LogLevel.info
        # A flattened field holds str(value), its format spec not applied
        # ("{s:.1f}" would show every digit): format from the fields, which
        # JSON kept, unless one of them did not survive.
        flattened = event.pop("log_flattened", None)
        if flattened is not None and formatEvent(event).startswith("Unable to format event"):
            event["log_flattened"] = flattened
        event["worker"] = self.worker.index
        event["log_system"] = f"worker {self.worker.index}"
        globalLogPublisher(event)
        if event.get(READY_FIELD):
            self.supervisor._ready(self.worker)

    def _text(self, line: bytes) -> None:
        log.warn(
            "worker {worker}: {line}",
            worker=self.worker.index,
            line=line.decode("utf-8", "replace").rstrip(),
        )

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            if line.strip():
                self._text(line)

    def processEnded(self, reason: Failure) -> None:
        for rest in (self._out, self._err):
            if rest.strip():
                self._text(rest)
        self._out = self._err = b""
        self.supervisor._ended(self.worker, reason)


@dataclass
class _Worker:
    """
    The supervisor's record of worker C{index}.

    @ivar failures: consecutive exits soon after starting.
    @ivar everReady: whether any of its processes became ready.
    """

    index: int
    process: IProcessTransport | None = None
    pid: int | None = None
    startedAt: float = 0.0
    ready: bool = False
    everReady: bool = False
    failures: int = 0
    restart: IDelayedCall | None = None
    waiters: list[defer.Deferred[None]] = field(default_factory=list)


def describeExit(reason: Failure) -> str:
    """
    How a process ended, for a log line: C{exited with status N} or
    C{was killed by signal N}.
    """
    value = reason.value
    signal = getattr(value, "signal", None)
    if signal is not None:
        return f"was killed by signal {signal}"
    code = getattr(value, "exitCode", None)
    return f"exited with status {code if code is not None else '?'}"


def _stoppedAsAsked(reason: Failure) -> bool:
    """
    Whether a worker sent C{SIGTERM} ended as a worker that drained and
    stopped does: twistd, once its reactor has stopped on C{SIGTERM},
    ends the process with that signal again, so that its parent sees how
    it was stopped (status 0 would do as well).  C{SIGKILL} (L{Supervisor._killAll}
    after the stop timeout) or any other status is worth a warning.
    """
    value = reason.value
    return getattr(value, "signal", None) == signal.SIGTERM or (
        getattr(value, "signal", None) is None and getattr(value, "exitCode", None) == 0
    )


def _exitFailed() -> None:
    """
    Make the main process exit with status 1 once twistd has finished
    (stopped the reactor, removed its pidfile): twistd itself always exits
    0 when its reactor is stopped without a signal.
    """

    def exit1() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(1)

    atexit.register(exit1)


class Supervisor(service.Service):
    """
    Runs C{count} workers and keeps them running (see the module's
    docstring).

    @ivar backoff: seconds before restarting a worker that died within
        L{stableAfter} seconds of starting, doubling with each such death
        in a row, up to L{maxBackoff}.
    @ivar giveUpAfter: deaths in a row, without ever becoming ready, after
        which the main process stops with status 1.
    @ivar stopTimeout: seconds a worker has to exit after C{SIGTERM} before
        it is killed.
    @ivar metricsDir: the multiprocess metrics directory, while running
        with C{metrics=True}.
    """

    backoff = 0.5
    maxBackoff = 30.0
    stableAfter = 10.0
    giveUpAfter = 5
    killWait = 5.0

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Sequence[str],
        ports: SharedPorts,
        stopTimeout: float,
        cwd: str | None = None,
        environ: Mapping[str, str] | None = None,
        metrics: bool = False,
        giveUp: Callable[[], None] = _exitFailed,
        executable: str = sys.executable,
    ) -> None:
        """
        @param argv: the C{frameserver} options of every worker (the main
            process's own, then C{--workers 1}).
        @param ports: the sockets the workers share.
        @param environ: the workers' environment, besides L{WORKER_ENV}
            (the main process's by default).
        @param giveUp: called when the workers cannot start, before the
            reactor is stopped (by default: exit with status 1 afterwards).
        """
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.ports = ports
        self.stopTimeout = stopTimeout
        self.cwd = cwd if cwd is not None else os.getcwd()
        self.environ = dict(os.environ if environ is None else environ)
        self.metrics = metrics
        self.metricsDir: str | None = None
        self.giveUp = giveUp
        self.executable = executable
        self.workers = [_Worker(i) for i in range(1, count + 1)]
        self.stopping = False
        self.stopped = False
        self._stopWaiters: list[defer.Deferred[None]] = []

    def command(self) -> list[str]:
        """
        A worker's command line.
        """
        return [
            self.executable,
            "-c",
            _TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logger=twisted_frames.jsonlog.observer",
            "frameserver",
            *self.argv,
        ]

    def startService(self) -> None:
        """
        Start every worker.
        """
        super().startService()  # type: ignore[no-untyped-call]
        if self.metrics:
            self.metricsDir = tempfile.mkdtemp(prefix="frameserver-metrics-")
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        worker.restart = None
        sockets = self.ports.sockets(worker.index)
        env = dict(self.environ)
        env[WORKER_ENV] = sockets.toJSON()
        if self.metricsDir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metricsDir
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for fd, _ in (*sockets.listen, *([sockets.udp] if sockets.udp else [])):
            fds[fd] = fd
        worker.ready = False
        worker.startedAt = self.reactor.seconds()
        worker.process = self.reactor.spawnProcess(
            _WorkerProtocol(self, worker),
            self.executable,
            self.command(),
            env=env,
            path=self.cwd,
            childFDs=fds,
        )
        worker.pid = getattr(worker.process, "pid", None)
        log.info("worker {worker} started (pid {pid})", worker=worker.index, pid=worker.pid)

    def _ready(self, worker: _Worker) -> None:
        worker.ready = worker.everReady = True

    def serving(self) -> bool:
        """
        Whether the server serves: it is not stopping and at least one
        worker is running and ready (the main process's C{/healthz}).
        """
        return not self.stopping and any(w.ready and w.process is not None for w in self.workers)

    def whenStopped(self) -> defer.Deferred[None]:
        """
        @return: a Deferred firing once L{stopService} has seen every worker
            exit (at once if it has).
        """
        if self.stopped:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._stopWaiters.append(d)
        return d

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        worker.process = None
        pid = worker.pid
        if self.metricsDir is not None and pid is not None:
            _markDead(pid, self.metricsDir)
        waiters, worker.waiters = worker.waiters, []
        for d in waiters:
            d.callback(None)
        how = describeExit(reason)
        if self.stopping:
            if _stoppedAsAsked(reason):
                how = "stopped"
                log.info(
                    "worker {worker} (pid {pid}) {how}", worker=worker.index, pid=pid, how=how
                )
            else:
                log.warn(
                    "worker {worker} (pid {pid}) {how} while stopping",
                    worker=worker.index,
                    pid=pid,
                    how=how,
                )
            return
        ran = self.reactor.seconds() - worker.startedAt
        worker.failures = 0 if ran >= self.stableAfter else worker.failures + 1
        if not worker.everReady and worker.failures >= self.giveUpAfter:
            log.critical(
                "worker {worker} (pid {pid}) {how}; it never started, {n} times in a row: "
                "stopping the server",
                worker=worker.index,
                pid=pid,
                how=how,
                n=worker.failures,
            )
            self.giveUp()
            self.reactor.stop()
            return
        delay = 0.0
        if worker.failures:
            delay = min(self.backoff * 2 ** (worker.failures - 1), self.maxBackoff)
        log.warn(
            "worker {worker} (pid {pid}) {how} after {ran:.1f} s; restarting it in {delay:g} s",
            worker=worker.index,
            pid=pid,
            how=how,
            ran=ran,
            delay=delay,
        )
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop every worker gracefully (C{SIGTERM}); C{SIGKILL} those still
        running after L{stopTimeout} seconds.

        @return: a Deferred firing once every worker has exited.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self.stopping = True
        ended = []
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.process is not None:
                d: defer.Deferred[None] = defer.Deferred()
                worker.waiters.append(d)
                ended.append(d)
                _signal(worker.process, "TERM")
        kill = self.reactor.callLater(self.stopTimeout, self._killAll)
        done: defer.Deferred[None] = defer.Deferred()

        def allEnded(_: object) -> None:
            if kill.active():
                kill.cancel()
            self._removeMetricsDir()
            self.stopped = True
            done.callback(None)
            waiters, self._stopWaiters = self._stopWaiters, []
            for waiter in waiters:
                waiter.callback(None)

        defer.DeferredList(ended).addCallback(allEnded)
        return done

    def _killAll(self) -> None:
        running = [w for w in self.workers if w.process is not None]
        log.warn(
            "{n} workers still running {timeout:g} s after SIGTERM: killing them",
            n=len(running),
            timeout=self.stopTimeout,
        )
        for worker in running:
            assert worker.process is not None
            _signal(worker.process, "KILL")

    def _removeMetricsDir(self) -> None:
        path, self.metricsDir = self.metricsDir, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def _signal(process: IProcessTransport, name: str) -> None:
    try:
        process.signalProcess(name)
    except error.ProcessExitedAlready:
        pass


def _markDead(pid: int, path: str) -> None:
    """
    Tell C{prometheus_client}'s multiprocess mode that worker C{pid} is
    gone (its live gauges stop counting).
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
