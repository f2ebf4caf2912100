# -*- test-case-name: tests.cli.test_cli -*-
"""
What every C{frames} subcommand shares: the L{UI} (text or C{--json}), exit
statuses, L{Interruption} (Ctrl-C/SIGTERM with the resume command), and
L{openClient} (connect with the security flags).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

from ..bounds import boundedArgument
from ..printable import printable
from ..wire import FramesError
from . import keys

if TYPE_CHECKING:
    from twisted.internet import defer

    from ..client import FramesClient

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
    server keeps an upload's), and L{twisted_frames.cli.main.runCommand} then reports one line
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
    @ivar kept: says what the server keeps of an upload that cannot be
        resumed, and how to remove it: a clause for the line (shell-quoted
        and escaped) and its JSON, or C{None} if it keeps nothing.
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
        self.kept: Callable[[], tuple[str, dict[str, Any]] | None] | None = None
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
        self,
        what: str,
        resume: list[str] | None = None,
        partial: str | None = None,
        kept: Callable[[], tuple[str, dict[str, Any]] | None] | None = None,
    ) -> None:
        """
        Say what the command is doing, for the message if it is interrupted.

        @param what: e.g. C{"get big.iso"} (printed escaped).
        @param resume: the C{frames} arguments that resume it.
        @param partial: a local file keeping what was done.
        @param kept: see L{kept}.
        """
        self.what, self.resume, self.partial, self.kept = what, resume, partial, kept

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
        kept = None if self.kept is None else self.kept()
        if kept is not None:
            line += f"; {kept[0]}"
            data["kept"] = kept[1]
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
    # Here, not at the top: the client loads Twisted's TCP transport, which
    # twisted_frames.cli.main.main imports only once it knows whether the
    # command needs TLS.
    from ..client import connect

    security = keys.clientSecurity(args)
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
        raise keys.explainLoginFailure(e, secret.user) if secret else e from None
    except Exception as e:
        explained = keys.explainTLSFailure(e, args.server)
        if explained is None:
            raise
        raise explained from None
    interruption = interruptionOf(args)
    if interruption is not None:
        interruption.track(client)
    return client


#: C{argparse} types of the client's counts and durations.
_positive = boundedArgument(1)
_nonNegative = boundedArgument(0)
_seconds = boundedArgument(0, kind=float, noun="a number of seconds", unit=" seconds")
