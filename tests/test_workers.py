"""
Tests for L{twisted_frames.workers}: the supervisor of C{--workers N} (with
a fake reactor that records the processes it spawns and a L{Clock}), the
sockets a worker is given, and C{tap.makeService} in the main process and
in a worker.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import main
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import monitoring, tap
from twisted_frames.metrics import MetricsWebService
from twisted_frames.proxied import ProxiedFactory
from twisted_frames.workers import (
    READY_FIELD,
    WORKER_ENV,
    Supervisor,
    WorkerService,
    WorkerSockets,
    describeExit,
)

#: The labels of the pings answered.
PING_OK = {"op": "ping", "outcome": "ok"}


def writeCounter(path: str, pid: int, value: float) -> None:
    """
    Write the file of C{frames_requests_total} of worker C{pid} into the
    multiprocess directory C{path}, as prometheus_client does in a worker.
    """
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    key = mmap_key(
        "frames_requests",
        "frames_requests_total",
        ["op", "outcome"],
        ["ping", "ok"],
        "requests",
    )
    db = MmapedDict(os.path.join(path, f"counter_{pid}.db"))
    db.write_value(key, value, 0.0)
    db.close()


class FakeProcess:
    """
    A process transport that records the signals sent to it.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


@dataclass
class Spawned:
    """
    One C{spawnProcess} call.
    """

    protocol: Any
    process: FakeProcess
    args: list[str]
    env: dict[str, str]
    path: str | None
    childFDs: dict[int, Any]

    def end(self, reason: Exception) -> None:
        """
        The process ends with C{reason}.
        """
        self.protocol.processEnded(Failure(reason))

    def ready(self) -> None:
        """
        The worker logs that it serves, as L{WorkerService} does.
        """
        event = {"log_format": "worker ready", "log_level": None, READY_FIELD: True}
        self.protocol.outReceived(json.dumps(event).encode() + b"\n")


class ProcessReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose C{spawnProcess} records the call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Any = (),
        env: Any = None,
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: Any = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        processProtocol.makeConnection(process)
        self.spawned.append(Spawned(processProtocol, process, list(args), env, path, childFDs))
        return process


class FakePorts:
    """
    Stands for L{SharedPorts}: two listening sockets and a UDP one.
    """

    def sockets(self, index: int) -> WorkerSockets:
        return WorkerSockets(
            index, ((7, socket.AF_INET), (8, socket.AF_UNIX)), (9, socket.AF_INET)
        )


class SupervisorTests(SynchronousTestCase):
    """
    L{Supervisor} with a L{ProcessReactor}.
    """

    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.gaveUp: list[bool] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def supervisor(self, count: int = 2, **kwargs: Any) -> Supervisor:
        s = Supervisor(
            self.reactor,
            count,
            ["--listen", "tcp:0", "--workers", "1"],
            FakePorts(),  # type: ignore[arg-type]
            stopTimeout=12.0,
            cwd="/some/dir",
            environ={"PATH": "/bin"},
            giveUp=lambda: self.gaveUp.append(True),
            executable="/usr/bin/python3",
            **kwargs,
        )
        s.startService()
        return s

    def logged(self, text: str) -> list[dict[str, Any]]:
        """
        The events logged whose format contains C{text}.
        """
        return [e for e in self.events if text in (e.get("log_format") or "")]

    def test_spawnsEveryWorker(self) -> None:
        """
        Each worker is the same C{twistd frameserver} command, run in the
        main process's directory, with its sockets at the same descriptor
        numbers and described in L{WORKER_ENV}; its standard input is a pipe
        (watched for the main process's end) and its output is read.
        """
        self.supervisor()
        self.assertEqual(len(self.reactor.spawned), 2)
        for index, spawned in enumerate(self.reactor.spawned, 1):
            self.assertEqual(spawned.args[0], "/usr/bin/python3")
            self.assertIn("--logger=twisted_frames.jsonlog.observer", spawned.args)
            self.assertEqual(
                spawned.args[spawned.args.index("frameserver") :],
                ["frameserver", "--listen", "tcp:0", "--workers", "1"],
            )
            self.assertEqual(spawned.path, "/some/dir")
            self.assertEqual(spawned.childFDs, {0: "w", 1: "r", 2: "r", 7: 7, 8: 8, 9: 9})
            self.assertEqual(spawned.env["PATH"], "/bin")
            self.assertNotIn("PROMETHEUS_MULTIPROC_DIR", spawned.env)
            given = WorkerSockets.fromEnviron(spawned.env)
            self.assertEqual(given, FakePorts().sockets(index))

    def test_restartedAtOnceAfterRunningAWhile(self) -> None:
        """
        A worker that ends after running for L{Supervisor.stableAfter}
        seconds is logged and started again at once.
        """
        self.supervisor()
        first = self.reactor.spawned[0]
        first.ready()
        self.reactor.advance(60)
        first.end(ProcessTerminated(signal=9))
        [warning] = self.logged("restarting it in")
        self.assertEqual((warning["worker"], warning["pid"], warning["delay"]), (1, 1000, 0.0))
        self.assertEqual(warning["how"], "was killed by signal 9")
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(WorkerSockets.fromEnviron(self.reactor.spawned[2].env).index, 1)

    def test_backoff(self) -> None:
        """
        A worker that keeps dying soon after it starts waits 0.5 s, then
        1 s, 2 s, ... up to L{Supervisor.maxBackoff} before each restart; as
        long as it once became ready, it is not given up on.
        """
        supervisor = self.supervisor(count=1)
        self.reactor.spawned[0].ready()
        delays = []
        for _ in range(9):
            self.reactor.spawned[-1].end(ProcessDone(0))
            spawned = len(self.reactor.spawned)
            delay = self.logged("restarting it in")[-1]["delay"]
            delays.append(delay)
            self.reactor.advance(delay - 0.01)
            self.assertEqual(len(self.reactor.spawned), spawned)
            self.reactor.advance(0.01)
            self.assertEqual(len(self.reactor.spawned), spawned + 1)
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
        self.assertEqual(self.gaveUp, [])
        self.assertFalse(self.reactor.hasStopped)
        self.assertTrue(supervisor.running)

    def test_givesUpOnAWorkerThatNeverStarts(self) -> None:
        """
        A worker that dies L{Supervisor.giveUpAfter} times in a row without
        ever becoming ready stops the server (and its exit status is made
        1).
        """
        self.supervisor(count=1)
        for _ in range(4):
            self.reactor.spawned[-1].end(ProcessTerminated(exitCode=1))
            self.reactor.advance(60)
        self.assertEqual((len(self.reactor.spawned), self.gaveUp), (5, []))
        self.reactor.spawned[-1].end(ProcessTerminated(exitCode=1))
        self.assertEqual(self.gaveUp, [True])
        self.assertTrue(self.reactor.hasStopped)
        [critical] = self.logged("it never started")
        self.assertEqual(critical["how"], "exited with status 1")
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 5)

    def test_stopIsGraceful(self) -> None:
        """
        Stopping sends C{SIGTERM} to every worker, cancels a pending
        restart, restarts nothing, and fires once every worker has exited;
        a worker ending by that C{SIGTERM} (as twistd ends once drained) is
        logged as stopped, not as killed.
        """
        supervisor = self.supervisor(count=3)
        self.reactor.spawned[2].end(ProcessDone(0))
        d = supervisor.stopService()
        first, second = self.reactor.spawned[:2]
        self.assertEqual((first.process.signals, second.process.signals), (["TERM"], ["TERM"]))
        first.end(ProcessTerminated(signal=15))
        self.assertNoResult(d)
        second.end(ProcessTerminated(signal=15))
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(first.process.signals, ["TERM"])
        stopped = [e for e in self.logged("{how}") if e.get("how") == "stopped"]
        self.assertEqual(
            [(e["worker"], e["log_level"]) for e in stopped],
            [(1, LogLevel.info), (2, LogLevel.info)],
        )
        self.assertEqual(self.logged("while stopping"), [])

    def test_killedAfterTheStopTimeout(self) -> None:
        """
        A worker still running C{stopTimeout} seconds after C{SIGTERM} is
        killed.
        """
        supervisor = self.supervisor(count=1)
        d = supervisor.stopService()
        spawned = self.reactor.spawned[0]
        self.reactor.advance(11.9)
        self.assertEqual(spawned.process.signals, ["TERM"])
        self.reactor.advance(0.2)
        self.assertEqual(spawned.process.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        spawned.end(ProcessTerminated(signal=9))
        self.successResultOf(d)
        [warning] = self.logged("while stopping")
        self.assertEqual(
            (warning["how"], warning["log_level"]), ("was killed by signal 9", LogLevel.warn)
        )

    def test_eventsLoggedAgain(self) -> None:
        """
        A worker's JSON log events, however its output is split, are logged
        again in the main process with C{log_system} C{worker N} and a
        C{worker} field; a line that is not JSON is logged as text.
        """
        self.supervisor(count=1)
        protocol = self.reactor.spawned[0].protocol
        event = {"log_format": "connection from {peer}", "peer": "192.0.2.1:5", "log_level": None}
        # As a worker writes it: flattened, the spec not applied.
        timed = {"log_format": "took {s:.1f}s", "s": 0.123456}
        timed["log_flattened"] = {"s:.1f": "0.123456", "s:.1f!s": "0.123456"}
        data = json.dumps(event).encode() + b"\nnot json\n" + json.dumps(timed).encode() + b"\n"
        for i in range(len(data)):
            protocol.outReceived(data[i : i + 1])
        protocol.errReceived(b"Traceback (most recent call last):\n")
        [again] = self.logged("connection from")
        self.assertEqual((again["log_system"], again["worker"]), ("worker 1", 1))
        self.assertEqual(again["peer"], "192.0.2.1:5")
        [took] = self.logged("took")
        self.assertEqual(formatEvent(took), "took 0.1s")
        lines = [e["line"] for e in self.logged("worker {worker}: {line}")]
        self.assertEqual(lines, ["not json", "Traceback (most recent call last):"])

    def test_metricsDirectory(self) -> None:
        """
        With C{metrics=True}, every worker gets the same fresh
        C{PROMETHEUS_MULTIPROC_DIR}; the live gauges of a worker that exits
        are removed from it; the directory is removed once every worker has
        stopped.
        """
        supervisor = self.supervisor(metrics=True)
        path = supervisor.metricsDir
        assert path is not None
        self.assertEqual(os.listdir(path), [])
        dirs = {s.env["PROMETHEUS_MULTIPROC_DIR"] for s in self.reactor.spawned}
        self.assertEqual(dirs, {path})
        first = self.reactor.spawned[0]
        live = os.path.join(path, f"gauge_livesum_{first.process.pid}.db")
        counter = os.path.join(path, f"counter_{first.process.pid}.db")
        for name in (live, counter):
            open(name, "wb").close()
        first.end(ProcessTerminated(signal=9))
        self.assertEqual(os.listdir(path), [os.path.basename(counter)])
        d = supervisor.stopService()
        self.reactor.spawned[1].end(ProcessDone(0))
        self.successResultOf(d)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertFalse(os.path.exists(path))
        self.assertIsNone(supervisor.metricsDir)

    def test_metricsServedByTheMainProcess(self) -> None:
        """
        The main process's metrics endpoint: C{/healthz} is 200 only while a
        worker is ready and the supervisor is not stopping; from the stop on
        it is 503, and the endpoint stops listening only once every worker
        has exited.  C{/metrics} sums the files of the supervisor's
        directory, and is empty while there is none.
        """
        supervisor = self.supervisor(metrics=True)
        web = monitoring.supervisorMonitoring(
            {"metrics": "tcp:0:interface=127.0.0.1"}, self.reactor, supervisor
        )
        assert isinstance(web, MetricsWebService)
        web.privilegedStartService()
        web.startService()
        self.assertEqual([port[1] for port in self.reactor.tcpServers], [web.site])
        self.assertFalse(web.healthy())
        self.reactor.spawned[0].ready()
        self.assertTrue(web.healthy())
        first, second = self.reactor.spawned
        assert supervisor.metricsDir is not None
        for process, count in ((first.process, 3.0), (second.process, 4.0)):
            writeCounter(supervisor.metricsDir, process.pid, count)
        self.assertEqual(web.registry.get_sample_value("frames_requests_total", PING_OK), 7.0)

        stopped = supervisor.stopService()
        webStopped = web.stopService()
        self.assertFalse(web.healthy())
        first.end(ProcessTerminated(signal=15))
        self.assertNoResult(webStopped)
        self.assertIsNotNone(web.port)
        second.end(ProcessTerminated(signal=15))
        self.successResultOf(stopped)
        self.successResultOf(webStopped)
        self.assertIsNone(web.port)
        self.assertIsNone(web.registry.get_sample_value("frames_requests_total", PING_OK))
        self.successResultOf(supervisor.whenStopped())

    def test_describeExit(self) -> None:
        """
        L{describeExit} names the exit status or the signal.
        """
        self.assertEqual(describeExit(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(
            describeExit(Failure(ProcessTerminated(signal=15))), "was killed by signal 15"
        )


class WorkerServiceTests(SynchronousTestCase):
    """
    L{WorkerService}, the last service of a worker.
    """

    def test_readyAndParentWatch(self) -> None:
        """
        Once started, the worker logs that it is ready (the event the main
        process waits for); when its standard input, the pipe from the main
        process, reaches its end (the main process is gone), it stops the
        reactor.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor = MemoryReactorClock()
        reader, writer = os.pipe()
        self.addCleanup(os.close, reader)
        worker = WorkerService(reactor, 3, stdin=reader)
        worker.startService()
        [ready] = [e for e in events if e.get(READY_FIELD)]
        self.assertEqual((ready["worker"], ready["pid"]), (3, os.getpid()))
        watch = worker.watch
        assert watch is not None
        self.assertIn(watch, reactor.readers)
        self.assertIsNone(watch.doRead())
        os.close(writer)
        why = watch.doRead()
        self.assertIs(why, main.CONNECTION_DONE)
        self.assertFalse(reactor.hasStopped)
        watch.connectionLost(Failure(why))
        self.assertTrue(reactor.hasStopped)
        worker.stopService()
        self.assertNotIn(watch, reactor.readers)


class WorkerSocketsTests(SynchronousTestCase):
    """
    L{WorkerSockets}, passed in L{WORKER_ENV}.
    """

    def test_roundTrip(self) -> None:
        """
        L{WorkerSockets.toJSON} is read back by L{WorkerSockets.fromEnviron}.
        """
        sockets = WorkerSockets(3, ((5, socket.AF_INET6),), None)
        self.assertEqual(WorkerSockets.fromEnviron({WORKER_ENV: sockets.toJSON()}), sockets)
        self.assertIsNone(WorkerSockets.fromEnviron({}))

    def test_bad(self) -> None:
        """
        A value that is not valid stops start-up with one line.
        """
        for value in ("", "{}", '{"index": 1, "listen": [[1]], "udp": null}'):
            with self.assertRaises(SystemExit) as e:
                WorkerSockets.fromEnviron({WORKER_ENV: value})
            self.assertIn(f"bad {WORKER_ENV}=", str(e.exception))


class MakeServiceTests(SynchronousTestCase):
    """
    L{tap.makeService} with C{--workers}.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)

    def options(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--root", self.root, "--udp", "0", *args])
        return options

    def test_mainProcess(self) -> None:
        """
        With C{--workers 2}, the main process supervises two workers that
        run with its own options, C{--workers 1} and its root made
        absolute; the default is one process, the server itself.
        """
        options = self.options("--workers", "2", "--max-per-source", "4")
        service = tap.makeService(options, MemoryReactorClock(), environ={})
        self.assertIsInstance(service, tap.WorkersService)
        assert isinstance(service, tap.WorkersService)
        supervisor = service.supervisor
        self.assertEqual(supervisor.count, 2)
        self.assertEqual(
            supervisor.argv,
            ["--root", self.root, "--udp", "0", "--workers", "2", "--max-per-source", "4"]
            + ["--workers", "1", "--root", os.path.abspath(self.root)],
        )
        self.assertEqual(supervisor.stopTimeout, 10 + 1 + 5)
        single = tap.makeService(self.options(), MemoryReactorClock(), environ={})
        self.assertIsInstance(single, tap.FrameServerService)

    def test_mainProcessMetrics(self) -> None:
        """
        With C{--workers 2 --metrics ENDPOINT}, the workers run with
        C{--metrics worker} (they count, and do not listen on the endpoint)
        and the main process serves the endpoint, its first service, so the
        last stopped.
        """
        options = self.options("--workers", "2", "--metrics", "tcp:0:interface=127.0.0.1")
        service = tap.makeService(options, MemoryReactorClock(), environ={})
        assert isinstance(service, tap.WorkersService)
        self.assertEqual(service.supervisor.argv[-2:], ["--metrics", "worker"])
        self.assertTrue(service.supervisor.metrics)
        self.assertIsInstance(service.web, MetricsWebService)
        self.assertIs(list(service)[0], service.web)
        plain = tap.makeService(self.options("--workers", "2"), MemoryReactorClock(), environ={})
        assert isinstance(plain, tap.WorkersService)
        self.assertIsNone(plain.web)
        self.assertNotIn("--metrics", plain.supervisor.argv)

    def test_mainProcessMetricsInsecure(self) -> None:
        """
        The main process checks C{--metrics} as a single server does: a
        non-loopback endpoint needs C{--metrics-insecure}.
        """
        with self.assertRaises(SystemExit) as e:
            self.options("--workers", "2", "--metrics", "tcp:0")
        self.assertIn("refusing to serve metrics on tcp:0", str(e.exception))

    def test_workersBounded(self) -> None:
        """
        C{--workers} is a whole number from 1 to 256.
        """
        for bad in ("0", "257", "two"):
            with self.assertRaises(SystemExit) as e:
                self.options("--workers", bad)
            self.assertIn("--workers", str(e.exception))

    def test_noSSLEndpoint(self) -> None:
        """
        An C{ssl:} listen cannot be shared by workers: one line says to use
        C{--tls-cert}.
        """
        with self.assertRaises(SystemExit) as e:
            self.options("--workers", "2", "--listen", "ssl:0:privateKey=k.pem")
        self.assertIn("--workers cannot share --listen ssl:0", str(e.exception))
        self.assertIn("--tls-cert", str(e.exception))

    def test_workerAdopts(self) -> None:
        """
        In a worker, every C{--listen} adopts the descriptor it was given,
        behind the PROXY header reader for a C{haproxy:} one, and closes
        the inherited copy; the worker's own service comes last.
        """
        reactor = MemoryReactorClock()
        listening = [socket.socket(), socket.socket()]
        for s in listening:
            self.addCleanup(s.close)
        fds = [os.dup(s.fileno()) for s in listening]
        sockets = WorkerSockets(2, tuple((fd, socket.AF_INET) for fd in fds))
        options = self.options(
            "--workers",
            "1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
        )
        service = tap.makeService(options, reactor, environ={WORKER_ENV: sockets.toJSON()})
        stdin, stdinWriter = os.pipe()
        self.addCleanup(os.close, stdinWriter)
        worker = list(service)[-1]
        self.assertIsInstance(worker, WorkerService)
        assert isinstance(worker, WorkerService)
        worker.stdin = stdin
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            [(fd, family) for fd, family, _ in reactor.adoptedPorts], list(sockets.listen)
        )
        plain, proxied = (factory for _, _, factory in reactor.adoptedPorts)
        self.assertIsInstance(proxied, ProxiedFactory)
        self.assertIs(proxied.wrappedFactory, plain)
        self.assertEqual(reactor.tcpServers, [])
        # The numbers may have been reused since (the file service opens
        # its root): they no longer name the sockets.
        for fd, s in zip(fds, listening, strict=True):
            try:
                now = os.fstat(fd).st_ino
            except OSError:
                continue
            self.assertNotEqual(now, os.fstat(s.fileno()).st_ino)
