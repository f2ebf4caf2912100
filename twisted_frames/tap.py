# -*- test-case-name: tests.test_tap -*-
"""
C{twistd frameserver}: options and service construction::

    twistd -n frameserver --listen tcp:8007:interface=127.0.0.1 --root ./srv

The plugin in C{twisted/plugins/} is one line pointing here; everything a
test needs (L{Options}, L{makeService}) is importable without twistd.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from . import monitoring, policy, security, wire
from .bounds import bounded
from .commands.options import COMMANDS
from .commands.spec import CommandLimits
from .files.options import FILES
from .proxied import ProxiedEndpoint, innerDescription, isProxied
from .server import FramesServerFactory
from .services import ServiceEntry
from .udpservice import UDP
from .wire import Limits
from .workers import AdoptedEndpoint, SharedPorts, Supervisor, WorkerService, WorkerSockets

DEFAULT_ROOT = "srv"
DEFAULT_LISTEN = "tcp:8007:interface=127.0.0.1"
DEFAULT_BACKLOG = 128
DEFAULT_SHUTDOWN_GRACE = 10
#: Worker threads of the reactor's pool (Twisted's default size), which
#: run the file operations.
DEFAULT_THREADS = 10
#: More workers than this is a typo, not a machine.
MAX_WORKERS = 256

log = Logger(namespace="twisted_frames.tap")


#: The services of C{twistd frameserver}, in the order their frames services
#: see a connection (and their options are listed in the reference).  A new
#: service is one more entry here (see L{twisted_frames.services}).
SERVICES: tuple[ServiceEntry, ...] = (monitoring.METRICS, security.SECURITY, FILES, COMMANDS, UDP)


class ServerOptions(usage.Options):
    """
    The options every C{twistd frameserver} has, whatever its services:
    where to listen, the root, the frame limits, the shutdown grace.
    L{Options} adds the services' own (L{optionsFor}).

    @cvar services: the entries whose mix-ins the class has, checked and
        built in this order.
    """

    services: tuple[ServiceEntry, ...] = ()

    synopsis = "[frameserver options]"
    longdesc = (
        "Serve the twisted-frames protocol (4-byte length prefix, JSON header "
        "frame, body frame): ping, and the services configured below; plus a "
        "UDP echo service."
    )

    optParameters = [
        [
            "root",
            "r",
            None,
            "Directory the file and command services are confined to; it must exist. "
            f"Default: ./{DEFAULT_ROOT}, created if missing.",
        ],
        [
            "backlog",
            None,
            DEFAULT_BACKLOG,
            "listen() backlog of TCP/SSL endpoints that do not set their own.",
            bounded("--backlog", 1, 65535),
        ],
        [
            "max-header",
            None,
            wire.DEFAULT_MAX_HEADER,
            "Largest header frame accepted, in bytes.",
            bounded("--max-header", 2, wire.MAX_FRAME),
        ],
        [
            "max-body",
            None,
            wire.DEFAULT_MAX_BODY,
            "Largest body frame accepted, in bytes.",
            bounded("--max-body", 0, wire.MAX_FRAME),
        ],
        [
            "max-in-flight",
            None,
            256,
            "Requests one connection may have unanswered at once; one more closes it.",
            bounded("--max-in-flight", 1, 1_000_000),
        ],
        ["name", None, None, "Server name announced in the greeting (default: host name)."],
        [
            "workers",
            None,
            1,
            "Server processes sharing each listening socket, supervised by this one (a "
            "worker that dies is restarted). Limits are per worker: --max-connections, "
            "--max-per-source, --max-unauthenticated(-per-source), --max-procs, --udp-rate "
            "and login failure delays each apply in every worker, so the server as a whole "
            "allows up to N times each; --max-in-flight and the other per-connection limits "
            "are unchanged; an upload in progress is 'busy' to every worker (a file lock). "
            "Not with ssl: listens (use --tls-cert).",
            bounded("--workers", 1, MAX_WORKERS),
        ],
        [
            "shutdown-grace",
            None,
            DEFAULT_SHUTDOWN_GRACE,
            "Seconds a stopping server (SIGTERM) lets requests in flight finish; then the "
            "rest are answered shutting_down and every connection is closed. Must be larger "
            "than the command kill grace when commands are allowed.",
            bounded("--shutdown-grace", 0, 3600),
        ],
    ]

    compData = usage.Completions(optActions={"root": usage.CompleteDirs(descr="root directory")})

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, turning a usage error into one line on stderr and exit
        status 1 (twistd would otherwise print its whole usage text).

        @raise SystemExit: on any usage error.
        """
        # The workers of --workers run with the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"twistd frameserver: {e} (see: twistd frameserver --help)") from None

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on a Twisted server endpoint string (repeatable), e.g.
        tcp:8007:interface=127.0.0.1, tcp6:8007:interface=\\:\\:1,
        unix:/run/frames.sock, ssl:8443:privateKey=key.pem:certKey=cert.pem.
        Prefix haproxy: (haproxy:tcp:8007:...) behind a balancer sending the
        PROXY header (v1 or v2): caps, login delays and logs then see the
        client's address. Default: tcp:8007:interface=127.0.0.1.
        """
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        """
        Give the shared options their final values, then run every
        service's check.
        """
        # Only the default root is created: a --root that does not exist is
        # more likely a typo than a wish for a new tree.
        self["createRoot"] = self["root"] is None
        if self["root"] is None:
            self["root"] = DEFAULT_ROOT
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        self["listen"] = [_withBacklog(e, self["backlog"]) for e in self["listen"]]
        if self["name"] is None:
            self["name"] = socket.gethostname()
        try:
            self["limits"] = Limits(maxHeader=self["max-header"], maxBody=self["max-body"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        if self["workers"] > 1:
            ssl = [d for d in self["listen"] if innerDescription(d).split(":", 1)[0] == "ssl"]
            if ssl:
                raise usage.UsageError(
                    f"--workers cannot share --listen {ssl[0]}: listen on tcp: with --tls-cert"
                )
        for entry in self.services:
            entry.check(self)


def optionsFor(services: Sequence[ServiceEntry]) -> type[ServerOptions]:
    """
    The options class of a server with C{services}: L{ServerOptions} and
    every service's mix-in (L{Options} is C{optionsFor(SERVICES)}).
    """
    bases = (*(entry.options for entry in services), ServerOptions)
    return type("Options", bases, {"services": tuple(services)})


class Options(*(entry.options for entry in SERVICES), ServerOptions):  # type: ignore[misc]
    """
    Command-line options of C{twistd frameserver}: L{ServerOptions} and the
    options of every service in L{SERVICES}.
    """

    services = SERVICES


def _withBacklog(endpoint: str, backlog: int) -> str:
    """
    Add an explicit C{backlog=} to TCP and SSL endpoint strings that have
    none, so the listen queue is a choice, not Twisted's default of 50.
    """
    kind = innerDescription(endpoint).split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={backlog}"
    return endpoint


class StartupError(SystemExit, Exception):
    """
    The server cannot start: exit status 1; C{str()} is the reason, which
    L{_cannotStart} has already shown to the operator.

    twistd starts the application after it has written the pidfile and,
    without C{-n}, after it has forked, so both of its launch paths must see
    this error:

      - it is an C{Exception}, because twistd's start-up handler catches only
        those: it then removes the pidfile and, in daemon mode, sends
        C{str()} (cut to 100 bytes with the class name) through its status
        pipe to the waiting launcher, which prints it and exits 1.  A bare
        C{SystemExit} slips past that handler: the daemon dies and the
        launcher waits for ever, with a stale pidfile left behind;
      - it is a C{SystemExit}, so C{twistd -n} exits without a traceback.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(1)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _cannotStart(reason: str) -> StartupError:
    """
    Log C{reason} and print it as one line on stderr; return the
    L{StartupError} to raise.

    By the time services start, twistd has pointed C{sys.stderr} at its log,
    so the line goes to the process's original stderr: the terminal under
    C{-n}, C{/dev/null} in a daemon (whose launcher prints the reason it gets
    through the status pipe; the log file has it too).
    """
    line = f"twistd frameserver: {reason}"
    log.critical("{line}", line=line)
    if sys.__stderr__ is not None:
        print(line, file=sys.__stderr__, flush=True)
    return StartupError(reason)


class FrameServerService(service.MultiService):
    """
    The whole server.  A port that cannot be bound stops start-up with a
    one-line message (C{SystemExit}) instead of a traceback.

    Stopping it (twistd does on C{SIGTERM}, and waits for the Deferred) is
    graceful: the ports stop listening, running commands are stopped, and
    every connection closes once its requests have had their final reply,
    within the factory's grace period (L{FramesServerFactory.shutDown}).
    """

    def __init__(self, factory: FramesServerFactory, udp: Any = None) -> None:
        super().__init__()
        self.factory = factory
        self.udp = udp

    def privilegedStartService(self) -> None:
        _listenOrExit(super().privilegedStartService)

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening and stop the children (the command service kills its
        process groups), then close the connections gracefully.

        @return: a Deferred firing once all of that is done, or at the end
            of the grace period and its flush time, whichever comes first.
        """
        # The children first: no new connection is accepted from here on.
        children = super().stopService()
        drained = self.factory.shutDown()
        done: defer.Deferred[None] = defer.Deferred()
        clock = self.factory.reactorClock()

        def giveUp() -> None:
            log.warn("shutdown: not everything stopped within the grace period; exiting anyway")
            done.callback(None)

        bound = clock.callLater(self.factory.shutdownGrace + self.factory.shutdownFlush, giveUp)

        def finished(_: object) -> None:
            if bound.active():
                bound.cancel()
                done.callback(None)

        defer.DeferredList([children, drained], consumeErrors=True).addBoth(finished)
        return done


def _listenOrExit(listen: Any) -> None:
    """
    Call C{listen()}; a port that cannot be bound stops start-up with one
    line.
    """
    try:
        listen()
    except CannotListenError as e:
        raise _cannotStart(f"cannot listen: {_describe(e)}") from None
    except OSError as e:
        raise _cannotStart(f"cannot listen: {e}") from None


class WorkersService(service.MultiService):
    """
    The main process of C{--workers N}: the shared ports and the
    L{Supervisor} of the workers (L{makeSupervisor}), and with C{--metrics}
    the web endpoint serving their sum (L{monitoring.supervisorMonitoring}).
    """

    def __init__(
        self, ports: SharedPorts, supervisor: Supervisor, web: service.IService | None = None
    ) -> None:
        super().__init__()
        self.ports = ports
        self.supervisor = supervisor
        self.web = web
        # The first child, so the last stopped: /healthz says 503 until
        # every worker has exited.
        if web is not None:
            web.setServiceParent(self)
        ports.setServiceParent(self)
        supervisor.setServiceParent(self)

    def privilegedStartService(self) -> None:
        _listenOrExit(super().privilegedStartService)


def _describe(e: CannotListenError) -> str:
    reason = e.socketError
    detail = getattr(reason, "strerror", None) or str(reason)
    return f"{e.interface or '*'}:{e.port}: {detail}"


class _EndpointService(StreamServerEndpointService):
    """
    Listens on one endpoint; fails start-up synchronously when it cannot, and
    logs the address it got (so C{tcp:0} tells its port).
    """

    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        waiting = self._waitingForPort
        assert waiting is not None
        waiting.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        logListening(port)
        return port


def logListening(port: Any) -> None:
    """
    Log the address C{port} listens on (C{tcp:0} tells its port).
    """
    address = port.getHost()
    if hasattr(address, "port"):
        kind, where = str(address.type).lower(), f"{address.host}:{address.port}"
    else:
        name = getattr(address, "name", address)
        kind, where = "unix", name.decode() if isinstance(name, bytes) else str(name)
    log.info("frameserver listening on {kind} {where}", kind=kind, where=where)


def fitDescriptorLimit(config: ServerOptions, reactor: Any, rlimit: Any = None) -> None:
    """
    Make the caps fit the process's open-file limit (C{RLIMIT_NOFILE}), so
    that a full server refuses connections with C{busy} instead of failing
    with C{EMFILE}: when the worst case of L{policy.descriptorsNeeded}
    exceeds the soft limit, raise it (up to the hard limit); if that is not
    enough, lower C{max-connections} (and if need be C{--max-procs}) in
    C{config}.  Either change is logged in one line.

    @param rlimit: the C{resource} module (the default), or a stand-in.
    @raise SystemExit: if the limit cannot hold even one connection.
    """
    if rlimit is None:
        rlimit = resource
    connections = config["max-connections"] or None
    # A server without the command or UDP service has no processes, no UDP
    # port to count.
    commands: CommandLimits | None = config.get("command-limits")
    maxProcs = commands.maxProcs if commands is not None else 0
    pool = getattr(reactor, "threadpool", None)
    threads = getattr(pool, "max", DEFAULT_THREADS)
    listeners = len(config["listen"]) + (1 if config.get("udp") else 0)
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    if connections is None:
        need = None
    else:
        need = policy.descriptorsNeeded(connections, maxProcs, threads, listeners)
        if need <= soft:
            return
    limit = soft
    if hard == rlimit.RLIM_INFINITY:
        target = need if need is not None else max(soft, 1 << 20)
    else:
        target = hard if need is None else min(hard, need)
    if target > soft:
        try:
            rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (target, hard))
            limit = target
        except (ValueError, OSError):
            pass
    try:
        fitted = policy.fitDescriptors(limit, connections, maxProcs, threads, listeners)
    except ValueError as e:
        raise SystemExit(f"twistd frameserver: {e}") from None
    if fitted == (connections, maxProcs):
        log.info(
            "raised the open-file limit (RLIMIT_NOFILE) from {soft} to {limit} for the caps "
            "(at most {need} descriptors)",
            soft=soft,
            limit=limit,
            need=need,
        )
        return
    config["max-connections"], procs = fitted
    if commands is not None:
        config["command-limits"] = dataclasses.replace(
            commands,
            maxProcs=procs,
            maxProcsPerConnection=min(commands.maxProcsPerConnection, procs),
        )
    log.warn(
        "the open-file limit (RLIMIT_NOFILE) is {limit} (hard {hard}): too low for "
        "--max-connections {connections} and --max-procs {procs}; using --max-connections "
        "{newConnections} and --max-procs {newProcs}",
        limit=limit,
        hard="unlimited" if hard == rlimit.RLIM_INFINITY else hard,
        connections=connections or "0 (no limit)",
        procs=maxProcs,
        newConnections=fitted[0],
        newProcs=fitted[1],
    )


def makeService(
    config: ServerOptions, reactor: Any = None, environ: Any = None
) -> service.MultiService:
    """
    Build the server from parsed L{Options}: every service's L{Built}
    parts, in the order of C{config.services}; with C{--workers} above 1,
    the main process that runs them (L{makeSupervisor}).

    @param reactor: the reactor to listen with (tests pass a
        C{MemoryReactor}); the global one by default.
    @param environ: the process's environment (C{os.environ} by default),
        which says whether this is one of the workers
        (L{twisted_frames.workers.WORKER_ENV}).
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    _checkRoot(os.path.abspath(config["root"]), create=config["createRoot"])
    fitDescriptorLimit(config, reactor)
    worker = WorkerSockets.fromEnviron(os.environ if environ is None else environ)
    if worker is None and config["workers"] > 1:
        return makeSupervisor(config, reactor)
    if worker is not None:
        config["udp-adopted"] = worker.udp
    built = [entry.build(config, reactor) for entry in config.services]
    factory = FramesServerFactory(
        [s for parts in built for s in parts.services],
        limits=config["limits"],
        serverName=config["name"],
        clock=reactor,
    )
    factory.maxInFlight = config["max-in-flight"]
    factory.shutdownGrace = float(config["shutdown-grace"])
    security.configureFactory(factory, config)
    listenFactory = security.listeningFactory(factory, config)
    # The balancer sends the PROXY header at once: a connection gets as long
    # for it as for the rest of a started frame.
    headerTimeout = factory.frameTimeout
    top = FrameServerService(factory)
    factory.metrics = monitoring.metricsOf(config)
    # The first children, so the last stopped: /healthz says 503 while the
    # connections drain, and their last requests are counted.
    for child in monitoring.monitoringServices(config, reactor, factory):
        child.setServiceParent(top)
    for parts in built:
        for child in parts.children:
            child.setServiceParent(top)
    for i, description in enumerate(config["listen"]):
        if worker is None:
            endpoint = listenEndpoint(reactor, description, headerTimeout)
        else:
            endpoint = AdoptedEndpoint(reactor, *worker.listen[i])
            if isProxied(description):
                endpoint = ProxiedEndpoint(endpoint, reactor, headerTimeout)
        _EndpointService(endpoint, listenFactory).setServiceParent(top)
    if worker is not None:
        WorkerService(reactor, worker.index).setServiceParent(top)
    return top


def makeSupervisor(config: ServerOptions, reactor: Any) -> WorkersService:
    """
    The main process of C{--workers N}: it listens on every C{--listen} (and
    the UDP echo's port) and runs N workers, each the same server with the
    same options, serving on those sockets.
    """
    listens = [listenEndpoint(reactor, innerDescription(d), None) for d in config["listen"]]
    udp = (config["udp"], config["udp-interface"]) if config.get("udp") else None
    ports = SharedPorts(reactor, listens, udp, logListening)
    argv = [
        *getattr(config, "argv", []),
        "--workers",
        "1",
        "--root",
        os.path.abspath(config["root"]),
    ]
    if config.get("metrics") is not None:
        # Only the main process listens on the endpoint; the workers count
        # into the supervisor's directory.
        argv += ["--metrics", monitoring.WORKER]
    # A worker has its whole grace and flush time, then some to exit.
    stopTimeout = float(config["shutdown-grace"]) + FramesServerFactory.shutdownFlush + 5.0
    # With metrics, the workers write prometheus_client's multiprocess files
    # to a directory the supervisor makes (Supervisor.metricsDir).
    supervisor = Supervisor(
        reactor, config["workers"], argv, ports, stopTimeout, metrics=bool(config.get("metrics"))
    )
    web = monitoring.supervisorMonitoring(config, reactor, supervisor)
    return WorkersService(ports, supervisor, web)


def listenEndpoint(
    reactor: Any, description: str, headerTimeout: float | None
) -> IStreamServerEndpoint:
    """
    The endpoint of one C{--listen}: C{description} parsed by Twisted, or,
    for a C{haproxy:} one, its inner endpoint behind a L{ProxiedEndpoint}
    (the peer's address is the client's from the PROXY header on).

    @param headerTimeout: seconds a proxied connection has to send its
        header.
    @raise SystemExit: with one line, if C{description} is not valid.
    """
    inner = innerDescription(description)
    try:
        endpoint: IStreamServerEndpoint = endpoints.serverFromString(reactor, inner)
    except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"twistd frameserver: bad --listen {description!r}: {e}") from None
    if isProxied(description):
        return ProxiedEndpoint(endpoint, reactor, headerTimeout)
    return endpoint


def _checkRoot(root: str, create: bool) -> None:
    """
    Make sure C{root} is a directory, creating it (not its parents) if
    C{create}.

    @raise SystemExit: with one line, if it is not.
    """
    try:
        if create:
            os.mkdir(root)
    except FileExistsError:
        pass
    except OSError as e:
        message = f"cannot create --root {root}: {e.strerror}"
        raise SystemExit(f"twistd frameserver: {message}") from None
    if not os.path.isdir(root):
        problem = "is not a directory" if os.path.exists(root) else "does not exist"
        raise SystemExit(
            f"twistd frameserver: --root {root} {problem} (create it first; "
            f"only the default ./{DEFAULT_ROOT} is created)"
        )
