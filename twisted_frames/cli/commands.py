# -*- test-case-name: tests.cli.test_commands -*-
"""
C{frames run [--timeout S] [--json] -- ARGV...}: run an allowed command on
the server, like C{ssh host cmd} for the commands the server allows.

Stdin is forwarded when it is not a terminal; the command's stdout and
stderr are written to the local ones as they arrive; the exit status is the
command's (128+N if signal N killed it, 124 if the server's timeout did).
Ctrl-C cancels it remotely (C{SIGINT}); a second Ctrl-C sends C{SIGKILL};
a third hangs up.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import sys
from typing import Any

from ..commands.result import CommandResult
from .base import EXIT_USAGE, UI, openClient

#: The exit status when the server's timeout killed the command, as GNU
#: C{timeout(1)} does, so that scripts can tell it from the command's own.
EXIT_TIMED_OUT = 124
EXIT_INTERRUPTED = 128 + signal.SIGINT


def register(sub: Any) -> None:
    """
    Add C{frames run} to the C{frames} command line.
    """
    p = sub.add_parser(
        "run",
        help="run an allowed command on the server",
        description=(
            "Run a command the server allows (argv as given, never through a shell). "
            "Stdin is forwarded unless it is a terminal; stdout and stderr stream back; "
            "the exit status is the command's (128+N for signal N, 124 if the server's "
            "timeout killed it). Ctrl-C cancels it remotely."
        ),
        epilog="example: frames run --timeout 10 -- sh -c 'echo hi; exit 3'",
    )
    p.add_argument(
        "--timeout",
        dest="runTimeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds the server lets the command run (default: the server's)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the outputs and status as one JSON object",
    )
    p.add_argument("--cwd", default=None, help="working directory, relative to the server's root")
    p.add_argument(
        "--max-output",
        dest="maxOutput",
        type=int,
        default=None,
        metavar="BYTES",
        help="kill the command once its output passes BYTES (at most the server's cap)",
    )
    p.add_argument(
        "-n", "--no-stdin", dest="noStdin", action="store_true", help="do not forward stdin"
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGV", help="the command")
    p.set_defaults(run=runRemote)


class _Output:
    """
    Writes one remote stream to a local binary stream as it arrives, or
    gathers it for C{--json}.
    """

    def __init__(self, stream: Any, gather: bool, broken: Any) -> None:
        self.stream = stream
        self.gather = gather
        self.chunks: list[bytes] = []
        self._broken = broken

    def write(self, data: bytes) -> None:
        if self.gather:
            self.chunks.append(data)
            return
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            self._broken()


class _Control:
    """
    What the user does to a running remote command: Ctrl-C cancels it
    (C{SIGINT}, then C{SIGKILL}), a third hangs up; a closed stdout stops
    it (C{SIGTERM}), as C{SIGPIPE} would locally.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.handle: Any = None
        self.interrupts = 0
        self.brokenPipe = False

    def stdoutBroken(self) -> None:
        if not self.brokenPipe:
            self.brokenPipe = True
            _silenceStdout()
            self.handle.cancel("SIGTERM").addErrback(lambda _: None)

    def interrupted(self) -> None:
        self.interrupts += 1
        if self.interrupts <= 2:
            name = "SIGINT" if self.interrupts == 1 else "SIGKILL"
            self.handle.cancel(name).addErrback(lambda _: None)
        elif self.client.protocol.transport is not None:
            self.client.protocol.transport.abortConnection()


def _commandArgv(args: argparse.Namespace) -> list[str]:
    """
    The remote command's argv, after C{--}.

    @raise ValueError: none was given.
    """
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ValueError("give the command after --, e.g. frames run -- ls -l")
    return argv


async def runRemote(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    """
    The C{frames run} subcommand.
    """
    argv = _commandArgv(args)
    if args.runTimeout is not None and not args.runTimeout > 0:
        ui.error("run: --timeout must be a positive number of seconds")
        return EXIT_USAGE
    client = await openClient(reactor, args)
    control = _Control(client)
    out = _Output(_binary(sys.stdout), ui.json, control.stdoutBroken)
    err = _Output(_binary(sys.stderr), ui.json, lambda: None)
    stdin: Any = None
    if not args.noStdin and sys.stdin is not None and not _isTerminal(sys.stdin):
        stdin = sys.stdin.fileno()
    previous = signal.signal(
        signal.SIGINT, lambda signum, frame: reactor.callFromThread(control.interrupted)
    )
    try:
        from twisted.internet.error import ConnectionDone, ConnectionLost

        from ..commands.client import startCommand

        control.handle = startCommand(
            client,
            argv,
            stdin=stdin,
            onStdout=out.write,
            onStderr=err.write,
            timeout=args.runTimeout,
            cwd=args.cwd,
            maxOutput=args.maxOutput,
            reactor=reactor,
        )
        try:
            result = await control.handle.result
        except (ConnectionDone, ConnectionLost):
            if control.interrupts > 2:
                ui.error("run: interrupted; hung up (the server kills the command)")
                return EXIT_INTERRUPTED
            raise
    finally:
        signal.signal(signal.SIGINT, previous)
        await client.close()
    return report(ui, argv, result, out, err, control.brokenPipe)


def report(
    ui: UI, argv: list[str], result: CommandResult, out: _Output, err: _Output, broken: bool
) -> int:
    """
    Print how the remote command C{argv} ended (its outputs too with
    C{--json}) and return the status C{frames run} exits with.

    @param broken: our stdout was closed while it ran.
    """
    status = result.status
    if result.timedOut:
        status = EXIT_TIMED_OUT
    if ui.json:
        data: dict[str, Any] = {
            "ok": True,
            "argv": argv,
            "exit": result.exit,
            "signal": result.signal,
            "status": status,
            "elapsed": result.elapsed,
            "timedOut": result.timedOut,
            "cancelled": result.cancelled,
            "truncated": result.truncated,
        }
        for name, output in (("stdout", out), ("stderr", err)):
            raw = b"".join(output.chunks)
            try:
                data[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                data[name] = base64.b64encode(raw).decode("ascii")
                data[name + "Encoding"] = "base64"
        ui.result("", data)
        return status
    if result.timedOut:
        ui.error(
            f"run: {argv[0]} timed out after {result.elapsed:.1f} s; "
            f"the server killed it ({result.signal})"
        )
    elif result.truncated:
        ui.error(f"run: {argv[0]} output passed the server's cap; truncated and killed")
    if broken:
        return 128 + signal.SIGPIPE
    return status


def _binary(stream: Any) -> Any:
    return getattr(stream, "buffer", stream)


def _isTerminal(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return True


def _silenceStdout() -> None:
    # Python would complain about flushing a broken stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
