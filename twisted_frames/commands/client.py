# -*- test-case-name: tests.commands.test_commands -*-
"""
Client side of the command service: run an allowed command on the server::

    result = await run(client, ["sh", "-c", "echo hi; exit 3"])
    result.exit, result.stdout      # 3, b"hi\\n"

    handle = startCommand(client, ["cat"], stdin=open("big", "rb"),
                          onStdout=out.write, onStderr=err.write)
    ...
    handle.cancel("SIGINT")
    result = await handle.result

Stdin of unknown length (a pipe, a file object) is read in a daemon thread
(so a read that blocks never blocks the reactor, and a pipe that never
reaches EOF cannot hold the process open at exit) and sent as C{stdin}
messages of L{STDIN_CHUNK} bytes, with at most L{STDIN_WINDOW} of them not
yet acknowledged by the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from ..client import FramesClient, Reply
from .result import STDIN_CHUNK, STDIN_WINDOW, CommandResult, StdinWindow

__all__ = [
    "STDIN_CHUNK",
    "STDIN_WINDOW",
    "CommandResult",
    "CommandRun",
    "run",
    "startCommand",
]

OutputHandler = Callable[[bytes], None]
StdinInput = bytes | IO[bytes] | int | None


class CommandRun:
    """
    A command running on the server.

    @ivar id: the C{run} request's id (what C{cancel} and C{stdin} name).
    @ivar pid: the remote process id, once the C{started} event came.
    @ivar timeout: the timeout the server applies, once started.
    @ivar result: fires with a L{CommandResult}, or fails with
        L{FramesError} if the server refused the command.
    """

    def __init__(
        self,
        client: FramesClient,
        onStdout: OutputHandler | None,
        onStderr: OutputHandler | None,
    ) -> None:
        self.client = client
        self.id = 0
        self.pid: int | None = None
        self.timeout: float | None = None
        self._onStdout = onStdout
        self._onStderr = onStderr
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._pump: _StdinPump | None = None
        self.result: defer.Deferred[CommandResult] = defer.Deferred()

    def cancel(self, signal: str = "SIGTERM") -> defer.Deferred[Reply]:
        """
        Ask the server to send C{signal} to the command's process group (and
        C{SIGKILL} after its grace period).

        @return: a Deferred firing with the server's acknowledgement, or
            failing with C{not_found} if the command had already ended.
        """
        return self.client.request("cancel", {"run": self.id, "signal": signal})

    def _event(self, header: dict[str, Any], body: bytes) -> None:
        event = header.get("event")
        if event == "stdout":
            if self._onStdout is not None:
                self._onStdout(body)
            else:
                self._stdout.append(body)
        elif event == "stderr":
            if self._onStderr is not None:
                self._onStderr(body)
            else:
                self._stderr.append(body)
        elif event == "started":
            self.pid = header.get("pid")
            self.timeout = header.get("timeout")

    def _finished(self, reply: Reply) -> CommandResult:
        if self._pump is not None:
            self._pump.stop()
        return CommandResult.fromHeader(
            reply.header, stdout=b"".join(self._stdout), stderr=b"".join(self._stderr)
        )

    def _failed(self, failure: Failure) -> Failure:
        if self._pump is not None:
            self._pump.stop()
        return failure


def startCommand(
    client: FramesClient,
    argv: Sequence[str],
    stdin: StdinInput = None,
    onStdout: OutputHandler | None = None,
    onStderr: OutputHandler | None = None,
    timeout: float | None = None,
    cwd: str | None = None,
    maxOutput: int | None = None,
    reactor: Any = None,
) -> CommandRun:
    """
    Start C{argv} on the server (C{argv[0]} is a name the server allows).

    @param stdin: C{None} for an empty stdin; C{bytes} sent with the
        request; or a binary file object or file descriptor, read until EOF
        in a thread and streamed.
    @param onStdout: called with each stdout chunk as it arrives (else the
        output is gathered in L{CommandResult.stdout}).
    @param onStderr: the same for stderr.
    @param timeout: seconds the server lets it run (at most its maximum).
    @param cwd: working directory relative to the server's root.
    @param maxOutput: ask for a smaller output cap than the server's.
    @param reactor: the reactor (for the stdin reading thread).
    """
    handle = CommandRun(client, onStdout, onStderr)
    fields: dict[str, Any] = {"argv": list(argv)}
    if timeout is not None:
        fields["timeout"] = timeout
    if cwd is not None:
        fields["cwd"] = cwd
    if maxOutput is not None:
        fields["maxOutput"] = maxOutput
    body = b""
    if isinstance(stdin, bytes | bytearray | memoryview):
        body = bytes(stdin)
    elif stdin is not None:
        fields["stdin"] = "stream"
    d = client.request("run", fields, body, onEvent=handle._event)
    handle.id = client.protocol.lastRequestId
    d.addCallbacks(handle._finished, handle._failed).chainDeferred(handle.result)
    if stdin is not None and not isinstance(stdin, bytes | bytearray | memoryview):
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        handle._pump = _StdinPump(reactor, client, handle.id, _reader(stdin))
        handle._pump.start()
    return handle


def run(
    client: FramesClient,
    argv: Sequence[str],
    stdin: StdinInput = None,
    onStdout: OutputHandler | None = None,
    onStderr: OutputHandler | None = None,
    timeout: float | None = None,
    cwd: str | None = None,
    maxOutput: int | None = None,
    reactor: Any = None,
) -> defer.Deferred[CommandResult]:
    """
    Run C{argv} on the server and wait for it: see L{startCommand}.

    @return: a Deferred firing with the L{CommandResult}.
    """
    return startCommand(
        client, argv, stdin, onStdout, onStderr, timeout, cwd, maxOutput, reactor
    ).result


def _reader(source: IO[bytes] | int) -> Callable[[int], bytes]:
    if isinstance(source, int):
        fd = source
        return lambda n: os.read(fd, n)
    read1 = getattr(source, "read1", None)
    if read1 is not None:
        return read1  # type: ignore[no-any-return]
    return source.read


class _StdinPump(StdinWindow):
    """
    Sends local stdin as C{stdin} messages of the run C{runId}, from the
    reactor thread.
    """

    def __init__(
        self, reactor: Any, client: FramesClient, runId: int, read: Callable[[int], bytes]
    ) -> None:
        super().__init__(read)
        self._reactor = reactor
        self._client = client
        self._runId = runId

    def deliver(self, data: bytes) -> None:
        self._reactor.callFromThread(self._send, data)

    def _send(self, data: bytes) -> None:
        if self.stopped:
            return
        d = self._client.request("stdin", {"run": self._runId, "eof": not data}, data)
        d.addCallbacks(self._acknowledged, lambda _: self.stop())

    def _acknowledged(self, reply: Reply) -> None:
        self.acknowledged(bool(reply.header.get("closed")))
