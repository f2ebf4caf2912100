# -*- test-case-name: tests.cli.test_cli -*-
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
C{ping}, C{run}, C{ls}, C{stat}, C{rm} and C{mkdir} to a C{HOST:PORT} take the
quick path instead, without
Twisted (L{twisted_frames.cli.quick}; C{FRAMES_TWISTED=1} forces Twisted).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..wire import DEFAULT_GREETING_TIMEOUT
from . import commands, failures, files, keys, ping, quick
from .base import (
    DEFAULT_TIMEOUT,
    EXIT_REMOTE,
    EXIT_SIGNAL_BASE,
    UI,
    Interruption,
    _seconds,
    interruptionOf,
)

if TYPE_CHECKING:
    from twisted.internet import defer

#: Modules adding subcommands: each has C{register(subparsers)}.
REGISTRARS: list[Callable[[Any], None]] = [
    ping.register,
    files.register,
    keys.register,
    commands.register,
]


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
    keys.addArguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of the C{frames} console script.

    @param argv: the arguments, or C{None} for the process's own command
        line; then Twisted is imported without what the command does not
        use (C{_leanImports}).
    """
    parser = buildParser()
    args = parser.parse_args(argv)
    ui = UI(args.json)

    if quick.applies(args):
        # Without Twisted: see twisted_frames.cli.quick (None: it cannot,
        # and nothing has been printed or asked of the server yet).
        code = quick.main(args, ui)
        if code is not None:
            raise SystemExit(code)

    # Twisted is imported here, once the command line is read, and nowhere
    # at the top of the CLI's modules: see _leanImports.
    with _leanImports(argv is None, needsTLS(args)):
        from twisted.internet import defer
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


#: The types of endpoint string for C{--server} that connect with TLS (the
#: others L{twisted_frames.client.connect} takes are C{tcp}, C{tcp6} and
#: C{unix}).
TLS_ENDPOINTS = ("ssl", "tls")


def needsTLS(args: argparse.Namespace) -> bool:
    """
    Whether the command's connection may use TLS: C{--tls}, C{--ca} or
    C{--cert} (or their environment variables), or a C{--server} endpoint
    string of a TLS type.
    """
    return bool(args.tls or args.ca or args.cert) or (
        args.server.split(":", 1)[0] in TLS_ENDPOINTS
    )


@contextmanager
def _leanImports(program: bool, tls: bool) -> Iterator[None]:
    """
    Import Twisted, in the block, without two things that it imports and a
    C{frames} command does not use, if C{program} (L{main} runs as the
    process's program: the C{frames} console script and C{python -m
    twisted_frames}, which pass no C{argv}) and nothing has imported them
    yet:

      - pyOpenSSL, unless C{tls} (L{needsTLS}).  The reactor imports
        C{twisted.internet.ssl} and the TLS layer of its TCP transport
        whenever pyOpenSSL can be imported (pyOpenSSL, cryptography,
        service_identity and idna: about a fifth of the start-up of a
        command without TLS).  A C{None} in C{sys.modules} makes C{import
        OpenSSL} raise C{ImportError}, which Twisted catches, as where
        pyOpenSSL is not installed: its TCP transport then has no
        C{startTLS} and the reactor no C{connectSSL}, for the rest of the
        process.  Once the block ends, pyOpenSSL may be imported again
        (C{frames make-certs} uses cryptography).
      - C{http.cookiejar}, which C{twisted.python.compat} imports only to
        offer it under a deprecated name, and with it C{urllib.request},
        C{http.client} and C{email}: about a tenth of the start-up.  It
        becomes a module that runs on first use (the standard library's
        C{importlib.util.LazyLoader}), so it is all there if anything
        uses it.
    """
    if not program:
        yield
        return
    if "http.cookiejar" not in sys.modules:
        _importOnFirstUse("http.cookiejar")
    if tls or "OpenSSL" in sys.modules or "twisted.internet.tcp" in sys.modules:
        yield
        return
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "OpenSSL" in sys.modules and sys.modules["OpenSSL"] is None:
            del sys.modules["OpenSSL"]


def _importOnFirstUse(name: str) -> None:
    """
    Import the module C{name} so that its code runs when one of its
    attributes is first looked up, as C{importlib.util.LazyLoader}'s
    documentation shows.
    """
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


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
    Map a command's failure to one line and an exit status
    (L{failures.reportFailure}, after naming Twisted's exceptions in its
    terms).
    """
    from twisted.internet import defer
    from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, DNSLookupError

    neutral: Exception = error
    if isinstance(error, defer.TimeoutError):
        neutral = failures.NoAnswer()
    elif isinstance(error, (ConnectError, DNSLookupError)):
        neutral = failures.CannotConnect(_reason(error))
    elif isinstance(error, (ConnectionDone, ConnectionLost)):
        neutral = failures.Lost(_reason(error))
    return failures.reportFailure(neutral, args, ui)


def _reason(e: BaseException) -> str:
    from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost

    text = str(e).strip()
    if isinstance(e, (ConnectionDone, ConnectionLost)) and e.args:
        # Twisted's text is its generic reason then ours ("Connection was
        # closed cleanly: connection is closed."): say ours, once.
        text = " ".join(str(a) for a in e.args).strip()
    if isinstance(e, ConnectError) and e.osError is not None:
        text = os.strerror(e.osError) if isinstance(e.osError, int) else str(e.osError)
    return text.rstrip(".") or type(e).__name__
