"""
Uploads to one target from several clients, and what failed uploads leave
behind, with real sockets, real worker threads, real server processes and a
real small file system (pytest + pytest-twisted).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from tests.serverprocess import ServerProcess
from tests.serverprocess import frames as runFrames
from twisted_frames.client import connect
from twisted_frames.files.blocking import PARTIAL_PREFIX
from twisted_frames.files.client import FileClient
from twisted_frames.files.paths import partialName
from twisted_frames.files.service import FileService
from twisted_frames.server import FramesServerFactory
from twisted_frames.wire import ErrorCode, FramesError

MiB = 1024 * 1024


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sha(data: bytes) -> str:
    """
    @return: the hex SHA-256 of C{data}.
    """
    return hashlib.sha256(data).hexdigest()


async def _until(condition: Any, timeout: float = 20.0) -> None:
    """
    Wait (bounded) until C{condition()} is true, checking every 10 ms.
    """
    reactor = _reactor()
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.01, lambda: None)


async def _failure(d: defer.Deferred[Any], timeout: float = 20.0) -> FramesError:
    """
    Wait (bounded) for C{d} to fail with a L{FramesError}; return it.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    await _until(lambda: bool(results), timeout)
    (result,) = results
    assert not isinstance(result, dict) and hasattr(result, "value"), result
    assert isinstance(result.value, FramesError), result
    return result.value


@pytest.fixture
def server(tmp_path: Any) -> Any:
    """
    A file service on a temp root, listening on a loopback port the kernel
    picked.
    """
    root = tmp_path / "root"
    root.mkdir()
    factory = FramesServerFactory([FileService(str(root))])
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    yield {"root": str(root), "address": f"127.0.0.1:{port.getHost().port}"}
    port.stopListening()


@implementer(IPushProducer)
class _GatedSource:
    """
    A request body of C{len(parts)} chunks, the next one sent only when the
    test opens its gate, so that a test can act in the middle of a body.
    """

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.length = sum(len(p) for p in parts)
        self.gates = [defer.Deferred[None]() for _ in parts[1:]]
        self.sent = 0
        self._done: defer.Deferred[None] = defer.Deferred()

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        defer.Deferred.fromCoroutine(self._send(consumer))
        return self._done

    async def _send(self, consumer: Any) -> None:
        for i, part in enumerate(self.parts):
            if i:
                await self.gates[i - 1]
            consumer.write(part)
            self.sent += 1
        self._done.callback(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_secondUploadBusyOverLoopback(server: Any, tmp_path: Any) -> None:
    """
    Over real TCP, an upload to a path that another connection is uploading
    (between two of its messages) is refused with C{busy}, also with
    C{--force}; the first upload completes with its own data.
    """
    src = tmp_path / "other"
    src.write_bytes(os.urandom(2 * MiB))
    first = await connect(_reactor(), server["address"])
    second = await connect(_reactor(), server["address"])
    try:
        reply = await first.request("put", {"path": "f", "final": False}, b"abc")
        assert reply.header["have"] == 3
        for overwrite in (False, True):
            with pytest.raises(FramesError) as e:
                await FileClient(second).putFile(str(src), "f", overwrite=overwrite)
            assert e.value.code == ErrorCode.BUSY
            assert e.value.message == "upload of f already in progress"
        reply = await first.request(
            "put", {"path": "f", "offset": 3, "sha256": sha(b"abcdef")}, b"def"
        )
        assert reply.header["size"] == 6
        assert (tmp_path / "root" / "f").read_bytes() == b"abcdef"
    finally:
        await first.close()
        await second.close()


@pytest_twisted.ensureDeferred
async def test_deleteDuringUploadOverLoopback(server: Any) -> None:
    """
    Over real TCP, C{delete} of a path in the middle of its upload's body
    cancels the upload: the uploader gets C{cancelled} after its next
    chunk, while the rest of its body is still unsent.
    """
    root = server["root"]
    parts = [os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)]
    uploader = await connect(_reactor(), server["address"])
    other = await connect(_reactor(), server["address"])
    try:
        source = _GatedSource(parts)
        upload = uploader.request("put", {"path": "f", "sha256": sha(b"".join(parts))}, source)
        partial = os.path.join(root, partialName("f"))
        await _until(lambda: os.path.exists(partial) and os.path.getsize(partial) == MiB)
        done = (await other.request("delete", {"path": "f"})).header
        assert (done["type"], done["partial"], done["cancelled"]) == ("partial", MiB, True)
        source.gates[0].callback(None)
        error = await _failure(upload)
        assert error.code == ErrorCode.CANCELLED
        assert "upload of f was cancelled" in error.message
        assert source.sent == 2
        source.gates[1].callback(None)
        assert await uploader.ping(b"still in step") == b"still in step"
        assert os.listdir(root) == []
    finally:
        await uploader.close()
        await other.close()


@pytest.fixture
def twoServers(tmp_path: Any) -> Iterator[tuple[str, ServerProcess, ServerProcess]]:
    """
    Two real C{twistd frameserver} processes serving the same root.
    """
    root = tmp_path / "root"
    root.mkdir()
    with ServerProcess(str(root)) as one, ServerProcess(str(root)) as two:
        yield str(root), one, two


@pytest_twisted.ensureDeferred
async def test_twoServerProcessesShareOneRoot(
    twoServers: tuple[str, ServerProcess, ServerProcess], tmp_path: Any
) -> None:
    """
    With an upload in progress through one server process, C{frames put -f}
    of the same path through another process sharing the root is refused
    (busy, exit 1); C{frames rm} through the other process cancels the
    upload, whose next message is told so.
    """
    root, one, two = twoServers
    src = tmp_path / "src"
    src.write_bytes(b"from the other client")
    client = await connect(_reactor(), one.address)
    try:
        await client.request("put", {"path": "p", "final": False}, b"abc")
        r = await threads.deferToThread(
            runFrames, "put", "-f", str(src), "p", server=two.address, timeout=60
        )
        assert r.returncode == 1, r
        assert b"upload of p already in progress [busy]" in r.stderr
        assert os.path.getsize(os.path.join(root, partialName("p"))) == 3
        r = await threads.deferToThread(runFrames, "rm", "p", server=two.address, timeout=60)
        assert r.returncode == 0, r
        assert b"cancelled" in r.stdout, r.stdout
        with pytest.raises(FramesError) as e:
            await client.request(
                "put", {"path": "p", "offset": 3, "sha256": sha(b"abcdef")}, b"def"
            )
        assert e.value.code == ErrorCode.CANCELLED
        assert os.listdir(root) == []
    finally:
        await client.close()


@pytest.fixture
def smallDisk() -> Iterator[str]:
    """
    A 12 MiB tmpfs mounted for the test (needs root), unmounted after.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    where = tempfile.mkdtemp(prefix="frames-small-disk-")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", where], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", where], capture_output=True)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", where], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def _used(path: str) -> int:
    vfs = os.statvfs(path)
    return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize


def test_noSpaceFromPipeGivesSpaceBack(smallDisk: str) -> None:
    """
    C{frames put - p80} of 20 MB from a pipe onto a 12 MiB file system
    fails with C{no_space} (exit 1), and at once the space is back and no
    partial is left: nothing for C{rm} or expiry to clean up.
    """
    before = _used(smallDisk)
    with ServerProcess(smallDisk) as server:
        r = runFrames("put", "-", "p80", server=server.address, input=os.urandom(20_000_000))
        assert r.returncode == 1, r
        assert b"[no_space]" in r.stderr, r.stderr
        assert [n for n in os.listdir(smallDisk) if n.startswith(PARTIAL_PREFIX)] == []
        assert _used(smallDisk) - before < 64 * 1024
        r = runFrames("rm", "p80", server=server.address)
        assert r.returncode == 1 and b"[not_found]" in r.stderr, r
