# -*- test-case-name: tests.commands.test_commands -*-
"""
What both clients of the command service share, without Twisted (the
C{frames} CLI's quick path, L{twisted_frames.cli.quick}, imports it too):
how a remote command ended (L{CommandResult}) and how C{stdin} is sent
(L{STDIN_CHUNK}, L{STDIN_WINDOW}, L{StdinWindow}).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Bytes per C{stdin} message.
STDIN_CHUNK = 256 * 1024
#: C{stdin} messages in flight before waiting for an acknowledgement: the
#: server buffers at most this much for a process that is not reading, and
#: never has to stop reading the connection (so a cancel gets through).
STDIN_WINDOW = 4


@dataclass
class CommandResult:
    """
    How a remote command ended.

    @ivar exit: its exit code, or C{None} if a signal killed it.
    @ivar signal: the name of the signal that killed it (C{"SIGTERM"}), or
        C{None}.
    @ivar signum: that signal's number, or C{None}.
    @ivar elapsed: seconds from start to end, measured by the server.
    @ivar timedOut: the server's wall-clock timeout killed it.
    @ivar cancelled: a C{cancel} request signalled it.
    @ivar truncated: its output went over the cap, was cut there, and the
        command was killed.
    @ivar stdout: its stdout, unless an C{onStdout} handler took it.
    @ivar stderr: its stderr, unless an C{onStderr} handler took it.
    @ivar header: the final reply's whole header.
    """

    exit: int | None
    signal: str | None
    signum: int | None
    elapsed: float
    timedOut: bool
    cancelled: bool
    truncated: bool
    stdout: bytes = b""
    stderr: bytes = b""
    header: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fromHeader(
        cls, header: dict[str, Any], stdout: bytes = b"", stderr: bytes = b""
    ) -> CommandResult:
        """
        @param header: the header of the C{run} request's final reply.
        @param stdout: the outputs kept, if any.
        """
        return cls(
            exit=header.get("exit"),
            signal=header.get("signal"),
            signum=header.get("signum"),
            elapsed=float(header.get("elapsed", 0.0)),
            timedOut=bool(header.get("timedOut")),
            cancelled=bool(header.get("cancelled")),
            truncated=bool(header.get("truncated")),
            stdout=stdout,
            stderr=stderr,
            header=header,
        )

    @property
    def status(self) -> int:
        """
        The status as a shell reports it: the exit code, or 128 + the
        signal number.
        """
        if self.exit is not None:
            return self.exit
        return 128 + (self.signum or 0)


class StdinWindow:
    """
    Reads local stdin in a daemon thread (a read that blocks must hold up
    neither the caller nor the process's exit), keeping at most
    L{STDIN_WINDOW} chunks not yet acknowledged.  Each chunk read, then
    C{b""} at the end (or after a read error), goes to L{deliver} in that
    thread.
    """

    def __init__(self, read: Callable[[int], bytes]) -> None:
        """
        @param read: reads up to N bytes of stdin; C{b""} at its end.
        """
        self._read = read
        self._permits = threading.Semaphore(STDIN_WINDOW)
        self._stopped = False

    def deliver(self, data: bytes) -> None:
        """
        Called in the reading thread with each chunk, C{b""} last: send it.
        """
        raise NotImplementedError()

    def start(self) -> None:
        """
        Start the reading thread.
        """
        threading.Thread(target=self._loop, name="frames-stdin", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._permits.acquire()
            if self._stopped:
                return
            try:
                data = self._read(STDIN_CHUNK)
            except (OSError, ValueError):
                data = b""
            self.deliver(data)
            if not data:
                return

    def acknowledged(self, closed: bool) -> None:
        """
        The server took a chunk; C{closed}: the command closed its stdin,
        so send no more.
        """
        if closed:
            self.stop()
        else:
            self._permits.release()

    def stop(self) -> None:
        """
        Send no more (the command ended, or closed its stdin).
        """
        self._stopped = True
        self._permits.release()

    @property
    def stopped(self) -> bool:
        """
        Whether L{stop} was called.
        """
        return self._stopped
