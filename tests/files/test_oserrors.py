"""
Tests that the file service answers every failed OS call with a clear error
code (C{io_error} unless the errno has a more specific one), never
C{internal} with a traceback, and leaks no descriptor; and that it refuses a
non-regular file at an upload's partial-file slot at once instead of
blocking a worker thread on it.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.files.test_files import FilesTestMixin, sha
from twisted_frames.files.paths import partialName
from twisted_frames.files.service import FileService
from twisted_frames.files.store import synchronousRunner
from twisted_frames.wire import ErrorCode, FramesError

#: Seconds a worker thread may take before a test calls it hung.
HANG_TIMEOUT = 10.0
#: The real C{os.listdir}, for counting descriptors while tests make it fail.
_listdir = os.listdir


def openDescriptors() -> set[str]:
    """
    @return: the descriptors this process has open (Linux's C{/proc}).
    """
    return set(_listdir("/proc/self/fd"))


class OSErrorTests(FilesTestMixin, SynchronousTestCase):
    """
    An C{OSError} from any file-system call an op makes is translated, in
    one place, to the code of L{twisted_frames.files.store.errorFromOSError}.
    """

    def setUp(self) -> None:
        super().setUp()
        os.mkdir(self.rootFile("d"))
        with open(self.rootFile("d", "f"), "wb") as f:
            f.write(b"abcdef")
        if not os.path.isdir("/proc/self/fd"):
            raise self.skipTest("needs /proc/self/fd to count descriptors")

    def failCall(
        self, name: str, number: int, when: Callable[..., bool] = lambda *a, **k: True
    ) -> None:
        """
        Make C{os.NAME} fail with C{number} for the calls C{when} accepts,
        until the end of the test.
        """
        real = getattr(os, name)

        def failing(*args: Any, **kwargs: Any) -> Any:
            if when(*args, **kwargs):
                raise OSError(number, os.strerror(number))
            return real(*args, **kwargs)

        self.patch(os, name, failing)

    def assertAnswered(
        self, op: str, fields: dict[str, Any], code: str, body: bytes = b""
    ) -> None:
        """
        C{op} fails with C{code}, a message naming its path, no logged
        traceback, no descriptor left open, and the connection still works.
        """
        before = openDescriptors()
        error = self.request(op, fields, body)
        self.assertIsInstance(error, FramesError)
        self.assertEqual((error.code, error.details.get("path")), (code, fields["path"]), error)
        self.assertIn(f"{fields['path'] or '/'}: ", error.message)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(openDescriptors(), before)
        self.assertEqual(self.request("ping", {}, b"x").body, b"x")

    def rootOpen(self, path: Any, *args: Any, **kwargs: Any) -> bool:
        """
        Whether an C{os.open} call opens the served root itself (the first
        call of every walk).
        """
        return path == self.service.root.path

    def test_rootOpenEveryOp(self) -> None:
        """
        Out of descriptors (C{EMFILE}) when opening the root: every op
        answers C{io_error}.
        """
        self.failCall("open", errno.EMFILE, self.rootOpen)
        for op, fields in [
            ("list", {"path": ""}),
            ("list", {"path": "d"}),
            ("stat", {"path": ""}),
            ("stat", {"path": "d/f"}),
            ("get", {"path": "d/f"}),
            ("delete", {"path": "d/f"}),
            ("mkdir", {"path": "e"}),
            ("mkdir", {"path": "e", "parents": True}),
            ("put", {"path": "d/g", "sha256": sha(b"")}),
        ]:
            self.assertAnswered(op, fields, ErrorCode.IO_ERROR)
        self.assertEqual(sorted(os.listdir(self.root)), ["d"])
        self.assertEqual(os.listdir(self.rootFile("d")), ["f"])

    def test_listScanFails(self) -> None:
        """
        Reading a directory fails (C{EIO}): C{io_error}.
        """
        self.failCall("scandir", errno.EIO)
        self.assertAnswered("list", {"path": "d"}, ErrorCode.IO_ERROR)

    def test_fstatFails(self) -> None:
        """
        C{fstat} fails on the root (C{stat ""}) or on a file being opened
        for C{get}: C{io_error}, and the file is closed.
        """
        self.failCall("fstat", errno.EIO)
        self.assertAnswered("stat", {"path": ""}, ErrorCode.IO_ERROR)
        self.assertAnswered("get", {"path": "d/f"}, ErrorCode.IO_ERROR)

    def test_getResumeReadFails(self) -> None:
        """
        Reading the prefix of a resumed download fails (C{EIO}): C{io_error}.
        """
        self.failCall("pread", errno.EIO)
        self.assertAnswered("get", {"path": "d/f", "offset": 3}, ErrorCode.IO_ERROR)

    def test_deleteFails(self) -> None:
        """
        Unlinking fails (C{EIO}), or listing a directory of stale partials
        to remove them fails: C{io_error}.
        """
        self.failCall("unlink", errno.EIO)
        self.assertAnswered("delete", {"path": "d/f"}, ErrorCode.IO_ERROR)
        self.assertTrue(os.path.exists(self.rootFile("d", "f")))
        os.mkdir(self.rootFile("e"))
        with open(self.rootFile("e", partialName("x")), "wb"):
            pass
        self.failCall("listdir", errno.EIO)
        self.assertAnswered("delete", {"path": "e"}, ErrorCode.IO_ERROR)

    def test_mkdirMappedCodes(self) -> None:
        """
        C{mkdir} failing with an errno that has its own code gets that code:
        C{ENAMETOOLONG} is C{forbidden_path}, C{EROFS} C{permission_denied}.
        """
        self.failCall("mkdir", errno.ENAMETOOLONG)
        self.assertAnswered("mkdir", {"path": "a/b", "parents": True}, ErrorCode.FORBIDDEN_PATH)
        self.failCall("mkdir", errno.EROFS)
        self.assertAnswered("mkdir", {"path": "a"}, ErrorCode.PERMISSION_DENIED)

    def test_putFreeSpaceCheckFails(self) -> None:
        """
        C{statvfs} of the partial fails (C{EIO}): C{io_error}.
        """
        self.failCall("statvfs", errno.EIO)
        self.assertAnswered(
            "put", {"path": "d/g", "sha256": sha(b"xyz"), "size": 3}, ErrorCode.IO_ERROR, b"xyz"
        )


class IrregularPartialTests(FilesTestMixin, SynchronousTestCase):
    """
    Something other than a regular file at an upload's partial-file slot (a
    FIFO, a socket, a link, a directory) is refused at once with
    C{io_error}, with the worker thread never blocked on it.
    """

    def makeService(self) -> FileService:
        return FileService(self.root, runInThread=self.threadRunner, clock=self.clock)

    def threadRunner(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run C{f} in a real thread and wait for it, at most L{HANG_TIMEOUT}
        seconds: a call that blocks fails the test instead of hanging it.
        """
        results: list[defer.Deferred[Any]] = []
        thread = threading.Thread(target=lambda: results.append(synchronousRunner(f, *args)))
        thread.daemon = True
        thread.start()
        thread.join(HANG_TIMEOUT)
        if thread.is_alive():
            self.unblock()
            thread.join(HANG_TIMEOUT)
            self.fail(f"{f.__name__} blocked its worker thread for {HANG_TIMEOUT} s")
        return results[0]

    def unblock(self) -> None:
        """
        Open the FIFO for reading, which lets a blocked writer's open return.
        """
        fd = os.open(self.partial, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, fd)

    def setUp(self) -> None:
        super().setUp()
        self.partial = self.rootFile(partialName("f"))

    def assertRefused(self, kind: str, fields: dict[str, Any], body: bytes = b"") -> None:
        """
        A C{put} of C{f} is refused with C{io_error} naming C{kind}, and what
        is at the slot is left as it was.
        """
        before = os.lstat(self.partial)
        fields = {"path": "f", **fields}
        error = self.request("put", fields, body)
        self.assertIsInstance(error, FramesError)
        self.assertEqual(error.code, ErrorCode.IO_ERROR, error)
        self.assertEqual(
            error.message, f"f: the server's partial file is a {kind}, not a regular file; refused"
        )
        self.assertEqual(os.lstat(self.partial).st_ino, before.st_ino)
        self.assertFalse(os.path.lexists(self.rootFile("f")))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_fifo(self) -> None:
        """
        A FIFO: a new upload (which opens for writing, and would wait for a
        reader forever) and a resumed one are both refused.
        """
        os.mkfifo(self.partial)
        self.assertRefused("FIFO", {"sha256": sha(b"abc")}, b"abc")
        self.assertRefused("FIFO", {"final": False, "offset": 3}, b"abc")

    def test_fifoWithReader(self) -> None:
        """
        A FIFO that someone is reading opens at once: it is still refused.
        """
        os.mkfifo(self.partial)
        self.unblock()
        self.assertRefused("FIFO", {"sha256": sha(b"abc")}, b"abc")

    def test_socket(self) -> None:
        """
        A Unix socket bound at the slot is refused.
        """
        # Bound at a short path (AF_UNIX paths are limited to 108 bytes),
        # then moved into place.
        short = os.path.join(os.path.dirname(os.path.dirname(self.root)), "s")
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        server.bind(short)
        os.rename(short, self.partial)
        self.assertRefused("socket", {"sha256": sha(b"")})

    def test_symlinkAndDirectory(self) -> None:
        """
        A symbolic link (never followed) and a directory are refused.
        """
        os.symlink(os.path.join(self.outside, "secret"), self.partial)
        self.assertRefused("symbolic link", {"sha256": sha(b"abc")}, b"abc")
        self.assertRefused("symbolic link", {"final": False, "offset": 3}, b"abc")
        with open(os.path.join(self.outside, "secret"), "rb") as f:
            self.assertEqual(f.read(), b"secret")
        os.unlink(self.partial)
        os.mkdir(self.partial)
        self.assertRefused("directory", {"sha256": sha(b"abc")}, b"abc")
        self.assertRefused("directory", {"final": False, "offset": 3}, b"abc")

    def test_regularStillWorks(self) -> None:
        """
        An ordinary upload in two segments, through real threads, still
        works (the descriptor is blocking again after the open).
        """
        reply = self.request("put", {"path": "f", "final": False}, b"abc")
        self.assertEqual(reply.header["have"], 3)
        reply = self.request("put", {"path": "f", "offset": 3, "sha256": sha(b"abcdef")}, b"def")
        self.assertEqual(reply.header["size"], 6)
        self.assertEqual(self.readBytes(self.rootFile("f")), b"abcdef")
