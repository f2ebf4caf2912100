# -*- test-case-name: tests.files.test_local_partial -*-
"""
The local side of the file client: its errors, the hidden partial file a
download is written to, its check against the server's digest and its
commit into place, and the checks on names that come from the server
before they become local file names.  Without Twisted: the CLI's quick
path (L{twisted_frames.cli.quick}) downloads with it too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Any

from ..wire import ErrorCode, FramesError, ProtocolViolation
from .blocking import DEFAULT_HASH, HASH_TITLES, PARTIAL_PREFIX, withDigest

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
#: The end of every local partial name.
PARTIAL_SUFFIX = ".frames-partial"


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
    short = f".{tail}{PARTIAL_SUFFIX}"
    if len(os.fsencode(short)) <= MAX_LOCAL_NAME:
        return os.path.join(head, short)
    digest = hashlib.sha256(os.fsencode(tail)).hexdigest()[:16]
    suffix = f".{digest}{PARTIAL_SUFFIX}"
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
        or (name.startswith(".") and name.endswith(PARTIAL_SUFFIX))
    ):
        raise LocalError(
            ErrorCode.FORBIDDEN_PATH, f"refusing remote name {name!r}: it could escape the target"
        )
    return name


def openRegular(path: str) -> int:
    """
    Open a local regular file to upload it (never a FIFO: C{O_NONBLOCK}).

    @raise LocalError: C{invalid_argument} if it is not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LocalError(ErrorCode.INVALID_ARGUMENT, f"{path}: not a regular file")
    return fd


def openPartial(part: str, resume: bool) -> tuple[int, int]:
    """
    Open (or create) a download's partial file, emptied unless C{resume}.

    @return: the descriptor, positioned at its end, and its size.
    @raise LocalError: C{invalid_argument} if it is not a regular file.
    """
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


def commitLocal(fd: int, part: str, local: str, overwrite: bool) -> None:
    """
    Sync and close a verified partial and move it to C{local} (never over
    an existing file unless C{overwrite}), then sync the directory.

    @raise LocalError: C{already_exists}.
    """
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


def verifyDownload(remote: str, name: str, hasher: Any, header: dict[str, Any]) -> str:
    """
    Compare what a download hashed to with the server's final reply.

    @return: C{hasher}'s digest.
    @raise LocalError: C{integrity_error} if the reply's digest (of the hash
        asked for) differs.
    """
    got: str = hasher.hexdigest()
    if name == DEFAULT_HASH:
        says = header.get("sha256")
    else:
        says = header.get("digest") if header.get("hash") == name else None
    if got != says:
        raise LocalError(
            ErrorCode.INTEGRITY_ERROR,
            f"{remote}: {HASH_TITLES[name]} mismatch (got {got}, server says {says})",
        )
    return got


def refuseExisting(local: str, overwrite: bool) -> None:
    """
    Refuse to download over an existing C{local} unless C{overwrite}.

    @raise LocalError: C{already_exists}.
    """
    if not overwrite and os.path.lexists(local):
        raise LocalError(ErrorCode.ALREADY_EXISTS, f"{local}: {ALREADY_EXISTS_HINT}")


def partialTooLong(error: FramesError, offset: int) -> bool:
    """
    Whether C{error}, the answer to a C{get} resumed at C{offset}, says the
    local partial is longer than the remote file (start over from 0).
    """
    return bool(offset) and error.code == ErrorCode.INVALID_ARGUMENT and "size" in error.details


def checkDataEvent(header: dict[str, Any], position: int) -> None:
    """
    Check that an event of a download is its next C{data} event, the one
    at C{position}.

    @raise ProtocolViolation: C{bad_request} if it is not.
    """
    if header.get("event") != "data" or header.get("offset") != position:
        raise ProtocolViolation(
            ErrorCode.BAD_REQUEST,
            f"unexpected event {header.get('event')!r} at offset {header.get('offset')!r}"
            f" (expected data at {position})",
        )


def checkReceived(remote: str, position: int, header: dict[str, Any]) -> None:
    """
    Check that a download ends where the final reply says the file does.

    @param position: where the last data event ended.
    @raise FramesError: C{integrity_error} if it does not.
    """
    if position != header.get("size"):
        raise FramesError(
            ErrorCode.INTEGRITY_ERROR,
            f"{remote}: received {position} bytes, server says {header.get('size')}",
        )


def mismatchDiscarded(error: LocalError) -> LocalError:
    """
    The error of a download whose digest did not match (L{verifyDownload}),
    once its partial is removed.
    """
    return LocalError(error.code, f"{error.message}; nothing was stored")


def downloadResult(
    header: dict[str, Any], name: str, digest: str, local: str, offset: int
) -> dict[str, Any]:
    """
    A verified download's result: the server's final reply with C{hash},
    C{digest}, C{local} and C{resumed_from}.
    """
    result = withDigest(header, name, digest)
    result["local"] = local
    result["resumed_from"] = offset
    return result


def unlinkQuietly(path: str) -> None:
    """
    Remove a file if it is there.
    """
    try:
        os.unlink(path)
    except OSError:
        pass


def makeLocalDir(path: str) -> None:
    """
    Create a directory of a downloaded tree; an existing one is fine.

    @raise LocalError: C{already_exists} if something else is there.
    """
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path) or os.path.islink(path):
            raise LocalError(
                ErrorCode.ALREADY_EXISTS, f"{path}: exists and is not a directory"
            ) from None
