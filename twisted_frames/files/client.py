# -*- test-case-name: tests.files.test_files -*-
"""
The client side of the file service: list, stat, delete, mkdir, and verified,
resumable, atomic uploads and downloads of files and directory trees::

    files = FileClient(await connect(reactor, "127.0.0.1:8007"))
    await files.putFile("big.iso", "isos/big.iso")
    await files.getFile("isos/big.iso", "copy.iso", resume=True)

Downloads are written to a hidden partial file next to the target, verified
against the server's digest and then renamed into place, exactly as uploads
are on the server.  Every transfer is verified with the fastest hash both
ends have (L{chooseHash}: BLAKE3 where the greeting offers it, else
SHA-256), or the one the caller names.  Trees are walked by L{twisted_frames.files.tree}; the
local partial files, their commit and L{LocalError} live in
L{twisted_frames.files.local}.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.python.failure import Failure

from ..bodies import DirectReceiver
from ..client import FramesClient
from ..protocol import BodySink
from ..wire import ErrorCode, FramesError
from .blocking import (
    SMALL_FILE,
    checkKnown,
    chooseHash,
    closeQuietly,
    hashFields,
    hashPrefix,
    newHash,
    readExact,
    withDigest,
)
from .local import (
    ALREADY_EXISTS_HINT,
    LocalError,
    checkDataEvent,
    checkReceived,
    checkRemoteName,
    commitLocal,
    downloadResult,
    localPartialName,
    mismatchDiscarded,
    openPartial,
    openRegular,
    partialTooLong,
    refuseExisting,
    unlinkQuietly,
    verifyDownload,
)
from .store import (
    DEFAULT_SEGMENT,
    FileSource,
    FileWriter,
    ThreadRunner,
    defaultRunner,
    tuneTransport,
)
from .tree import OnFile, TreeResult, getTree, putTree

if TYPE_CHECKING:
    from twisted.internet import defer

__all__ = [
    "ALREADY_EXISTS_HINT",
    "FileClient",
    "LocalError",
    "TreeResult",
    "checkRemoteName",
    "chooseHash",
    "localPartialName",
]

#: Chunk size for uploads from a pipe (size unknown in advance).
STREAM_CHUNK = 8 * 1024 * 1024

Progress = Callable[[int], None]


class _DownloadSink(BodySink):
    """
    The sink of one C{data} event: appends to the shared writer of a
    download, pausing the connection while the writer is full.
    """

    def __init__(self, download: _Download, length: int) -> None:
        self.download = download
        self.length = length

    def bodyStarted(self, length: int, producer: Any) -> None:
        self.download.producer = producer
        if self.download.writer.isPaused:
            self.download.paused = True
            producer.pauseProducing()

    def bodyData(self, data: bytes) -> None:
        self.download.writer.write(data)
        if self.download.progress is not None:
            self.download.progress(len(data))

    @property
    def receivesDirect(self) -> bool:  # type: ignore[override]
        """
        Whether the rest of the body may be received off the reactor
        (L{BodySink.receiveDirect}): while the download's writer writes.
        """
        return self.download.writer.error is None

    def receiveDirect(self, receive: DirectReceiver) -> defer.Deferred[None] | None:
        return self.download.writer.receiveDirect(receive)

    def bodyProgress(self, count: int) -> None:
        if self.download.progress is not None:
            self.download.progress(count)

    def bodyFinished(self) -> None:
        self.download.producer = None

    def bodyFailed(self, reason: Failure) -> None:
        self.download.producer = None


class _Download:
    """
    One download in progress: a writer shared by all its data events.
    """

    def __init__(
        self, fd: int, offset: int, hasher: Any, run: ThreadRunner, progress: Progress | None
    ) -> None:
        self.position = offset
        self.progress = progress
        self.producer: Any = None
        self.writer = FileWriter(fd, hasher, run, self._pause, self._resume)
        self.paused = False

    def _pause(self) -> None:
        if self.producer is not None and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.producer is not None:
                self.producer.resumeProducing()

    def sinkFor(self, header: dict[str, Any], length: int) -> BodySink:
        checkDataEvent(header, self.position)
        self.position += length
        return _DownloadSink(self, length)


class FileClient:
    """
    File operations over a connected L{FramesClient}.  Every method is a
    coroutine (wrap with C{Deferred.fromCoroutine} from non-async code).

    @param runInThread: runs local disk work and hashing off the reactor.
    @param segmentSize: the largest body of one upload message.
    @param hash: the transfer hash to verify with (a key of
        L{HASHES<twisted_frames.files.blocking.HASHES>}); by default the fastest
        the server offers too (L{chooseHash}).
    @raise ValueError: for a C{hash} this client does not have.
    """

    def __init__(
        self,
        client: FramesClient,
        runInThread: ThreadRunner | None = None,
        segmentSize: int | None = None,
        hash: str | None = None,
    ) -> None:
        if hash is not None:
            checkKnown(hash)
        self.client = client
        self.forcedHash = hash
        tuneTransport(client.protocol.transport)
        self.run: ThreadRunner = runInThread or defaultRunner()
        limit = client.greeting.get("limits", {}).get("body", DEFAULT_SEGMENT)
        if not isinstance(limit, int) or limit <= 0:
            limit = DEFAULT_SEGMENT
        self.segmentSize = min(segmentSize or DEFAULT_SEGMENT, limit)

    def transferHash(self) -> str:
        """
        @return: the hash this client's transfers are verified with.
        @raise FramesError: C{unsupported_hash} if the hash asked for is
            not one the server offers (nothing is sent).
        """
        return chooseHash(self.client.greeting, self.forcedHash)

    async def list(self, path: str = "") -> list[dict[str, Any]]:
        """
        @return: the entries of a remote directory (name, type, size,
            mtime, mode).
        """
        import json

        reply = await self.client.request("list", {"path": path})
        entries: list[dict[str, Any]] = json.loads(reply.body.decode("utf-8"))
        return entries

    async def stat(self, path: str) -> dict[str, Any]:
        """
        @return: the remote path's type, size, mtime, mode (and C{partial}).
        """
        return (await self.client.request("stat", {"path": path})).header

    async def delete(self, path: str) -> dict[str, Any]:
        """
        Remove a remote file, link or empty directory.
        """
        return (await self.client.request("delete", {"path": path})).header

    async def mkdir(self, path: str, parents: bool = True) -> dict[str, Any]:
        """
        Create a remote directory (by default with its parents, like
        C{mkdir -p}).
        """
        return (await self.client.request("mkdir", {"path": path, "parents": parents})).header

    async def partialSize(self, path: str) -> int:
        """
        @return: how many bytes of an interrupted upload to C{path} the
            server holds (0 if none).
        """
        try:
            info = await self.stat(path)
        except FramesError as e:
            if e.code != ErrorCode.NOT_FOUND:
                raise
            partial = e.details.get("partial", 0)
        else:
            partial = info.get("partial", 0)
        return partial if isinstance(partial, int) and partial >= 0 else 0

    # -- upload ---------------------------------------------------------------

    async def putFile(
        self,
        local: str,
        remote: str,
        overwrite: bool = False,
        resume: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """
        Upload a local regular file, verified end to end with
        L{transferHash}.

        @param resume: continue an interrupted upload from the bytes the
            server already has (the whole file is still verified).
        @return: the final reply header (C{path}, C{size}, and the digest:
            C{sha256}, or C{hash} and C{digest}), plus C{hash}, C{digest}
            and C{resumed_from}.
        """
        name = self.transferHash()
        fd = await self.run(openRegular, local)
        try:
            size = os.fstat(fd).st_size
            offset = await self.partialSize(remote) if resume else 0
            if offset > size:
                offset = 0
            try:
                return await self._putFrom(fd, size, offset, remote, overwrite, progress, name)
            except FramesError as e:
                if not offset or e.code != ErrorCode.INTEGRITY_ERROR:
                    raise
                # The server's partial came from another file: start over
                # (the server has discarded it).
                if progress is not None:
                    progress(-offset)
                return await self._putFrom(fd, size, 0, remote, overwrite, progress, name)
        finally:
            os.close(fd)

    async def _putFrom(
        self,
        fd: int,
        size: int,
        offset: int,
        remote: str,
        overwrite: bool,
        progress: Progress | None,
        name: str,
    ) -> dict[str, Any]:
        hasher = newHash(name)
        if progress is not None and offset:
            progress(offset)
        if offset:
            await self.run(hashPrefix, fd, offset, hasher)
        fields: dict[str, Any] = {"path": remote, "size": size, "overwrite": overwrite}
        fields.update(hashFields(name))
        if offset == 0 and size <= SMALL_FILE:
            data = await self.run(_readAndHash, fd, size, hasher)
            reply = await self.client.request(
                "put",
                {**fields, "offset": 0, "final": True, **hashFields(name, hasher.hexdigest())},
                data,
            )
            if progress is not None:
                progress(size)
        else:
            # An empty first message lets the server refuse (exists, no
            # space, bad path, ...) before gigabytes are streamed: once a
            # body is announced it must be sent in full, even if refused.
            await self.client.request("put", {**fields, "offset": offset, "final": False})
            pos = offset
            while pos < size:
                n = min(self.segmentSize, size - pos)
                source = FileSource(fd, pos, n, hasher, self.run, progress)
                try:
                    await self.client.request(
                        "put", {**fields, "offset": pos, "final": False}, source
                    )
                finally:
                    source.detach()
                    await source.whenIdle()
                pos += n
            reply = await self.client.request(
                "put",
                {**fields, "offset": size, "final": True, **hashFields(name, hasher.hexdigest())},
            )
        result = withDigest(reply.header, name, hasher.hexdigest())
        result["resumed_from"] = offset
        return result

    async def putStream(
        self,
        stream: BinaryIO,
        remote: str,
        overwrite: bool = False,
        progress: Progress | None = None,
        sent: Progress | None = None,
    ) -> dict[str, Any]:
        """
        Upload from a pipe or other stream of unknown length (e.g. stdin),
        in L{STREAM_CHUNK} messages, verified as a whole at the end.

        @param progress: called with the bytes of each message the server
            has acknowledged.
        @param sent: called with the bytes of each message as it is sent
            (what the server keeps of them if the upload is cut short is
            its partial, which cannot be resumed: the stream is gone).
        """
        name = self.transferHash()
        hasher = newHash(name)
        fields: dict[str, Any] = {"path": remote, "overwrite": overwrite, **hashFields(name)}
        pos = 0
        while True:
            # Hashed where it is read, in the worker thread: never on the
            # reactor's.
            chunk = await self.run(_readChunk, stream, STREAM_CHUNK, hasher)
            if sent is not None:
                sent(len(chunk))
            if pos == 0 and len(chunk) < STREAM_CHUNK:
                reply = await self.client.request(
                    "put",
                    {
                        **fields,
                        "offset": 0,
                        "final": True,
                        "size": len(chunk),
                        **hashFields(name, hasher.hexdigest()),
                    },
                    chunk,
                )
                pos = len(chunk)
                if progress is not None:
                    progress(pos)
                break
            if not chunk:
                reply = await self.client.request(
                    "put",
                    {
                        **fields,
                        "offset": pos,
                        "final": True,
                        "size": pos,
                        **hashFields(name, hasher.hexdigest()),
                    },
                )
                break
            await self.client.request("put", {**fields, "offset": pos, "final": False}, chunk)
            pos += len(chunk)
            if progress is not None:
                progress(len(chunk))
        result = withDigest(reply.header, name, hasher.hexdigest())
        result["resumed_from"] = 0
        return result

    # -- download ---------------------------------------------------------------

    async def getFile(
        self,
        remote: str,
        local: str,
        overwrite: bool = False,
        resume: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """
        Download to C{local} through a hidden partial file, verified against
        the server's digest of L{transferHash}, then renamed into place.

        @param resume: continue from the partial file an interrupted
            download left.
        @raise LocalError: C{already_exists} if C{local} exists and not
            C{overwrite}; C{integrity_error} on a hash mismatch (the
            partial is then deleted).
        """
        name = self.transferHash()
        refuseExisting(local, overwrite)
        part = localPartialName(local)
        fd, offset = await self.run(openPartial, part, resume)
        try:
            hasher = newHash(name)
            if offset:
                await self.run(hashPrefix, fd, offset, hasher)
                if progress is not None:
                    progress(offset)
            try:
                reply = await self._download(remote, fd, offset, hasher, progress, name)
            except FramesError as e:
                if not partialTooLong(e, offset):
                    raise
                # The partial is longer than the remote file: start over.
                await self.run(os.ftruncate, fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                hasher = newHash(name)
                if progress is not None:
                    progress(-offset)
                offset = 0
                reply = await self._download(remote, fd, 0, hasher, progress, name)
            header = reply
            try:
                digest = verifyDownload(remote, name, hasher, header)
            except LocalError as e:
                await self.run(unlinkQuietly, part)
                raise mismatchDiscarded(e) from None
            await self.run(commitLocal, fd, part, local, overwrite)
            fd = -1
        except FramesError:
            # Refused before a byte came (not found, a directory, ...): leave
            # no empty partial behind.  One with data is kept for --resume.
            if fd >= 0 and os.fstat(fd).st_size == 0:
                await self.run(unlinkQuietly, part)
            raise
        finally:
            if fd >= 0:
                closeQuietly(fd)
        return downloadResult(header, name, digest, local, offset)

    async def getStream(
        self, remote: str, fd: int, progress: Progress | None = None
    ) -> dict[str, Any]:
        """
        Download to an open descriptor (e.g. stdout), verifying the hash at
        the end (what was written cannot be taken back: a mismatch raises).
        """
        name = self.transferHash()
        hasher = newHash(name)
        header = await self._download(remote, fd, 0, hasher, progress, name)
        return withDigest(header, name, verifyDownload(remote, name, hasher, header))

    async def _download(
        self,
        remote: str,
        fd: int,
        offset: int,
        hasher: Any,
        progress: Progress | None,
        name: str,
    ) -> dict[str, Any]:
        download = _Download(fd, offset, hasher, self.run, progress)
        try:
            reply = await self.client.request(
                "get",
                {"path": remote, "offset": offset, **hashFields(name)},
                eventSink=download.sinkFor,
            )
        finally:
            try:
                await download.writer.drain()
            except Exception:
                pass
        if download.writer.error is not None:
            download.writer.error.raiseException()
        checkReceived(remote, download.position, reply.header)
        return reply.header

    # -- trees ------------------------------------------------------------------

    async def putTree(
        self,
        local: str,
        remote: str,
        overwrite: bool = False,
        resume: bool = False,
        onFile: OnFile | None = None,
        progress: Progress | None = None,
    ) -> TreeResult:
        """
        Upload a directory recursively (L{twisted_frames.files.tree.putTree}).

        @raise FramesError: C{unsupported_hash} before anything is sent, as
            L{transferHash}.
        """
        self.transferHash()
        return await putTree(self, local, remote, overwrite, resume, onFile, progress)

    async def getTree(
        self,
        remote: str,
        local: str,
        overwrite: bool = False,
        resume: bool = False,
        onFile: OnFile | None = None,
        progress: Progress | None = None,
    ) -> TreeResult:
        """
        Download a directory recursively (L{twisted_frames.files.tree.getTree}).

        @raise FramesError: C{unsupported_hash} before anything is sent, as
            L{transferHash}.
        """
        self.transferHash()
        return await getTree(self, remote, local, overwrite, resume, onFile, progress)


def _readAndHash(fd: int, size: int, hasher: Any) -> bytes:
    data = readExact(fd, 0, size)
    hasher.update(data)
    return data


def _readChunk(stream: BinaryIO, n: int, hasher: Any) -> bytes:
    parts = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    chunk = b"".join(parts)
    hasher.update(chunk)
    return chunk
