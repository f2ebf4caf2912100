# -*- test-case-name: tests.files.test_files -*-
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
verified against the client's digest (of the transfer hash it names, SHA-256
when it names none: see L{HashField}) and only then linked or renamed into
place.  Files larger than one frame travel as several C{put} messages with
offsets, and C{get} answers with as many C{data} events as needed.

All disk work (walks, reads, writes, hashing, fsync) runs in worker threads
through an injectable C{runInThread}, so one client's transfer never stalls
another's requests.

Why this module is long (about 980 lines): most of it is C{put}, whose
steps (prepare the partial, check space and target, stream, verify, link)
run partly in L{_UploadSink} and partly in the service, which owns the state
they share between messages and connections (the uploads each connection
holds, the remembered hash states, the get turns).  The pure pieces already
live apart (L{twisted_frames.files.paths}, L{twisted_frames.files.store}).
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._speedups.tcp import tuneOnce
from ..bodies import DirectReceiver
from ..fields import ABSENT, Count, Field, Flag, HexDigits
from ..protocol import BodySink
from ..server import Operation, Request, ServerProtocol, Service, operation
from ..wire import ErrorCode, FramesError
from .blocking import (
    DEFAULT_HASH,
    HASH_TITLES,
    HASHES,
    PARTIAL_PREFIX,
    closeQuietly,
    hashPrefix,
    newHash,
)
from .paths import (
    _DIR_FLAGS,
    PathField,
    Root,
    encodeListing,
    isLinkedAs,
    lockPartial,
    openRegular,
    partialName,
    removeUnlockedPartial,
)
from .store import (
    DEFAULT_SEGMENT,
    FileSource,
    FileWriter,
    ThreadRunner,
    defaultRunner,
    errorFromOSError,
    tuneTransport,
)

log = Logger(namespace="twisted_frames.files")


#: Hash states of unfinished uploads kept between segments.
MAX_REMEMBERED_HASHES = 1024
#: Default lifetime of an abandoned partial upload.
DEFAULT_PARTIAL_TTL = 24 * 3600.0
#: Uploads one connection may have in progress at once: between its
#: messages each holds two descriptors (its directory and its partial).
MAX_UPLOADS_PER_CONNECTION = 16


def translateOSErrors(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """
    Wrap an op's handler so that an C{OSError} it raises, at once or through
    the Deferred or coroutine it returns, becomes the L{FramesError} of
    L{errorFromOSError} for the request's C{path} (C{io_error} unless the
    errno has a more specific code).  This is the one place file-system
    errors are translated, so none can escape as C{internal} with a
    traceback, whichever call raised it.
    """

    def handle(request: Request) -> Any:
        path = request.header.get("path")
        display = path if isinstance(path, str) else ""

        def translate(failure: Failure) -> Failure:
            if isinstance(failure.value, OSError):
                return Failure(errorFromOSError(failure.value, display))
            return failure

        try:
            result = handler(request)
        except OSError as e:
            raise errorFromOSError(e, display) from None
        if inspect.iscoroutine(result):
            result = defer.Deferred.fromCoroutine(result)
        if isinstance(result, defer.Deferred):
            result.addErrback(translate)
        return result

    return handle


class HashField(Field):
    """
    The C{hash} field of C{put} and C{get}: the name of the transfer hash,
    one of the server's L{HASHES} (the greeting's C{hashes}).  A request
    that leaves it out is served as by the first servers: SHA-256, its
    digest in the C{sha256} field.

    A name the server does not have is C{unsupported_hash}, with the names
    it has in C{hashes}; a value that is not a name is C{invalid_argument}.
    """

    typeName = " or ".join(f'"{name}"' for name in HASHES)
    defaultMessage = "{name!r} must be the name of a hash (a string)"

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not value or len(value) > 64:
            raise self.error(name, value)
        if value not in HASHES:
            raise FramesError(
                ErrorCode.UNSUPPORTED_HASH,
                f"unsupported hash {value!r}: this server has {', '.join(HASHES)}",
                hash=value,
                hashes=list(HASHES),
            )
        return value


class Digest(Field):
    """
    The C{digest} field: lower- or upper-case hex digits, handed on lower
    case; their number is checked against the hash once it is known.
    """

    typeName = "hex digits (64 for each hash this server has)"
    defaultMessage = "{name!r} must be a string of hex digits"

    def check(self, name: str, value: Any) -> str:
        if (
            not isinstance(value, str)
            or not value
            or len(value) > 256
            or any(c not in "0123456789abcdefABCDEF" for c in value)
        ):
            raise self.error(name, value)
        return value.lower()


def transferHash(request: Request) -> tuple[str, bool]:
    """
    @return: the transfer hash a checked C{put} or C{get} asks for, and
        whether it asked in the first protocol's way (no C{hash} field:
        SHA-256 in C{sha256}), which its reply must keep to.
    """
    name = request.fields.get("hash", ABSENT)
    if name is ABSENT:
        return DEFAULT_HASH, True
    return str(name), False


def digestFields(name: str, legacy: bool, digest: str) -> dict[str, str]:
    """
    @return: the reply fields carrying a transfer's digest: C{sha256} for a
        request in the first protocol's way, else C{hash} and C{digest}.
    """
    if legacy:
        return {"sha256": digest}
    return {"hash": name, "digest": digest}


#: The C{hash} field of C{put} and C{get}, for the docs' op tables.
_HASH_DOC = (
    "the transfer hash (see the greeting's `hashes`); left out: SHA-256, its digest in `sha256`"
)


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
    #: The digest the client announced (final message only).
    expected: str | None
    overwrite: bool
    #: The transfer hash, and whether the request named it (see
    #: L{transferHash}).
    hashName: str = DEFAULT_HASH
    legacy: bool = True
    parent: int = -1
    fd: int = -1
    hasher: Any = None
    #: Whether C{fd} holds the partial's lock (so that it may be discarded).
    locked: bool = False


@dataclass
class _Held:
    """
    An upload in progress on one connection, between two of its messages:
    its directory and its partial file (open, so locked), and the length
    and hash state after the last message.
    """

    parent: int
    fd: int
    length: int
    hasher: Any


@dataclass
class _ConnectionUploads:
    """
    The uploads one connection has in progress, by request path.

    @ivar locks: per target, so that pipelined messages of one upload are
        applied strictly in arrival order.
    @ivar held: uploads between messages, holding their partial's lock.
    @ivar active: targets this connection holds descriptors for (between
        messages or in one).
    @ivar closed: the connection is gone: nothing more is held.
    """

    locks: dict[tuple[str, ...], defer.DeferredLock] = field(default_factory=dict)
    held: dict[tuple[str, ...], _Held] = field(default_factory=dict)
    active: set[tuple[str, ...]] = field(default_factory=set)
    closed: bool = False


class FileService(Service):
    """
    The file operations, confined to C{root}.

    @param root: the directory served (created by the tap if missing).
    @param runInThread: runs blocking work away from the reactor; tests
        pass L{twisted_frames.files.store.synchronousRunner}.
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
        # Uploads in progress, per connection.  Which upload owns a partial
        # file is decided by the file's lock (L{lockPartial}), not here, so
        # that server processes sharing the root agree.
        self._uploads: dict[Any, _ConnectionUploads] = {}
        # Hash state of partial files left by a closed connection, so that a
        # resumed upload need not re-read the prefix.  Keyed by (st_dev,
        # st_ino); used only if size and times are still those it was kept
        # with (another process sharing the root may have rewritten it).
        self._hashes: dict[tuple[int, int], tuple[tuple[int, int, int], Any]] = {}
        # Per connection, the turn to open and send a file (see opGet).
        self._getTurns: dict[ServerProtocol, _Turn] = {}

    def operations(self) -> Iterable[Operation]:
        """
        @return: the file ops, each behind L{translateOSErrors}.
        """
        for op in super().operations():
            yield dataclasses.replace(op, handler=translateOSErrors(op.handler))

    def greetingFields(self, connection: ServerProtocol) -> dict[str, Any]:
        """
        @return: C{hashes}: the transfer hashes this server has, fastest
            first (a client picks the first it has too).
        """
        return {"hashes": list(HASHES)}

    def _connection(self, request: Request) -> None:
        tuneOnce(request.connection, tuneTransport)

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.time()

    # -- simple ops ------------------------------------------------------------

    @operation("list", fields={"path": PathField("the directory", allowRoot=True)})
    async def opList(self, request: Request) -> Any:
        """
        A directory's entries, as a JSON array in the body.
        """
        self._connection(request)
        path, segments = request.fields["path"]
        body, count, skipped = await self.run(self._listing, segments, path)
        request.reply({"path": path, "count": count, "skipped": skipped, "format": "json"}, body)
        return None

    def _listing(self, segments: list[str], display: str) -> tuple[bytes, int, int]:
        # Scanning and encoding both run in the worker thread: the reactor
        # only writes the finished bytes.
        entries, skipped = self.root.listDir(segments, display)
        return encodeListing(entries), len(entries), skipped

    @operation("stat", fields={"path": PathField("what to describe", allowRoot=True)})
    async def opStat(self, request: Request) -> dict[str, Any]:
        """
        One path's type, size, mtime and mode (a link is reported, not
        followed).
        """
        self._connection(request)
        path, segments = request.fields["path"]
        result: dict[str, Any] = await self.run(self.root.stat, segments, path)
        result["path"] = path
        return result

    @operation(
        "delete", fields={"path": PathField("a file, link or empty directory (not the root)")}
    )
    async def opDelete(self, request: Request) -> dict[str, Any]:
        """
        Remove a file, link or empty directory, and the partial upload to
        that path (stale, or in progress: that upload is cancelled).
        """
        self._connection(request)
        path, segments = request.fields["path"]
        result: dict[str, Any] = await self.run(self.root.delete, segments, path)
        if result.get("cancelled"):
            log.info("delete of {path} cancelled the upload in progress to it", path=path)
        return {"path": path, **result}

    @operation(
        "mkdir",
        fields={
            "path": PathField("the directory to create"),
            "parents": Flag(
                "also create missing parents; an existing directory is fine", default=False
            ),
        },
    )
    async def opMkdir(self, request: Request) -> dict[str, Any]:
        """
        Create a directory; with C{parents}, also its parents, and an
        existing directory is not an error.
        """
        self._connection(request)
        path, segments = request.fields["path"]
        parents = request.fields["parents"]
        created = await self.run(self.root.mkdir, segments, path, parents)
        return {"path": path, "created": created}

    # -- get -------------------------------------------------------------------

    @operation(
        "get",
        fields={
            "path": PathField("a regular file"),
            "offset": Count("first byte to send (resume)", default=0),
            "hash": HashField(_HASH_DOC, defaultDoc="none: `sha256`"),
        },
    )
    async def opGet(self, request: Request) -> dict[str, Any] | None:
        """
        Send a file from C{offset} as C{data} events, then a final reply
        with the whole file's size and digest (the prefix before C{offset}
        is hashed too, so a resumed download is verified end to end).
        """
        self._connection(request)
        path, segments = request.fields["path"]
        offset = request.fields["offset"]
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
            return await self._sendFile(request, path, segments, offset)
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
            name, legacy = transferHash(request)
            hasher = newHash(name)
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
                **digestFields(name, legacy, hasher.hexdigest()),
                "mtime": st.st_mtime,
                "mode": stat.S_IMODE(st.st_mode),
            }
        finally:
            os.close(fd)

    # -- put -------------------------------------------------------------------

    @operation(
        "put",
        body="stream",
        fields={
            "path": PathField("the target file"),
            "offset": Count("where this message's body goes in the file", default=0),
            "final": Flag("this message completes the file", default=True),
            "overwrite": Flag("replace an existing file", default=False),
            "size": Count(
                "the whole file's size, if known: checked against `offset`/`final` and used "
                "for the free-space check",
                default=None,
                nullable=True,
            ),
            "sha256": HexDigits(
                64,
                "the whole file's SHA-256, when the message names no `hash`",
                lower=True,
                default=None,
                # Required only without `hash`: checked by the handler.
                nullable=True,
                onlyIf="final",
                defaultDoc="required if `final` without `hash`",
            ),
            "hash": HashField(
                _HASH_DOC + "; on every message of an upload", defaultDoc="none: `sha256`"
            ),
            "digest": Digest(
                "the whole file's digest of `hash`, required with it on the final message",
                default=None,
                nullable=True,
                onlyIf="final",
                defaultDoc="required if `final` with `hash`",
            ),
        },
    )
    def opPut(self, request: Request) -> BodySink:
        """
        Write the body at C{offset} of the partial upload of C{path}; if
        C{final}, verify the whole partial against its digest (C{sha256}, or
        C{digest} of C{hash}) and move it into place.
        """
        self._connection(request)
        f = request.fields
        path, segments = f["path"]
        offset, final, overwrite, size = f["offset"], f["final"], f["overwrite"], f["size"]
        if size is not None:
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
        name, legacy = transferHash(request)
        if legacy and f["digest"] is not None:
            raise FramesError(ErrorCode.INVALID_ARGUMENT, "'digest' needs 'hash' (its name)")
        if legacy and final and f["sha256"] is None:
            # As when the field itself was required.
            raise FramesError(ErrorCode.INVALID_ARGUMENT, "'sha256' must be 64 hex digits")
        expected = f["sha256"] if legacy else _checkDigest(name, f["sha256"], f["digest"], final)
        upload = _Upload(
            path, segments[-1], offset, final, size, expected, overwrite, name, legacy
        )
        return _UploadSink(self, request, segments, upload)

    def connectionLost(self, connection: Any) -> None:
        """
        Let the gets still waiting for the connection's get turn end (they
        find their request cancelled), and close the uploads the connection
        held between messages: their partials are kept (with their hash
        state) for a resumed upload, and closing them releases their locks.
        An upload in the middle of a message is closed by its message when
        the body fails.
        """
        turn = self._getTurns.pop(connection, None)
        if turn is not None:
            turn.releaseWaiting()
        uploads = self._uploads.pop(connection, None)
        if uploads is None:
            return
        uploads.closed = True
        held, uploads.held = uploads.held, {}
        for key, h in held.items():
            uploads.active.discard(key)
            d = self.run(self._keepHeld, h)
            d.addErrback(lambda f: log.failure("closing an upload failed", f))

    def _keepHeld(self, h: _Held) -> None:
        try:
            self.rememberHash(os.fstat(h.fd), h.length, h.hasher)
        finally:
            closeQuietly(h.fd)
            closeQuietly(h.parent)

    def _prepareUpload(
        self, segments: list[str], u: _Upload, held: _Held | None, bodyLength: int
    ) -> None:
        """
        Make C{u} ready to write its body at its offset: continue the upload
        this connection holds for the target, or open (and lock) the
        target's partial.  Whatever it opened is left in C{u} for the caller
        to close, also when it raises.
        """
        if held is None:
            u.parent = self.root.openDir(segments[:-1], u.display)
            self._checkTarget(u)
            self._openPartial(u)
        else:
            u.parent, u.fd, u.locked = held.parent, held.fd, True
            self._checkLinked(u)
            self._checkTarget(u)
            if u.offset == 0:
                os.ftruncate(u.fd, 0)
                u.hasher = newHash(u.hashName)
            elif u.offset != held.length:
                raise self._offsetMismatch(u, held.length)
            else:
                _continueHash(u, held.hasher)
        self._checkSpace(u, bodyLength)
        os.lseek(u.fd, u.offset, os.SEEK_SET)

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

    def _openPartial(self, u: _Upload) -> None:
        """
        Open the target's partial file (created at offset 0) and take its
        lock, or refuse with C{busy} if another upload holds it.
        """
        part = partialName(u.name)
        for _attempt in range(_LOCK_ATTEMPTS):
            if u.offset == 0:
                # Not truncated before the lock is ours: it may be another
                # upload's.
                fd, st = openRegular(
                    part, os.O_RDWR | os.O_CREAT, u.parent, u.display, "partial file"
                )
            else:
                try:
                    fd, st = openRegular(part, os.O_RDWR, u.parent, u.display, "partial file")
                except FileNotFoundError:
                    raise self._offsetMismatch(u, 0) from None
            u.fd = fd
            if not lockPartial(fd):
                raise FramesError(
                    ErrorCode.BUSY, f"upload of {u.display} already in progress", path=u.display
                )
            # Between the open and the lock, the upload that held it may
            # have finished (renamed it into place) or been cancelled: the
            # name must still be this file, else open the new one.
            if isLinkedAs(u.parent, part, fd):
                break
            u.fd = -1
            os.close(fd)
        else:
            raise FramesError(
                ErrorCode.BUSY, f"upload of {u.display} already in progress", path=u.display
            )
        u.locked = True
        # Again now that the lock is ours: its last holder may have written
        # after the open.
        st = os.fstat(fd)
        if u.offset == 0:
            os.ftruncate(fd, 0)
            u.hasher = newHash(u.hashName)
            return
        if st.st_size != u.offset:
            raise self._offsetMismatch(u, st.st_size)
        cached = self._hashes.pop((st.st_dev, st.st_ino), None)
        _continueHash(u, cached[1] if cached is not None and cached[0] == _version(st) else None)

    def _offsetMismatch(self, u: _Upload, have: int) -> FramesError:
        if not have:
            return FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"{u.display}: no partial upload to continue at offset {u.offset}"
                " (the server has 0 bytes)",
                path=u.display,
                have=0,
            )
        return FramesError(
            ErrorCode.INVALID_ARGUMENT,
            f"{u.display}: the server has {have} bytes of this upload, not {u.offset}",
            path=u.display,
            have=have,
        )

    def _checkSpace(self, u: _Upload, bodyLength: int) -> None:
        if u.size is None and not bodyLength:
            return
        need = (u.size - u.offset) if u.size is not None else bodyLength
        vfs = os.statvfs(u.fd)
        free = vfs.f_bavail * vfs.f_frsize
        if need > free:
            # A streamed upload (size unknown) is refused at one message:
            # say that it is the next message's bytes that do not fit.
            what = f"{need} bytes needed"
            if u.size is None and u.offset:
                what = f"no space for {need} more bytes after {u.offset}"
            raise FramesError(
                ErrorCode.NO_SPACE,
                f"{u.display}: {what}, {free} free on the server",
                path=u.display,
                needed=need,
                free=free,
            )

    def _checkLinked(self, u: _Upload) -> None:
        """
        @raise FramesError: C{cancelled} if the partial file is no longer
            under its name (a C{delete} of the target removed it).
        """
        if not isLinkedAs(u.parent, partialName(u.name), u.fd):
            raise _cancelled(u.display)

    def _finishSegment(self, u: _Upload, written: int) -> dict[str, Any]:
        """
        After the body of a final message: fsync, verify and move the file
        into place.  On failure the caller discards the partial.
        """
        have = u.offset + written
        os.fsync(u.fd)
        digest = u.hasher.hexdigest()
        if digest != u.expected:
            raise FramesError(
                ErrorCode.INTEGRITY_ERROR,
                f"{u.display}: {HASH_TITLES[u.hashName]} mismatch: received data hashes to "
                f"{digest}, expected {u.expected}; nothing was stored",
                path=u.display,
                **digestFields(u.hashName, u.legacy, digest),
            )
        self._checkLinked(u)
        self._checkTarget(u)
        part = partialName(u.name)
        if u.overwrite:
            os.replace(part, u.name, src_dir_fd=u.parent, dst_dir_fd=u.parent)
        else:
            self._linkNoClobber(part, u)
        os.fsync(u.parent)
        return {"path": u.display, "size": have, **digestFields(u.hashName, u.legacy, digest)}

    def rememberHash(self, st: os.stat_result, length: int, hasher: Any) -> None:
        """
        Keep the hash of a partial file's first C{length} bytes (its size)
        for a resumed upload (a bounded number of them: an abandoned one
        costs little).

        @param st: the file's C{fstat} after its last write.
        """
        if len(self._hashes) >= MAX_REMEMBERED_HASHES:
            self._hashes.pop(next(iter(self._hashes)))
        if st.st_size == length:
            self._hashes[(st.st_dev, st.st_ino)] = (_version(st), hasher)

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

    def _closeUpload(self, u: _Upload, discard: bool) -> None:
        """
        Close an upload's descriptors (which releases its lock); with
        C{discard}, first empty and unlink its partial if it is still under
        its name, so that its space comes back at once.
        """
        try:
            if discard and u.locked and u.fd >= 0 and u.parent >= 0:
                part = partialName(u.name)
                if isLinkedAs(u.parent, part, u.fd):
                    # Truncated first: the blocks are freed now even if the
                    # unlink fails or another descriptor is still open.
                    os.ftruncate(u.fd, 0)
                    os.unlink(part, dir_fd=u.parent)
        except OSError as e:
            log.warn("could not discard the partial upload of {path}: {e}", path=u.display, e=e)
        finally:
            closeQuietly(u.fd if u.fd >= 0 else None)
            closeQuietly(u.parent if u.parent >= 0 else None)
            u.fd = u.parent = -1

    # -- expiry ----------------------------------------------------------------

    def expirePartials(self) -> defer.Deferred[int]:
        """
        Delete partial uploads not written to for L{partialTTL} seconds and
        not held by an upload (of this process or another sharing the root).

        @return: a Deferred firing with how many were deleted.
        """
        deadline = self._now() - self.partialTTL
        d: defer.Deferred[int] = self.run(self._expire, deadline)
        d.addErrback(self._expireFailed)
        return d

    def _expireFailed(self, failure: Failure) -> int:
        log.failure("expiring partial uploads failed", failure)
        return 0

    def countPartials(self) -> defer.Deferred[tuple[int, int]]:
        """
        Count the partial uploads under the root and their bytes (in a
        worker thread: it walks the whole tree).

        @return: a Deferred firing with C{(count, bytes)}.
        """
        return self.run(self._countPartials)

    def _countPartials(self) -> tuple[int, int]:
        count = size = 0
        for where, _dirs, names in os.walk(self.root.path):
            for name in names:
                if name.startswith(PARTIAL_PREFIX):
                    try:
                        st = os.lstat(os.path.join(where, name))
                    except OSError:
                        continue
                    count += 1
                    size += st.st_size
        return count, size

    def _expire(self, deadline: float) -> int:
        removed = 0
        for where, _dirs, names in os.walk(self.root.path):
            partials = [n for n in names if n.startswith(PARTIAL_PREFIX)]
            if not partials:
                continue
            try:
                dirfd = os.open(where, _DIR_FLAGS)
            except OSError:
                continue
            try:
                for name in partials:
                    if removeUnlockedPartial(dirfd, name, before=deadline):
                        removed += 1
                        log.info("expired partial upload {path}", path=os.path.join(where, name))
            finally:
                os.close(dirfd)
        return removed


#: How often L{FileService._openPartial} retries when the partial it opened
#: was renamed or removed before it got the lock.
_LOCK_ATTEMPTS = 5


def _version(st: os.stat_result) -> tuple[int, int, int]:
    """
    What must not have changed for a remembered hash state to be used: the
    size and the modification and change times (a write by another server
    process sharing the root changes them).
    """
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _continueHash(u: _Upload, hasher: Any) -> None:
    """
    Give C{u}, which continues a partial at its offset, the hash state of
    what the partial holds: C{hasher} if it is of C{u}'s hash, else (none
    kept, or the client changed its hash) the partial hashed again.
    """
    if hasher is not None and hasher.name == u.hashName:
        u.hasher = hasher
    else:
        u.hasher = newHash(u.hashName)
        hashPrefix(u.fd, u.offset, u.hasher)


def _checkDigest(name: str, sha256: str | None, digest: str | None, final: bool) -> str | None:
    """
    The digest a C{put} naming its C{hash} announces: C{digest}, required
    on a final message, with as many hex digits as the hash has.

    @raise FramesError: C{invalid_argument} if it is missing or of the
        wrong length, or if C{sha256} is given too (one way or the other).
    """
    if sha256 is not None:
        raise FramesError(
            ErrorCode.INVALID_ARGUMENT,
            "'sha256' cannot be given with 'hash': send the digest in 'digest'",
        )
    if not final:
        return None
    if digest is None:
        raise FramesError(
            ErrorCode.INVALID_ARGUMENT, "'digest' is required on a final message with 'hash'"
        )
    digits = 2 * newHash(name).digest_size
    if len(digest) != digits:
        raise FramesError(
            ErrorCode.INVALID_ARGUMENT, f"'digest' must be {digits} hex digits for {name}"
        )
    return digest


def _cancelled(display: str) -> FramesError:
    return FramesError(
        ErrorCode.CANCELLED,
        f"upload of {display} was cancelled: its partial file was removed"
        " (deleted by another client or on the server)",
        path=display,
    )


def _keepsPartial(error: FramesError) -> bool:
    """
    Whether a failed upload message leaves its partial in place: only for
    an offset mismatch (the data is good, the client is told how much the
    server has).  Any other refusal or failure by the server gives the
    space back at once.
    """
    return error.code == ErrorCode.INVALID_ARGUMENT and "have" in error.details


class _UploadSink(BodySink):
    """
    One C{put} message: prepares the partial file in a worker thread while
    the connection is paused, streams the body to it, then finishes.

    Between the messages of one upload the connection keeps the partial
    open, hence locked (L{_Held}): a second upload to the same path, on
    another connection or by another server process, is refused with
    C{busy} until this one ends.  It ends with its final message, with a
    failure (the partial is then discarded, see L{_keepsPartial}) or with
    the connection (the partial is then kept for a resumed upload).
    """

    # Cut short at shutdown: bodyFailed keeps what arrived for a resume.
    stopsAtShutdown = True

    def __init__(
        self, service: FileService, request: Request, segments: list[str], upload: _Upload
    ) -> None:
        self.service = service
        self.request = request
        self.segments = segments
        self.key = tuple(segments)
        self.upload = upload
        self.length = 0
        self.producer: Any = None
        self.writer: FileWriter | None = None
        self.failed: FramesError | None = None
        self.received = False
        self.connectionFailure: Failure | None = None
        self._pauses = 0
        self._lock: defer.DeferredLock | None = None
        self._ready: defer.Deferred[None] | None = None
        self._closed = False
        uploads = service._uploads.get(request.connection)
        if uploads is None:
            uploads = service._uploads[request.connection] = _ConnectionUploads()
        self._uploads = uploads

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
        s, u, uploads = self.service, self.upload, self._uploads
        # Queued for the lock before any thread work, in arrival order: an
        # empty body lets the connection read the next message while this
        # one is still being prepared, and its thread may finish first.
        lock = uploads.locks.get(self.key)
        if lock is None:
            lock = uploads.locks[self.key] = defer.DeferredLock()
        await lock.acquire()
        self._lock = lock
        if uploads.closed:
            # A pipelined message whose connection went while it waited:
            # nobody can be answered, and the partial stays as it is for a
            # resumed upload.
            self._close(discard=False)
            return
        held = uploads.held.pop(self.key, None)
        if held is None:
            if len(uploads.active) >= MAX_UPLOADS_PER_CONNECTION:
                raise FramesError(
                    ErrorCode.BUSY,
                    f"more than {MAX_UPLOADS_PER_CONNECTION} uploads in progress"
                    " on one connection",
                    path=u.display,
                )
            uploads.active.add(self.key)
        await s.run(s._prepareUpload, self.segments, u, held, self.length)
        self.writer = FileWriter(
            u.fd,
            u.hasher,
            s.run,
            self._pause,
            self._resume,
            afterWrite=self._checkNotRemoved,
            onError=self._fail,
        )
        if self.received or self.connectionFailure is not None:
            self._afterBody()
        else:
            self._resume()

    def _checkNotRemoved(self, fd: int) -> None:
        # In the writer's thread after each write: a cheap fstat tells
        # whether a delete has unlinked the partial, so the uploader learns
        # within one write instead of after streaming everything.
        if os.fstat(fd).st_nlink == 0:
            raise _cancelled(self.upload.display)

    def _prepareFailed(self, failure: Failure) -> None:
        self._fail(failure)
        if self._pauses:
            self._pauses = 1
            self._resume()

    def bodyData(self, data: bytes) -> None:
        # A write error is reported by the writer itself (onError), at once.
        if self.writer is not None and self.failed is None:
            self.writer.write(data)

    @property
    def receivesDirect(self) -> bool:  # type: ignore[override]
        """
        Whether the rest of the body may be received off the reactor
        (L{BodySink.receiveDirect}): once the partial is ready, until the
        upload fails.
        """
        return self.writer is not None and self.failed is None

    def receiveDirect(self, receive: DirectReceiver) -> defer.Deferred[None] | None:
        # The writer's afterWrite (the check for a delete) and onError (the
        # error reply, the partial's removal) apply as to its own writes.
        return None if self.writer is None else self.writer.receiveDirect(receive)

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

    def _afterBody(self) -> None:
        writer = self.writer
        assert writer is not None
        d = writer.drain()
        d.addCallback(lambda _: self._finish(writer.written))
        d.addErrback(self._fail)
        d.addBoth(lambda _: self._close(discard=False))

    def _finish(self, written: int) -> defer.Deferred[None] | None:
        s, u = self.service, self.upload
        if self.failed is not None:
            return None
        if self.connectionFailure is not None or (not u.final and self._uploads.closed):
            # The connection is gone: keep what arrived, hashed, for a
            # resumed upload (closing the partial releases its lock).
            def keep() -> None:
                st = os.fstat(u.fd)
                s.rememberHash(st, u.offset + written, u.hasher)

            return s.run(keep)
        if not u.final:
            self._hold(u.offset + written)
            return None
        d: defer.Deferred[dict[str, Any]] = s.run(s._finishSegment, u, written)
        return d.addCallback(self._reply)

    def _hold(self, have: int) -> None:
        """
        Keep the partial open (and locked) on the connection for the
        upload's next message, and answer this one.
        """
        u, uploads = self.upload, self._uploads
        uploads.held[self.key] = _Held(u.parent, u.fd, have, u.hasher)
        u.parent = u.fd = -1
        self._reply({"path": u.display, "have": have})

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
            # No write is running now (a failed writer writes no more), so
            # the partial can go at once, while the rest of the body is
            # still being read and dropped.
            self._close(discard=not _keepsPartial(error))
        if not self.request.finished:
            self.request.fail(error)

    def _close(self, discard: bool) -> None:
        """
        End this message's hold on the upload (once): close what it still
        has open (nothing if L{_hold} passed it to the next message), then
        let the next message for the target in.
        """
        if self._closed:
            return
        self._closed = True
        s, u = self.service, self.upload
        if u.fd < 0 and u.parent < 0:
            self._release()
            return
        d = s.run(s._closeUpload, u, discard)
        d.addErrback(lambda f: log.failure("closing the upload of {p} failed", f, p=u.display))
        d.addBoth(lambda _: self._release())

    def _release(self) -> None:
        uploads = self._uploads
        if self.key not in uploads.held:
            uploads.active.discard(self.key)
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
            if not lock.locked and not lock.waiting:
                uploads.locks.pop(self.key, None)
