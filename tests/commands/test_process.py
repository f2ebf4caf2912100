"""
The command service with real processes, over a real loopback connection
(port 0), driven by pytest-twisted.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from twisted_frames.client import FramesClient, connect
from twisted_frames.commands.client import run, startCommand
from twisted_frames.commands.service import CommandService
from twisted_frames.commands.spec import CommandLimits, resolveCommand
from twisted_frames.server import FramesServerFactory
from twisted_frames.wire import ErrorCode, FramesError

ALLOWED = ["sh", "cat", "sha256sum", "head", "sleep"]


class Harness:
    """
    A frames server with a command service on 127.0.0.1 (port 0), and a
    connected client.
    """

    def __init__(self, root: str, **limits: Any) -> None:
        settings: dict[str, Any] = {"timeout": 30.0, "killGrace": 0.5}
        settings.update(limits)
        self.service = CommandService(
            reactor, root, [resolveCommand(n) for n in ALLOWED], CommandLimits(**settings)
        )
        self.port = reactor.listenTCP(
            0, FramesServerFactory([self.service], clock=reactor), interface="127.0.0.1"
        )
        self.clients: list[FramesClient] = []

    async def client(self) -> FramesClient:
        c = await connect(reactor, f"127.0.0.1:{self.port.getHost().port}")
        self.clients.append(c)
        return c

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        await self.service.stopService()
        await self.port.stopListening()


@pytest_twisted.async_yield_fixture
async def harness(tmp_path: Any) -> AsyncIterator[Harness]:
    """
    A server allowing L{ALLOWED}, stopped (all processes killed) after the
    test.
    """
    h = Harness(str(tmp_path))
    yield h
    await h.close()


def alive(pid: int) -> bool:
    """
    Whether C{pid} is still running, a moment after it was killed.

    A signalled process closes its files (which is what lets the server
    reply) a little before it becomes a zombie, so this waits for the exit
    itself, on a pidfd (readable once the process has exited), for at most
    5 s: no sleep, no polling.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        readable, _, _ = select.select([fd], [], [], 5.0)
        return not readable
    finally:
        os.close(fd)


async def runningCommand(h: Harness) -> Any:
    """
    The only run the service has in flight.
    """
    [mine] = h.service.runs.values()
    [running] = mine.values()
    return running


@pytest_twisted.ensureDeferred
async def test_shellMetacharactersArePlainArguments(harness: Harness) -> None:
    """
    Shell metacharacters, newlines and leading dashes reach the command as
    plain arguments: nothing is expanded or split.
    """
    client = await harness.client()
    tricky = [";", "echo pwned", "$(id)", "`id`", "a\nb", "-x", "--help", "&&", "|", "*", "$HOME"]
    script = 'for a in "$@"; do printf "[%s]" "$a"; done'
    result = await run(client, ["sh", "-c", script, "sh", *tricky])
    assert result.exit == 0
    assert result.stdout.decode() == "".join(f"[{a}]" for a in tricky)
    result = await run(client, ["head", "-c", "3", "--", "-not-an-option"])
    assert result.exit != 0
    assert b"-not-an-option" in result.stderr


@pytest_twisted.ensureDeferred
async def test_notAllowed(harness: Harness) -> None:
    """
    A command not on the list is refused with C{command_not_allowed}, and
    the connection still works.
    """
    client = await harness.client()
    with pytest.raises(FramesError) as caught:
        await run(client, ["ls", "/"])
    assert caught.value.code == ErrorCode.COMMAND_NOT_ALLOWED
    assert (await run(client, ["sh", "-c", "exit 0"])).exit == 0


@pytest_twisted.ensureDeferred
async def test_exitCodes(harness: Harness) -> None:
    """
    The exit code comes back as it is.
    """
    client = await harness.client()
    for code in (0, 1, 3, 255):
        result = await run(client, ["sh", "-c", f"exit {code}"])
        assert (result.exit, result.signal, result.status) == (code, None, code)


@pytest_twisted.ensureDeferred
async def test_deathBySignal(harness: Harness) -> None:
    """
    Death by signal is reported by name and number, status 128+N.
    """
    client = await harness.client()
    for name, signum in (("KILL", 9), ("TERM", 15), ("SEGV", 11)):
        result = await run(client, ["sh", "-c", f"kill -{name} $$"])
        assert (result.exit, result.signal, result.signum) == (None, f"SIG{name}", signum)
        assert result.status == 128 + signum


@pytest_twisted.ensureDeferred
async def test_bothStreams10MB(harness: Harness) -> None:
    """
    10 MB on stdout and 10 MB on stderr at the same time: no deadlock,
    nothing lost, nothing reordered within a stream.
    """
    client = await harness.client()
    n = 1_450_000
    expected = "".join(f"{i}\n" for i in range(1, n + 1)).encode()
    assert len(expected) > 10_000_000
    result = await run(client, ["sh", "-c", f"seq 1 {n} & seq 1 {n} >&2; wait"])
    assert result.exit == 0
    assert result.stdout == expected
    assert result.stderr == expected


@pytest_twisted.ensureDeferred
async def test_stdin100MB(harness: Harness) -> None:
    """
    100 MB of stdin of unknown length is streamed (from a file object read
    in chunks), and arrives whole and in order.
    """
    client = await harness.client()
    size = 100 * 1024 * 1024
    source = PatternReader(size)
    result = await run(client, ["sha256sum"], stdin=source)
    assert result.exit == 0
    assert result.stdout.split()[0].decode() == source.digest.hexdigest()
    assert source.read == size


class PatternReader:
    """
    A binary file object of C{size} bytes of a varying pattern, hashing
    what it hands out.
    """

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.read = 0
        self.digest = hashlib.sha256()
        self._block = bytes(range(256)) * 1024

    def read1(self, n: int) -> bytes:
        n = min(n, self.remaining, len(self._block))
        start = self.read % 256
        data = self._block[start : start + n] if start + n <= len(self._block) else b""
        if len(data) < n:
            data = (self._block[start:] + self._block)[:n]
        self.remaining -= len(data)
        self.read += len(data)
        self.digest.update(data)
        return data


@pytest_twisted.ensureDeferred
async def test_stdinAsBody(harness: Harness) -> None:
    """
    Stdin given as bytes travels in the C{run} body and is echoed back.
    """
    client = await harness.client()
    data = os.urandom(3 * 1024 * 1024)
    result = await run(client, ["cat"], stdin=data)
    assert result.stdout == data


@pytest_twisted.ensureDeferred
async def test_timeoutLeavesNoOrphan(harness: Harness) -> None:
    """
    At the timeout the whole process group dies: the command and its
    children, even a child that ignores C{SIGTERM} (killed after the grace
    period).
    """
    client = await harness.client()
    for script in ("sleep 1000 & echo $!; wait", "trap '' TERM; sleep 1000 & echo $!; wait"):
        result = await run(client, ["sh", "-c", script], timeout=0.3)
        assert result.timedOut
        assert result.signal in ("SIGTERM", "SIGKILL")
        child = int(result.stdout)
        assert not alive(child)


@pytest_twisted.ensureDeferred
async def test_backgroundJobKilledAtExit(harness: Harness) -> None:
    """
    A background job left by a command that exits is killed with it, and
    the run ends at once instead of waiting for the job.
    """
    client = await harness.client()
    result = await run(client, ["sh", "-c", "sleep 1000 & echo $!"], timeout=20)
    assert result.exit == 0
    assert not result.timedOut
    assert not alive(int(result.stdout))


@pytest_twisted.ensureDeferred
async def test_cancel(harness: Harness) -> None:
    """
    Cancel signals the whole group with the chosen signal; the reply says
    cancelled and no child is left.
    """
    client = await harness.client()
    lines: list[bytes] = []
    started: defer.Deferred[None] = defer.Deferred()

    def onStdout(data: bytes) -> None:
        lines.append(data)
        if not started.called:
            started.callback(None)

    handle = startCommand(client, ["sh", "-c", "sleep 1000 & echo $!; wait"], onStdout=onStdout)
    await started
    await handle.cancel("SIGINT")
    result = await handle.result
    assert result.cancelled
    assert result.signal in ("SIGINT", "SIGKILL")
    assert not alive(int(b"".join(lines)))


@pytest_twisted.ensureDeferred
async def test_disconnectKills(harness: Harness) -> None:
    """
    When the client disconnects, its commands' process groups are killed.
    """
    client = await harness.client()
    started: defer.Deferred[bytes] = defer.Deferred()
    handle = startCommand(
        client,
        ["sh", "-c", "sleep 1000 & echo $!; wait"],
        onStdout=lambda d: started.called or started.callback(d),
    )
    handle.result.addErrback(lambda _: None)
    child = int(await started)
    running = await runningCommand(harness)
    await client.close()
    await running.ended
    assert not alive(child)
    assert not alive(running.pid)


@pytest_twisted.ensureDeferred
async def test_outputCap(harness: Harness) -> None:
    """
    Output over the cap is cut at the cap and the command is killed.
    """
    client = await harness.client()
    result = await run(client, ["head", "-c", "10000000", "/dev/zero"], maxOutput=1000)
    assert result.truncated
    assert result.stdout == b"\0" * 1000


@pytest_twisted.ensureDeferred
async def test_shutdownKills(harness: Harness) -> None:
    """
    Stopping the service kills running commands and waits for them.
    """
    client = await harness.client()
    started: defer.Deferred[bytes] = defer.Deferred()
    handle = startCommand(
        client,
        ["sh", "-c", "echo $$; exec sleep 1000"],
        onStdout=lambda d: started.called or started.callback(d),
    )
    pid = int(await started)
    await harness.service.stopService()
    assert not alive(pid)
    result = await handle.result
    assert result.signal == "SIGTERM"
    with pytest.raises(FramesError) as caught:
        await run(client, ["sh"])
    assert caught.value.code == ErrorCode.SHUTTING_DOWN


def test_ownProcessGroup() -> None:
    """
    The session launcher makes the command its own process group leader.
    """
    import subprocess

    from twisted_frames.commands.process import sessionLauncher

    out = subprocess.run(
        [*sessionLauncher(), "/bin/sh", "-c", "ps -o pid=,pgid=,sid= -p $$"],
        capture_output=True,
        check=True,
        text=True,
        timeout=10,
    ).stdout.split()
    assert out[0] == out[1] == out[2]
    assert int(out[1]) != os.getpgid(0)


#: Starts a process in a session of its own that keeps stdout open, and
#: prints its pid once it is there (a FIFO, so no race with the group kill
#: at exit).
ESCAPE = (
    "mkfifo escaped; setsid sh -c 'echo $$ > escaped; exec sleep 1000' & "
    "read pid < escaped; echo $pid"
)


@pytest_twisted.ensureDeferred
async def test_escapedHolderOfOutputDoesNotKeepRunForever(harness: Harness) -> None:
    """
    A grandchild that leaves the process group (C{setsid}) cannot be
    killed with the group, and holds the output pipes open; the run still
    ends at its timeout plus the grace period, and frees its process slot.
    """
    if shutil.which("setsid") is None:
        pytest.skip("no setsid command")
    client = await harness.client()
    started: defer.Deferred[bytes] = defer.Deferred()
    handle = startCommand(
        client,
        ["sh", "-c", ESCAPE],
        timeout=0.5,
        onStdout=lambda data: started.called or started.callback(data),
    )
    escaped = int(await started)
    try:
        handle.result.addTimeout(15, reactor)
        result = await handle.result
        assert result.exit == 0
        assert result.timedOut
        assert harness.service.count == 0
        assert harness.service.runs == {}
    finally:
        os.kill(escaped, signal.SIGKILL)


@pytest_twisted.ensureDeferred
async def test_shutdownDoesNotWaitForEscapedHolder(tmp_path: Any) -> None:
    """
    Stopping the service does not wait for the timeout of a run whose
    output is held open by a process outside its group.
    """
    if shutil.which("setsid") is None:
        pytest.skip("no setsid command")
    h = Harness(str(tmp_path), timeout=1000.0)
    client = await h.client()
    started: defer.Deferred[bytes] = defer.Deferred()
    handle = startCommand(
        client,
        ["sh", "-c", ESCAPE],
        onStdout=lambda data: started.called or started.callback(data),
    )
    escaped = int(await started)
    try:
        stopped = defer.ensureDeferred(h.service.stopService())
        stopped.addTimeout(15, reactor)
        await stopped
        assert h.service.count == 0
        await handle.result
    finally:
        os.kill(escaped, signal.SIGKILL)
        for c in h.clients:
            await c.close()
        await h.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_clientNotReadingDoesNotHoldSlotPastTimeout(harness: Harness) -> None:
    """
    A client that stops reading stalls the command's output; at the
    timeout the command is killed and the run ends (its slot is freed)
    although its output was never read.
    """
    client = await harness.client()
    client.protocol.transport.pauseProducing()
    handle = startCommand(client, ["head", "-c", "100000000", "/dev/zero"], timeout=0.5)
    handle.result.addErrback(lambda _: None)
    await _whenRunning(harness)
    running = await runningCommand(harness)
    running.ended.addTimeout(15, reactor)
    try:
        await running.ended
        assert running.timedOut
        assert harness.service.count == 0
    finally:
        client.protocol.transport.resumeProducing()


async def _whenRunning(h: Harness) -> None:
    """
    Wait (on the reactor, without sleeping) until the service has a run.
    """
    while not h.service.runs:
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0, d.callback, None)
        await d


@pytest_twisted.ensureDeferred
async def test_escapedHolderOfStdinDoesNotKeepRunForever(harness: Harness) -> None:
    """
    A process outside the group that holds stdin open without reading it
    keeps the server's stdin writer from ever flushing; the run still ends
    at its timeout plus the grace period.
    """
    if shutil.which("setsid") is None:
        pytest.skip("no setsid command")
    client = await harness.client()
    started: defer.Deferred[bytes] = defer.Deferred()
    handle = startCommand(
        client,
        ["sh", "-c", "exec 3<&0; " + ESCAPE.replace(" & ", " <&3 & ")],
        stdin=b"x" * 3_000_000,
        timeout=0.5,
        onStdout=lambda data: started.called or started.callback(data),
    )
    escaped = int(await started)
    try:
        assert os.readlink(f"/proc/{escaped}/fd/0").startswith("pipe:")
        handle.result.addTimeout(15, reactor)
        result = await handle.result
        assert result.timedOut
        assert harness.service.count == 0
    finally:
        os.kill(escaped, signal.SIGKILL)
