"""
File service over real loopback TCP, with the real reactor and real worker
threads (pytest + pytest-twisted): concurrency, segmented transfers and
backpressure.  Sizes are tens of MiB, not GiB, to stay fast.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import blake3
import pytest
import pytest_twisted
from twisted.internet import defer, task

from tests.loopback import recordConnections, until
from twisted_frames import _speedups
from twisted_frames.client import connect
from twisted_frames.files.client import FileClient
from twisted_frames.files.service import FileService
from twisted_frames.protocol import BodySink
from twisted_frames.server import FramesServerFactory

MiB = 1024 * 1024


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _randomFile(path: str, size: int, hashType: Any = hashlib.sha256) -> str:
    h = hashType()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(MiB, left))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


@pytest.fixture
def server(tmp_path: Any) -> Any:
    """
    A file service on a temp root, listening on a loopback port picked by
    the kernel.
    """
    root = tmp_path / "root"
    root.mkdir()
    service = FileService(str(root), segmentSize=5 * MiB)
    factory = FramesServerFactory([service])
    connections = recordConnections(factory)
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    yield {
        "root": str(root),
        "address": f"127.0.0.1:{port.getHost().port}",
        "connections": connections,
    }
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_segmentedRoundTrip(server: Any, tmp_path: Any) -> None:
    """
    A 20 MiB file goes up in 3 MiB segments and comes back in 5 MiB events
    over real TCP, written by worker threads, with matching BLAKE3 digests
    (the hash both ends negotiate).
    """
    src = str(tmp_path / "src")
    digest = _randomFile(src, 20 * MiB + 3, blake3.blake3)
    client = await connect(_reactor(), server["address"])
    try:
        files = FileClient(client, segmentSize=3 * MiB)
        put = await files.putFile(src, "f")
        assert (put["hash"], put["digest"]) == ("blake3", digest)
        dst = str(tmp_path / "dst")
        got = await files.getFile("f", dst)
        assert (got["hash"], got["digest"]) == ("blake3", digest)
        with open(src, "rb") as a, open(dst, "rb") as b:
            assert a.read() == b.read()
        assert os.listdir(server["root"]) == ["f"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_pingDuringUpload(server: Any, tmp_path: Any) -> None:
    """
    While one connection uploads 48 MiB, another connection's pings are
    answered before the upload finishes: disk work and hashing do not hold
    the reactor.
    """
    src = str(tmp_path / "src")
    _randomFile(src, 48 * MiB)
    uploader = await connect(_reactor(), server["address"])
    pinger = await connect(_reactor(), server["address"])
    try:
        order: list[str] = []
        upload = defer.Deferred.fromCoroutine(FileClient(uploader).putFile(src, "f"))
        upload.addCallback(lambda _: order.append("upload"))
        await until(lambda: os.listdir(server["root"]) != [] or upload.called)
        for _ in range(3):
            await pinger.ping(b"x")
        order.append("pings")
        await upload
        assert order == ["pings", "upload"]
    finally:
        await uploader.close()
        await pinger.close()


class _StalledSink(BodySink):
    """
    A download sink that stops the connection reading until released, then
    hashes what it gets.
    """

    def __init__(self, stall: bool, hasher: Any) -> None:
        self.stall = stall
        self.producer: Any = None
        self.received = 0
        self.hash = hasher

    def bodyStarted(self, length: int, producer: Any) -> None:
        self.producer = producer
        if self.stall:
            producer.pauseProducing()

    def bodyData(self, data: bytes) -> None:
        self.received += len(data)
        self.hash.update(data)

    def release(self) -> None:
        self.producer.resumeProducing()


@pytest_twisted.ensureDeferred
async def test_slowReaderBoundsServerBuffer(server: Any, tmp_path: Any) -> None:
    """
    A client that stops reading during a 40 MiB download makes the server
    stop reading the file: its send buffer and read-ahead stay a few MiB,
    not the file's size.  Once the client reads again, the download
    completes and verifies.
    """
    root = server["root"]
    digest = _randomFile(os.path.join(root, "f"), 40 * MiB)
    client = await connect(_reactor(), server["address"])
    try:
        sinks: list[_StalledSink] = []
        hasher = hashlib.sha256()

        def makeSink(header: dict[str, Any], length: int) -> BodySink:
            sink = _StalledSink(not sinks, hasher)
            sinks.append(sink)
            return sink

        reply = client.request("get", {"path": "f"}, eventSink=makeSink)
        await until(lambda: bool(sinks))
        (connection,) = server["connections"]
        transport = connection.transport
        # Let the server fill every buffer it is going to fill.
        previous = -1
        for _ in range(100):
            buffered = len(transport.dataBuffer) + transport._tempDataLen
            if buffered == previous:
                break
            previous = buffered
            await task.deferLater(_reactor(), 0.05, lambda: None)
        source = connection._activeSource[0]
        assert buffered <= 4 * MiB
        assert source._requested <= 8 * MiB
        sinks[0].release()
        result = await reply
        assert sum(s.received for s in sinks) == 40 * MiB
        assert result.header["sha256"] == digest == hasher.hexdigest()
    finally:
        await client.close()


@pytest.mark.skipif(
    not _speedups.enabled() or not hasattr(os, "sendfile"), reason="the file send is disabled"
)
@pytest_twisted.ensureDeferred
async def test_plainTCPSendsFilesWithSendfile(
    server: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    """
    Over plain TCP both an upload (the client's side) and a download (the
    server's) go from the page cache to the socket with C{os.sendfile},
    every byte of the bodies, and both still verify.
    """
    calls: list[int] = []
    original = os.sendfile

    def counting(out: int, fd: int, offset: int | None, count: int) -> int:
        sent = original(out, fd, offset, count)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    src = str(tmp_path / "src")
    _randomFile(src, 12 * MiB + 5)
    with open(src, "rb") as f:
        digest = blake3.blake3(f.read()).hexdigest()
    client = await connect(_reactor(), server["address"])
    try:
        files = FileClient(client)
        put = await files.putFile(src, "f")
        assert (put["hash"], put["digest"]) == ("blake3", digest)
        assert sum(calls) == 12 * MiB + 5
        dst = str(tmp_path / "dst")
        got = await files.getFile("f", dst)
        assert (got["hash"], got["digest"]) == ("blake3", digest)
        assert sum(calls) == 2 * (12 * MiB + 5)
        with open(src, "rb") as a, open(dst, "rb") as b:
            assert a.read() == b.read()
    finally:
        await client.close()
