# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics of C{twistd frameserver}, and the web endpoint serving
them (C{--metrics ENDPOINT}: C{/metrics} and C{/healthz}).

This module imports C{prometheus_client}; nothing else of the server does.
With C{--metrics} off it is never imported (L{twisted_frames.monitoring}
imports it only when the option is given), and every hook in the server is
one attribute test (C{if metrics is not None}), so the server runs as it
did without metrics.  With metrics on, the per-request hook adds to plain
numbers, which L{MetricsTimer} exports every L{FLUSH_INTERVAL} seconds and
once more when the server stops (after its connections have closed).

The families are made by L{Metrics}; L{FAMILIES} lists their names, kinds,
labels and help (the reference page is generated from it).  Every label
value comes from a fixed set: op names from the server's registry of ops
(anything else counts as C{unknown}), outcomes from L{ErrorCode} (anything
else is C{other}), refusal reasons from L{REFUSALS}, login results from
L{LOGIN_RESULTS}, exit classes from L{EXIT_CLASSES}, UDP drop reasons from
L{UDP_DROPS}.  Client input never becomes a label value.

Several processes (the contract for a supervisor running workers)
=================================================================

prometheus_client's multiprocess mode aggregates the metrics of several
processes through files in one directory.  A supervisor that runs N worker
processes, each a whole server, does exactly this:

  1. Before starting any worker, call L{prepareMultiprocess}C{(path)} with
     a directory of its own (an empty one, private to this server: e.g. a
     fresh C{tempfile.mkdtemp()}, or C{$RUNTIME_DIRECTORY/metrics}).  It
     empties the directory of C{*.db} files left by an earlier run and sets
     C{PROMETHEUS_MULTIPROC_DIR} in C{os.environ}, so that every worker
     started afterwards inherits it.  The variable must be set in a worker
     B{before} C{prometheus_client} is first imported there (the library
     chooses its storage at import); a worker that is a fresh
     C{spawnProcess} of C{twistd} inherits it from the environment, which is
     enough.  Pass the variable explicitly if the supervisor builds the
     workers' environment itself.
  2. Start each worker with C{--metrics worker} instead of the endpoint
     (workers must not serve C{/metrics} themselves): the worker counts as
     with an endpoint, and its values go to the directory (prometheus_client
     writes them there whenever C{PROMETHEUS_MULTIPROC_DIR} is set); it
     listens on nothing for metrics.  C{--metrics worker} without the
     variable is a usage error.  A worker stopped by C{SIGTERM} exports its
     last counts before it exits; one killed outright loses at most the
     last L{FLUSH_INTERVAL} seconds of request counts.
  3. In the supervisor, serve C{/metrics} and C{/healthz} with
     L{MetricsWebService}C{(endpoint, multiprocessRegistry(path), healthy,
     drained)}, an C{IService} to start and stop with the supervisor
     (C{endpoint} from C{endpoints.serverFromString(reactor, config["metrics"])}):
     L{multiprocessRegistry} is a C{CollectorRegistry} holding only a
     C{MultiProcessCollector} over the directory, which sums counters and
     histograms over every process, live or dead (so a restarted worker
     does not make a counter go down), and combines gauges by their mode.
     The supervisor must not create L{Metrics} itself (its own values would
     be one more process in the sums); C{healthy} is its own "not shutting
     down" test, and C{drained} returns a Deferred firing once its workers
     have exited (the endpoint, answering 503, stays up until then).
  4. When a worker exits (whatever the reason), call
     L{workerExited}C{(pid, path)}: it calls C{mark_process_dead}, which
     removes the worker's files of live gauges (C{livesum}, C{liveall},
     C{livemostrecent}: open connections, running commands, process
     figures), so that a dead worker's connections stop counting as open.
     Counters and histograms are kept.

C{twistd frameserver --workers N --metrics ENDPOINT} is such a supervisor
(L{twisted_frames.workers.Supervisor} does steps 1, 2 and 4;
L{twisted_frames.monitoring.supervisorMonitoring} step 3, with
L{multiprocessRegistry} given a callable, since the directory exists only
while the workers run).  Its main process counts nothing and has no series
of its own: the process figures are the live workers' only.

Gauge modes chosen here: C{frames_connections_open} and
C{frames_commands_running} are C{livesum} (the server-wide figure is the
sum over live workers); C{frames_process_resident_memory_bytes} and
C{frames_process_open_fds} are C{liveall} (one series per live worker, with
a C{pid} label); C{frames_partial_uploads} and
C{frames_partial_upload_bytes} are C{livemostrecent} (workers sharing a
root all count the same partial files: the latest count is the answer, not
their sum).  In one process (no C{PROMETHEUS_MULTIPROC_DIR}) the modes are
ignored and every family is exported by the process itself.
"""

from __future__ import annotations

import glob
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server
from twisted.web.server import Request as WebRequest

from .wire import ErrorCode

log = Logger(namespace="twisted_frames.tap")

#: The environment variable of prometheus_client's multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The label value of an op the server does not have.
UNKNOWN_OP = "unknown"
#: The label value of an outcome that is no known error code.
OTHER = "other"

#: Every refusal reason, and its kind: a connection closed (or refused) by
#: the server for a cap, a deadline, a protocol violation, a busy
#: connection, a login that failed too often, or the shutdown.
REFUSALS: dict[str, str] = {
    "max_connections": "cap",
    "max_per_source": "cap",
    "max_unauthenticated": "cap",
    "max_unauthenticated_per_source": "cap",
    "login_timeout": "deadline",
    "idle_timeout": "deadline",
    "frame_timeout": "deadline",
    "write_timeout": "deadline",
    ErrorCode.HEADER_TOO_LARGE.value: "violation",
    ErrorCode.BODY_TOO_LARGE.value: "violation",
    ErrorCode.BAD_HEADER.value: "violation",
    ErrorCode.BAD_REQUEST.value: "violation",
    ErrorCode.BODY_NOT_ALLOWED.value: "violation",
    ErrorCode.DUPLICATE_ID.value: "violation",
    "max_in_flight": "busy",
    "login_attempts": "auth",
    ErrorCode.SHUTTING_DOWN.value: "shutdown",
    OTHER: OTHER,
}

#: How a connection ended: C{closed} (by the peer, or after its last
#: request), or the kind of refusal that closed it.
CONNECTION_OUTCOMES: tuple[str, ...] = ("closed", *sorted(set(REFUSALS.values())))
#: Request outcomes: C{ok}, an error code, C{disconnected}, or C{other}.
REQUEST_OUTCOMES = frozenset({"ok", "disconnected", OTHER, *(c.value for c in ErrorCode)})
LOGIN_RESULTS = ("ok", "failed")
EXIT_CLASSES = ("ok", "nonzero", "signal", "timeout", "cancelled")
UDP_DROPS = ("oversize", "rate_limited")

#: Upper bounds of the request duration buckets, in seconds: from a
#: loopback ping (tens of microseconds) to long transfers and commands.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    float("inf"),
)

#: Seconds between two samples of the process figures (RSS, descriptors).
PROCESS_SAMPLE_INTERVAL = 5.0
#: Seconds between two exports of the request counts (see L{Metrics.flush}):
#: what C{/metrics} shows of requests is at most this old.
FLUSH_INTERVAL = 1.0


@dataclass(frozen=True)
class Family:
    """
    One metric family, as the reference lists it.

    @ivar name: the name as exported (counters get C{_total} appended).
    @ivar kind: C{counter}, C{gauge} or C{histogram}.
    @ivar labels: label names.
    @ivar help: what it counts.
    @ivar values: the label values, per label, as a sentence.
    @ivar mode: the gauge's multiprocess mode, or C{""}.
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    values: str = ""
    mode: str = ""


def _oneOf(values: Iterable[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


_OPS = "the server's op names, or `unknown`"
_OUTCOMES = "`ok`, an error code, `disconnected`, or `other`"

#: Every family L{Metrics} makes.
FAMILIES: tuple[Family, ...] = (
    Family("frames_connections_open", "gauge", (), "Connections open now.", mode="livesum"),
    Family(
        "frames_connections",
        "counter",
        ("outcome",),
        "Connections closed, by how they ended.",
        f"outcome: {_oneOf(CONNECTION_OUTCOMES)}",
    ),
    Family(
        "frames_requests",
        "counter",
        ("op", "outcome"),
        "Requests answered (or lost with their connection), by op and outcome.",
        f"op: {_OPS}; outcome: {_OUTCOMES}",
    ),
    Family(
        "frames_request_duration_seconds",
        "histogram",
        ("op",),
        "Seconds from a request's header to its final reply, by op.",
        f"op: {_OPS}",
    ),
    Family(
        "frames_received_bytes",
        "counter",
        ("op",),
        "Request body bytes received, by op.",
        f"op: {_OPS}",
    ),
    Family(
        "frames_sent_bytes",
        "counter",
        ("op",),
        "Reply and event body bytes sent, by op.",
        f"op: {_OPS}",
    ),
    Family(
        "frames_refusals",
        "counter",
        ("kind", "reason"),
        "Connections refused or closed by the server, by reason.",
        f"reason (kind): {', '.join(f'`{r}` ({k})' for r, k in REFUSALS.items())}",
    ),
    Family(
        "frames_logins",
        "counter",
        ("result",),
        "Login attempts, by result.",
        f"result: {_oneOf(LOGIN_RESULTS)}",
    ),
    Family(
        "frames_commands_running",
        "gauge",
        (),
        "Commands running now.",
        mode="livesum",
    ),
    Family(
        "frames_command_exits",
        "counter",
        ("class",),
        "Commands ended, by how: exit 0, another exit status, a signal, the "
        "timeout, or a client's cancel.",
        f"class: {_oneOf(EXIT_CLASSES)}",
    ),
    Family(
        "frames_partial_uploads",
        "gauge",
        (),
        "Partial uploads kept under the root for resuming (counted every minute).",
        mode="livemostrecent",
    ),
    Family(
        "frames_partial_upload_bytes",
        "gauge",
        (),
        "Bytes of the partial uploads kept under the root.",
        mode="livemostrecent",
    ),
    Family("frames_udp_answered", "counter", (), "UDP echo datagrams answered."),
    Family(
        "frames_udp_dropped",
        "counter",
        ("reason",),
        "UDP echo datagrams dropped, by reason.",
        f"reason: {_oneOf(UDP_DROPS)}",
    ),
    Family(
        "frames_process_resident_memory_bytes",
        "gauge",
        (),
        "Resident memory of the server process.",
        mode="liveall",
    ),
    Family(
        "frames_process_open_fds",
        "gauge",
        (),
        "Open file descriptors of the server process.",
        mode="liveall",
    ),
)


class _OpMetrics:
    """
    What one op's requests have added since the last L{Metrics.flush}, as
    plain numbers: counting a request is then a few additions, no lock and
    no label lookup (prometheus_client's own C{inc} and C{observe} cost
    several microseconds a request, more than the 5% of a loopback ping
    the metrics may take).

    @ivar outcomes: requests per outcome.
    @ivar buckets: requests per duration bucket (not cumulative: the first
        bucket whose bound is at least the duration, as prometheus_client
        keeps them), in L{DURATION_BUCKETS} order.
    """

    __slots__ = ("name", "outcomes", "buckets", "seconds", "received", "sent", "_children")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self.outcomes: dict[str, int] = {}
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.seconds = 0.0
        self.received = 0
        self.sent = 0
        self._children = (
            metrics.requests,
            metrics.duration.labels(name),
            metrics.received.labels(name),
            metrics.sent.labels(name),
        )
        metrics.requests.labels(name, "ok")

    def flush(self) -> None:
        """
        Add what was counted to the prometheus_client metrics, and start
        again from zero.
        """
        requests, duration, received, sent = self._children
        outcomes, self.outcomes = self.outcomes, {}
        for outcome, n in outcomes.items():
            label = outcome if outcome in REQUEST_OUTCOMES else OTHER
            requests.labels(self.name, label).inc(n)
        if any(self.buckets):
            buckets, self.buckets = self.buckets, [0] * len(DURATION_BUCKETS)
            # Many observations at once: prometheus_client has no call for
            # that, so its histogram's bucket and sum values are added to
            # directly (tests.test_metrics checks the exported histogram).
            for value, n in zip(duration._buckets, buckets, strict=True):
                if n:
                    value.inc(n)
            duration._sum.inc(self.seconds)
            self.seconds = 0.0
        if self.received:
            received.inc(self.received)
            self.received = 0
        if self.sent:
            sent.inc(self.sent)
            self.sent = 0


class Metrics:
    """
    The server's metric families and the hooks that count into them.

    The server, the services and the UDP echo hold one of these (or
    C{None}: metrics off) and call its methods where something happens.

    @ivar registry: the registry the families are in (their own, so that
        several servers in one process, as in tests, do not clash).  In
        multiprocess mode values go to C{PROMETHEUS_MULTIPROC_DIR}, and the
        registry that exports them is L{multiprocessRegistry}'s.
    """

    def __init__(self, operations: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        made: dict[str, Any] = {}
        for family in FAMILIES:
            kwargs: dict[str, Any] = {"registry": self.registry}
            if family.kind == "counter":
                metric: Any = Counter(family.name, family.help, family.labels, **kwargs)
            elif family.kind == "histogram":
                kwargs["buckets"] = DURATION_BUCKETS
                metric = Histogram(family.name, family.help, family.labels, **kwargs)
            else:
                metric = Gauge(
                    family.name,
                    family.help,
                    family.labels,
                    multiprocess_mode=cast(Any, family.mode),
                    **kwargs,
                )
            made[family.name] = metric
        self.connectionsOpen = made["frames_connections_open"]
        self.connections = made["frames_connections"]
        self.requests = made["frames_requests"]
        self.duration = made["frames_request_duration_seconds"]
        self.received = made["frames_received_bytes"]
        self.sent = made["frames_sent_bytes"]
        self.refusals = made["frames_refusals"]
        self.logins = made["frames_logins"]
        self.commandsRunning = made["frames_commands_running"]
        self.commandExits = made["frames_command_exits"]
        self.partialUploads = made["frames_partial_uploads"]
        self.partialBytes = made["frames_partial_upload_bytes"]
        self.udpAnsweredTotal = made["frames_udp_answered"]
        self.udpDroppedTotal = made["frames_udp_dropped"]
        self.rss = made["frames_process_resident_memory_bytes"]
        self.fds = made["frames_process_open_fds"]
        self._ops: dict[str, _OpMetrics] = {}
        self._unknown = self._ops[UNKNOWN_OP] = _OpMetrics(self, UNKNOWN_OP)
        self.setOperations(operations)
        # The other labelled series are made now too, so that each starts at 0 (a
        # rate over a counter that appears late misses its first increments).
        for outcome in CONNECTION_OUTCOMES:
            self.connections.labels(outcome)
        for reason, kind in REFUSALS.items():
            self.refusals.labels(kind, reason)
        for result in LOGIN_RESULTS:
            self.logins.labels(result)
        for exitClass in EXIT_CLASSES:
            self.commandExits.labels(exitClass)
        for drop in UDP_DROPS:
            self.udpDroppedTotal.labels(drop)

    def setOperations(self, names: Iterable[str]) -> None:
        """
        The ops the server has: the only op label values besides
        L{UNKNOWN_OP}.  Their series are made now, so that each starts at
        0 (a rate over a counter that appears late misses its first
        increments).
        """
        for name in names:
            if name not in self._ops:
                self._ops[name] = _OpMetrics(self, name)

    # -- hooks -----------------------------------------------------------------

    def connectionOpened(self) -> None:
        """
        A connection was accepted.
        """
        self.connectionsOpen.inc()

    def connectionClosed(self, refusal: str | None) -> None:
        """
        A connection closed; C{refusal} is the reason the server closed it
        (see L{refused}), or C{None}.
        """
        self.connectionsOpen.dec()
        outcome = "closed" if refusal is None else REFUSALS.get(refusal, OTHER)
        self.connections.labels(outcome).inc()

    def refused(self, reason: str) -> None:
        """
        The server refuses or closes a connection for C{reason}, one of
        L{REFUSALS} (anything else counts as C{other}).
        """
        kind = REFUSALS.get(reason)
        if kind is None:
            reason = kind = OTHER
        self.refusals.labels(kind, reason).inc()

    def requestFinished(
        self, op: str, outcome: str, seconds: float, bytesIn: int, bytesOut: int
    ) -> None:
        """
        A request had its final reply (or was lost with its connection).
        Counted at once, exported at the next L{flush}.

        @param op: the op the client named: counted under its own name only
            if the server has it.
        """
        m = self._ops.get(op) or self._unknown
        outcomes = m.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        m.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        m.seconds += seconds
        m.received += bytesIn
        m.sent += bytesOut

    def flush(self) -> None:
        """
        Export the requests counted since the last flush (a timer calls
        this every L{FLUSH_INTERVAL} seconds, and once more when the server
        stops).
        """
        for m in self._ops.values():
            m.flush()

    def loginAttempt(self, ok: bool) -> None:
        """
        A login attempt was checked.
        """
        self.logins.labels("ok" if ok else "failed").inc()

    def commandStarted(self) -> None:
        """
        A command's process was started.
        """
        self.commandsRunning.inc()

    def commandEnded(
        self, exitCode: int | None, signal: int | None, timedOut: bool, cancelled: bool
    ) -> None:
        """
        A command's process ended (see L{exitClass}).
        """
        self.commandsRunning.dec()
        self.commandExits.labels(exitClass(exitCode, signal, timedOut, cancelled)).inc()

    def partialUploadsFound(self, count: int, size: int) -> None:
        """
        A sweep of the root found C{count} partial uploads of C{size}
        bytes in all.
        """
        self.partialUploads.set(count)
        self.partialBytes.set(size)

    def udpAnswered(self) -> None:
        """
        The UDP echo answered a datagram.
        """
        self.udpAnsweredTotal.inc()

    def udpDropped(self, reason: str) -> None:
        """
        The UDP echo dropped a datagram, for one of L{UDP_DROPS}.
        """
        self.udpDroppedTotal.labels(reason if reason in UDP_DROPS else UDP_DROPS[0]).inc()

    def sampleProcess(self, proc: str = "/proc/self") -> None:
        """
        Record this process's resident memory and open descriptors (from
        C{/proc}; left alone where there is none).
        """
        try:
            with open(os.path.join(proc, "statm"), "rb") as f:
                pages = int(f.read().split()[1])
            self.rss.set(pages * os.sysconf("SC_PAGE_SIZE"))
            self.fds.set(len(os.listdir(os.path.join(proc, "fd"))))
        except (OSError, ValueError, IndexError):
            pass


class MetricsTimer(TimerService):
    """
    Every L{FLUSH_INTERVAL} seconds, L{Metrics.flush}; every
    L{PROCESS_SAMPLE_INTERVAL} seconds, L{Metrics.sampleProcess}.  Stopping
    it waits for C{drained} (the server's connections to close), then
    flushes once more, so that the last requests of a server (or of a
    worker) are counted before it exits.
    """

    def __init__(
        self,
        metrics: Metrics,
        clock: Any,
        drained: Callable[[], defer.Deferred[None]] | None = None,
    ) -> None:
        super().__init__(FLUSH_INTERVAL, self.tick)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.metrics = metrics
        self._drained = drained
        self._ticks = 0

    def tick(self) -> None:
        """
        Flush, and sample the process every few ticks.
        """
        self.metrics.flush()
        if self._ticks % round(PROCESS_SAMPLE_INTERVAL / FLUSH_INTERVAL) == 0:
            self.metrics.sampleProcess()
        self._ticks += 1

    def stopService(self) -> defer.Deferred[None]:
        drained = self._drained() if self._drained is not None else defer.succeed(None)

        def stop(_: object) -> Any:
            stopped = super(MetricsTimer, self).stopService()  # type: ignore[no-untyped-call]
            self.metrics.flush()
            return stopped

        return drained.addBoth(stop)


def exitClass(exitCode: int | None, signal: int | None, timedOut: bool, cancelled: bool) -> str:
    """
    The L{EXIT_CLASSES} entry of a command that ended: the timeout or a
    cancel first (they end it with a signal), then a signal, then its exit
    status.
    """
    if timedOut:
        return "timeout"
    if cancelled:
        return "cancelled"
    if signal is not None:
        return "signal"
    return "ok" if exitCode == 0 else "nonzero"


# -- several processes ---------------------------------------------------------


def prepareMultiprocess(path: str) -> None:
    """
    Make C{path} the multiprocess directory of the workers to start: remove
    the C{*.db} files of an earlier run and set C{PROMETHEUS_MULTIPROC_DIR}
    in C{os.environ} (see the module docstring).

    @raise OSError: if C{path} is not a directory that can be emptied.
    """
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = path


class _DirectoryCollector:
    """
    A C{MultiProcessCollector} over whatever directory C{directory()} names
    at each scrape: nothing while it names none (before the first worker
    starts, after the last has stopped).
    """

    def __init__(self, directory: Callable[[], str | None]) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Any]:
        path = self.directory()
        if path is None or not os.path.isdir(path):
            return []
        collector = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        return cast(Iterable[Any], collector.collect())  # type: ignore[no-untyped-call]


def multiprocessRegistry(
    path: str | Callable[[], str | None] | None = None,
) -> CollectorRegistry:
    """
    A registry exporting the sum of every worker's values in C{path}
    (default: C{PROMETHEUS_MULTIPROC_DIR}), for the process that serves
    C{/metrics}.

    @param path: the directory, or a callable returning it at each scrape
        (or C{None}: then the registry exports nothing), for a supervisor
        that makes the directory only when it starts its workers.
    """
    registry = CollectorRegistry()
    if callable(path):
        registry.register(_DirectoryCollector(path))  # type: ignore[arg-type]
    else:
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def workerExited(pid: int, path: str | None = None) -> None:
    """
    A worker ended: drop its live gauges (open connections, running
    commands, process figures) from the sums.
    """
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


# -- the web endpoint ----------------------------------------------------------


class HealthResource(resource.Resource):
    """
    C{GET /healthz}: C{200 serving} while the server serves, C{503
    shutting down} from the moment it starts to stop.
    """

    isLeaf = True

    def __init__(self, healthy: Callable[[], bool]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.healthy = healthy

    def render_GET(self, request: WebRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self.healthy():
            return b"serving\n"
        request.setResponseCode(503)
        return b"shutting down\n"

    render_HEAD = render_GET


def webRoot(registry: CollectorRegistry, healthy: Callable[[], bool]) -> resource.Resource:
    """
    The resource tree of the metrics endpoint: C{/metrics} (prometheus_client's
    C{MetricsResource}, which renders in the reactor's thread pool) and
    C{/healthz} (L{HealthResource}); anything else is 404.
    """
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(registry))  # type: ignore[no-untyped-call]
    root.putChild(b"healthz", HealthResource(healthy))
    return root


class _QuietSite(server.Site):
    """
    A site that logs no access line: a scrape every few seconds (and a
    balancer's health check every second or two) would fill the log.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


class MetricsWebService(service.Service):
    """
    Listens on the metrics endpoint while the server runs.

    Stopping it first turns C{/healthz} to 503, then waits for C{drained}
    (the server's connections to close) before it stops listening, so that
    a balancer or supervisor sees the shutdown through the whole grace
    period.

    @ivar stopping: whether it is stopping (C{/healthz} answers 503).
    """

    stopping = False

    def __init__(
        self,
        endpoint: Any,
        registry: CollectorRegistry,
        healthy: Callable[[], bool] = lambda: True,
        drained: Callable[[], defer.Deferred[None]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self._healthy = healthy
        self._drained = drained
        self.site = _QuietSite(webRoot(registry, self.healthy))  # type: ignore[no-untyped-call]
        self.port: Any = None

    def healthy(self) -> bool:
        """
        @return: whether C{/healthz} says serving.
        """
        return not self.stopping and self._healthy()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        d = self.endpoint.listen(self.site)
        # An endpoint that cannot listen fails now, synchronously for TCP:
        # the error is raised to the caller (start-up stops with it).
        failure: list[Any] = []
        d.addCallbacks(self._listening, failure.append)
        if failure:
            failure[0].raiseException()

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        where = f"{address.host}:{address.port}" if hasattr(address, "port") else str(address)
        log.info("metrics listening on {address}", address=where)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.stopping = True
        drained = self._drained() if self._drained is not None else defer.succeed(None)

        def stop(_: object) -> Any:
            port, self.port = self.port, None
            return port.stopListening() if port is not None else None

        return drained.addBoth(stop)
