"""
The file service: C{list}, C{stat}, C{get}, C{put}, C{delete}, C{mkdir}, all
confined to one root directory.

Confinement does not rely on checking a path string and then opening it (a
symlink swapped in between would win).  Each request path is first checked
as text (no C{..}, no absolute paths, no NUL, no backslash, no empty or
over-long segments, no reserved names), then walked one directory at a time
from a descriptor of the root with C{openat}-style calls (C{dir_fd=}) and
C{O_NOFOLLOW}: a symbolic link anywhere on the path is refused, whenever it
appeared.  Symbolic links are listed (type C{symlink}) and can be deleted,
never followed.

Uploads go to a hidden partial file in the target directory, named from the
target's name, so that an interrupted upload can be resumed; they are fsynced,
verified against the client's SHA-256 and only then linked or renamed into
place.  Files larger than one frame travel as several C{put} messages with
offsets, and C{get} answers with as many C{data} events as needed.

All disk work (walks, reads, writes, hashing, fsync) runs in worker threads
through an injectable C{runInThread}, so one client's transfer never stalls
another's requests.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .filestore import (
    FileSource,
    FileWriter,
    ThreadRunner,
    closeQuietly,
    defaultRunner,
    errorFromOSError,
    hashPrefix,
    newHash,
    tuneTransport,
)
from .protocol import BodySink
from .server import Request, ServerProtocol, Service, operation
from .wire import ErrorCode, FramesError

log = Logger(namespace="twisted_frames.files")

#: Names starting with this are the server's own partial uploads: never
#: listed, never addressable by a client.
PARTIAL_PREFIX = ".frames-partial-"
#: Longest path segment, in UTF-8 bytes (Linux's NAME_MAX).
MAX_NAME = 255
#: Longest request path, in UTF-8 bytes (Linux's PATH_MAX).
MAX_PATH = 4096
#: Largest body of one C{get} data event: files beyond it (and beyond the
#: 4 GiB - 1 a frame can carry) are sent as several events.
DEFAULT_SEGMENT = 1 << 30
#: Hash states of unfinished uploads kept between segments.
MAX_REMEMBERED_HASHES = 1024
#: Default lifetime of an abandoned partial upload.
DEFAULT_PARTIAL_TTL = 24 * 3600.0

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def checkPath(path: Any, allowRoot: bool = False) -> list[str]:
    """
    Check a client's path as text and split it into segments.

    @param allowRoot: whether C{""} (the root itself) is acceptable.
    @return: the segments (empty for the root).
    @raise FramesError: C{invalid_argument} if it is not a string,
        C{forbidden_path} if it could name something outside the root or
        one of the server's partial files.
    """
    if not isinstance(path, str):
        raise FramesError(ErrorCode.INVALID_ARGUMENT, "'path' must be a string")
    if path == "":
        if allowRoot:
            return []
        raise FramesError(ErrorCode.FORBIDDEN_PATH, "the root itself cannot be used here", path="")

    def refuse(why: str) -> FramesError:
        return FramesError(ErrorCode.FORBIDDEN_PATH, f"{path!r}: {why}", path=path)

    if "\x00" in path:
        raise refuse("NUL byte in path")
    if "\\" in path:
        raise refuse("backslash in path")
    if path.startswith("/"):
        raise refuse("absolute paths are not allowed (paths are relative to the root)")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse("path is not valid Unicode") from None
    if len(encoded) > MAX_PATH:
        raise refuse(f"path longer than {MAX_PATH} bytes")
    segments = path.split("/")
    for segment in segments:
        if segment == "":
            raise refuse("empty path segment")
        if segment in (".", ".."):
            raise refuse(f"{segment!r} segments are not allowed")
        if len(segment.encode("utf-8")) > MAX_NAME:
            raise refuse(f"name longer than {MAX_NAME} bytes")
        # Any case: on a case-insensitive file system the other spellings
        # open the same files.
        if segment.casefold().startswith(PARTIAL_PREFIX):
            raise refuse("names starting with '.frames-partial-' are reserved")
    return segments


def partialName(name: str) -> str:
    """
    The hidden partial file an upload to C{name} writes to, in the same
    directory: deterministic, so that a resumed upload finds it.
    """
    return PARTIAL_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()[:40]


def fileType(mode: int) -> str:
    """
    @return: C{file}, C{directory}, C{symlink} or C{other}.
    """
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def describe(name: str, st: os.stat_result) -> dict[str, Any]:
    """
    The fields C{list} and C{stat} report for one entry.
    """
    return {
        "name": name,
        "type": fileType(st.st_mode),
        "size": st.st_size,
        "mtime": st.st_mtime,
        "mode": stat.S_IMODE(st.st_mode),
    }


def _field(header: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = header.get(name, default)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise FramesError(ErrorCode.INVALID_ARGUMENT, f"{name!r} must be a non-negative integer")
    if kind is bool and not isinstance(value, bool):
        raise FramesError(ErrorCode.INVALID_ARGUMENT, f"{name!r} must be true or false")
    return value


def _checkSha(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise FramesError(ErrorCode.INVALID_ARGUMENT, "'sha256' must be 64 hex digits")
    value = value.lower()
    if any(c not in "0123456789abcdef" for c in value):
        raise FramesError(ErrorCode.INVALID_ARGUMENT, "'sha256' must be 64 hex digits")
    return str(value)


class Root:
    """
    Blocking, confined file-system operations on one root directory.  Every
    method runs in a worker thread and raises L{FramesError}.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def openDir(self, segments: list[str], display: str) -> int:
        """
        Walk C{segments} from the root without following links.

        @return: a descriptor of the directory reached (the caller closes it).
        """
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for segment in segments:
                try:
                    nfd = os.open(segment, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        self._whyNotDir(fd, segment, display, e)
                    raise
                os.close(fd)
                fd = nfd
        except OSError as e:
            os.close(fd)
            raise errorFromOSError(e, display) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _whyNotDir(self, fd: int, segment: str, display: str, e: OSError) -> None:
        try:
            st = os.stat(segment, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise FramesError(
                ErrorCode.FORBIDDEN_PATH,
                f"{display}: {segment!r} is a symbolic link (links are not followed)",
                path=display,
            )

    def lstat(self, dirfd: int, name: str, display: str) -> os.stat_result:
        """
        C{lstat} of C{name} in C{dirfd}.
        """
        try:
            return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except OSError as e:
            raise errorFromOSError(e, display) from None

    # -- list, stat, delete, mkdir -------------------------------------------

    def listDir(self, segments: list[str], display: str) -> tuple[list[dict[str, Any]], int]:
        """
        @return: the entries of a directory (partial uploads left out) and
            how many names were skipped because they are not UTF-8.
        """
        fd = self.openDir(segments, display)
        try:
            entries = []
            skipped = 0
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        name = entry.name
                        if name.startswith(PARTIAL_PREFIX):
                            continue
                        try:
                            name.encode("utf-8")
                        except UnicodeEncodeError:
                            skipped += 1
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        entries.append(describe(name, st))
            except OSError as e:
                raise errorFromOSError(e, display) from None
            entries.sort(key=lambda e: e["name"])
            return entries, skipped
        finally:
            os.close(fd)

    def stat(self, segments: list[str], display: str) -> dict[str, Any]:
        """
        @return: the C{stat} fields of a path, and C{partial} (bytes of a
            resumable upload to it) if there is one.
        """
        if not segments:
            fd = self.openDir([], display)
            try:
                return describe("", os.fstat(fd))
            finally:
                os.close(fd)
        fd = self.openDir(segments[:-1], display)
        try:
            name = segments[-1]
            partial = self._partialSize(fd, name)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                error = errorFromOSError(e, display)
                if partial is not None:
                    error.details["partial"] = partial
                raise error from None
            out = describe(name, st)
            if partial is not None:
                out["partial"] = partial
            return out
        finally:
            os.close(fd)

    def _partialSize(self, dirfd: int, name: str) -> int | None:
        try:
            st = os.stat(partialName(name), dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def delete(self, segments: list[str], display: str, busy: Callable[[str], bool]) -> str:
        """
        Remove a file, a symbolic link (not its target) or an empty
        directory.

        @param busy: tells whether a partial file (by absolute path) is in
            use, so that a directory holding only stale partials can go.
        @return: the type of what was removed.
        """
        fd = self.openDir(segments[:-1], display)
        try:
            name = segments[-1]
            st = self.lstat(fd, name, display)
            kind = fileType(st.st_mode)
            try:
                if kind == "directory":
                    try:
                        os.rmdir(name, dir_fd=fd)
                    except OSError as e:
                        if e.errno != errno.ENOTEMPTY:
                            raise
                        self._removeStalePartials(fd, name, display, busy)
                        os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
                    try:
                        os.unlink(partialName(name), dir_fd=fd)
                    except FileNotFoundError:
                        pass
            except OSError as e:
                raise errorFromOSError(e, display) from None
            return kind
        finally:
            os.close(fd)

    def _removeStalePartials(
        self, parent: int, name: str, display: str, busy: Callable[[str], bool]
    ) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            names = os.listdir(fd)
            if any(not n.startswith(PARTIAL_PREFIX) for n in names):
                return
            where = os.path.join(self.path, display)
            for n in names:
                if not busy(os.path.join(where, n)):
                    os.unlink(n, dir_fd=fd)
        finally:
            os.close(fd)

    def mkdir(self, segments: list[str], display: str, parents: bool) -> bool:
        """
        Create a directory (and its parents if asked).

        @return: whether it was created (C{False}: it existed, with
            C{parents}).
        """
        if not parents:
            fd = self.openDir(segments[:-1], display)
            try:
                os.mkdir(segments[-1], dir_fd=fd)
            except OSError as e:
                raise errorFromOSError(e, display) from None
            finally:
                os.close(fd)
            return True
        fd = self.openDir([], display)
        created = False
        try:
            for index, segment in enumerate(segments):
                try:
                    os.mkdir(segment, dir_fd=fd)
                    created = True
                except FileExistsError:
                    created = False
                try:
                    nfd = os.open(segment, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        self._whyNotDir(fd, segment, display, e)
                        if index == len(segments) - 1:
                            raise OSError(errno.EEXIST, "exists and is not a directory") from None
                    raise
                os.close(fd)
                fd = nfd
        except OSError as e:
            raise errorFromOSError(e, display) from None
        finally:
            os.close(fd)
        return created

    # -- get -----------------------------------------------------------------

    def openForRead(self, segments: list[str], display: str) -> tuple[int, os.stat_result]:
        """
        Open a regular file for reading, without following links.
        """
        parent = self.openDir(segments[:-1], display)
        try:
            try:
                fd = os.open(
                    segments[-1],
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                    dir_fd=parent,
                )
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise FramesError(
                        ErrorCode.FORBIDDEN_PATH,
                        f"{display}: is a symbolic link (links are not followed)",
                        path=display,
                    ) from None
                raise errorFromOSError(e, display) from None
        finally:
            os.close(parent)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                raise FramesError(
                    ErrorCode.IS_A_DIRECTORY, f"{display}: is a directory", path=display
                )
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT, f"{display}: not a regular file", path=display
            )
        return fd, st


class _Turn:
    """
    A connection's turn to send a file: held by one C{get} at a time, the
    others wait in order.
    """

    def __init__(self) -> None:
        self.held = False
        self.waiting: deque[defer.Deferred[None]] = deque()

    def acquire(self) -> defer.Deferred[None]:
        """
        @return: a Deferred firing when it is the caller's turn.
        """
        if not self.held:
            self.held = True
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append(d)
        return d

    def release(self) -> None:
        """
        Pass the turn to the next waiting, if any.
        """
        if self.waiting:
            self.waiting.popleft().callback(None)
        else:
            self.held = False

    def releaseWaiting(self) -> None:
        """
        Wake every waiting one at once, each on its own: through
        L{release}, each would run inside the previous one's release,
        hundreds deep.
        """
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.callback(None)


@dataclass
class _Upload:
    """
    The state of one C{put} message between its worker-thread steps.
    """

    display: str
    name: str
    offset: int
    final: bool
    size: int | None
    sha256: str | None
    overwrite: bool
    parent: int = -1
    fd: int = -1
    hasher: Any = None


class FileService(Service):
    """
    The file operations, confined to C{root}.

    @param root: the directory served (created by the tap if missing).
    @param runInThread: runs blocking work away from the reactor; tests
        pass L{twisted_frames.filestore.synchronousRunner}.
    @param partialTTL: seconds after its last write that an abandoned
        partial upload is deleted by L{expirePartials}.
    @param segmentSize: the largest body of one C{get} data event.
    @param clock: time source for expiry (a C{Clock} in tests).
    """

    def __init__(
        self,
        root: str,
        runInThread: ThreadRunner | None = None,
        partialTTL: float = DEFAULT_PARTIAL_TTL,
        segmentSize: int = DEFAULT_SEGMENT,
        clock: Any = None,
    ) -> None:
        self.root = Root(root)
        self.run: ThreadRunner = runInThread or defaultRunner()
        self.partialTTL = partialTTL
        self.segmentSize = segmentSize
        self.clock = clock
        # Partial files in use, by absolute path, each with a lock (by
        # request path) so that pipelined segments of one upload run strictly
        # in order.
        self._locks: dict[tuple[str, ...], defer.DeferredLock] = {}
        self._busyPaths: set[str] = set()
        # Hash state of partial files after the last completed segment, so
        # that the next segment need not re-read the prefix.  Keyed by
        # (st_dev, st_ino); checked against the size before use.
        self._hashes: dict[tuple[int, int], tuple[int, Any]] = {}
        # Per connection, the turn to open and send a file (see getOp).
        self._getTurns: dict[ServerProtocol, _Turn] = {}

    def connectionLost(self, connection: ServerProtocol) -> None:
        """
        Forget the connection's get turn, and let the gets still waiting for
        it end (they find their request cancelled).
        """
        turn = self._getTurns.pop(connection, None)
        if turn is not None:
            turn.releaseWaiting()

    def _connection(self, request: Request) -> None:
        connection = request.connection
        if not getattr(connection, "_framesNoDelay", False):
            connection._framesNoDelay = True  # type: ignore[attr-defined]
            tuneTransport(connection.transport)

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.time()

    # -- simple ops ------------------------------------------------------------

    @operation("list")
    async def listOp(self, request: Request) -> Any:
        """
        A directory's entries, as a JSON array in the body.
        """
        self._connection(request)
        path = request.header.get("path", "")
        segments = checkPath(path, allowRoot=True)
        entries, skipped = await self.run(self.root.listDir, segments, path)
        body = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        request.reply(
            {"path": path, "count": len(entries), "skipped": skipped, "format": "json"}, body
        )
        return None

    @operation("stat")
    async def statOp(self, request: Request) -> dict[str, Any]:
        """
        One path's type, size, mtime and mode (a link is reported, not
        followed).
        """
        self._connection(request)
        path = request.header.get("path", "")
        segments = checkPath(path, allowRoot=True)
        result: dict[str, Any] = await self.run(self.root.stat, segments, path)
        result["path"] = path
        return result

    @operation("delete")
    async def deleteOp(self, request: Request) -> dict[str, Any]:
        """
        Remove a file, link or empty directory.
        """
        self._connection(request)
        path = request.header.get("path")
        segments = checkPath(path)
        kind = await self.run(self.root.delete, segments, path, self._busyPaths.__contains__)
        return {"path": path, "type": kind}

    @operation("mkdir")
    async def mkdirOp(self, request: Request) -> dict[str, Any]:
        """
        Create a directory; with C{parents}, also its parents, and an
        existing directory is not an error.
        """
        self._connection(request)
        path = request.header.get("path")
        segments = checkPath(path)
        parents = _field(request.header, "parents", bool, False)
        created = await self.run(self.root.mkdir, segments, path, parents)
        return {"path": path, "created": created}

    # -- get -------------------------------------------------------------------

    @operation("get")
    async def getOp(self, request: Request) -> dict[str, Any] | None:
        """
        Send a file from C{offset} as C{data} events, then a final reply
        with the whole file's size and SHA-256 (the prefix before C{offset}
        is hashed too, so a resumed download is verified end to end).
        """
        self._connection(request)
        path = request.header.get("path")
        segments = checkPath(path)
        offset = _field(request.header, "offset", int, 0)
        # One get at a time per connection opens its file: the others wait
        # here holding nothing (their bodies would queue behind its body
        # anyway), so a client pipelining gets it never reads cannot hold
        # more than one descriptor and one read-ahead.
        turn = self._getTurns.get(request.connection)
        if turn is None:
            turn = self._getTurns[request.connection] = _Turn()
        await turn.acquire()
        try:
            if request.cancelled:
                return None
            return await self._sendFile(request, str(path), segments, offset)
        finally:
            turn.release()

    async def _sendFile(
        self, request: Request, path: str, segments: list[str], offset: int
    ) -> dict[str, Any] | None:
        fd, st = await self.run(self.root.openForRead, segments, path)
        try:
            size = st.st_size
            if offset > size:
                raise FramesError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"offset {offset} is beyond the end of {path} ({size} bytes)",
                    size=size,
                )
            hasher = newHash()
            if offset:
                await self.run(hashPrefix, fd, offset, hasher)
            pos = offset
            while pos < size:
                if request.cancelled:
                    return None
                n = min(self.segmentSize, size - pos)
                source = FileSource(fd, pos, n, hasher, self.run)
                try:
                    await request.eventStream("data", {"offset": pos, "length": n}, source)
                finally:
                    # A read may still be running in a thread: closing its
                    # descriptor now could let it read a recycled one.
                    await source.whenIdle()
                pos += n
            return {
                "path": path,
                "size": size,
                "offset": offset,
                "sha256": hasher.hexdigest(),
                "mtime": st.st_mtime,
                "mode": stat.S_IMODE(st.st_mode),
            }
        finally:
            os.close(fd)

    # -- put -------------------------------------------------------------------

    @operation("put", body="stream")
    def putOp(self, request: Request) -> BodySink:
        """
        Write the body at C{offset} of the partial upload of C{path}; if
        C{final}, verify the whole partial against C{sha256} and move it into
        place.
        """
        self._connection(request)
        h = request.header
        path = h.get("path")
        segments = checkPath(path)
        offset = _field(h, "offset", int, 0)
        final = _field(h, "final", bool, True)
        overwrite = _field(h, "overwrite", bool, False)
        size = h.get("size")
        if size is not None:
            size = _field(h, "size", int, 0)
            if offset + request.bodyLength > size:
                raise FramesError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"offset {offset} + body {request.bodyLength} is over the declared "
                    f"size {size}",
                )
            if final and offset + request.bodyLength != size:
                raise FramesError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"final message ends at {offset + request.bodyLength}, not the declared "
                    f"size {size}",
                )
        sha = _checkSha(h.get("sha256")) if final else None
        upload = _Upload(str(path), segments[-1], offset, final, size, sha, overwrite)
        return _UploadSink(self, request, segments, upload)

    def isBusy(self, partialPath: str) -> bool:
        """
        Whether a partial file (absolute path) is being written.
        """
        return partialPath in self._busyPaths

    def _resolveUpload(self, segments: list[str], u: _Upload) -> None:
        u.parent = self.root.openDir(segments[:-1], u.display)
        try:
            self._checkTarget(u)
        except BaseException:
            os.close(u.parent)
            u.parent = -1
            raise

    def _checkTarget(self, u: _Upload) -> None:
        try:
            st = os.stat(u.name, dir_fd=u.parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as e:
            raise errorFromOSError(e, u.display) from None
        if stat.S_ISDIR(st.st_mode):
            raise FramesError(
                ErrorCode.IS_A_DIRECTORY, f"{u.display}: is a directory", path=u.display
            )
        if not u.overwrite:
            raise FramesError(
                ErrorCode.ALREADY_EXISTS,
                f"{u.display}: already exists (ask to overwrite)",
                path=u.display,
            )

    def _openPartial(self, u: _Upload, bodyLength: int) -> None:
        part = partialName(u.name)
        if u.offset == 0:
            u.fd = os.open(
                part,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o666,
                dir_fd=u.parent,
            )
        else:
            try:
                u.fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=u.parent)
            except FileNotFoundError:
                raise FramesError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"{u.display}: no partial upload to continue at offset {u.offset}"
                    " (the server has 0 bytes)",
                    path=u.display,
                    have=0,
                ) from None
        st = os.fstat(u.fd)
        if not stat.S_ISREG(st.st_mode):
            raise FramesError(ErrorCode.IO_ERROR, f"{u.display}: partial file is not a file")
        if st.st_size != u.offset:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"{u.display}: the server has {st.st_size} bytes of this upload, not {u.offset}",
                path=u.display,
                have=st.st_size,
            )
        if u.size is not None or bodyLength:
            need = (u.size - u.offset) if u.size is not None else bodyLength
            vfs = os.statvfs(u.fd)
            free = vfs.f_bavail * vfs.f_frsize
            if need > free:
                raise FramesError(
                    ErrorCode.NO_SPACE,
                    f"{u.display}: {need} bytes needed, {free} free on the server",
                    path=u.display,
                    needed=need,
                    free=free,
                )
        cached = self._hashes.pop((st.st_dev, st.st_ino), None)
        if cached is not None and cached[0] == u.offset:
            u.hasher = cached[1]
        else:
            u.hasher = newHash()
            hashPrefix(u.fd, u.offset, u.hasher)
        os.lseek(u.fd, u.offset, os.SEEK_SET)

    def _finishSegment(self, u: _Upload, written: int) -> dict[str, Any]:
        """
        After the body: keep the hash for the next segment, or (final)
        fsync, verify and move the file into place.
        """
        have = u.offset + written
        st = os.fstat(u.fd)
        if not u.final:
            self.rememberHash(st, have, u.hasher)
            return {"path": u.display, "have": have}
        part = partialName(u.name)
        try:
            os.fsync(u.fd)
        except OSError as e:
            self._discardPartial(u)
            raise errorFromOSError(e, u.display) from None
        digest = u.hasher.hexdigest()
        if digest != u.sha256:
            self._discardPartial(u)
            raise FramesError(
                ErrorCode.INTEGRITY_ERROR,
                f"{u.display}: SHA-256 mismatch: received data hashes to {digest}, "
                f"expected {u.sha256}; nothing was stored",
                path=u.display,
                sha256=digest,
            )
        self._checkTarget(u)
        try:
            if u.overwrite:
                os.replace(part, u.name, src_dir_fd=u.parent, dst_dir_fd=u.parent)
            else:
                self._linkNoClobber(part, u)
            os.fsync(u.parent)
        except OSError as e:
            raise errorFromOSError(e, u.display) from None
        return {"path": u.display, "size": have, "sha256": digest}

    def rememberHash(self, st: os.stat_result, length: int, hasher: Any) -> None:
        """
        Keep the hash of a partial file's first C{length} bytes for its next
        segment (a bounded number of them: an abandoned one costs little).
        """
        if len(self._hashes) >= MAX_REMEMBERED_HASHES:
            self._hashes.pop(next(iter(self._hashes)))
        self._hashes[(st.st_dev, st.st_ino)] = (length, hasher)

    def _linkNoClobber(self, part: str, u: _Upload) -> None:
        # link() fails if the name exists, so a file created meanwhile by
        # someone else is never clobbered; rename() would replace it.
        try:
            os.link(part, u.name, src_dir_fd=u.parent, dst_dir_fd=u.parent, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            os.replace(part, u.name, src_dir_fd=u.parent, dst_dir_fd=u.parent)
            return
        os.unlink(part, dir_fd=u.parent)

    def _discardPartial(self, u: _Upload) -> None:
        try:
            os.unlink(partialName(u.name), dir_fd=u.parent)
        except OSError:
            pass

    def _closeUpload(self, u: _Upload) -> None:
        closeQuietly(u.fd if u.fd >= 0 else None)
        closeQuietly(u.parent if u.parent >= 0 else None)
        u.fd = u.parent = -1

    # -- expiry ----------------------------------------------------------------

    def expirePartials(self) -> defer.Deferred[int]:
        """
        Delete partial uploads not written to for L{partialTTL} seconds and
        not in use.

        @return: a Deferred firing with how many were deleted.
        """
        deadline = self._now() - self.partialTTL
        busy = set(self._busyPaths)
        d: defer.Deferred[int] = self.run(self._expire, deadline, busy)
        d.addErrback(self._expireFailed)
        return d

    def _expireFailed(self, failure: Failure) -> int:
        log.failure("expiring partial uploads failed", failure)
        return 0

    def _expire(self, deadline: float, busy: set[str]) -> int:
        removed = 0
        for where, _dirs, names in os.walk(self.root.path):
            for name in names:
                if not name.startswith(PARTIAL_PREFIX):
                    continue
                full = os.path.join(where, name)
                if full in busy:
                    continue
                try:
                    st = os.stat(full, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < deadline:
                        os.unlink(full)
                        removed += 1
                        log.info("expired partial upload {path}", path=full)
                except OSError:
                    continue
        return removed


class _UploadSink(BodySink):
    """
    One C{put} message: prepares the partial file in a worker thread while
    the connection is paused, streams the body to it, then finishes.
    """

    def __init__(
        self, service: FileService, request: Request, segments: list[str], upload: _Upload
    ) -> None:
        self.service = service
        self.request = request
        self.segments = segments
        self.upload = upload
        self.length = 0
        self.producer: Any = None
        self.writer: FileWriter | None = None
        self.failed: FramesError | None = None
        self.received = False
        self.connectionFailure: Failure | None = None
        self._pauses = 0
        self._lock: defer.DeferredLock | None = None
        self._partialPath = ""
        self._ready: defer.Deferred[None] | None = None

    # Pausing has two reasons (not yet prepared, writer full); the
    # connection's producer only knows paused or not.
    def _pause(self) -> None:
        self._pauses += 1
        if self._pauses == 1 and self.producer is not None:
            self.producer.pauseProducing()

    def _resume(self) -> None:
        self._pauses -= 1
        if self._pauses == 0 and self.producer is not None:
            self.producer.resumeProducing()

    def bodyStarted(self, length: int, producer: IPushProducer) -> None:
        self.length = length
        self.producer = producer
        self._pause()
        self._ready = defer.Deferred.fromCoroutine(self._prepare())
        self._ready.addErrback(self._prepareFailed)

    async def _prepare(self) -> None:
        s, u = self.service, self.upload
        # Queued for the lock before any thread work, in arrival order: an
        # empty body lets the connection read the next message while this
        # one is still being prepared, and its thread may finish first.
        key = tuple(self.segments)
        lock = s._locks.get(key)
        if lock is None:
            lock = s._locks[key] = defer.DeferredLock()
        await lock.acquire()
        self._lock = lock
        await s.run(s._resolveUpload, self.segments, u)
        self._partialPath = os.path.join(s.root.path, *self.segments[:-1], partialName(u.name))
        s._busyPaths.add(self._partialPath)
        await s.run(s._openPartial, u, self.length)
        self.writer = FileWriter(u.fd, u.hasher, s.run, self._pause, self._resume)
        if self.received or self.connectionFailure is not None:
            self._afterBody()
        else:
            self._resume()

    def _prepareFailed(self, failure: Failure) -> None:
        self._fail(failure)
        self._release()
        if self._pauses:
            self._pauses = 1
            self._resume()

    def bodyData(self, data: bytes) -> None:
        if self.writer is not None and self.failed is None:
            self.writer.write(data)
            if self.writer.error is not None:
                self._writeFailed()

    def bodyFinished(self) -> None:
        self.received = True
        self.producer = None
        if self.writer is not None:
            self._afterBody()

    def bodyFailed(self, reason: Failure) -> None:
        self.connectionFailure = reason
        self.producer = None
        if self.writer is not None:
            self._afterBody()

    def _writeFailed(self) -> None:
        assert self.writer is not None and self.writer.error is not None
        self._fail(self.writer.error)

    def _afterBody(self) -> None:
        writer = self.writer
        assert writer is not None
        d = writer.drain()
        d.addCallback(lambda _: self._finish(writer.written))
        d.addErrback(self._fail)
        d.addBoth(self._cleanup)

    def _finish(self, written: int) -> defer.Deferred[None] | None:
        s, u = self.service, self.upload
        if self.failed is not None:
            return None
        if self.connectionFailure is not None:
            # Keep what arrived, hashed, for a resumed upload.
            def keep() -> None:
                st = os.fstat(u.fd)
                s.rememberHash(st, u.offset + written, u.hasher)

            return s.run(keep)
        d: defer.Deferred[dict[str, Any]] = s.run(s._finishSegment, u, written)
        return d.addCallback(self._reply)

    def _reply(self, fields: dict[str, Any]) -> None:
        if not self.request.finished:
            self.request.reply(fields)

    def _fail(self, failure: Failure | FramesError) -> None:
        if isinstance(failure, Failure):
            error = failure.value
            if isinstance(error, OSError):
                error = errorFromOSError(error, self.upload.display)
            elif not isinstance(error, FramesError):
                log.failure("put of {path} failed", failure, path=self.upload.display)
                error = FramesError(ErrorCode.INTERNAL, "internal server error (logged)")
        else:
            error = failure
        if self.failed is None:
            self.failed = error
            # A write error leaves a partial that cannot be trusted (and a
            # full disk wants the space back); refusals before writing keep it.
            writing = self.writer is not None and self.upload.parent >= 0
            if writing and error.code in (ErrorCode.NO_SPACE, ErrorCode.IO_ERROR):
                self.service._discardPartial(self.upload)
        if not self.request.finished:
            self.request.fail(error)

    def _cleanup(self, result: Any) -> None:
        s = self.service
        u = self.upload
        if u.fd >= 0 or u.parent >= 0:
            s.run(s._closeUpload, u).addErrback(lambda f: None).addBoth(lambda _: self._release())
        else:
            self._release()

    def _release(self) -> None:
        s = self.service
        s._busyPaths.discard(self._partialPath)
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
            if not lock.locked and not lock.waiting:
                s._locks.pop(tuple(self.segments), None)
        if self.upload.fd >= 0 or self.upload.parent >= 0:
            self.service._closeUpload(self.upload)
