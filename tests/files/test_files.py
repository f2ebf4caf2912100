"""
Tests for the file service and its client, in memory: a real server and
client protocol joined by L{twisted.test.iosim}, blocking work run
synchronously, a temporary root directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
from typing import Any

import blake3
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.client import FramesClient
from twisted_frames.files import service as files
from twisted_frames.files import store as filestore
from twisted_frames.files.blocking import PARTIAL_PREFIX
from twisted_frames.files.client import FileClient, LocalError, checkRemoteName, localPartialName
from twisted_frames.files.paths import checkPath, partialName
from twisted_frames.files.service import FileService
from twisted_frames.files.store import (
    FileSource,
    FileWriter,
    errorFromOSError,
    synchronousRunner,
)
from twisted_frames.server import FramesServerFactory, Request, operation
from twisted_frames.testing import connectedPair
from twisted_frames.wire import ErrorCode, FramesError


def tempPath(case: Any) -> str:
    """
    A fresh path in a temporary directory removed after the test (C{mktemp}
    would put it under the current directory when run by pytest).
    """
    base = tempfile.mkdtemp(prefix="frames-files-test-")
    case.addCleanup(shutil.rmtree, base, True)
    return os.path.join(base, "t")


def sha(data: bytes) -> str:
    """
    @return: the hex SHA-256 of C{data}.
    """
    return hashlib.sha256(data).hexdigest()


def b3(data: bytes) -> str:
    """
    @return: the hex BLAKE3 of C{data} (what a client and this server
        choose).
    """
    return blake3.blake3(data).hexdigest()


class FilesTestMixin:
    """
    A temp root and a local directory, a L{FileService} on the root, and a
    connected in-memory client.
    """

    clientSegment: int | None = None
    serverSegment = 1 << 30

    def setUp(self) -> None:
        base = tempPath(self)
        self.root = os.path.join(base, "root")
        self.local = os.path.join(base, "local")
        self.outside = os.path.join(base, "outside")
        for d in (self.root, self.local, self.outside):
            os.makedirs(d)
        with open(os.path.join(self.outside, "secret"), "wb") as f:
            f.write(b"secret")
        self.clock = Clock()
        self.service = self.makeService()
        self.connect()

    def makeService(self) -> FileService:
        return FileService(
            self.root,
            runInThread=synchronousRunner,
            segmentSize=self.serverSegment,
            clock=self.clock,
        )

    def connect(self) -> None:
        conn = connectedPair(FramesServerFactory([self.service], clock=self.clock))
        self.server, self.clientProtocol, self.pump = conn.server, conn.client, conn.pump
        self.client = conn.frames
        self.files = FileClient(
            self.client, runInThread=synchronousRunner, segmentSize=self.clientSegment
        )

    def reconnect(self) -> None:
        """
        Drop the client's connection (the uploads it holds are abandoned,
        their partials kept for resume) and connect a new one.
        """
        self.clientProtocol.transport.loseConnection()
        self.pump.flush()
        self.connect()

    def go(self, coroutine: Any) -> Any:
        """
        Run a client coroutine to completion; return its result.
        """
        d = defer.Deferred.fromCoroutine(coroutine)
        self.pump.flush()
        return self.successResultOf(d)  # type: ignore[attr-defined]

    def goFails(self, coroutine: Any, code: str) -> Any:
        """
        Run a client coroutine that must fail with C{code}; return the error.
        """
        d = defer.Deferred.fromCoroutine(coroutine)
        self.pump.flush()
        failure = self.failureResultOf(d, FramesError, LocalError)  # type: ignore[attr-defined]
        self.assertEqual(failure.value.code, code, failure.value)  # type: ignore[attr-defined]
        return failure.value

    def request(self, op: str, fields: dict[str, Any], body: bytes = b"") -> Any:
        """
        Send a raw request; return the reply or the L{FramesError}.
        """
        results: list[Any] = []
        self.client.request(op, fields, body).addBoth(results.append)
        self.pump.flush()
        result = results[0]
        if isinstance(result, Failure):
            result.trap(FramesError)
            return result.value
        return result

    def writeLocal(self, name: str, data: bytes) -> str:
        path = os.path.join(self.local, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def rootFile(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def readBytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


ALL_OPS = ["list", "stat", "get", "put", "delete", "mkdir"]


class PathCheckTests(SynchronousTestCase):
    """
    L{checkPath}: the textual half of confinement.
    """

    def assertForbidden(self, path: Any) -> None:
        with self.assertRaises(FramesError) as e:
            checkPath(path)
        self.assertEqual(e.exception.code, ErrorCode.FORBIDDEN_PATH, path)

    def test_dotdot(self) -> None:
        """
        Any C{..} segment is refused, wherever it is.
        """
        for p in ["..", "../x", "a/..", "a/../../etc", "a/../b"]:
            self.assertForbidden(p)

    def test_dot(self) -> None:
        """
        C{.} segments are refused (a path has one spelling).
        """
        self.assertForbidden("./a")
        self.assertForbidden("a/./b")

    def test_absolute(self) -> None:
        """
        Absolute paths are refused.
        """
        self.assertForbidden("/etc/passwd")
        self.assertForbidden("//x")

    def test_nul(self) -> None:
        """
        NUL bytes are refused.
        """
        self.assertForbidden("a\x00b")

    def test_backslash(self) -> None:
        """
        Backslashes are refused (no Windows-style separators or escapes).
        """
        self.assertForbidden("..\\etc")
        self.assertForbidden("a\\b")

    def test_emptySegments(self) -> None:
        """
        Empty segments (doubled or trailing slashes) are refused, and the
        empty path is refused where the root itself makes no sense.
        """
        self.assertForbidden("a//b")
        self.assertForbidden("a/")
        self.assertForbidden("")
        self.assertEqual(checkPath("", allowRoot=True), [])

    def test_overlong(self) -> None:
        """
        A segment over 255 bytes, or a path over 4096, is refused.
        """
        self.assertForbidden("a" * 256)
        self.assertForbidden("é" * 128)
        self.assertForbidden("/".join(["abcdefgh"] * 600))
        self.assertEqual(checkPath("a" * 255), ["a" * 255])

    def test_reserved(self) -> None:
        """
        The server's partial-upload names cannot be addressed.
        """
        self.assertForbidden(PARTIAL_PREFIX + "x")
        self.assertForbidden("d/" + partialName("f"))

    def test_reservedInAnyCase(self) -> None:
        """
        The partial-upload names are refused in any letter case (and with
        letters that fold to ASCII, like the long s): on a case-insensitive
        file system (macOS, Linux casefold directories) those spellings
        open the server's own partial files.
        """
        self.assertForbidden(partialName("f").upper())
        self.assertForbidden("d/.Frames-Partial-" + partialName("f")[len(PARTIAL_PREFIX) :])
        self.assertForbidden(".frame\u017f-partial-x")

    def test_surrogates(self) -> None:
        """
        A path that is not valid Unicode (lone surrogate) is refused.
        """
        self.assertForbidden("a\udc80")

    def test_notString(self) -> None:
        """
        A path that is not a string is an invalid argument.
        """
        for value in [None, 3, ["a"]]:
            with self.assertRaises(FramesError) as e:
                checkPath(value)
            self.assertEqual(e.exception.code, ErrorCode.INVALID_ARGUMENT)

    def test_good(self) -> None:
        """
        Ordinary relative paths split into their segments.
        """
        self.assertEqual(checkPath("a/b c/.hidden"), ["a", "b c", ".hidden"])


class ConfinementTests(FilesTestMixin, SynchronousTestCase):
    """
    Every op refuses paths that could leave the root, over the wire.
    """

    def test_badPathsEveryOp(self) -> None:
        """
        Each op answers C{forbidden_path} for each kind of escaping path,
        and the connection stays usable.
        """
        for path in ["../x", "/etc/passwd", "a\x00b", "a\\b", "a//b", "x" * 300]:
            for op in ALL_OPS:
                fields: dict[str, Any] = {"path": path}
                if op == "put":
                    fields["sha256"] = sha(b"")
                result = self.request(op, fields)
                self.assertIsInstance(result, FramesError, (op, path))
                self.assertEqual(result.code, ErrorCode.FORBIDDEN_PATH, (op, path))
        self.assertEqual(self.go(self.files.list("")), [])
        self.assertEqual(os.listdir(self.outside), ["secret"])

    def test_symlinkOutDirectory(self) -> None:
        """
        A link inside the root to a directory outside it is never followed:
        not to list, read, write, create or delete through it.
        """
        os.symlink(self.outside, self.rootFile("out"))
        self.request("mkdir", {"path": "real"})
        for op, path in [
            ("list", "out"),
            ("get", "out/secret"),
            ("stat", "out/secret"),
            ("delete", "out/secret"),
            ("mkdir", "out/new"),
        ]:
            result = self.request(op, {"path": path})
            self.assertEqual(result.code, ErrorCode.FORBIDDEN_PATH, (op, path))
        result = self.request("mkdir", {"path": "out/new/deeper", "parents": True})
        self.assertEqual(result.code, ErrorCode.FORBIDDEN_PATH)
        result = self.request("put", {"path": "out/planted", "sha256": sha(b"x")}, b"x")
        self.assertEqual(result.code, ErrorCode.FORBIDDEN_PATH)
        self.assertEqual(os.listdir(self.outside), ["secret"])

    def test_symlinkToFile(self) -> None:
        """
        A link to a file outside is listed and stat'ed as a link, cannot be
        read, and C{delete} removes the link, not its target.
        """
        os.symlink(os.path.join(self.outside, "secret"), self.rootFile("s"))
        entries = self.go(self.files.list(""))
        self.assertEqual([(e["name"], e["type"]) for e in entries], [("s", "symlink")])
        self.assertEqual(self.go(self.files.stat("s"))["type"], "symlink")
        self.assertEqual(self.request("get", {"path": "s"}).code, ErrorCode.FORBIDDEN_PATH)
        self.assertEqual(self.go(self.files.delete("s"))["type"], "symlink")
        self.assertFalse(os.path.lexists(self.rootFile("s")))
        self.assertTrue(os.path.exists(os.path.join(self.outside, "secret")))

    def test_putOverSymlinkNeedsOverwrite(self) -> None:
        """
        Uploading onto a link's name without overwrite is refused; with
        overwrite the link itself is replaced and its target is untouched.
        """
        os.symlink(os.path.join(self.outside, "secret"), self.rootFile("s"))
        result = self.request("put", {"path": "s", "sha256": sha(b"new")}, b"new")
        self.assertEqual(result.code, ErrorCode.ALREADY_EXISTS)
        self.request("put", {"path": "s", "sha256": sha(b"new"), "overwrite": True}, b"new")
        self.assertFalse(os.path.islink(self.rootFile("s")))
        self.assertEqual(self.readBytes(self.rootFile("s")), b"new")
        self.assertEqual(self.readBytes(os.path.join(self.outside, "secret")), b"secret")

    def test_symlinkSwappedDuringUpload(self) -> None:
        """
        A directory swapped for a link to outside the root while an upload
        into it is in progress does not redirect the upload: the file lands
        in the directory that was opened (now moved), never outside.
        """
        os.mkdir(self.rootFile("d"))
        transport = StringTransport()
        factory = FramesServerFactory([self.service], clock=self.clock)
        server = factory.buildProtocol(None)
        server.makeConnection(transport)
        data = b"a" * 1000
        header = wire.encodeHeader({"op": "put", "id": 1, "path": "d/f", "sha256": sha(data)})
        server.dataReceived(
            wire.encodePrefix(len(header)) + header + wire.encodePrefix(len(data)) + data[:500]
        )
        os.rename(self.rootFile("d"), self.rootFile("moved"))
        os.symlink(self.outside, self.rootFile("d"))
        server.dataReceived(data[500:])
        self.assertIn(b'"ok":true', transport.value())
        self.assertEqual(sorted(os.listdir(self.outside)), ["secret"])
        self.assertEqual(self.readBytes(self.rootFile("moved", "f")), data)

    def test_partialNamesHidden(self) -> None:
        """
        Partial uploads never appear in C{list}.
        """
        self.request("put", {"path": "f", "final": False}, b"abc")
        self.assertTrue(os.path.exists(self.rootFile(partialName("f"))))
        self.assertEqual(self.go(self.files.list("")), [])

    def test_clientRefusesEscapingNames(self) -> None:
        """
        L{checkRemoteName} refuses names that could leave a local directory.
        """
        for name in ["..", ".", "", "a/b", "../x", "a\\b", "a\x00", None, 3, ".x.frames-partial"]:
            with self.assertRaises(LocalError) as e:
                checkRemoteName(name)
            self.assertEqual(e.exception.code, ErrorCode.FORBIDDEN_PATH)
        self.assertEqual(checkRemoteName("ok.txt"), "ok.txt")

    def test_getTreeRefusesEvilListing(self) -> None:
        """
        A server listing names like C{../evil} cannot make C{getTree} write
        outside its target directory.
        """

        class Evil(FileService):
            @operation("list")
            async def opList(self, request: Request) -> Any:
                entries = [
                    {"name": "../evil", "type": "file", "size": 1, "mtime": 0, "mode": 420},
                    {"name": "/abs", "type": "file", "size": 1, "mtime": 0, "mode": 420},
                    {"name": "..", "type": "directory", "size": 1, "mtime": 0, "mode": 493},
                ]
                request.reply({"count": 3}, json.dumps(entries).encode())
                return None

        self.service = Evil(self.root, runInThread=synchronousRunner)
        self.connect()
        target = os.path.join(self.local, "t")
        result = self.go(self.files.getTree("", target))
        self.assertEqual(len(result.errors), 3)
        for _, e in result.errors:
            self.assertEqual(e.code, ErrorCode.FORBIDDEN_PATH)
        self.assertEqual(os.listdir(target), [])
        self.assertFalse(os.path.exists(os.path.join(self.local, "evil")))


class OpsTests(FilesTestMixin, SynchronousTestCase):
    """
    list, stat, delete and mkdir.
    """

    def test_list(self) -> None:
        """
        C{list} gives name, type, size, mtime and mode of each entry, sorted,
        as JSON in the body.
        """
        os.mkdir(self.rootFile("d"))
        with open(self.rootFile("d", "b"), "wb") as f:
            f.write(b"12345")
        os.mkdir(self.rootFile("d", "a"))
        reply = self.request("list", {"path": "d"})
        self.assertEqual(reply.header["count"], 2)
        entries = json.loads(reply.body)
        self.assertEqual(
            [(e["name"], e["type"]) for e in entries], [("a", "directory"), ("b", "file")]
        )
        self.assertEqual(entries[1]["size"], 5)
        self.assertIsInstance(entries[1]["mtime"], float)

    def test_listErrors(self) -> None:
        """
        Listing a file or a missing directory fails with a clear code.
        """
        self.writeLocal("x", b"")
        with open(self.rootFile("f"), "wb"):
            pass
        self.goFails(self.files.list("f"), ErrorCode.NOT_A_DIRECTORY)
        self.goFails(self.files.list("missing"), ErrorCode.NOT_FOUND)
        self.goFails(self.files.list("f/x"), ErrorCode.NOT_A_DIRECTORY)

    def test_stat(self) -> None:
        """
        C{stat} of the root, a directory and a file.
        """
        os.mkdir(self.rootFile("d"))
        with open(self.rootFile("d", "f"), "wb") as f:
            f.write(b"xyz")
        self.assertEqual(self.go(self.files.stat(""))["type"], "directory")
        self.assertEqual(self.go(self.files.stat("d"))["type"], "directory")
        info = self.go(self.files.stat("d/f"))
        self.assertEqual((info["type"], info["size"], info["path"]), ("file", 3, "d/f"))
        self.goFails(self.files.stat("d/g"), ErrorCode.NOT_FOUND)

    def test_delete(self) -> None:
        """
        C{delete} removes files and empty directories; a non-empty one is
        C{not_empty}; a missing one C{not_found}; the root is refused.
        """
        os.makedirs(self.rootFile("d", "e"))
        with open(self.rootFile("d", "f"), "wb"):
            pass
        self.goFails(self.files.delete("d"), ErrorCode.NOT_EMPTY)
        self.assertEqual(self.go(self.files.delete("d/f"))["type"], "file")
        self.assertEqual(self.go(self.files.delete("d/e"))["type"], "directory")
        self.go(self.files.delete("d"))
        self.assertEqual(os.listdir(self.root), [])
        self.goFails(self.files.delete("d"), ErrorCode.NOT_FOUND)
        self.goFails(self.files.delete(""), ErrorCode.FORBIDDEN_PATH)

    def test_deleteDirWithStalePartials(self) -> None:
        """
        A directory that looks empty (it holds only an abandoned partial
        upload) can be deleted.
        """
        self.go(self.files.mkdir("d"))
        self.request("put", {"path": "d/f", "final": False}, b"abc")
        self.reconnect()
        os.mkfifo(self.rootFile("d", partialName("g")))
        self.go(self.files.delete("d"))
        self.assertEqual(os.listdir(self.root), [])

    def test_mkdir(self) -> None:
        """
        C{mkdir} with parents creates the chain and accepts an existing
        directory; without, a missing parent is C{not_found} and an existing
        name C{already_exists}.
        """
        self.assertTrue(self.go(self.files.mkdir("a/b/c"))["created"])
        self.assertTrue(os.path.isdir(self.rootFile("a", "b", "c")))
        self.assertFalse(self.go(self.files.mkdir("a/b"))["created"])
        self.goFails(self.files.mkdir("x/y", parents=False), ErrorCode.NOT_FOUND)
        self.goFails(self.files.mkdir("a", parents=False), ErrorCode.ALREADY_EXISTS)
        with open(self.rootFile("f"), "wb"):
            pass
        self.goFails(self.files.mkdir("f/g"), ErrorCode.NOT_A_DIRECTORY)
        self.goFails(self.files.mkdir("f"), ErrorCode.ALREADY_EXISTS)

    def test_errnoMapping(self) -> None:
        """
        OS errors map to stable codes; unknown ones are C{io_error}.
        """
        for number, code in [
            (errno.ENOSPC, ErrorCode.NO_SPACE),
            (errno.EDQUOT, ErrorCode.NO_SPACE),
            (errno.EACCES, ErrorCode.PERMISSION_DENIED),
            (errno.ENOENT, ErrorCode.NOT_FOUND),
            (errno.EEXIST, ErrorCode.ALREADY_EXISTS),
            (errno.ENOTDIR, ErrorCode.NOT_A_DIRECTORY),
            (errno.EISDIR, ErrorCode.IS_A_DIRECTORY),
            (errno.ENOTEMPTY, ErrorCode.NOT_EMPTY),
            (errno.ELOOP, ErrorCode.FORBIDDEN_PATH),
            (errno.EIO, ErrorCode.IO_ERROR),
        ]:
            error = errorFromOSError(OSError(number, os.strerror(number)), "p")
            self.assertEqual(error.code, code)
            self.assertEqual(error.details["path"], "p")

    def test_badFields(self) -> None:
        """
        Malformed fields are C{invalid_argument}.
        """
        self.assertEqual(
            self.request("put", {"path": "f", "sha256": "zz"}).code, ErrorCode.INVALID_ARGUMENT
        )
        self.assertEqual(
            self.request("put", {"path": "f", "offset": -1, "sha256": sha(b"")}).code,
            ErrorCode.INVALID_ARGUMENT,
        )
        self.assertEqual(
            self.request("get", {"path": "f", "offset": "0"}).code, ErrorCode.INVALID_ARGUMENT
        )
        self.assertEqual(
            self.request("mkdir", {"path": "f", "parents": 1}).code, ErrorCode.INVALID_ARGUMENT
        )


class TransferTests(FilesTestMixin, SynchronousTestCase):
    """
    put and get: verified, atomic, resumable.
    """

    def test_roundTrip(self) -> None:
        """
        A file put then got comes back identical, with the same SHA-256 on
        both sides.
        """
        data = os.urandom(3 * 1024 * 1024 + 17)
        src = self.writeLocal("a", data)
        put = self.go(self.files.putFile(src, "a"))
        self.assertEqual((put["size"], put["digest"]), (len(data), b3(data)))
        self.assertEqual(self.readBytes(self.rootFile("a")), data)
        dst = os.path.join(self.local, "b")
        got = self.go(self.files.getFile("a", dst))
        self.assertEqual(got["digest"], b3(data))
        self.assertEqual(self.readBytes(dst), data)
        self.assertEqual(sorted(os.listdir(self.local)), ["a", "b"])
        self.assertEqual(os.listdir(self.root), ["a"])

    def test_emptyAndSmall(self) -> None:
        """
        Empty and small files go in one message and round-trip.
        """
        for data in [b"", b"x", os.urandom(5000)]:
            src = self.writeLocal("s", data)
            self.go(self.files.putFile(src, "s", overwrite=True))
            dst = os.path.join(self.local, "t")
            self.go(self.files.getFile("s", dst, overwrite=True))
            self.assertEqual(self.readBytes(dst), data)

    def test_overwriteNeedsFlag(self) -> None:
        """
        Uploading onto an existing file needs C{overwrite}; so does
        downloading onto an existing local file.
        """
        src = self.writeLocal("a", b"one")
        self.go(self.files.putFile(src, "a"))
        src = self.writeLocal("a", b"two")
        self.goFails(self.files.putFile(src, "a"), ErrorCode.ALREADY_EXISTS)
        self.assertEqual(self.readBytes(self.rootFile("a")), b"one")
        self.go(self.files.putFile(src, "a", overwrite=True))
        self.assertEqual(self.readBytes(self.rootFile("a")), b"two")
        dst = self.writeLocal("b", b"local")
        self.goFails(self.files.getFile("a", dst), ErrorCode.ALREADY_EXISTS)
        self.assertEqual(self.readBytes(dst), b"local")
        self.go(self.files.getFile("a", dst, overwrite=True))
        self.assertEqual(self.readBytes(dst), b"two")

    def test_putHashMismatch(self) -> None:
        """
        A put whose data does not match its SHA-256 is refused with
        C{integrity_error}; nothing appears under the name and the partial
        is gone.
        """
        result = self.request("put", {"path": "f", "sha256": sha(b"other")}, b"data")
        self.assertEqual(result.code, ErrorCode.INTEGRITY_ERROR)
        self.assertEqual(os.listdir(self.root), [])

    def test_getHashMismatch(self) -> None:
        """
        A download whose data does not match the server's SHA-256 fails
        with C{integrity_error} and leaves no local file.
        """

        class Lying(FileService):
            @operation("get")
            async def opGet(self, request: Request) -> Any:
                result = await super().opGet(request)
                result["sha256" if "sha256" in result else "digest"] = sha(b"something else")
                return result

        self.service = Lying(self.root, runInThread=synchronousRunner)
        self.connect()
        with open(self.rootFile("f"), "wb") as f:
            f.write(b"payload")
        dst = os.path.join(self.local, "f")
        self.goFails(self.files.getFile("f", dst), ErrorCode.INTEGRITY_ERROR)
        self.assertEqual(os.listdir(self.local), [])

    def test_putIntoMissingOrDirectory(self) -> None:
        """
        Uploading into a missing directory is C{not_found}; onto a directory
        C{is_a_directory}.
        """
        os.mkdir(self.rootFile("d"))
        src = self.writeLocal("a", b"x")
        self.goFails(self.files.putFile(src, "nope/a"), ErrorCode.NOT_FOUND)
        self.goFails(self.files.putFile(src, "d", overwrite=True), ErrorCode.IS_A_DIRECTORY)

    def test_getErrors(self) -> None:
        """
        Getting a directory or a missing file fails, leaving nothing locally;
        an offset past the end is C{invalid_argument}.
        """
        os.mkdir(self.rootFile("d"))
        dst = os.path.join(self.local, "x")
        self.goFails(self.files.getFile("d", dst), ErrorCode.IS_A_DIRECTORY)
        self.goFails(self.files.getFile("missing", dst), ErrorCode.NOT_FOUND)
        with open(self.rootFile("f"), "wb") as f:
            f.write(b"abc")
        result = self.request("get", {"path": "f", "offset": 4})
        self.assertEqual(result.code, ErrorCode.INVALID_ARGUMENT)

    def test_errorReplyMidBodyKeepsConnection(self) -> None:
        """
        A large upload refused at once (missing directory) is answered with
        an error while its body is still being sent; the body is drained
        and the connection stays usable.
        """
        data = os.urandom(300_000)
        result = self.request("put", {"path": "nope/big", "sha256": sha(data)}, data)
        self.assertEqual(result.code, ErrorCode.NOT_FOUND)
        self.assertEqual(self.go(self.files.list("")), [])

    def test_largeUploadRefusedBeforeStreaming(self) -> None:
        """
        The client asks with an empty message before streaming a large
        file, so a refused upload costs no body bytes.
        """
        src = self.writeLocal("big", os.urandom(3 * 1024 * 1024))
        before = self.clientProtocol.bytesSent
        self.goFails(self.files.putFile(src, "nope/big"), ErrorCode.NOT_FOUND)
        self.assertLess(self.clientProtocol.bytesSent - before, 1000)
        self.assertEqual(self.go(self.files.list("")), [])

    def test_refusedSegmentKeepsConnection(self) -> None:
        """
        If a streamed segment is refused while being sent, the client
        completes the frame without reading the file further and the
        connection stays usable.
        """
        src = self.writeLocal("big", os.urandom(3 * 1024 * 1024))
        self.go(self.files.mkdir("d"))
        original = self.clientProtocol.request

        def dropDirFirst(op: str, fields: Any = None, *a: Any, **kw: Any) -> Any:
            if op == "put" and fields.get("final") is False and not isinstance(a[0], bytes):
                shutil.rmtree(self.rootFile("d"))
                self.clientProtocol.request = original  # type: ignore[method-assign]
            return original(op, fields, *a, **kw)

        self.clientProtocol.request = dropDirFirst  # type: ignore[method-assign]
        # The upload holds its partial open: removing it is noticed at once.
        self.goFails(self.files.putFile(src, "d/big"), ErrorCode.CANCELLED)
        self.assertEqual(self.go(self.files.list("")), [])

    def test_freeSpaceChecked(self) -> None:
        """
        An upload declaring more bytes than the disk has free is refused
        with C{no_space} before anything is written.
        """
        result = self.request("put", {"path": "f", "size": 2**62, "final": False}, b"x")
        self.assertEqual(result.code, ErrorCode.NO_SPACE)
        self.assertGreater(result.details["needed"], result.details["free"])

    def test_writeErrorNoSpace(self) -> None:
        """
        A write failing with ENOSPC answers C{no_space}, leaves nothing under
        the name and removes the partial.
        """

        def full(fd: int, data: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(filestore, "writeAll", full)
        src = self.writeLocal("a", os.urandom(2 * 1024 * 1024))
        self.goFails(self.files.putFile(src, "a"), ErrorCode.NO_SPACE)
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(self.go(self.files.list("")), [])

    def test_killedUploadResumes(self) -> None:
        """
        A client that disconnects mid-upload leaves nothing under the final
        name; the partial is kept (hidden), C{stat} reports its size, and a
        resumed upload on a new connection sends only the rest and ends with
        a matching whole-file SHA-256.
        """
        data = os.urandom(3 * 1024 * 1024)
        header = wire.encodeHeader(
            {"op": "put", "id": 1, "path": "big", "size": len(data), "final": False}
        )
        self.clientProtocol.transport.write(
            wire.encodePrefix(len(header)) + header + wire.encodePrefix(len(data))
        )
        self.clientProtocol.transport.write(data[:1_000_000])
        self.pump.flush()
        self.clientProtocol.transport.loseConnection()
        self.pump.flush()
        self.assertFalse(os.path.exists(self.rootFile("big")))
        self.assertEqual(os.listdir(self.root), [partialName("big")])
        self.assertEqual(os.path.getsize(self.rootFile(partialName("big"))), 1_000_000)

        self.connect()
        self.assertEqual(self.go(self.files.list("")), [])
        error = self.goFails(self.files.stat("big"), ErrorCode.NOT_FOUND)
        self.assertEqual(error.details["partial"], 1_000_000)
        sent: list[int] = []
        src = self.writeLocal("big", data)
        result = self.go(self.files.putFile(src, "big", resume=True, progress=sent.append))
        self.assertEqual(result["resumed_from"], 1_000_000)
        self.assertEqual(result["digest"], b3(data))
        self.assertEqual(self.readBytes(self.rootFile("big")), data)
        self.assertEqual(os.listdir(self.root), ["big"])

    def test_resumeHashesPrefixOnServer(self) -> None:
        """
        Resuming on a fresh service (no remembered hash state) re-reads the
        partial's prefix, so the whole file is still verified.
        """
        data = os.urandom(2 * 1024 * 1024)
        self.request("put", {"path": "f", "final": False}, data[:700_000])
        self.clientProtocol.transport.loseConnection()
        self.pump.flush()
        self.service = self.makeService()
        self.connect()
        src = self.writeLocal("f", data)
        result = self.go(self.files.putFile(src, "f", resume=True))
        self.assertEqual((result["resumed_from"], result["digest"]), (700_000, b3(data)))

    def test_resumeWrongPrefixStartsOver(self) -> None:
        """
        If the server's partial came from different data, the resumed
        upload fails verification, and the client starts over and succeeds.
        """
        data = os.urandom(2 * 1024 * 1024)
        self.request("put", {"path": "f", "final": False}, b"\x00" * 500_000)
        src = self.writeLocal("f", data)
        result = self.go(self.files.putFile(src, "f", resume=True))
        self.assertEqual(result["resumed_from"], 0)
        self.assertEqual(self.readBytes(self.rootFile("f")), data)

    def test_offsetMismatch(self) -> None:
        """
        A segment at an offset other than the partial's length is refused,
        saying how many bytes the server has.
        """
        self.request("put", {"path": "f", "final": False}, b"abc")
        result = self.request("put", {"path": "f", "offset": 5, "final": False}, b"x")
        self.assertEqual((result.code, result.details["have"]), (ErrorCode.INVALID_ARGUMENT, 3))
        result = self.request("put", {"path": "g", "offset": 5, "final": False}, b"x")
        self.assertEqual((result.code, result.details["have"]), (ErrorCode.INVALID_ARGUMENT, 0))

    def test_pipelinedSegments(self) -> None:
        """
        Segments and the commit sent back to back, without waiting for
        replies, are applied in order.
        """
        parts = [b"a" * 1000, b"b" * 1000, b"c" * 10]
        whole = b"".join(parts)
        results: list[Any] = []
        pos = 0
        for part in parts:
            self.client.request("put", {"path": "f", "offset": pos, "final": False}, part).addBoth(
                results.append
            )
            pos += len(part)
        self.client.request(
            "put", {"path": "f", "offset": pos, "final": True, "sha256": sha(whole)}
        ).addBoth(results.append)
        self.pump.flush()
        self.assertEqual([r.header["ok"] for r in results], [True] * 4)
        self.assertEqual(self.readBytes(self.rootFile("f")), whole)

    def test_pipelinedOrderWhateverThreadFinishesFirst(self) -> None:
        """
        Messages for one target are applied in the order they arrived even
        when a worker thread finishes a later message's preparation first: an
        empty upload followed by a non-empty one leaves the non-empty file
        (an empty body lets the connection read on while the first message
        is still being prepared).
        """
        jobs: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

        def runner(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            jobs.append((d, f, args))
            return d

        self.service = FileService(self.root, runInThread=runner, clock=self.clock)
        self.connect()
        results: list[Any] = []
        for data in (b"", b"second"):
            fields = {"path": "f", "overwrite": True, "sha256": sha(data)}
            self.client.request("put", fields, data).addBoth(results.append)
        self.pump.flush()
        while jobs:
            # The newest job first: a later message's thread wins the race.
            d, f, args = jobs.pop()
            d.callback(f(*args))
            self.pump.flush()
        self.assertEqual([r.header["size"] for r in results], [0, 6])
        self.assertEqual(self.readBytes(self.rootFile("f")), b"second")

    def test_getResume(self) -> None:
        """
        A download resumed from a local partial asks only for the rest and
        verifies the whole file.
        """
        data = os.urandom(2 * 1024 * 1024)
        with open(self.rootFile("f"), "wb") as f:
            f.write(data)
        dst = os.path.join(self.local, "f")
        with open(localPartialName(dst), "wb") as f:
            f.write(data[:123_456])
        result = self.go(self.files.getFile("f", dst, resume=True))
        self.assertEqual((result["resumed_from"], result["digest"]), (123_456, b3(data)))
        self.assertEqual(self.readBytes(dst), data)
        self.assertEqual(os.listdir(self.local), ["f"])

    def test_getResumeWrongPrefix(self) -> None:
        """
        A local partial that does not match the remote file fails the
        whole-file check and is deleted; nothing appears under the name.
        """
        with open(self.rootFile("f"), "wb") as f:
            f.write(b"x" * 1000)
        dst = os.path.join(self.local, "f")
        with open(localPartialName(dst), "wb") as f:
            f.write(b"y" * 10)
        self.goFails(self.files.getFile("f", dst, resume=True), ErrorCode.INTEGRITY_ERROR)
        self.assertEqual(os.listdir(self.local), [])

    def test_getResumeLongerPartial(self) -> None:
        """
        A local partial longer than the remote file is discarded and the
        download starts over.
        """
        with open(self.rootFile("f"), "wb") as f:
            f.write(b"short")
        dst = os.path.join(self.local, "f")
        with open(localPartialName(dst), "wb") as f:
            f.write(b"much longer than that")
        self.go(self.files.getFile("f", dst, resume=True))
        self.assertEqual(self.readBytes(dst), b"short")

    def test_getStream(self) -> None:
        """
        Downloading to a descriptor writes the bytes and checks the hash.
        """
        data = os.urandom(100_000)
        with open(self.rootFile("f"), "wb") as f:
            f.write(data)
        out = os.path.join(self.local, "out")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            result = self.go(self.files.getStream("f", fd))
        finally:
            os.close(fd)
        self.assertEqual((result["digest"], self.readBytes(out)), (b3(data), data))

    def test_putStream(self) -> None:
        """
        Uploading a stream of unknown length (e.g. stdin) in chunks ends
        with a verified file.
        """
        import io

        from twisted_frames.files import client as fileclient

        self.patch(fileclient, "STREAM_CHUNK", 1000)
        for data in [b"", b"tiny", os.urandom(4500), os.urandom(3000)]:
            result = self.go(self.files.putStream(io.BytesIO(data), "s", overwrite=True))
            self.assertEqual(result["digest"], b3(data))
            self.assertEqual(self.readBytes(self.rootFile("s")), data)

    def test_expirePartials(self) -> None:
        """
        Partials older than the TTL are deleted; fresh ones are kept.
        """
        import time

        self.request("put", {"path": "old", "final": False}, b"abc")
        self.request("put", {"path": "new", "final": False}, b"abc")
        self.reconnect()
        old = time.time() - 10_000
        os.utime(self.rootFile(partialName("old")), (old, old))
        self.clock.advance(time.time())
        self.service.partialTTL = 3600
        removed = self.successResultOf(self.service.expirePartials())
        self.assertEqual(removed, 1)
        self.assertEqual(os.listdir(self.root), [partialName("new")])


class ManualRunner:
    """
    A C{runInThread} that queues each job until the test runs it, so that a
    test decides when "worker thread" work finishes.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((d, f, args))
        return d

    def runAll(self) -> None:
        """
        Run the queued jobs, oldest first, and those they queue, until none
        is left.
        """
        while self.jobs:
            d, f, args = self.jobs.pop(0)
            synchronousRunner(f, *args).chainDeferred(d)


class _RawUpload:
    """
    One server connection fed by hand (a L{StringTransport}), so that a test
    can stop in the middle of a request body.
    """

    def __init__(self, service: FileService, clock: Clock) -> None:
        self.transport = StringTransport()
        self.server = FramesServerFactory([service], clock=clock).buildProtocol(None)
        self.server.makeConnection(self.transport)

    def start(self, fields: dict[str, Any], length: int) -> None:
        """
        Send a C{put} header and its body's length prefix.
        """
        header = wire.encodeHeader({"op": "put", "id": 1, **fields})
        self.server.dataReceived(
            wire.encodePrefix(len(header)) + header + wire.encodePrefix(length)
        )

    def send(self, data: bytes) -> None:
        """
        Send more of the body.
        """
        self.server.dataReceived(data)

    def replies(self) -> list[dict[str, Any]]:
        """
        The replies the server sent (after its greeting).
        """
        data = self.transport.value()
        out = []
        while data:
            (n,) = struct.unpack("!I", data[:4])
            header = json.loads(data[4 : 4 + n])
            (m,) = struct.unpack("!I", data[4 + n : 8 + n])
            data = data[8 + n + m :]
            if header.get("event") != "hello":
                out.append(header)
        return out


class UploadOwnershipTests(FilesTestMixin, SynchronousTestCase):
    """
    One upload per target at a time, decided by a lock on the partial file;
    what a refused, failed or removed upload leaves behind (nothing).
    """

    def otherClient(
        self, service: FileService | None = None
    ) -> tuple[FramesClient, Any, iosim.IOPump]:
        """
        A second connection, to this test's service or to C{service}.

        @return: its client, a function sending one request and returning
            the reply or the L{FramesError}, and its pump.
        """
        conn = connectedPair(FramesServerFactory([service or self.service], clock=self.clock))
        client, pump = conn.frames, conn.pump

        def ask(op: str, fields: dict[str, Any], body: bytes = b"") -> Any:
            results: list[Any] = []
            client.request(op, fields, body).addBoth(results.append)
            pump.flush()
            (result,) = results
            if isinstance(result, Failure):
                result.trap(FramesError)
                return result.value
            return result

        return client, ask, pump

    def assertBusy(self, result: Any, path: str) -> None:
        self.assertIsInstance(result, FramesError)
        self.assertEqual(result.code, ErrorCode.BUSY, result)
        self.assertEqual(result.message, f"upload of {path} already in progress")

    def assertSecondUploadRefused(self, ask: Any) -> None:
        """
        With an upload of C{f} in progress on this test's connection (3
        bytes so far), every kind of upload to C{f} through C{ask} is
        refused with C{busy} and leaves the first one intact, which then
        completes; afterwards the path is free again.
        """
        self.assertEqual(
            self.request("put", {"path": "f", "final": False, "size": 6}, b"abc").header["have"], 3
        )
        self.assertBusy(ask("put", {"path": "f", "sha256": sha(b"xyz")}, b"xyz"), "f")
        self.assertBusy(
            ask("put", {"path": "f", "sha256": sha(b"xyz"), "overwrite": True}, b"xyz"), "f"
        )
        self.assertBusy(ask("put", {"path": "f", "offset": 3, "final": False}, b"xyz"), "f")
        self.assertEqual(os.path.getsize(self.rootFile(partialName("f"))), 3)
        done = self.request("put", {"path": "f", "offset": 3, "sha256": sha(b"abcdef")}, b"def")
        self.assertEqual(done.header["size"], 6)
        self.assertEqual(self.readBytes(self.rootFile("f")), b"abcdef")
        again = ask("put", {"path": "f", "sha256": sha(b"xyz"), "overwrite": True}, b"xyz")
        self.assertEqual(again.header["size"], 3)
        self.assertEqual(os.listdir(self.root), ["f"])

    def test_secondUploadRefusedBusy(self) -> None:
        """
        A second connection's upload to a path with an upload in progress
        (between its messages) is refused at once with C{busy}, also with
        C{overwrite} or as a resume; the first upload is not harmed.
        """
        _, ask, _ = self.otherClient()
        self.assertSecondUploadRefused(ask)

    def test_secondServiceOnSameRootRefusedBusy(self) -> None:
        """
        The same holds between two file services sharing a root (as two
        server processes do): the lock is on the file, not in memory.
        """
        other = FileService(self.root, runInThread=synchronousRunner, clock=self.clock)
        _, ask, _ = self.otherClient(other)
        self.assertSecondUploadRefused(ask)

    def test_uploadInMiddleOfBodyRefusesOthers(self) -> None:
        """
        While a message's body is still arriving, another upload to the
        same path is refused too, and the first one completes.
        """
        raw = _RawUpload(self.service, self.clock)
        data = b"a" * 1000
        raw.start({"path": "f", "sha256": sha(data)}, len(data))
        raw.send(data[:400])
        _, ask, _ = self.otherClient()
        self.assertBusy(ask("put", {"path": "f", "sha256": sha(b"x")}, b"x"), "f")
        raw.send(data[400:])
        self.assertEqual(raw.replies()[-1]["ok"], True)
        self.assertEqual(self.readBytes(self.rootFile("f")), data)

    def test_lockedByAnotherProcess(self) -> None:
        """
        A partial locked by someone else (here: a descriptor the test locks,
        as another server process would) refuses uploads with C{busy}.
        """
        self.request("put", {"path": "f", "final": False}, b"abc")
        self.reconnect()
        fd = os.open(self.rootFile(partialName("f")), os.O_RDWR)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.assertBusy(self.request("put", {"path": "f", "sha256": sha(b"x")}, b"x"), "f")
        self.assertEqual(os.path.getsize(self.rootFile(partialName("f"))), 3)

    def test_uploadsPerConnectionBounded(self) -> None:
        """
        One connection holds at most L{MAX_UPLOADS_PER_CONNECTION} uploads
        open between their messages (each costs two descriptors); one more
        is refused with C{busy} until one of them ends.
        """
        self.patch(files, "MAX_UPLOADS_PER_CONNECTION", 2)
        for name in ("a", "b"):
            self.request("put", {"path": name, "final": False}, b"1")
        refused = self.request("put", {"path": "c", "final": False}, b"1")
        self.assertEqual(refused.code, ErrorCode.BUSY)
        self.assertIn("more than 2 uploads in progress", refused.message)
        self.assertFalse(os.path.exists(self.rootFile(partialName("c"))))
        self.request("put", {"path": "a", "offset": 1, "sha256": sha(b"1")})
        self.assertEqual(
            self.request("put", {"path": "c", "sha256": sha(b"1")}, b"1").header["size"], 1
        )

    def test_refusedUploadLeavesNoPartial(self) -> None:
        """
        An upload refused before any byte is written (not enough space for
        its declared size, target exists) leaves no partial behind.
        """
        result = self.request("put", {"path": "f", "size": 2**62, "final": False}, b"x")
        self.assertEqual(result.code, ErrorCode.NO_SPACE)
        self.assertEqual(os.listdir(self.root), [])
        with open(self.rootFile("g"), "wb"):
            pass
        result = self.request("put", {"path": "g", "sha256": sha(b"x")}, b"x")
        self.assertEqual(result.code, ErrorCode.ALREADY_EXISTS)
        self.assertEqual(os.listdir(self.root), ["g"])

    def test_streamRefusedForSpaceGivesSpaceBack(self) -> None:
        """
        A streamed upload (from a pipe: no size known) whose later message
        no longer fits in the free space is refused with C{no_space} and its
        partial, holding everything sent so far, is deleted at once.
        """
        import io

        from twisted_frames.files import client as fileclient

        self.patch(fileclient, "STREAM_CHUNK", 1000)
        realStatvfs = os.statvfs
        budget = 2500

        class Full:
            # What a small disk reports: what the partials use is gone.
            f_frsize = 1

            def __init__(self, used: int) -> None:
                self.f_bavail = max(0, budget - used)

        def statvfs(fd: Any) -> Any:
            used = sum(os.path.getsize(os.path.join(self.root, n)) for n in os.listdir(self.root))
            return Full(used) if isinstance(fd, int) else realStatvfs(fd)

        self.patch(os, "statvfs", statvfs)
        error = self.goFails(
            self.files.putStream(io.BytesIO(os.urandom(5000)), "p"), ErrorCode.NO_SPACE
        )
        self.assertEqual(error.details["free"], 500)
        # The message is about the next message's bytes, not the whole upload.
        self.assertEqual(
            error.message, "p: no space for 1000 more bytes after 2000, 500 free on the server"
        )
        self.assertEqual(os.listdir(self.root), [])

    def test_writeNoSpaceGivesSpaceBackAtOnce(self) -> None:
        """
        A write failing with ENOSPC in the middle of a body answers
        C{no_space} at once, and the partial is emptied (its blocks freed)
        and unlinked then, not when the rest of the body has been read.
        """
        calls: list[int] = []
        realWrite = filestore.writeAll

        def fillsUp(fd: int, data: Any) -> None:
            calls.append(len(data))
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            realWrite(fd, data)

        self.patch(filestore, "writeAll", fillsUp)
        raw = _RawUpload(self.service, self.clock)
        data = os.urandom(3000)
        raw.start({"path": "f", "sha256": sha(data)}, len(data))
        # A second name for the partial's inode, to see its size after the
        # partial's own name is gone.
        witness = os.path.join(self.local, "witness")
        os.link(self.rootFile(partialName("f")), witness)
        raw.send(data[:1000])
        self.assertEqual(os.path.getsize(witness), 1000)
        raw.send(data[1000:2000])
        (reply,) = raw.replies()
        self.assertEqual(reply["error"]["code"], ErrorCode.NO_SPACE)
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(os.path.getsize(witness), 0)
        raw.send(data[2000:])
        self.assertEqual(len(raw.replies()), 1)

    def test_writeErrorAnsweredAtOnce(self) -> None:
        """
        A write that fails after the last data that arrived is answered at
        once, not when more of the body comes: an uploader that pauses in
        the middle of a body (a pipe that is slow to fill) learns now.
        """
        runner = ManualRunner()

        def full(fd: int, data: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(filestore, "writeAll", full)
        raw = _RawUpload(FileService(self.root, runInThread=runner, clock=self.clock), self.clock)
        data = os.urandom(3000)
        raw.start({"path": "f", "sha256": sha(data)}, len(data))
        runner.runAll()
        raw.send(data[:1000])
        runner.runAll()
        (reply,) = raw.replies()
        self.assertEqual(reply["error"]["code"], ErrorCode.NO_SPACE)
        self.assertEqual(os.listdir(self.root), [])

    def test_deleteCancelsUploadInBody(self) -> None:
        """
        C{delete} of a path whose upload is in the middle of a body removes
        the partial (and says so); the uploader gets C{cancelled} at its
        next write, before the rest of its body has arrived, and its
        connection stays in step.
        """
        raw = _RawUpload(self.service, self.clock)
        data = os.urandom(3000)
        raw.start({"path": "f", "sha256": sha(data)}, len(data))
        raw.send(data[:1000])
        done = self.go(self.files.delete("f"))
        self.assertEqual(
            (done["type"], done["partial"], done["cancelled"]), ("partial", 1000, True)
        )
        self.assertEqual(os.listdir(self.root), [])
        raw.send(data[1000:1500])
        (reply,) = raw.replies()
        self.assertEqual(reply["error"]["code"], ErrorCode.CANCELLED)
        self.assertEqual(
            reply["error"]["message"],
            "upload of f was cancelled: its partial file was removed"
            " (deleted by another client or on the server)",
        )
        raw.send(data[1500:])
        header = wire.encodeHeader({"op": "list", "id": 2, "path": ""})
        raw.send(wire.encodePrefix(len(header)) + header + wire.encodePrefix(0))
        self.assertEqual(raw.replies()[-1]["count"], 0)
        self.assertEqual(os.listdir(self.root), [])

    def test_deleteCancelsUploadBetweenMessages(self) -> None:
        """
        C{delete} of a path whose upload is between two messages cancels it:
        the uploader's next message gets C{cancelled}, not an offset error,
        and nothing is stored.
        """
        self.request("put", {"path": "f", "final": False}, b"abc")
        _, ask, _ = self.otherClient()
        done = ask("delete", {"path": "f"}).header
        self.assertEqual((done["partial"], done["cancelled"]), (3, True))
        result = self.request("put", {"path": "f", "offset": 3, "sha256": sha(b"abcdef")}, b"def")
        self.assertEqual(result.code, ErrorCode.CANCELLED)
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(
            self.request("put", {"path": "f", "sha256": sha(b"x")}, b"x").header["size"], 1
        )

    def test_deleteStalePartial(self) -> None:
        """
        A partial nobody holds (its connection dropped) is removed by
        C{delete} of its path, even when no file has that name, and the
        reply says so.
        """
        self.request("put", {"path": "p80", "final": False}, b"abc")
        self.reconnect()
        done = self.go(self.files.delete("p80"))
        self.assertEqual(
            {k: done[k] for k in ("path", "type", "partial", "cancelled")},
            {"path": "p80", "type": "partial", "partial": 3, "cancelled": False},
        )
        self.assertEqual(os.listdir(self.root), [])
        self.goFails(self.files.delete("p80"), ErrorCode.NOT_FOUND)

    def test_deleteFileReportsItsPartial(self) -> None:
        """
        Deleting a file also deletes the stale partial upload to its name,
        and reports it.
        """
        with open(self.rootFile("f"), "wb") as f:
            f.write(b"old")
        self.request("put", {"path": "f", "final": False, "overwrite": True}, b"abcd")
        self.reconnect()
        done = self.go(self.files.delete("f"))
        self.assertEqual((done["type"], done["partial"], done["cancelled"]), ("file", 4, False))
        self.assertEqual(os.listdir(self.root), [])

    def test_deleteDirWithUploadInProgress(self) -> None:
        """
        A directory holding only the partial of an upload in progress is not
        empty: C{delete} refuses it and the upload completes.
        """
        self.go(self.files.mkdir("d"))
        self.request("put", {"path": "d/f", "final": False}, b"abc")
        _, ask, _ = self.otherClient()
        self.assertEqual(ask("delete", {"path": "d"}).code, ErrorCode.NOT_EMPTY)
        self.request("put", {"path": "d/f", "offset": 3, "sha256": sha(b"abc")})
        self.assertEqual(self.readBytes(self.rootFile("d", "f")), b"abc")

    def test_expireSkipsUploadInProgress(self) -> None:
        """
        L{FileService.expirePartials} never deletes a partial an upload
        holds, however old, whoever holds it; once its connection has gone
        it is deleted.
        """
        import time

        self.request("put", {"path": "mine", "final": False}, b"abc")
        self.request("put", {"path": "theirs", "final": False}, b"abc")
        self.reconnect()
        theirs = os.open(self.rootFile(partialName("theirs")), os.O_RDONLY)
        self.addCleanup(os.close, theirs)
        fcntl.flock(theirs, fcntl.LOCK_EX)
        self.request("put", {"path": "mine", "offset": 3, "final": False}, b"def")
        old = time.time() - 10_000
        for name in ("mine", "theirs"):
            os.utime(self.rootFile(partialName(name)), (old, old))
        self.clock.advance(time.time())
        self.service.partialTTL = 3600
        self.assertEqual(self.successResultOf(self.service.expirePartials()), 0)
        done = self.request("put", {"path": "mine", "offset": 6, "sha256": sha(b"abcdef")})
        self.assertEqual(done.header["size"], 6)
        fcntl.flock(theirs, fcntl.LOCK_UN)
        self.assertEqual(self.successResultOf(self.service.expirePartials()), 1)
        self.assertEqual(os.listdir(self.root), ["mine"])

    def test_droppedConnectionSkipsWaitingMessages(self) -> None:
        """
        A pipelined message still waiting for its turn when the connection
        drops does nothing: a restart at offset 0 queued behind another
        message does not empty the partial the dropped upload leaves for
        its resume.
        """
        runner = ManualRunner()

        service = FileService(self.root, runInThread=runner, clock=self.clock)
        raw = _RawUpload(service, self.clock)
        raw.start({"path": "f", "final": False}, 3)
        raw.send(b"abc")
        runner.runAll()
        self.assertEqual(raw.replies()[-1]["have"], 3)
        messages = b""
        for rid, offset in ((2, 3), (3, 0)):
            header = wire.encodeHeader(
                {"op": "put", "id": rid, "path": "f", "offset": offset, "final": False}
            )
            messages += wire.encodePrefix(len(header)) + header + wire.encodePrefix(0)
        raw.send(messages)
        raw.server.connectionLost(Failure(ConnectionError("gone")))
        runner.runAll()
        self.assertEqual(os.path.getsize(self.rootFile(partialName("f"))), 3)

    def test_resumeAfterRewriteByAnotherServer(self) -> None:
        """
        A partial rewritten to the same length by another server process
        sharing the root, after this one kept its hash state, is hashed
        again on resume: the whole-file check sees the other prefix, and the
        client's automatic restart stores exactly its own file (the kept
        hash state once made a file of the other's prefix and this one's
        rest pass as verified).
        """
        data = os.urandom(2 * 1024 * 1024)
        self.request("put", {"path": "f", "final": False}, data[:700_000])
        self.reconnect()
        other = FileService(self.root, runInThread=synchronousRunner, clock=self.clock)
        client, ask, pump = self.otherClient(other)
        self.assertEqual(
            ask("put", {"path": "f", "final": False}, bytes(700_000)).header["have"], 700_000
        )
        client.protocol.transport.loseConnection()
        pump.flush()
        # Its write came later (the kernel's file times may be coarser than
        # this test is fast).
        partial = self.rootFile(partialName("f"))
        later = os.stat(partial).st_mtime_ns + 10**9
        os.utime(partial, ns=(later, later))
        src = self.writeLocal("f", data)
        result = self.go(self.files.putFile(src, "f", resume=True))
        self.assertEqual((result["resumed_from"], result["digest"]), (0, b3(data)))
        self.assertEqual(self.readBytes(self.rootFile("f")), data)

    def test_droppedConnectionKeepsHeldPartial(self) -> None:
        """
        A connection that drops between two messages of an upload keeps the
        partial (with its hash state) for a resume on a new connection.
        """
        data = os.urandom(2 * 1024 * 1024)
        self.request("put", {"path": "f", "final": False}, data[:1_500_000])
        self.reconnect()
        src = self.writeLocal("f", data)
        result = self.go(self.files.putFile(src, "f", resume=True))
        self.assertEqual((result["resumed_from"], result["digest"]), (1_500_000, b3(data)))
        self.assertEqual(os.listdir(self.root), ["f"])


class SegmentedTransferTests(FilesTestMixin, SynchronousTestCase):
    """
    Files bigger than one message (the > 4 GiB path, with tiny segments).
    """

    clientSegment = 300_000
    serverSegment = 250_000

    def test_segmentedRoundTrip(self) -> None:
        """
        A file several segments long is uploaded as several C{put}
        messages plus a commit, and downloaded as several C{data} events,
        verified end to end.
        """
        data = os.urandom(2 * 1024 * 1024 + 5)
        src = self.writeLocal("a", data)
        seen: list[dict[str, Any]] = []
        original = self.clientProtocol.request

        def spy(op: str, fields: Any = None, *a: Any, **kw: Any) -> Any:
            seen.append({"op": op, **(fields or {})})
            return original(op, fields, *a, **kw)

        self.clientProtocol.request = spy  # type: ignore[method-assign]
        put = self.go(self.files.putFile(src, "a"))
        puts = [s for s in seen if s["op"] == "put"]
        self.assertEqual([p["offset"] for p in puts[:4]], [0, 0, 300_000, 600_000])
        self.assertEqual(len(puts), 9)
        self.assertEqual(puts[-1]["final"], True)
        self.assertEqual(put["digest"], b3(data))
        events: list[dict[str, Any]] = []
        dst = os.path.join(self.local, "b")
        d = defer.Deferred.fromCoroutine(self.files.getFile("a", dst))
        self.pump.flush()
        self.successResultOf(d)
        self.assertEqual(self.readBytes(dst), data)
        del events

    def test_segmentedGetEvents(self) -> None:
        """
        C{get} sends C{data} events of at most the segment size, with
        offsets, then the final reply with the whole file's hash.
        """
        data = os.urandom(600_000)
        with open(self.rootFile("f"), "wb") as f:
            f.write(data)
        events: list[tuple[int, int]] = []
        chunks: list[bytes] = []
        d = self.client.request(
            "get",
            {"path": "f", "offset": 100},
            onEvent=lambda h, body: (
                events.append((h["offset"], h["length"])),
                chunks.append(body),
            ),
        )
        self.pump.flush()
        reply = self.successResultOf(d)
        self.assertEqual(events, [(100, 250_000), (250_100, 250_000), (500_100, 99_900)])
        self.assertEqual(b"".join(chunks), data[100:])
        self.assertEqual(reply.header["sha256"], sha(data))
        self.assertEqual(reply.header["size"], 600_000)


class TreeTests(FilesTestMixin, SynchronousTestCase):
    """
    Recursive transfers.
    """

    def test_putAndGetTree(self) -> None:
        """
        A tree of files and directories goes up and comes back identical;
        links are reported as skipped, never followed.
        """
        top = os.path.join(self.local, "top")
        os.makedirs(os.path.join(top, "a", "b"))
        os.makedirs(os.path.join(top, "empty"))
        files = {"x": b"1", "a/y": os.urandom(3000), "a/b/z": b""}
        for name, data in files.items():
            with open(os.path.join(top, name), "wb") as f:
                f.write(data)
        os.symlink(self.outside, os.path.join(top, "link"))
        result = self.go(self.files.putTree(top, "up/top"))
        self.assertEqual(len(result.files), 3)
        self.assertEqual([kind for _, kind in result.skipped], ["symlink"])
        self.assertEqual(result.errors, [])
        self.assertTrue(os.path.isdir(self.rootFile("up", "top", "empty")))
        self.assertFalse(os.path.lexists(self.rootFile("up", "top", "link")))
        os.symlink(self.outside, self.rootFile("up", "top", "rlink"))
        back = os.path.join(self.local, "back")
        result = self.go(self.files.getTree("up/top", back))
        self.assertEqual(len(result.files), 3)
        self.assertEqual(result.skipped, [("up/top/rlink", "symlink")])
        for name, data in files.items():
            self.assertEqual(self.readBytes(os.path.join(back, name)), data)
        self.assertTrue(os.path.isdir(os.path.join(back, "empty")))
        self.assertFalse(os.path.lexists(os.path.join(back, "rlink")))

    def test_shutdownEndsTree(self) -> None:
        """
        The server's C{shutting_down} ends a tree transfer at once (every
        later file would fail the same way), instead of being recorded as
        one file's error while the walk goes on.
        """
        from twisted_frames.files.tree import putTree

        top = os.path.join(self.local, "top")
        os.makedirs(top)
        for name in ("a", "b"):
            with open(os.path.join(top, name), "wb") as f:
                f.write(b"x")
        tried: list[str] = []

        class Stopping:
            run = staticmethod(lambda f, *a: defer.maybeDeferred(f, *a))

            async def list(self, path: str = "") -> list[dict[str, Any]]:
                return []

            async def mkdir(self, path: str, parents: bool = True) -> dict[str, Any]:
                return {}

            async def putFile(self, local: str, remote: str, *rest: Any) -> dict[str, Any]:
                tried.append(remote)
                raise FramesError("shutting_down", "the server is shutting down")

            async def getFile(self, remote: str, local: str, *rest: Any) -> dict[str, Any]:
                raise AssertionError("not called")

        self.goFails(putTree(Stopping(), top, "t"), "shutting_down")
        self.assertEqual(tried, ["t/a"])


class FileWriterTests(SynchronousTestCase):
    """
    L{FileWriter}: bounded queue, in-order writes, pausing its feeder.
    """

    def test_pausesWhenFull(self) -> None:
        """
        While a write job is running, queued data beyond the high-water
        mark pauses the feeder; starting the next job resumes it; the file
        gets every byte in order and the hash matches.
        """
        jobs: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

        def manual(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            jobs.append((d, f, args))
            return d

        def finish() -> None:
            d, f, args = jobs.pop(0)
            d.callback(f(*args))

        events: list[str] = []
        path = tempPath(self)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        hasher = hashlib.sha256()
        writer = FileWriter(
            fd,
            hasher,
            manual,
            lambda: events.append("pause"),
            lambda: events.append("resume"),
            highWater=100,
        )
        writer.write(b"a" * 60)
        self.assertEqual(len(jobs), 1)
        writer.write(b"b" * 60)
        self.assertEqual(events, [])
        writer.write(b"c" * 60)
        self.assertEqual(events, ["pause"])
        finish()
        self.assertEqual(events, ["pause", "resume"])
        drained = writer.drain()
        self.assertNoResult(drained)
        finish()
        self.successResultOf(drained)
        os.close(fd)
        expected = b"a" * 60 + b"b" * 60 + b"c" * 60
        with open(path, "rb") as f:
            self.assertEqual(f.read(), expected)
        self.assertEqual(hasher.hexdigest(), sha(expected))
        self.assertEqual(writer.written, 180)

    def test_errorStops(self) -> None:
        """
        A failed write is reported by L{FileWriter.drain} and later data is
        dropped.
        """
        writer = FileWriter(-1, hashlib.sha256(), synchronousRunner, lambda: None, lambda: None)
        writer.write(b"x")
        self.assertIsNotNone(writer.error)
        writer.write(b"y")
        self.failureResultOf(writer.drain(), OSError)


class FileSourceTests(SynchronousTestCase):
    """
    L{FileSource}: bounded read-ahead, stops while paused.
    """

    def test_readAheadBounded(self) -> None:
        """
        While the consumer is paused the source reads at most
        C{READ_AHEAD} chunks; on resume it sends everything in order.
        """
        path = tempPath(self)
        data = os.urandom(10_000)
        with open(path, "wb") as f:
            f.write(data)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        reads: list[int] = []

        def counting(f: Any, *args: Any) -> defer.Deferred[Any]:
            reads.append(args[1])
            return synchronousRunner(f, *args)

        source = FileSource(fd, 0, len(data), hashlib.sha256(), counting, chunkSize=1000)
        out: list[bytes] = []

        class Consumer:
            def write(self, chunk: bytes) -> None:
                out.append(chunk)

        source.pauseProducing()
        done = source.startProducing(Consumer())
        self.assertEqual(len(reads), filestore.READ_AHEAD)
        self.assertEqual(out, [])
        source.resumeProducing()
        self.successResultOf(done)
        self.assertEqual(b"".join(out), data)
        self.assertEqual(source.hasher.hexdigest(), sha(data))

    def test_detachSendsZeros(self) -> None:
        """
        A detached source completes its frame without touching the file.
        """
        source = FileSource(-1, 0, 2500, hashlib.sha256(), synchronousRunner, chunkSize=1000)
        source.detach()
        out: list[bytes] = []

        class Consumer:
            def write(self, chunk: bytes) -> None:
                out.append(chunk)

        self.successResultOf(source.startProducing(Consumer()))
        self.assertEqual(b"".join(out), b"\x00" * 2500)


class _FileSendingConsumer:
    """
    A consumer that sends files itself, as a plain TCP connection's does:
    C{sendFile} takes at most C{take} bytes per call from the file, and
    every other call finds the "socket" full, pausing the source until the
    test resumes it.
    """

    def __init__(self, source: FileSource, take: int) -> None:
        self.source = source
        self.take = take
        self.sent: list[bytes] = []
        self.written: list[bytes] = []
        self.calls = 0
        self.full = False

    def canSendFile(self) -> bool:
        return True

    def sendFile(self, fd: int, offset: int, count: int) -> int | None:
        self.calls += 1
        if self.calls % 2 == 0:
            self.full = True
            self.source.pauseProducing()
            return None
        data = os.pread(fd, min(count, self.take), offset)
        self.sent.append(data)
        return len(data)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def drain(self) -> None:
        """
        The socket takes more, until the source is done.
        """
        while self.full:
            self.full = False
            self.source.resumeProducing()


class FileSourceSendfileTests(SynchronousTestCase):
    """
    L{FileSource} with a consumer that sends files itself: the bytes are
    sent from the file, only hashed by the worker, in order, read ahead a
    bounded number of ranges, and zeros once detached.
    """

    def setUp(self) -> None:
        path = tempPath(self)
        self.data = os.urandom(50_000)
        with open(path, "wb") as f:
            f.write(self.data)
        self.fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, self.fd)
        self.jobs: list[int] = []

    def runner(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        self.jobs.append(args[1])
        return synchronousRunner(f, *args)

    def source(self, offset: int = 0, length: int | None = None) -> FileSource:
        if length is None:
            length = len(self.data) - offset
        return FileSource(
            self.fd, offset, length, hashlib.sha256(), self.runner, sendfileChunk=7000
        )

    def test_sentFromTheFile(self) -> None:
        """
        Every byte goes through C{sendFile}, none through C{write}, in
        order, from C{offset}; the hash is of exactly those bytes.
        """
        source = self.source(offset=1000)
        consumer = _FileSendingConsumer(source, take=3000)
        done = source.startProducing(consumer)
        consumer.drain()
        self.successResultOf(done)
        self.assertTrue(source.sendsFile)
        self.assertEqual(consumer.written, [])
        self.assertEqual(b"".join(consumer.sent), self.data[1000:])
        self.assertEqual(source.hasher.hexdigest(), sha(self.data[1000:]))
        self.assertEqual(sum(self.jobs), len(self.data) - 1000)
        self.assertEqual(max(self.jobs), 7000)

    def test_readAheadBounded(self) -> None:
        """
        While the consumer is paused, at most C{SENDFILE_AHEAD} ranges are
        hashed ahead of it.
        """
        source = self.source()
        consumer = _FileSendingConsumer(source, take=3000)
        source.pauseProducing()
        done = source.startProducing(consumer)
        self.assertEqual(len(self.jobs), filestore.SENDFILE_AHEAD)
        self.assertEqual(consumer.sent, [])
        source.resumeProducing()
        consumer.drain()
        self.successResultOf(done)
        self.assertEqual(b"".join(consumer.sent), self.data)

    def test_rangesGrowWithWhatWasSent(self) -> None:
        """
        The first ranges are C{sendfileFirst} bytes, and no range is larger
        than what was already sent: a consumer that takes nothing has only
        C{SENDFILE_AHEAD} small ranges hashed ahead of it, one that takes
        everything soon gets whole ranges.
        """
        source = FileSource(
            self.fd,
            0,
            len(self.data),
            hashlib.sha256(),
            self.runner,
            sendfileChunk=8000,
            sendfileFirst=1000,
        )
        consumer = _FileSendingConsumer(source, take=3000)
        source.pauseProducing()
        done = source.startProducing(consumer)
        self.assertEqual(self.jobs, [1000] * filestore.SENDFILE_AHEAD)
        source.resumeProducing()
        consumer.drain()
        self.successResultOf(done)
        self.assertEqual(b"".join(consumer.sent), self.data)
        self.assertEqual(source.hasher.hexdigest(), sha(self.data))
        self.assertEqual(max(self.jobs), 8000)
        self.assertEqual(sum(self.jobs), len(self.data))

    def test_detachedSendsZeros(self) -> None:
        """
        Once detached, what is left (hashed ranges included) goes as zeros
        through C{write}: the file may be closed.
        """
        source = self.source()
        consumer = _FileSendingConsumer(source, take=3000)
        done = source.startProducing(consumer)
        source.detach()
        consumer.drain()
        self.successResultOf(done)
        sent = b"".join(consumer.sent)
        self.assertEqual(sent, self.data[: len(sent)])
        self.assertEqual(sent + b"".join(consumer.written), sent + bytes(50_000 - len(sent)))

    def test_fileEndsEarly(self) -> None:
        """
        A file that ends before the announced length (C{sendFile} sends
        nothing) fails the source.
        """
        source = self.source()
        consumer = _FileSendingConsumer(source, take=3000)
        consumer.sendFile = lambda fd, offset, count: 0  # type: ignore[method-assign]
        self.failureResultOf(source.startProducing(consumer), filestore.ShortRead)

    def test_plainConsumer(self) -> None:
        """
        A consumer that cannot send files gets the bytes written.
        """
        source = self.source()
        out: list[bytes] = []

        class Consumer:
            def write(self, chunk: bytes) -> None:
                out.append(chunk)

            def canSendFile(self) -> bool:
                return False

        self.successResultOf(source.startProducing(Consumer()))
        self.assertFalse(source.sendsFile)
        self.assertEqual(b"".join(out), self.data)


class TapTests(SynchronousTestCase):
    """
    C{twistd frameserver} wiring of the file service.
    """

    def test_fileServiceAndExpiry(self) -> None:
        """
        The server answers the file ops on C{--root}, and expires partials
        every C{min(--partial-ttl, 3600)} seconds on the reactor's clock.
        """
        from twisted.application.internet import TimerService
        from twisted.internet.testing import MemoryReactorClock

        from twisted_frames import tap

        root = tempPath(self)
        os.makedirs(root)
        config = tap.Options()
        config.parseOptions(["--root", root, "--partial-ttl", "60", "--udp", "0"])
        reactor = MemoryReactorClock()
        top = tap.makeService(config, reactor=reactor)
        for op in ALL_OPS:
            self.assertIn(op, top.factory.operations)
        (files,) = [s for s in top.factory.services if isinstance(s, FileService)]
        self.assertEqual((files.root.path, files.partialTTL), (os.path.abspath(root), 60.0))
        (timer,) = [s for s in top if isinstance(s, TimerService)]
        self.assertEqual(timer.step, 60)
        self.assertIs(timer.clock, reactor)

    def test_badTTL(self) -> None:
        """
        A non-positive C{--partial-ttl} is a usage error.
        """
        from twisted_frames import tap

        with self.assertRaises(SystemExit):
            tap.Options().parseOptions(["--partial-ttl", "0"])


class WriteVectorsTests(SynchronousTestCase):
    """
    L{filestore.writeVectors}: every byte, in order, across short writes and
    more buffers than one call takes.
    """

    def test_shortWritesAndManyBuffers(self) -> None:
        """
        Short C{writev} results and over-long buffer lists still write every
        byte once, in order.
        """
        written = bytearray()
        calls: list[int] = []

        def shortWritev(fd: int, buffers: Any) -> int:
            calls.append(len(buffers))
            data = b"".join(bytes(b) for b in buffers)[:7]
            written.extend(data)
            return len(data)

        self.patch(filestore, "IOV_MAX", 3)
        self.patch(os, "writev", shortWritev)
        chunks = [bytes([65 + i]) * (i + 1) for i in range(10)]
        filestore.writeVectors(-1, chunks)
        self.assertEqual(bytes(written), b"".join(chunks))
        self.assertLessEqual(max(calls), 3)
