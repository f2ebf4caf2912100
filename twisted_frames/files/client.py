# -*- test-case-name: tests.files.test_files -*-
"""
The client side of the file service: list, stat, delete, mkdir, and verified,
resumable, atomic uploads and downloads of files and directory trees::

    files = FileClient(await connect(reactor, "127.0.0.1:8007"))
    await files.putFile("big.iso", "isos/big.iso")
    await files.getFile("isos/big.iso", "copy.iso", resume=True)

Downloads are written to a hidden partial file next to the target, verified
against the server's SHA-256 and then renamed into place, exactly as uploads
are on the server.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from twisted.python.failure import Failure

from ..client import FramesClient
from ..protocol import BodySink
from ..wire import ErrorCode, FramesError, ProtocolViolation
from .store import (
    DEFAULT_SEGMENT,
    PARTIAL_PREFIX,
    FileSource,
    FileWriter,
    ThreadRunner,
    closeQuietly,
    defaultRunner,
    hashPrefix,
    newHash,
    readExact,
    tuneTransport,
)

#: Files up to this size are read whole and sent in one message (one round
#: trip); larger ones are streamed in segments followed by a commit message.
SMALL_FILE = 1024 * 1024
#: Chunk size for uploads from a pipe (size unknown in advance).
STREAM_CHUNK = 8 * 1024 * 1024

Progress = Callable[[int], None]

#: What an existing target's error says, for C{put} and C{get} alike.
ALREADY_EXISTS_HINT = "already exists (use -f/--force to overwrite)"


class LocalError(Exception):
    """
    Something is wrong on the client's side (a local file exists, a remote
    name would escape the local directory, ...).

    @ivar code: a stable code in the style of L{ErrorCode}.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: The longest local file name, in bytes (C{NAME_MAX} of Linux and most
#: file systems; the server accepts remote names up to this length too).
MAX_LOCAL_NAME = 255
_PARTIAL_SUFFIX = ".frames-partial"


def localPartialName(target: str) -> str:
    """
    The hidden partial file a download to C{target} is written to, in the
    same directory: C{.NAME.frames-partial}, deterministic so that
    C{--resume} finds it again.

    When that would pass L{MAX_LOCAL_NAME} bytes (a name of 240 bytes or
    more), it is C{.PREFIX.HASH.frames-partial} instead: the longest
    prefix of the name that fits (cut at a character, never inside one)
    and 16 hex digits of the SHA-256 of the whole name, so that every
    name the server accepts can be downloaded, and two long names with the
    same prefix get different partials.
    """
    head, tail = os.path.split(target)
    short = f".{tail}{_PARTIAL_SUFFIX}"
    if len(os.fsencode(short)) <= MAX_LOCAL_NAME:
        return os.path.join(head, short)
    digest = hashlib.sha256(os.fsencode(tail)).hexdigest()[:16]
    suffix = f".{digest}{_PARTIAL_SUFFIX}"
    room = MAX_LOCAL_NAME - 1 - len(suffix)
    prefix = []
    for ch in tail:
        room -= len(os.fsencode(ch))
        if room < 0:
            break
        prefix.append(ch)
    return os.path.join(head, f".{''.join(prefix)}{suffix}")


def checkRemoteName(name: Any) -> str:
    """
    Check a name from a remote listing before using it as a local file name.

    @raise LocalError: C{forbidden_path} if it could escape the local
        directory it is joined to.
    """
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(PARTIAL_PREFIX)
        or (name.startswith(".") and name.endswith(_PARTIAL_SUFFIX))
    ):
        raise LocalError(
            ErrorCode.FORBIDDEN_PATH, f"refusing remote name {name!r}: it could escape the target"
        )
    return name


def joinRemote(*parts: str) -> str:
    """
    Join remote path parts with C{/}, ignoring empty ones.
    """
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


@dataclass
class TreeResult:
    """
    The outcome of a recursive transfer.

    @ivar files: one result dict per file transferred.
    @ivar skipped: C{(path, reason)} for links and special files.
    @ivar errors: C{(path, error)} for files that failed.
    """

    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, Exception]] = field(default_factory=list)


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
        if header.get("event") != "data" or header.get("offset") != self.position:
            raise ProtocolViolation(
                ErrorCode.BAD_REQUEST,
                f"unexpected event {header.get('event')!r} at offset {header.get('offset')!r}"
                f" (expected data at {self.position})",
            )
        self.position += length
        return _DownloadSink(self, length)


class FileClient:
    """
    File operations over a connected L{FramesClient}.  Every method is a
    coroutine (wrap with C{Deferred.fromCoroutine} from non-async code).

    @param runInThread: runs local disk work and hashing off the reactor.
    @param segmentSize: the largest body of one upload message.
    """

    def __init__(
        self,
        client: FramesClient,
        runInThread: ThreadRunner | None = None,
        segmentSize: int | None = None,
    ) -> None:
        self.client = client
        tuneTransport(client.protocol.transport)
        self.run: ThreadRunner = runInThread or defaultRunner()
        limit = client.greeting.get("limits", {}).get("body", DEFAULT_SEGMENT)
        if not isinstance(limit, int) or limit <= 0:
            limit = DEFAULT_SEGMENT
        self.segmentSize = min(segmentSize or DEFAULT_SEGMENT, limit)

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
        Upload a local regular file, verified with SHA-256 end to end.

        @param resume: continue an interrupted upload from the bytes the
            server already has (the whole file is still verified).
        @return: the final reply header (C{path}, C{size}, C{sha256}), plus
            C{resumed_from}.
        """
        fd = await self.run(_openRegular, local)
        try:
            size = os.fstat(fd).st_size
            offset = await self.partialSize(remote) if resume else 0
            if offset > size:
                offset = 0
            try:
                return await self._putFrom(fd, size, offset, remote, overwrite, progress)
            except FramesError as e:
                if not offset or e.code != ErrorCode.INTEGRITY_ERROR:
                    raise
                # The server's partial came from another file: start over
                # (the server has discarded it).
                if progress is not None:
                    progress(-offset)
                return await self._putFrom(fd, size, 0, remote, overwrite, progress)
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
    ) -> dict[str, Any]:
        hasher = newHash()
        if progress is not None and offset:
            progress(offset)
        if offset:
            await self.run(hashPrefix, fd, offset, hasher)
        fields: dict[str, Any] = {"path": remote, "size": size, "overwrite": overwrite}
        if offset == 0 and size <= SMALL_FILE:
            data = await self.run(_readAndHash, fd, size, hasher)
            reply = await self.client.request(
                "put",
                {**fields, "offset": 0, "final": True, "sha256": hasher.hexdigest()},
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
                "put", {**fields, "offset": size, "final": True, "sha256": hasher.hexdigest()}
            )
        result = dict(reply.header)
        result["resumed_from"] = offset
        return result

    async def putStream(
        self,
        stream: BinaryIO,
        remote: str,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """
        Upload from a pipe or other stream of unknown length (e.g. stdin),
        in L{STREAM_CHUNK} messages, verified as a whole at the end.
        """
        hasher = newHash()
        fields: dict[str, Any] = {"path": remote, "overwrite": overwrite}
        pos = 0
        while True:
            chunk = await self.run(_readChunk, stream, STREAM_CHUNK)
            if pos == 0 and len(chunk) < STREAM_CHUNK:
                hasher.update(chunk)
                reply = await self.client.request(
                    "put",
                    {
                        **fields,
                        "offset": 0,
                        "final": True,
                        "size": len(chunk),
                        "sha256": hasher.hexdigest(),
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
                        "sha256": hasher.hexdigest(),
                    },
                )
                break
            hasher.update(chunk)
            await self.client.request("put", {**fields, "offset": pos, "final": False}, chunk)
            pos += len(chunk)
            if progress is not None:
                progress(len(chunk))
        result = dict(reply.header)
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
        the server's SHA-256, then renamed into place.

        @param resume: continue from the partial file an interrupted
            download left.
        @raise LocalError: C{already_exists} if C{local} exists and not
            C{overwrite}; C{integrity_error} on a hash mismatch (the
            partial is then deleted).
        """
        if not overwrite and os.path.lexists(local):
            raise LocalError(ErrorCode.ALREADY_EXISTS, f"{local}: {ALREADY_EXISTS_HINT}")
        part = localPartialName(local)
        fd, offset = await self.run(_openPartial, part, resume)
        try:
            hasher = newHash()
            if offset:
                await self.run(hashPrefix, fd, offset, hasher)
                if progress is not None:
                    progress(offset)
            try:
                reply = await self._download(remote, fd, offset, hasher, progress)
            except FramesError as e:
                if not offset or e.code != ErrorCode.INVALID_ARGUMENT or "size" not in e.details:
                    raise
                # The partial is longer than the remote file: start over.
                await self.run(os.ftruncate, fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                hasher = newHash()
                if progress is not None:
                    progress(-offset)
                offset = 0
                reply = await self._download(remote, fd, 0, hasher, progress)
            header = reply
            if hasher.hexdigest() != header.get("sha256"):
                await self.run(_unlinkQuietly, part)
                raise LocalError(
                    ErrorCode.INTEGRITY_ERROR,
                    f"{remote}: SHA-256 mismatch (got {hasher.hexdigest()}, server says "
                    f"{header.get('sha256')}); nothing was stored",
                )
            await self.run(_commitLocal, fd, part, local, overwrite)
            fd = -1
        except FramesError:
            # Refused before a byte came (not found, a directory, ...): leave
            # no empty partial behind.  One with data is kept for --resume.
            if fd >= 0 and os.fstat(fd).st_size == 0:
                await self.run(_unlinkQuietly, part)
            raise
        finally:
            if fd >= 0:
                closeQuietly(fd)
        result = dict(header)
        result["local"] = local
        result["resumed_from"] = offset
        return result

    async def getStream(
        self, remote: str, fd: int, progress: Progress | None = None
    ) -> dict[str, Any]:
        """
        Download to an open descriptor (e.g. stdout), verifying the hash at
        the end (what was written cannot be taken back: a mismatch raises).
        """
        hasher = newHash()
        header = await self._download(remote, fd, 0, hasher, progress)
        if hasher.hexdigest() != header.get("sha256"):
            raise LocalError(
                ErrorCode.INTEGRITY_ERROR,
                f"{remote}: SHA-256 mismatch (got {hasher.hexdigest()}, server says "
                f"{header.get('sha256')})",
            )
        return dict(header)

    async def _download(
        self, remote: str, fd: int, offset: int, hasher: Any, progress: Progress | None
    ) -> dict[str, Any]:
        download = _Download(fd, offset, hasher, self.run, progress)
        try:
            reply = await self.client.request(
                "get", {"path": remote, "offset": offset}, eventSink=download.sinkFor
            )
        finally:
            try:
                await download.writer.drain()
            except Exception:
                pass
        if download.writer.error is not None:
            download.writer.error.raiseException()
        if download.position != reply.header.get("size"):
            raise FramesError(
                ErrorCode.INTEGRITY_ERROR,
                f"{remote}: received {download.position} bytes, server says "
                f"{reply.header.get('size')}",
            )
        return reply.header

    # -- trees ----------------------------------------------------------------

    async def putTree(
        self,
        local: str,
        remote: str,
        overwrite: bool = False,
        resume: bool = False,
        onFile: Callable[[str, dict[str, Any]], None] | None = None,
        progress: Progress | None = None,
    ) -> TreeResult:
        """
        Upload a directory recursively: regular files and directories only;
        links and special files are reported in C{skipped}.
        """
        result = TreeResult()
        await self.mkdir(remote, parents=True)
        await self._putDir(local, remote, overwrite, resume, onFile, progress, result)
        return result

    async def _putDir(
        self,
        local: str,
        remote: str,
        overwrite: bool,
        resume: bool,
        onFile: Callable[[str, dict[str, Any]], None] | None,
        progress: Progress | None,
        result: TreeResult,
    ) -> None:
        entries = await self.run(_scan, local)
        for name, kind in entries:
            lpath = os.path.join(local, name)
            rpath = joinRemote(remote, name)
            try:
                if kind == "directory":
                    await self.mkdir(rpath, parents=True)
                    await self._putDir(lpath, rpath, overwrite, resume, onFile, progress, result)
                elif kind == "file":
                    done = await self.putFile(lpath, rpath, overwrite, resume, progress)
                    result.files.append(done)
                    if onFile is not None:
                        onFile(lpath, done)
                else:
                    result.skipped.append((lpath, kind))
            except (FramesError, LocalError, OSError) as e:
                result.errors.append((lpath, e))

    async def getTree(
        self,
        remote: str,
        local: str,
        overwrite: bool = False,
        resume: bool = False,
        onFile: Callable[[str, dict[str, Any]], None] | None = None,
        progress: Progress | None = None,
    ) -> TreeResult:
        """
        Download a remote directory recursively; remote names that could
        escape C{local} are refused and reported in C{errors}.
        """
        result = TreeResult()
        os.makedirs(local, exist_ok=True)
        await self._getDir(remote, local, overwrite, resume, onFile, progress, result)
        return result

    async def _getDir(
        self,
        remote: str,
        local: str,
        overwrite: bool,
        resume: bool,
        onFile: Callable[[str, dict[str, Any]], None] | None,
        progress: Progress | None,
        result: TreeResult,
    ) -> None:
        for entry in await self.list(remote):
            rpath = joinRemote(remote, str(entry.get("name")))
            try:
                name = checkRemoteName(entry.get("name"))
                lpath = os.path.join(local, name)
                kind = entry.get("type")
                if kind == "directory":
                    await self.run(_makeLocalDir, lpath)
                    await self._getDir(rpath, lpath, overwrite, resume, onFile, progress, result)
                elif kind == "file":
                    done = await self.getFile(rpath, lpath, overwrite, resume, progress)
                    result.files.append(done)
                    if onFile is not None:
                        onFile(rpath, done)
                else:
                    result.skipped.append((rpath, str(kind)))
            except (FramesError, LocalError, OSError) as e:
                result.errors.append((rpath, e))


def _openRegular(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LocalError(ErrorCode.INVALID_ARGUMENT, f"{path}: not a regular file")
    return fd


def _readAndHash(fd: int, size: int, hasher: Any) -> bytes:
    data = readExact(fd, 0, size)
    hasher.update(data)
    return data


def _readChunk(stream: BinaryIO, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _openPartial(part: str, resume: bool) -> tuple[int, int]:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if not resume:
        flags |= os.O_TRUNC
    fd = os.open(part, flags, 0o666)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LocalError(ErrorCode.INVALID_ARGUMENT, f"{part}: not a regular file")
    os.lseek(fd, st.st_size, os.SEEK_SET)
    return fd, st.st_size


def _commitLocal(fd: int, part: str, local: str, overwrite: bool) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if overwrite:
        os.replace(part, local)
    else:
        try:
            os.link(part, local, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise LocalError(
                    ErrorCode.ALREADY_EXISTS, f"{local}: {ALREADY_EXISTS_HINT}"
                ) from None
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            os.replace(part, local)
            return
        os.unlink(part)
    dirfd = os.open(os.path.dirname(os.path.abspath(local)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _unlinkQuietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _makeLocalDir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path) or os.path.islink(path):
            raise LocalError(
                ErrorCode.ALREADY_EXISTS, f"{path}: exists and is not a directory"
            ) from None


def _scan(path: str) -> list[tuple[str, str]]:
    out = []
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_symlink():
                kind = "symlink"
            elif entry.is_dir(follow_symlinks=False):
                kind = "directory"
            elif entry.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "other"
            out.append((entry.name, kind))
    out.sort()
    return out
