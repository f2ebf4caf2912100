"""
Tests for L{twisted_frames.metrics} and L{twisted_frames.monitoring}: every
metric family through the hooks of the server and its services (in memory,
with fakes), the C{--metrics} options, C{/healthz}, and the multiprocess
mode (two real processes' counters summed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport, MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tests.commands.test_commands import CommandServiceMixin
from tests.inmemory import makeServer
from tests.serverprocess import childEnv
from twisted_frames import monitoring, tap, wire
from twisted_frames.auth.client import login
from twisted_frames.auth.keys import newSecret
from twisted_frames.files.service import FileService
from twisted_frames.files.store import synchronousRunner
from twisted_frames.metrics import (
    EXIT_CLASSES,
    FAMILIES,
    FLUSH_INTERVAL,
    REFUSALS,
    HealthResource,
    Metrics,
    MetricsTimer,
    MetricsWebService,
    exitClass,
    multiprocessRegistry,
    prepareMultiprocess,
    workerExited,
)
from twisted_frames.policy import ConnectionLimits
from twisted_frames.server import FramesServerFactory, Request, Service, operation
from twisted_frames.testing import connectedPair
from twisted_frames.udp import EchoProtocol


class WaitingService(Service):
    """
    An op that never answers (until its connection goes).
    """

    @operation("wait")
    def opWait(self, request: Request) -> defer.Deferred[None]:
        return defer.Deferred()


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """
    @return: the sample C{name} with C{labels} (0 if there is none yet),
        once what was counted has been flushed.
    """
    metrics.flush()
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def meteredFactory(**kwargs: Any) -> tuple[Any, Metrics]:
    """
    @return: a login-requiring test server (see L{makeServer}) counting
        into a new L{Metrics}, and the metrics.
    """
    server = makeServer(**kwargs)
    metrics = Metrics(server.factory.operations)
    server.factory.metrics = metrics
    return server, metrics


class FamilyTests(SynchronousTestCase):
    """
    The families and their label values.
    """

    def test_everyFamilyExported(self) -> None:
        """
        Every family of L{FAMILIES} is in the registry, with the kind the
        reference says, and every labelled one has its series from the
        start (at 0), so a rate over it needs no first increment.
        """
        metrics = Metrics(["ping"])
        exported = {m.name: m for m in metrics.registry.collect()}
        for family in FAMILIES:
            self.assertIn(family.name, exported)
            self.assertEqual(exported[family.name].type, family.kind)
        self.assertEqual(value(metrics, "frames_requests_total", op="ping", outcome="ok"), 0)
        self.assertIsNotNone(
            metrics.registry.get_sample_value(
                "frames_refusals_total", {"kind": "cap", "reason": "max_per_source"}
            )
        )

    def test_unknownOpBounded(self) -> None:
        """
        An op the server does not have counts as C{unknown}, and an outcome
        that is no error code as C{other}: a client cannot make new series.
        """
        metrics = Metrics(["ping"])
        for n in range(50):
            metrics.requestFinished(f"op{n}", f"weird{n}", 0.001, 0, 0)
        self.assertEqual(
            value(metrics, "frames_requests_total", op="unknown", outcome="other"), 50
        )
        ops = {
            s.labels["op"]
            for m in metrics.registry.collect()
            if m.name == "frames_requests"
            for s in m.samples
        }
        self.assertEqual(ops, {"ping", "unknown"})

    def test_requestFinished(self) -> None:
        """
        A finished request counts by op and outcome, its duration goes in
        the op's histogram, its bytes in and out in the op's counters.
        """
        metrics = Metrics(["get"])
        metrics.requestFinished("get", "ok", 0.002, 10, 1000)
        metrics.requestFinished("get", "not_found", 0.0002, 0, 0)
        self.assertEqual(value(metrics, "frames_requests_total", op="get", outcome="ok"), 1)
        self.assertEqual(value(metrics, "frames_requests_total", op="get", outcome="not_found"), 1)
        self.assertEqual(value(metrics, "frames_request_duration_seconds_count", op="get"), 2)
        self.assertEqual(
            value(metrics, "frames_request_duration_seconds_bucket", op="get", le="0.00025"), 1
        )
        self.assertEqual(value(metrics, "frames_received_bytes_total", op="get"), 10)
        self.assertEqual(value(metrics, "frames_sent_bytes_total", op="get"), 1000)

    def test_refusalsBounded(self) -> None:
        """
        A reason outside L{REFUSALS} counts as C{other}.
        """
        metrics = Metrics()
        metrics.refused("max_connections")
        metrics.refused("made up")
        self.assertEqual(
            value(metrics, "frames_refusals_total", kind="cap", reason="max_connections"), 1
        )
        self.assertEqual(value(metrics, "frames_refusals_total", kind="other", reason="other"), 1)

    def test_exitClasses(self) -> None:
        """
        A timeout or cancel (which end the process with a signal) counts as
        such; then a signal; then the exit status, 0 or not.
        """
        self.assertEqual(exitClass(None, 15, True, False), "timeout")
        self.assertEqual(exitClass(None, 15, False, True), "cancelled")
        self.assertEqual(exitClass(None, 9, False, False), "signal")
        self.assertEqual(exitClass(0, None, False, False), "ok")
        self.assertEqual(exitClass(3, None, False, False), "nonzero")
        metrics = Metrics()
        metrics.commandStarted()
        metrics.commandStarted()
        self.assertEqual(value(metrics, "frames_commands_running"), 2)
        metrics.commandEnded(3, None, False, False)
        self.assertEqual(value(metrics, "frames_commands_running"), 1)
        self.assertEqual(value(metrics, "frames_command_exits_total", **{"class": "nonzero"}), 1)
        self.assertEqual(len(EXIT_CLASSES), 5)

    def test_processFigures(self) -> None:
        """
        L{Metrics.sampleProcess} records this process's RSS and open
        descriptors from C{/proc}; without C{/proc} it records nothing.
        """
        metrics = Metrics()
        metrics.sampleProcess("/nonexistent")
        self.assertEqual(value(metrics, "frames_process_open_fds"), 0)
        if not os.path.exists("/proc/self/statm"):
            raise self.skipTest("no /proc here")
        metrics.sampleProcess()
        self.assertGreater(value(metrics, "frames_process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(value(metrics, "frames_process_open_fds"), 2)


class ServerHookTests(SynchronousTestCase):
    """
    The server's hooks: connections, requests, refusals, logins.
    """

    def test_requests(self) -> None:
        """
        A ping counts under C{ping} with its bytes; an unknown op under
        C{unknown}; connections open and closed are counted.
        """
        server, metrics = meteredFactory(authRequired=False)
        conn = connectedPair(server.factory)
        self.assertEqual(value(metrics, "frames_connections_open"), 1)
        self.successResultOf(conn.run(conn.frames.ping(b"hello")))
        self.failureResultOf(conn.run(conn.client.request("no-such-op", {})))
        self.assertEqual(value(metrics, "frames_requests_total", op="ping", outcome="ok"), 1)
        self.assertEqual(value(metrics, "frames_received_bytes_total", op="ping"), 5)
        self.assertEqual(value(metrics, "frames_sent_bytes_total", op="ping"), 5)
        self.assertEqual(
            value(metrics, "frames_requests_total", op="unknown", outcome="unknown_op"), 1
        )
        conn.clientTransport.loseConnection()
        conn.pump.flush()
        self.assertEqual(value(metrics, "frames_connections_open"), 0)
        self.assertEqual(value(metrics, "frames_connections_total", outcome="closed"), 1)

    def test_capRefusal(self) -> None:
        """
        A connection over a cap is counted as a refusal for that cap, and
        as a connection that ended as C{cap}.
        """
        server, metrics = meteredFactory(
            limits=ConnectionLimits(
                maxConnections=None,
                maxPerSource=1,
                maxUnauthenticated=None,
                maxUnauthenticatedPerSource=None,
            )
        )
        connectedPair(server.factory, peer="192.0.2.1")
        refused = connectedPair(server.factory, peer="192.0.2.1", greet=False)
        refused.pump.flush()
        self.failureResultOf(refused.client.greeted, wire.FramesError)
        self.assertTrue(refused.client.isClosed)
        self.assertEqual(
            value(metrics, "frames_refusals_total", kind="cap", reason="max_per_source"), 1
        )
        self.assertEqual(value(metrics, "frames_connections_total", outcome="cap"), 1)
        self.assertEqual(value(metrics, "frames_connections_open"), 1)

    def test_deadlines(self) -> None:
        """
        The login deadline and the idle timeout are counted by name.
        """
        server, metrics = meteredFactory(loginTimeout=5)
        server.factory.idleTimeout = 30
        first = connectedPair(server.factory)
        server.clock.advance(5)
        first.pump.flush()
        self.assertTrue(first.client.isClosed)
        self.assertEqual(
            value(metrics, "frames_refusals_total", kind="deadline", reason="login_timeout"), 1
        )
        server.factory.authRequired = False
        second = connectedPair(server.factory)
        server.clock.advance(30)
        second.pump.flush()
        self.assertTrue(second.client.isClosed)
        self.assertEqual(
            value(metrics, "frames_refusals_total", kind="deadline", reason="idle_timeout"), 1
        )
        self.assertEqual(value(metrics, "frames_connections_total", outcome="deadline"), 2)

    def test_violation(self) -> None:
        """
        A protocol violation is counted under its error code, a frame
        deadline as C{frame_timeout}, too many requests in flight as
        C{max_in_flight}.
        """
        clock = Clock()
        factory = FramesServerFactory([WaitingService()], clock=clock)
        metrics = factory.metrics = Metrics(factory.operations)
        factory.frameTimeout = 10
        factory.maxInFlight = 1
        bad = connectedPair(factory)
        bad.clientTransport.write(wire.encodeFrame(b"[1]") + wire.encodeFrame(b""))
        bad.pump.flush()
        slow = connectedPair(factory)
        slow.clientTransport.write(b"\x00\x00\x00\x10{")
        slow.pump.flush()
        clock.advance(10)
        slow.pump.flush()
        busy = connectedPair(factory)
        waiting = busy.client.request("wait", {})
        second = busy.client.request("wait", {})
        busy.pump.flush()
        self.failureResultOf(waiting)
        self.failureResultOf(second)
        for reason in (wire.ErrorCode.BAD_HEADER, "frame_timeout", "max_in_flight"):
            kind = REFUSALS[reason]
            self.assertEqual(
                value(metrics, "frames_refusals_total", kind=kind, reason=reason), 1, reason
            )

    def test_writeTimeout(self) -> None:
        """
        A peer that reads nothing for the write deadline is counted as
        C{write_timeout}.
        """
        server, metrics = meteredFactory(authRequired=False)
        protocol = server.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.writeTimedOut()
        self.assertEqual(
            value(metrics, "frames_refusals_total", kind="deadline", reason="write_timeout"), 1
        )

    def test_logins(self) -> None:
        """
        Logins are counted as C{ok} or C{failed}; the last failure allowed
        closes the connection and counts as C{login_attempts}.
        """
        server, metrics = meteredFactory(maxAttempts=1)
        good = connectedPair(server.factory)
        self.successResultOf(good.run(login(good.frames, server.alice)))
        self.assertEqual(value(metrics, "frames_logins_total", result="ok"), 1)
        bad = connectedPair(server.factory)
        d = bad.run(login(bad.frames, newSecret("alice")))
        server.clock.advance(60)
        bad.pump.flush()
        self.failureResultOf(d)
        self.assertEqual(value(metrics, "frames_logins_total", result="failed"), 1)
        self.assertEqual(
            value(metrics, "frames_refusals_total", kind="auth", reason="login_attempts"), 1
        )

    def test_offByDefault(self) -> None:
        """
        A factory counts nothing unless given metrics.
        """
        self.assertIsNone(FramesServerFactory().metrics)


class CommandHookTests(CommandServiceMixin, SynchronousTestCase):
    """
    The command service's hooks, with fake processes: commands running, and
    how each ended.
    """

    def setUp(self) -> None:
        super().setUp()
        self.metrics = self.factory.metrics = Metrics(self.factory.operations)

    def exits(self, exitClass: str) -> float:
        return value(self.metrics, "frames_command_exits_total", **{"class": exitClass})

    def test_running(self) -> None:
        """
        A started command counts as running until its process ends.
        """
        self.request("run", {"argv": ["sh"]})
        self.request("run", {"argv": ["sh"]})
        self.assertEqual(value(self.metrics, "frames_commands_running"), 2)
        self.process(0).end(0)
        self.pump.flush()
        self.assertEqual(value(self.metrics, "frames_commands_running"), 1)
        self.assertEqual(self.exits("ok"), 1)

    def test_exitClasses(self) -> None:
        """
        Each way a command ends is counted under its class: exit 0, another
        status, a signal, the timeout, a cancel.
        """
        self.request("run", {"argv": ["sh"]})
        self.process().end(3)
        self.request("run", {"argv": ["sh"]})
        self.process().end(None, signal.SIGSEGV)
        self.request("run", {"argv": ["sh"]})
        self.clock.advance(self.limits.timeout)
        self.process().end(None, signal.SIGTERM)
        self.pump.flush()
        self.request("run", {"argv": ["sh"]})
        self.request("cancel", {"run": 4})
        self.process().end(None, signal.SIGTERM)
        self.pump.flush()
        self.assertEqual(
            [self.exits(c) for c in EXIT_CLASSES], [0, 1, 1, 1, 1], list(EXIT_CLASSES)
        )
        self.assertEqual(value(self.metrics, "frames_commands_running"), 0)


class ServiceHookTests(SynchronousTestCase):
    """
    The hooks of the UDP echo and the file service.
    """

    def test_udp(self) -> None:
        """
        Answered and dropped datagrams are counted, drops by reason.
        """
        metrics = Metrics()
        clock = Clock()
        echo = EchoProtocol(maxDatagram=4, rate=1, burst=1, clock=clock, metrics=metrics)
        echo.transport = FakeDatagramTransport()  # type: ignore[no-untyped-call]
        echo.datagramReceived(b"ok", ("192.0.2.1", 1))
        echo.datagramReceived(b"ok", ("192.0.2.1", 1))
        echo.datagramReceived(b"too long", ("192.0.2.2", 1))
        self.assertEqual(value(metrics, "frames_udp_answered_total"), 1)
        self.assertEqual(value(metrics, "frames_udp_dropped_total", reason="rate_limited"), 1)
        self.assertEqual(value(metrics, "frames_udp_dropped_total", reason="oversize"), 1)

    def test_partialUploads(self) -> None:
        """
        L{FileService.countPartials} finds the partial files under the root,
        at any depth, with their sizes.
        """
        root = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", root])
        os.mkdir(os.path.join(root, "sub"))
        for where, size in (("", 3), ("sub", 5)):
            with open(os.path.join(root, where, ".frames-partial-x"), "wb") as f:
                f.write(b"x" * size)
        with open(os.path.join(root, "whole"), "wb") as f:
            f.write(b"y" * 100)
        files = FileService(root, runInThread=synchronousRunner)
        self.assertEqual(self.successResultOf(files.countPartials()), (2, 8))
        metrics = Metrics()
        metrics.partialUploadsFound(2, 8)
        self.assertEqual(value(metrics, "frames_partial_uploads"), 2)
        self.assertEqual(value(metrics, "frames_partial_upload_bytes"), 8)


class OptionsTests(SynchronousTestCase):
    """
    C{--metrics} and C{--metrics-insecure}, and what C{makeService} builds.
    """

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--root", tempfile.mkdtemp(), *args])
        return options

    def test_refusesNonLoopback(self) -> None:
        """
        A metrics endpoint on all interfaces, or a public address, is
        refused with one line, as the main listener is.
        """
        for endpoint in ("tcp:9108", "tcp:9108:interface=0.0.0.0", "tcp6:9108:interface=\\:\\:"):
            with self.assertRaises(SystemExit) as e:
                self.parse("--metrics", endpoint)
            self.assertIn(f"refusing to serve metrics on {endpoint}", str(e.exception.code))
            self.assertIn("--metrics-insecure", str(e.exception.code))

    def test_insecureAllows(self) -> None:
        """
        With C{--metrics-insecure} a public endpoint is accepted; loopback
        and UNIX sockets always are.
        """
        self.assertEqual(
            self.parse("--metrics", "tcp:9108", "--metrics-insecure")["metrics"], "tcp:9108"
        )
        self.parse("--metrics", "tcp:9108:interface=127.0.0.1")
        self.parse("--metrics", "unix:/run/frames-metrics.sock")

    def test_workerNeedsDirectory(self) -> None:
        """
        C{--metrics worker} needs C{PROMETHEUS_MULTIPROC_DIR}.
        """
        saved = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "PROMETHEUS_MULTIPROC_DIR", saved)
        with self.assertRaises(SystemExit) as e:
            self.parse("--metrics", "worker")
        self.assertIn("PROMETHEUS_MULTIPROC_DIR", str(e.exception.code))

    def test_makeService(self) -> None:
        """
        With C{--metrics}, the factory counts and the web endpoint listens
        on the given address; without, neither.
        """
        reactor = MemoryReactor()
        top = tap.makeService(
            self.parse("--metrics", "tcp:9108:interface=127.0.0.1", "--udp", "0"), reactor
        )
        self.assertIsInstance(top.factory.metrics, Metrics)
        web = [s for s in top if isinstance(s, MetricsWebService)]
        self.assertEqual(len(web), 1)
        # The first child: stopped after the listening ports.
        self.assertIs(list(top)[0], web[0])
        top.privilegedStartService()
        self.assertIn((9108, "127.0.0.1"), [(p[0], p[3]) for p in reactor.tcpServers])
        off = tap.makeService(self.parse("--udp", "0"), MemoryReactor())
        self.assertIsNone(off.factory.metrics)
        self.assertFalse([s for s in off if isinstance(s, MetricsWebService)])

    def test_worker(self) -> None:
        """
        With C{--metrics worker} (and C{PROMETHEUS_MULTIPROC_DIR}) the
        server counts and exports its counts, and serves no endpoint.
        """
        saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.addCleanup(restoreEnviron, "PROMETHEUS_MULTIPROC_DIR", saved)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
        reactor = MemoryReactor()
        top = tap.makeService(self.parse("--metrics", "worker", "--udp", "0"), reactor)
        self.assertIsInstance(top.factory.metrics, Metrics)
        self.assertFalse([s for s in top if isinstance(s, MetricsWebService)])
        self.assertTrue([s for s in top if isinstance(s, MetricsTimer)])
        top.privilegedStartService()
        self.assertEqual(len(reactor.tcpServers), 1)

    def test_offImportsNothing(self) -> None:
        """
        Without C{--metrics}, building and starting a server does not
        import C{prometheus_client} or C{twisted.web}.
        """
        code = (
            "import sys, tempfile\n"
            "from twisted.internet.testing import MemoryReactor\n"
            "from twisted_frames import tap\n"
            "o = tap.Options(); o.parseOptions(['--root', tempfile.mkdtemp(), '--udp', '0'])\n"
            "tap.makeService(o, MemoryReactor()).privilegedStartService()\n"
            "loaded = [m for m in sys.modules if m.startswith(('prometheus', 'twisted.web'))]\n"
            "print(sorted(loaded))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=childEnv(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(out.stdout.strip(), "[]", out.stderr)


class TimerTests(SynchronousTestCase):
    """
    L{MetricsTimer}: the export of the counts.
    """

    def test_flushes(self) -> None:
        """
        Requests counted are exported at the next tick, not before; the
        process figures are sampled at the first tick.
        """
        metrics = Metrics(["ping"])
        clock = Clock()
        timer = MetricsTimer(metrics, clock)
        timer.startService()
        metrics.requestFinished("ping", "ok", 0.001, 1, 1)
        get = metrics.registry.get_sample_value
        ping = {"op": "ping", "outcome": "ok"}
        self.assertEqual(get("frames_requests_total", ping), 0)
        clock.advance(FLUSH_INTERVAL)
        self.assertEqual(get("frames_requests_total", ping), 1)
        if os.path.exists("/proc/self/statm"):
            self.assertGreater(get("frames_process_open_fds", {}) or 0, 0)

    def test_lastFlushAfterDrain(self) -> None:
        """
        Stopping the timer waits for the server to drain, then exports
        what the last requests added.
        """
        metrics = Metrics(["ping"])
        drained: defer.Deferred[None] = defer.Deferred()
        timer = MetricsTimer(metrics, Clock(), drained=lambda: drained)
        timer.startService()
        stopped = timer.stopService()
        metrics.requestFinished("ping", "ok", 0.001, 1, 1)
        self.assertNoResult(stopped)
        drained.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(
            metrics.registry.get_sample_value(
                "frames_requests_total", {"op": "ping", "outcome": "ok"}
            ),
            1,
        )


class HealthTests(SynchronousTestCase):
    """
    C{/healthz} and the stopping of the web endpoint.
    """

    def render(self, resource: HealthResource) -> DummyRequest:
        request = DummyRequest([b"healthz"])
        request.write(resource.render_GET(request))  # type: ignore[arg-type]
        return request

    def test_health(self) -> None:
        """
        C{/healthz} answers 200 while serving, 503 once not.
        """
        serving = [True]
        resource = HealthResource(lambda: serving[0])
        request = self.render(resource)
        self.assertEqual(
            (request.responseCode or 200, b"".join(request.written)), (200, b"serving\n")
        )
        serving[0] = False
        request = self.render(resource)
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(b"".join(request.written), b"shutting down\n")

    def test_stopWaitsForDrain(self) -> None:
        """
        Stopping the web endpoint turns it unhealthy at once, and it stops
        listening only once the server has drained.
        """
        reactor = MemoryReactor()
        from twisted.internet.endpoints import TCP4ServerEndpoint

        drained: defer.Deferred[None] = defer.Deferred()
        web = MetricsWebService(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            Metrics().registry,
            drained=lambda: drained,
        )
        web.privilegedStartService()
        web.startService()
        self.assertTrue(web.healthy())
        port = reactor.tcpServers[0]
        stopped = web.stopService()
        self.assertFalse(web.healthy())
        self.assertNoResult(stopped)
        self.assertIsNotNone(web.port)
        drained.callback(None)
        self.successResultOf(stopped)
        self.assertIsNone(web.port)
        self.assertEqual(port[0], 0)

    def test_factoryShutdownUnhealthy(self) -> None:
        """
        The web endpoint of a server built by C{makeService} says 503 once
        the factory shuts down.
        """
        options = tap.Options()
        options.parseOptions(
            ["--root", tempfile.mkdtemp(), "--udp", "0", "--metrics", "tcp:0:interface=127.0.0.1"]
        )
        factory = FramesServerFactory(clock=Clock())
        self.assertEqual(monitoring.monitoringServices(options, MemoryReactor(), factory), [])
        monitoring.buildMetrics(options, MemoryReactor())
        web, timer = monitoring.monitoringServices(options, MemoryReactor(), factory)
        assert isinstance(web, MetricsWebService)
        self.assertIsInstance(timer, MetricsTimer)
        self.assertTrue(web.healthy())
        factory.shutDown()
        self.assertFalse(web.healthy())


#: A worker of the multiprocess test: counts requests, opens a connection,
#: says its pid and exits.
WORKER = """
import sys
from twisted_frames.metrics import Metrics
m = Metrics(["ping"])
for _ in range(int(sys.argv[1])):
    m.requestFinished("ping", "ok", 0.001, 3, 3)
m.flush()
m.connectionOpened()
print("done")
"""


def restoreEnviron(name: str, saved: str | None) -> None:
    """
    Put back environment variable C{name} as it was (C{None}: unset).
    """
    if saved is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = saved


class MultiprocessTests(SynchronousTestCase):
    """
    The contract of the module docstring, with two real processes.
    """

    def test_twoWorkersSummed(self) -> None:
        """
        Two worker processes writing into one multiprocess directory are
        summed by L{multiprocessRegistry}; L{workerExited} drops a dead
        worker's open connections but keeps its counts.
        """
        path = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", path])
        # A file left by an earlier run is removed; the variable is set for
        # the workers started next.
        with open(os.path.join(path, "counter_1.db"), "wb") as f:
            f.write(b"stale")
        saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.addCleanup(restoreEnviron, "PROMETHEUS_MULTIPROC_DIR", saved)
        prepareMultiprocess(path)
        self.assertEqual(os.listdir(path), [])
        self.assertEqual(os.environ["PROMETHEUS_MULTIPROC_DIR"], path)
        env = childEnv()
        pids = []
        for n in (3, 4):
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(n)], env=env, stdout=subprocess.PIPE, text=True
            )
            out, _ = worker.communicate(timeout=60)
            self.assertEqual(out.strip(), "done")
            pids.append(worker.pid)
        registry = multiprocessRegistry(path)
        ping = {"op": "ping", "outcome": "ok"}
        self.assertEqual(registry.get_sample_value("frames_requests_total", ping), 7)
        self.assertEqual(
            registry.get_sample_value("frames_received_bytes_total", {"op": "ping"}), 21
        )
        self.assertEqual(
            registry.get_sample_value("frames_request_duration_seconds_count", {"op": "ping"}), 7
        )
        self.assertEqual(registry.get_sample_value("frames_connections_open", {}), 2)
        workerExited(pids[0], path)
        registry = multiprocessRegistry(path)
        self.assertEqual(registry.get_sample_value("frames_connections_open", {}), 1)
        self.assertEqual(registry.get_sample_value("frames_requests_total", ping), 7)


class ReferenceTests(SynchronousTestCase):
    """
    The metrics reference page is generated from L{FAMILIES}.
    """

    def test_everyFamilyListed(self) -> None:
        """
        The generated table has one row per family, under its exported
        name (counters with C{_total}), with its multiprocess mode.
        """
        try:
            import sphinx  # noqa: F401
        except ImportError:
            raise self.skipTest("sphinx (the docs extra) is not installed") from None
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "docs", "_ext"))
        self.addCleanup(sys.path.pop, 0)
        import frames_reference

        table = frames_reference.frameserverMetrics()
        rows = table.splitlines()[2:]
        self.assertEqual(len(rows), len(FAMILIES))
        self.assertIn("`frames_requests_total`", table)
        self.assertIn("`frames_request_duration_seconds_bucket`", table)
        self.assertIn("| `frames_connections_open` | gauge |  | Connections open now\\. |", table)
        self.assertIn("gauge: `livesum`", table)
