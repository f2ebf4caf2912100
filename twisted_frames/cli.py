"""
The C{frames} command-line client::

    frames [--server HOST:PORT] [--json] [--timeout S] COMMAND ...

Exit status: 0 success; 1 the server answered with an error; 2 bad usage;
3 could not connect (or the connection broke); 4 timed out; 128+N for a
remote command killed by signal N (C{frames run}); 130 or 143 when
interrupted by SIGINT (Ctrl-C) or SIGTERM (L{Interruption}).  Errors are one
line on stderr.

Subcommands live in modules that each export C{register(subparsers)}; every
subcommand sets C{run}, an C{async} function C{(reactor, args, ui) -> int}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, DNSLookupError

from . import __version__, keytool
from .client import DEFAULT_GREETING_TIMEOUT, FramesClient, NoGreeting, connect, parseServer
from .printable import printable
from .wire import FramesError

EXIT_OK = 0
EXIT_REMOTE = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_TIMEOUT = 4
#: Interrupted by signal N: 128 + N, as a shell reports it (130 for SIGINT,
#: 143 for SIGTERM).
EXIT_SIGNAL_BASE = 128

DEFAULT_TIMEOUT = 30.0

Runner = Callable[[Any, argparse.Namespace, "UI"], Awaitable[int]]


class UI:
    """
    Where results and errors go: plain text for people, one JSON object per
    result with C{--json}.
    """

    def __init__(self, jsonOutput: bool, out: TextIO | None = None, err: TextIO | None = None):
        self.json = jsonOutput
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr

    def result(self, text: str, data: dict[str, Any]) -> None:
        """
        Report one result: C{text} for people, C{data} with C{--json}.
        """
        if self.json:
            self.out.write(json.dumps(data, sort_keys=True) + "\n")
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def error(
        self, message: str, data: dict[str, Any] | None = None, escaped: bool = False
    ) -> None:
        """
        Report a failure as one line on stderr (and as JSON on stdout with
        C{--json}, so that scripts see every outcome in one stream).  The
        line on stderr shows control characters as escapes (L{printable}):
        messages quote remote names; the JSON keeps them exact.

        @param escaped: C{message} is already safe to print as it is.
        """
        self.err.write(f"frames: {message if escaped else printable(message)}\n")
        self.err.flush()
        if self.json:
            payload = {"ok": False, "error": data or {"message": message}}
            self.out.write(json.dumps(payload, sort_keys=True) + "\n")
            self.out.flush()


class Interruption:
    """
    What SIGINT (Ctrl-C) and SIGTERM do to a running command: its
    connections are aborted, so that it winds down as after a dropped
    connection (closing its files, keeping a download's partial file; the
    server keeps an upload's), and L{runCommand} then reports one line
    saying what was interrupted and how to resume it, and returns
    128 + the signal's number.  If the process has not exited
    L{windDown} seconds later (a thread blocked reading a pipe holds up
    both the command and the reactor's shutdown), or on a second signal,
    it reports and exits at once.

    A command says what it is doing with L{during}; L{openClient} adds
    each connection with L{track}.

    @ivar signal: the first signal received, or C{None}.
    @ivar what: what the command is doing, for the message.
    @ivar resume: the C{frames} arguments that resume it, if it can be.
    @ivar partial: a local file that holds what was done, if it exists.
    @ivar command: the running command, cancelled if it is interrupted
        while no connection is open (e.g. still connecting).
    @ivar exitCode: the status to exit with, once the command has ended or
        the interruption is reported.
    """

    #: Seconds an interrupted command has to end and the process to exit
    #: (C{None}: no limit).
    windDown: float | None = 3.0

    def __init__(self, reactor: Any, args: argparse.Namespace, ui: UI) -> None:
        self.reactor = reactor
        self.args = args
        self.ui = ui
        self.signal: int | None = None
        self.what: str | None = None
        self.resume: list[str] | None = None
        self.partial: str | None = None
        self.command: defer.Deferred[Any] | None = None
        self._clients: list[FramesClient] = []
        self.exitCode: int | None = None
        self._lock = threading.Lock()

    def install(self) -> None:
        """
        Handle SIGINT and SIGTERM (again once the reactor runs: it sets its
        own SIGTERM handler).
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._received)

    def _received(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.interrupt, signum)

    def interrupt(self, signum: int) -> None:
        """
        Stop the running command: abort its connections (or cancel it
        while none is open); on a second signal, exit at once.
        """
        if self.signal is not None:
            self.exitNow()
        self.signal = signum
        if self.windDown is not None:
            # A thread, not the reactor's clock: the reactor's shutdown
            # blocks on its worker threads.
            timer = threading.Timer(self.windDown, self.exitNow)
            timer.daemon = True
            timer.start()
        live = [c for c in self._clients if not c.protocol.isClosed]
        for client in live:
            transport: Any = client.protocol.transport
            if transport is not None:
                transport.abortConnection()
        if not live and self.command is not None:
            self.command.cancel()

    def track(self, client: FramesClient) -> None:
        """
        Abort C{client}'s connection if the command is interrupted.
        """
        self._clients.append(client)
        if self.signal is not None and client.protocol.transport is not None:
            client.protocol.transport.abortConnection()

    def during(
        self, what: str, resume: list[str] | None = None, partial: str | None = None
    ) -> None:
        """
        Say what the command is doing, for the message if it is interrupted.

        @param what: e.g. C{"get big.iso"} (printed escaped).
        @param resume: the C{frames} arguments that resume it.
        @param partial: a local file keeping what was done.
        """
        self.what, self.resume, self.partial = what, resume, partial

    def exitNow(self) -> None:
        """
        Report the interruption (unless the command has ended or it is
        reported) and exit the process at once.
        """
        with self._lock:
            code = self.exitCode
        if code is None:
            code = self.report()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    def report(self) -> int:
        """
        Print the one line about the interruption, once.

        @return: the exit status, 128 + the signal's number.
        """
        with self._lock:
            if self.exitCode is None:
                self.exitCode = self._report(self.ui, self.args)
            return self.exitCode

    def completed(self, code: int) -> None:
        """
        The command has ended with status C{code} (after L{report} if it
        was interrupted): a late L{exitNow} exits with it, silently.
        """
        with self._lock:
            if self.exitCode is None:
                self.exitCode = code

    def _report(self, ui: UI, args: argparse.Namespace) -> int:
        assert self.signal is not None
        name = signal.Signals(self.signal).name
        what = printable(self.what or args.command)
        line = f"{what} interrupted ({name})"
        data: dict[str, Any] = {"code": "interrupted", "signal": name, "message": line}
        if self.partial is not None and os.path.exists(self.partial):
            line += f"; partial {printable(self.partial)} kept"
        if self.resume is not None:
            argv = resumeCommand(args, self.resume)
            line += f"; resume with: {' '.join(shellQuote(a) for a in argv)}"
            data["resume"] = argv
        data["message"] = line
        ui.error(line, data, escaped=True)
        return EXIT_SIGNAL_BASE + self.signal


def resumeCommand(args: argparse.Namespace, command: list[str]) -> list[str]:
    """
    The argv of C{frames} running C{command} with the same connection and
    output flags as C{args} (server, TLS, login, timeout, JSON).
    """
    argv = ["frames", "--server", args.server]
    if args.json:
        argv.append("--json")
    if args.timeout != DEFAULT_TIMEOUT:
        argv += ["--timeout", f"{args.timeout:g}"]
    if args.tls:
        argv.append("--tls")
    for flag, value in (
        ("--ca", args.ca),
        ("--cert", args.cert),
        ("--key", args.key),
        ("--user", args.user),
        ("--secret-file", args.secret_file),
    ):
        if value:
            argv += [flag, value]
    return argv + command


_SHELL_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shellQuote(word: str) -> str:
    """
    C{word} quoted for a POSIX shell, so that a printed command can be
    pasted: C{shlex.quote}, or for a word with characters that are not
    printable, C{$'...'} with backslash escapes (bash, zsh, ksh), so that
    the command stays one line of printable text.
    """
    if word.isprintable():
        return shlex.quote(word)
    out = []
    for ch in word:
        code = ord(ch)
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch in _SHELL_SHORT:
            out.append(_SHELL_SHORT[ch])
        elif ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:
            # A byte that was not UTF-8 (surrogateescape): the byte itself.
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "$'" + "".join(out) + "'"


def interruptionOf(args: argparse.Namespace) -> Interruption | None:
    """
    The L{Interruption} of the running command (none when a test runs a
    command without L{main}).
    """
    interruption = getattr(args, "interruption", None)
    return interruption if isinstance(interruption, Interruption) else None


async def openClient(reactor: Any, args: argparse.Namespace) -> FramesClient:
    """
    Connect to C{args.server}, within C{args.timeout}, with TLS and login
    as the security flags say.
    """
    security = keytool.clientSecurity(args)
    try:
        client = await connect(
            reactor,
            args.server,
            timeout=args.timeout,
            greetingTimeout=args.greeting_timeout or None,
            **security,
        )
    except FramesError as e:
        secret = security["secret"]
        raise keytool.explainLoginFailure(e, secret.user) if secret else e from None
    except Exception as e:
        explained = keytool.explainTLSFailure(e, args.server)
        if explained is None:
            raise
        raise explained from None
    interruption = interruptionOf(args)
    if interruption is not None:
        interruption.track(client)
    return client


async def _ping(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    client = await openClient(reactor, args)
    try:
        payload = os.urandom(args.size) if args.size else b""
        greeting = client.greeting
        rtts = []
        for _ in range(args.count):
            started = time.perf_counter()
            echoed = await client.ping(payload).addTimeout(args.timeout, reactor)
            rtts.append((time.perf_counter() - started) * 1000)
            if echoed != payload:
                ui.error("ping: the echoed body differs from what was sent")
                return EXIT_REMOTE
        best, worst = min(rtts), max(rtts)
        server = printable(str(greeting.get("server")))
        ui.result(
            f"pong from {server} (protocol {greeting.get('protocol')} "
            f"v{greeting.get('version')}): {len(payload)} bytes, "
            + (
                f"time={rtts[0]:.2f} ms"
                if len(rtts) == 1
                else f"{len(rtts)} round trips, min/avg/max = {best:.2f}/"
                f"{sum(rtts) / len(rtts):.2f}/{worst:.2f} ms"
            ),
            {
                "ok": True,
                "server": greeting.get("server"),
                "version": greeting.get("version"),
                "bytes": len(payload),
                "count": len(rtts),
                "rtt_ms": rtts,
            },
        )
        return EXIT_OK
    finally:
        await client.close()


async def _udpEcho(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    from .udp import EchoTimeout, udpEcho

    host, port = parseServer(args.server)
    if args.port is not None:
        port = args.port
    message = args.message.encode("utf-8")
    started = time.perf_counter()
    try:
        reply = await udpEcho(
            reactor, host, port, message, timeout=args.udp_timeout, retries=args.retries
        )
    except EchoTimeout as e:
        ui.error(f"udp-echo: {e}", {"code": "timeout", "message": str(e)})
        return EXIT_TIMEOUT
    elapsed = (time.perf_counter() - started) * 1000
    text = reply.decode("utf-8", "replace")
    ui.result(
        text,
        {"ok": True, "reply": text, "bytes": len(reply), "sent": len(message), "rtt_ms": elapsed},
    )
    return EXIT_OK


def _registerCore(sub: Any) -> None:
    p = sub.add_parser("ping", help="check the server is alive (echoes a body)")
    p.add_argument("--size", type=_nonNegative, default=0, help="body size in bytes (random)")
    p.add_argument("-c", "--count", type=_positive, default=1, help="round trips to make")
    p.set_defaults(run=_ping)

    u = sub.add_parser("udp-echo", help="send one UDP datagram to the echo service")
    u.add_argument("message", help="text to send (UTF-8)")
    u.add_argument("--port", type=int, default=None, help="UDP port (default: the server's)")
    u.add_argument(
        "--udp-timeout", type=float, default=1.0, help="seconds to wait for each try (default 1)"
    )
    u.add_argument("--retries", type=_nonNegative, default=3, help="re-sends on loss (default 3)")
    u.set_defaults(run=_udpEcho)


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {value!r}") from None
    if not 0 <= n < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {value}")
    return n


def _nonNegative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {n}")
    return n


def _registerFiles(sub: Any) -> None:
    # Imported late: the file commands import this module.
    from .filecli import register

    register(sub)


#: Modules adding subcommands: each has C{register(subparsers)}.
REGISTRARS: list[Callable[[Any], None]] = [_registerCore, _registerFiles]
REGISTRARS.append(keytool.register)


def _registerCommands(sub: Any) -> None:
    from .commandcli import register

    register(sub)


REGISTRARS.append(_registerCommands)


def buildParser() -> argparse.ArgumentParser:
    """
    The whole command line, subcommands included.
    """
    parser = argparse.ArgumentParser(
        prog="frames",
        description="Client for a twisted-frames server (twistd frameserver).",
        epilog="Exit status: 0 ok, 1 server error, 2 usage, 3 connection, 4 timeout, "
        "130/143 interrupted by SIGINT/SIGTERM.",
    )
    parser.add_argument(
        "--server",
        "-s",
        default=os.environ.get("FRAMES_SERVER", "127.0.0.1:8007"),
        help="HOST:PORT of the server (env FRAMES_SERVER; default 127.0.0.1:8007)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per result")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds for connecting and each reply",
    )
    parser.add_argument(
        "--greeting-timeout",
        type=_seconds,
        default=DEFAULT_GREETING_TIMEOUT,
        metavar="S",
        help="seconds for the server's greeting once connected (a silent server is "
        "most often a TLS one: try --tls); 0: only --timeout "
        f"(default {DEFAULT_GREETING_TIMEOUT:g})",
    )
    parser.add_argument("--version", action="version", version=f"frames {__version__}")
    keytool.addArguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of the C{frames} console script.
    """
    parser = buildParser()
    args = parser.parse_args(argv)
    ui = UI(args.json)

    from twisted.internet import reactor as globalReactor
    from twisted.internet.task import react

    interruption = args.interruption = Interruption(globalReactor, args, ui)
    interruption.install()

    def run(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            code = await runCommand(reactor, args, ui)
            interruption.completed(code)
            raise SystemExit(code)

        reactor.callWhenRunning(interruption.install)
        interruption.command = defer.Deferred.fromCoroutine(go())
        return interruption.command

    try:
        react(run)
    except SystemExit as e:
        if not e.code and interruption.exitCode is None:
            # The reactor stopped before the command ended (a signal that
            # came before our handlers were in place): never exit 0.
            signum = interruption.signal or getattr(globalReactor, "_exitSignal", None)
            raise SystemExit(EXIT_SIGNAL_BASE + signum if signum else EXIT_REMOTE) from None
        raise


async def runCommand(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    """
    Run one parsed subcommand, mapping failures to one line and an exit
    status.  A command that fails once interrupted reports the interruption
    instead (L{Interruption.report}); one that completed anyway keeps its
    result.
    """
    try:
        code: int = await args.run(reactor, args, ui)
        return code
    except Exception as e:
        interruption = interruptionOf(args)
        if interruption is not None and interruption.signal is not None:
            return interruption.report()
        return _failed(e, args, ui)


def _failed(error: Exception, args: argparse.Namespace, ui: UI) -> int:
    """
    Map a command's failure to one line and an exit status.
    """
    try:
        # Re-raised so that one ladder of except clauses sorts it.
        raise error
    except FramesError as e:
        hint = ""
        if e.code == "auth_required":
            hint = " (log in with --user and --secret-file)"
        ui.error(f"{args.command}: {e.message}{hint} [{e.code}]", e.toJSON())
        return EXIT_REMOTE
    except keytool.TLSFailure as e:
        ui.error(f"TLS with {args.server} failed: {e}", {"code": "tls_failed", "message": str(e)})
        return EXIT_CONNECT
    except NoGreeting as e:
        message = _noGreetingMessage(e, args)
        ui.error(message, {"code": "no_greeting", "message": message})
        return EXIT_CONNECT
    except keytool.AuthError as e:
        ui.error(f"login to {args.server} failed: {e}", {"code": "auth_failed", "message": str(e)})
        return EXIT_REMOTE
    except FileExistsError as e:
        ui.error(f"{args.command}: {e}", {"code": "exists", "message": str(e)})
        return EXIT_USAGE
    except defer.TimeoutError:
        ui.error(
            f"{args.command}: no answer from {args.server} within {args.timeout:g} s",
            {"code": "timeout"},
        )
        return EXIT_TIMEOUT
    except (ConnectError, DNSLookupError) as e:
        ui.error(
            f"cannot connect to {args.server}: {_reason(e)}",
            {"code": "connect_failed", "message": _reason(e)},
        )
        return EXIT_CONNECT
    except (ConnectionDone, ConnectionLost) as e:
        ui.error(f"{args.command}: connection to {args.server} lost: {_reason(e)}")
        return EXIT_CONNECT
    except ValueError as e:
        ui.error(f"{args.command}: {e}", {"code": "usage"})
        return EXIT_USAGE
    except OSError as e:
        ui.error(f"{args.command}: {e.strerror or e}", {"code": "local_error"})
        return EXIT_REMOTE


def _noGreetingMessage(e: NoGreeting, args: argparse.Namespace) -> str:
    """
    Why the server did not greet, in words, with what to try.
    """
    if e.tlsRecord:
        return (
            f"no greeting from {args.server}: it answered with a TLS record; "
            "it is a TLS server: try --tls"
        )
    if args.tls or args.ca or args.cert:
        return (
            f"no greeting from {args.server} within {e.seconds:g} s after the TLS handshake; "
            "is it a twisted-frames server?"
        )
    return f"no greeting from {args.server} within {e.seconds:g} s; is it a TLS server? try --tls"


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, ConnectError) and e.osError is not None:
        text = os.strerror(e.osError) if isinstance(e.osError, int) else str(e.osError)
    return text.rstrip(".") or type(e).__name__
