# -*- test-case-name: tests.test_security_tap -*-
"""
The server's security configuration, for C{twistd frameserver}: options,
their checks, and the services and TLS wrapping built from them.

L{SECURITY} is the entry of C{tap.SERVICES} for the connection caps and
login: L{SecurityOptions} is mixed into C{tap.Options} (Twisted's
C{usage.Options} collects C{optParameters} and C{optFlags} from every base
class), L{SecurityOptions.securityPostOptions} checks them, and
L{buildSecurity} makes the guard and the login service.  Deadlines and TLS
apply to every connection, so the tap module also calls
L{configureFactory} and L{listeningFactory}.

Secure defaults: without C{--users}, the server refuses to listen on
anything but loopback (or a UNIX socket) unless given
C{--insecure-no-auth-on-public-interface}.
"""

from __future__ import annotations

import ipaddress
from functools import partial
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from .auth.cred import makePortal
from .auth.hmac import MECHANISM
from .auth.keys import UsersFile, UsersFileError
from .auth.service import AuthService
from .bounds import bounded
from .policy import ConnectionGuard, ConnectionLimits, FailurePenalties
from .proxied import innerDescription
from .server import FramesServerFactory, Service
from .services import Built, ServiceEntry
from .tls import TLSConfigError, serverOptions

log = Logger(namespace="twisted_frames.security")

INSECURE_FLAG = "insecure-no-auth-on-public-interface"

#: Defaults, all documented in docs/security.md.
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_PER_SOURCE = 32
DEFAULT_MAX_UNAUTHENTICATED = 64
DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE = 8
DEFAULT_LOGIN_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_FRAME_TIMEOUT = 30.0
DEFAULT_WRITE_TIMEOUT = 60.0
#: Requests handled from one connection per reactor iteration (fairness
#: between connections full of pipelined requests).
MESSAGES_PER_TURN = 16


#: The coercers of the connection caps and the deadlines.
_count = partial(
    bounded, low=0, high=10_000_000, note=" (0: no limit)", doc="A whole number; 0 means no limit."
)
_seconds = partial(
    bounded,
    low=0,
    high=86400 * 365,
    kind=float,
    noun="a number of seconds",
    unit=" seconds",
    note=" (0: none)",
    doc="Seconds; 0 means none.",
)


def _splitEndpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split a server endpoint string the way Twisted does: C{:} separates
    fields, C{\\} escapes the next character, C{key=value} fields are
    keyword arguments.
    """
    fields: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    kind, rest = fields[0], fields[1:]
    args = [f for f in rest if "=" not in f]
    kwargs = dict(f.split("=", 1) for f in rest if "=" in f)
    return kind.lower(), args, kwargs


def isLocalEndpoint(description: str) -> bool:
    """
    Whether a server endpoint string listens only where local users can
    reach it: a UNIX socket, or TCP/SSL bound to a loopback address (or
    C{localhost}).  TCP without an interface listens on all interfaces, so
    it is not local; nor is any endpoint type this cannot judge.
    """
    kind, args, kwargs = _splitEndpoint(description)
    if kind == "haproxy":
        # The port itself is what is or is not reachable; who can reach the
        # balancer in front of it is the balancer's configuration.
        return isLocalEndpoint(description.split(":", 1)[1])
    if kind == "unix":
        return True
    positional = {"tcp": 1, "tcp6": 1, "ssl": 4}.get(kind)
    if positional is None:
        return False
    interface = kwargs.get("interface")
    if interface is None:
        interface = args[positional] if len(args) > positional else ""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class SecurityOptions:
    """
    The security options of C{twistd frameserver}, as a mix-in for
    C{usage.Options}.
    """

    optFlags = [
        [
            INSECURE_FLAG,
            None,
            "Allow listening on non-loopback interfaces without --users: anyone "
            "who can reach the port can use every service. Never on a network you "
            "do not control.",
        ],
    ]

    optParameters = [
        ["users", None, None, "Users file (from 'frames keygen'); login required when given."],
        ["tls-cert", None, None, "PEM certificate (+ chain): serve every --listen over TLS."],
        ["tls-key", None, None, "PEM private key of --tls-cert (default: the --tls-cert file)."],
        ["tls-ca", None, None, "PEM CA file: require client certificates it signed (mutual TLS)."],
        [
            "max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Connections at once, in total.",
            _count("--max-connections"),
        ],
        [
            "max-per-source",
            None,
            DEFAULT_MAX_PER_SOURCE,
            "Connections at once from one address (IPv6: one /64).",
            _count("--max-per-source"),
        ],
        [
            "max-unauthenticated",
            None,
            DEFAULT_MAX_UNAUTHENTICATED,
            "Connections not yet logged in, in total (with --users).",
            _count("--max-unauthenticated"),
        ],
        [
            "max-unauthenticated-per-source",
            None,
            DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE,
            "Connections not yet logged in from one address (with --users).",
            _count("--max-unauthenticated-per-source"),
        ],
        [
            "login-timeout",
            None,
            DEFAULT_LOGIN_TIMEOUT,
            "Seconds a connection has to log in (with --users).",
            _seconds("--login-timeout"),
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds without input and no request in flight before closing.",
            _seconds("--idle-timeout"),
        ],
        [
            "frame-timeout",
            None,
            DEFAULT_FRAME_TIMEOUT,
            "Seconds to finish a started message header, or between reads of a body.",
            _seconds("--frame-timeout"),
        ],
        [
            "write-timeout",
            None,
            DEFAULT_WRITE_TIMEOUT,
            "Seconds the peer may take nothing of what waits for it before it is cut off.",
            _seconds("--write-timeout"),
        ],
    ]

    def securityPostOptions(self) -> None:
        """
        Check the security options against the C{listen} list; load the
        users file and TLS files now, so a mistake stops start-up with one
        line.  Sets C{usersFile}, C{tlsOptions} and C{localOnly}.

        @raise usage.UsageError: on any problem.
        """
        _checkSecurityOptions(self)


def _checkSecurityOptions(config: Any) -> None:
    config["usersFile"] = None
    if config["users"] is not None:
        try:
            config["usersFile"] = UsersFile(config["users"])
        except UsersFileError as e:
            raise usage.UsageError(str(e)) from None
    listens: list[str] = config["listen"]
    sslListens = [d for d in listens if _splitEndpoint(innerDescription(d))[0] == "ssl"]
    config["tlsOptions"] = None
    if config["tls-cert"] is None:
        if config["tls-key"] is not None or config["tls-ca"] is not None:
            raise usage.UsageError(
                "--tls-key and --tls-ca need --tls-cert (an ssl: endpoint string "
                "cannot require client certificates)"
            )
    else:
        if sslListens:
            raise usage.UsageError(
                f"--listen {sslListens[0]} is already TLS; with --tls-cert, use tcp: "
                "listens (they are served over TLS)"
            )
        try:
            config["tlsOptions"] = serverOptions(
                config["tls-cert"], config["tls-key"], config["tls-ca"]
            )
        except TLSConfigError as e:
            raise usage.UsageError(str(e)) from None
    public = [d for d in listens if not isLocalEndpoint(d)]
    config["localOnly"] = not public
    if public and config["usersFile"] is None and not config[INSECURE_FLAG]:
        raise usage.UsageError(
            f"refusing to listen on {public[0]} without --users: it is not loopback, "
            "so anyone who can reach it could use the server. Give --users FILE "
            "(see 'frames keygen'), listen on 127.0.0.1, or pass "
            f"--{INSECURE_FLAG} if you really mean it"
        )


def _limit(value: int) -> int | None:
    return value or None


def _timeout(value: float) -> float | None:
    return value or None


def makeSecurityServices(config: Any, reactor: Any) -> list[Service]:
    """
    The services enforcing the configured limits and login, in the order
    they must see new connections (the guard first).
    """
    services: list[Service] = [
        ConnectionGuard(
            ConnectionLimits(
                maxConnections=_limit(config["max-connections"]),
                maxPerSource=_limit(config["max-per-source"]),
                maxUnauthenticated=_limit(config["max-unauthenticated"]),
                maxUnauthenticatedPerSource=_limit(config["max-unauthenticated-per-source"]),
            )
        )
    ]
    if config["usersFile"] is not None:
        services.append(
            AuthService(
                makePortal(config["usersFile"]),
                clock=reactor,
                loginTimeout=_timeout(config["login-timeout"]),
                penalties=FailurePenalties(reactor),
            )
        )
    return services


def buildSecurity(config: Any, reactor: Any) -> Built:
    """
    The connection guard and, with C{--users}, the login service: the first
    services of the factory (L{makeSecurityServices}).
    """
    return Built(services=makeSecurityServices(config, reactor))


#: The security options' entry in C{tap.SERVICES}; it comes first, so its
#: services see a new connection before any other.
SECURITY = ServiceEntry(
    "security", SecurityOptions, buildSecurity, SecurityOptions.securityPostOptions
)


def configureFactory(factory: FramesServerFactory, config: Any) -> None:
    """
    Set login and deadlines on the factory, and warn about choices that
    leave traffic unprotected.
    """
    factory.authRequired = config["usersFile"] is not None
    factory.authMechanisms = [MECHANISM] if factory.authRequired else []
    factory.idleTimeout = _timeout(config["idle-timeout"])
    factory.frameTimeout = _timeout(config["frame-timeout"])
    factory.writeTimeout = _timeout(config["write-timeout"])
    factory.messagesPerTurn = MESSAGES_PER_TURN
    for description in config["listen"]:
        local = isLocalEndpoint(description)
        tls = (
            config["tlsOptions"] is not None
            or _splitEndpoint(innerDescription(description))[0] == "ssl"
        )
        if not local and not factory.authRequired:
            log.warn(
                "WARNING: {listen} is reachable from the network and no login is "
                "required (--{flag}): anyone who can connect can use every service",
                listen=description,
                flag=INSECURE_FLAG,
            )
        elif not local and not tls:
            log.warn(
                "{listen} is reachable from the network without TLS: logins resist "
                "replay, but traffic can be read and a man-in-the-middle can take over "
                "a session; use --tls-cert",
                listen=description,
            )


def listeningFactory(factory: FramesServerFactory, config: Any) -> IProtocolFactory:
    """
    The factory to listen with: C{factory}, wrapped in TLS when
    C{--tls-cert} is given.
    """
    if config["tlsOptions"] is None:
        return factory
    return TLSMemoryBIOFactory(config["tlsOptions"], False, factory)
