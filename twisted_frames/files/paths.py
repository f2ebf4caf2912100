# -*- test-case-name: tests.files.test_files -*-
"""
Paths and confinement: request paths checked as text, then walked from a
descriptor of the root with C{openat}-style calls and C{O_NOFOLLOW}
(L{Root}); partial-upload names and locks; listing entries.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import heapq
import json
import os
import stat
from typing import Any, NamedTuple, NoReturn

from ..fields import Field
from ..wire import ErrorCode, FramesError
from .blocking import PARTIAL_PREFIX
from .store import errorFromOSError

#: Longest path segment, in UTF-8 bytes (Linux's NAME_MAX).
MAX_NAME = 255
#: Longest request path, in UTF-8 bytes (Linux's PATH_MAX).
MAX_PATH = 4096
#: Entries sorted or JSON-encoded per call when building a listing.  Sorting
#: and the JSON encoder are C code that holds the GIL for the whole call, so
#: one call over 100,000 entries would stall the reactor thread for 30 ms
#: (sort) or a third of a second (encode) even from a worker thread; 1,024
#: entries take about a millisecond.
LISTING_BATCH = 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opens a partial only to look at it or lock it (never blocks on a FIFO).
_PEEK_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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


class RequestPath(NamedTuple):
    """
    A request's path, checked by L{checkPath}: as sent, and its segments.
    """

    text: str
    segments: list[str]


class PathField(Field):
    """
    A request field naming a path under the root, checked by L{checkPath}
    (a missing one is not a string).

    @ivar allowRoot: whether C{""} (the root itself) is acceptable; it is
        then also the default.
    """

    typeName = "string"

    def __init__(self, doc: str = "", *, allowRoot: bool = False) -> None:
        super().__init__(doc, default="" if allowRoot else None)
        self.allowRoot = allowRoot

    def check(self, name: str, value: Any) -> RequestPath:
        return RequestPath(value, checkPath(value, self.allowRoot))


def partialName(name: str) -> str:
    """
    The hidden partial file an upload to C{name} writes to, in the same
    directory: deterministic, so that a resumed upload finds it.
    """
    return PARTIAL_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()[:40]


def lockPartial(fd: int) -> bool:
    """
    Try to take the exclusive lock an upload holds on its partial file for
    as long as it runs (C{flock}: it belongs to the open file, so it
    excludes other connections of this process as well as other server
    processes sharing the root, and the kernel drops it when the file is
    closed, whatever way the process ends).

    @return: whether the lock was taken (C{False}: an upload holds it).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def isLinkedAs(dirfd: int, name: str, fd: int) -> bool:
    """
    Whether C{name} in C{dirfd} is still the file open as C{fd} (not removed,
    renamed away or replaced by another file since it was opened).
    """
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def removeUnlockedPartial(dirfd: int, name: str, before: float | None = None) -> bool:
    """
    Unlink the partial file C{name} in C{dirfd} if no upload holds it (and,
    with C{before}, if it was last written before that time).  The lock is
    taken first and the name checked again under it, so a partial an upload
    takes meanwhile is never removed.

    @return: whether it was removed.
    """
    try:
        fd = os.open(name, _PEEK_FLAGS, dir_fd=dirfd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        if before is not None and st.st_mtime >= before:
            return False
        if not lockPartial(fd) or not isLinkedAs(dirfd, name, fd):
            return False
        os.unlink(name, dir_fd=dirfd)
        return True
    finally:
        os.close(fd)


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


def sortListing(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    C{entries} sorted by name: runs of L{LISTING_BATCH} entries are sorted,
    then merged in Python code, between whose steps other threads get the
    GIL.  Blocking: run it in a worker thread.
    """
    runs = [
        sorted(entries[start : start + LISTING_BATCH], key=_entryName)
        for start in range(0, len(entries), LISTING_BATCH)
    ]
    return list(heapq.merge(*runs, key=_entryName))


def _entryName(entry: dict[str, Any]) -> str:
    name: str = entry["name"]
    return name


def encodeListing(entries: list[dict[str, Any]]) -> bytes:
    """
    The body of a C{list} reply: C{entries} as one compact UTF-8 JSON array
    (the same bytes as one C{json.dumps} call), encoded L{LISTING_BATCH}
    entries at a time so that other threads get the GIL between batches.
    Blocking: run it in a worker thread.
    """
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    pieces = [b"["]
    for start in range(0, len(entries), LISTING_BATCH):
        if start:
            pieces.append(b",")
        # Each batch encodes as "[...]": keep what is between the brackets.
        pieces.append(encode(entries[start : start + LISTING_BATCH])[1:-1].encode("utf-8"))
    pieces.append(b"]")
    return b"".join(pieces)


_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFLNK: "symbolic link",
    stat.S_IFDIR: "directory",
}


def openRegular(
    name: str, flags: int, dirFd: int, display: str, what: str = "file"
) -> tuple[int, os.stat_result]:
    """
    Open C{name} in C{dirFd} with C{flags}, refusing anything but a regular
    file, without ever blocking: C{O_NONBLOCK} (opening a FIFO for writing
    would wait for a reader forever, in a worker thread that shutdown then
    waits for) and C{O_NOFOLLOW}; the descriptor is made blocking again.

    @param what: names the file in the refusal, e.g. C{"partial file"}.
    @return: the descriptor (the caller closes it) and its C{fstat}.
    @raise FramesError: C{io_error} if something other than a regular file
        is there (nothing was written to it).
    @raise OSError: if the open fails for another reason.
    """
    flags |= os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o666, dir_fd=dirFd)
    except OSError as e:
        # A FIFO without a reader or a socket (ENXIO), a link (ELOOP), a
        # directory (EISDIR): say what is there, not the errno.
        try:
            st = os.stat(name, dir_fd=dirFd, follow_symlinks=False)
        except OSError:
            raise e from None
        if stat.S_ISREG(st.st_mode):
            raise
        _refuseIrregular(st, display, what)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _refuseIrregular(st, display, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _refuseIrregular(st: os.stat_result, display: str, what: str) -> NoReturn:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
    raise FramesError(
        ErrorCode.IO_ERROR,
        f"{display}: the server's {what} is a {kind}, not a regular file; refused",
        path=display,
    )


class Root:
    """
    Blocking, confined file-system operations on one root directory.  Every
    method runs in a worker thread and raises L{FramesError} for what it
    refuses, or the C{OSError} of a failed call, which the service's ops
    translate (L{translateOSErrors}).
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
                # Hold the new descriptor first: a failing close() still
                # frees the old one, which must not be closed again.
                fd, parent = nfd, fd
                os.close(parent)
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
            return sortListing(entries), skipped
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

    def delete(self, segments: list[str], display: str) -> dict[str, Any]:
        """
        Remove a file, a symbolic link (not its target) or an empty
        directory, and the partial upload to that name if there is one:
        a stale one, or one in progress, which is thereby cancelled (its
        uploader is told at its next write).

        @return: the reply fields: C{type} (what was removed: C{partial}
            if only a partial upload was there), and with a partial,
            C{partial} (its bytes) and C{cancelled} (whether an upload was
            in progress).
        """
        fd = self.openDir(segments[:-1], display)
        try:
            name = segments[-1]
            missing: FramesError | None = None
            st: os.stat_result | None = None
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                missing = errorFromOSError(e, display)
                if e.errno != errno.ENOENT:
                    raise missing from None
            kind = "partial" if st is None else fileType(st.st_mode)
            try:
                if kind == "directory":
                    try:
                        os.rmdir(name, dir_fd=fd)
                    except OSError as e:
                        if e.errno != errno.ENOTEMPTY:
                            raise
                        self._removeStalePartials(fd, name)
                        os.rmdir(name, dir_fd=fd)
                    return {"type": kind}
                if st is not None:
                    os.unlink(name, dir_fd=fd)
                partial = self._removePartial(fd, name)
            except OSError as e:
                raise errorFromOSError(e, display) from None
            if partial is None:
                if missing is not None:
                    raise missing
                return {"type": kind}
            size, cancelled = partial
            return {"type": kind, "partial": size, "cancelled": cancelled}
        finally:
            os.close(fd)

    def _removePartial(self, dirfd: int, name: str) -> tuple[int, bool] | None:
        """
        Unlink the partial upload to C{name}, held by an upload or not.

        @return: its size and whether an upload held it, or C{None} if
            there was none.
        """
        part = partialName(name)
        try:
            fd = os.open(part, _PEEK_FLAGS, dir_fd=dirfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            # A link planted at the slot: no upload ever wrote it.
            os.unlink(part, dir_fd=dirfd)
            return 0, False
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return None
            held = stat.S_ISREG(st.st_mode) and not lockPartial(fd)
            try:
                os.unlink(part, dir_fd=dirfd)
            except FileNotFoundError:
                # Its upload finished (or another delete won) meanwhile.
                return None
            return st.st_size, held
        finally:
            os.close(fd)

    def _removeStalePartials(self, parent: int, name: str) -> None:
        """
        Remove the partials in a directory that holds nothing else, except
        those an upload holds (the directory then stays: C{not_empty}).
        """
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            names = os.listdir(fd)
            if any(not n.startswith(PARTIAL_PREFIX) for n in names):
                return
            for n in names:
                try:
                    st = os.stat(n, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    removeUnlockedPartial(fd, n)
                elif not stat.S_ISDIR(st.st_mode):
                    # A link or special file planted at a partial's name:
                    # no upload writes to it.
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
                fd, parent = nfd, fd
                os.close(parent)
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
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
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
