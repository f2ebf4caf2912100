"""
Tests for the negotiated transfer hash, from both sides, in memory: the
greeting's C{hashes}, the client's choice (L{chooseHash}), BLAKE3 end to
end, a new client against a server of before the negotiation, a client of
before it (C{sha256} fields only) against this server byte for byte,
mismatches, resumes and refused names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Iterable
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.fields import ABSENT, Field
from twisted_frames.files.blocking import HASHES, newHash
from twisted_frames.files.client import FileClient, chooseHash
from twisted_frames.files.service import FileService
from twisted_frames.files.store import synchronousRunner
from twisted_frames.server import FramesServerFactory, Operation, Request, operation
from twisted_frames.wire import ErrorCode, FramesError

from .test_files import FilesTestMixin, b3, sha


class RecordingService(FileService):
    """
    A file service that keeps the header of every request it is sent.

    @ivar seen: C{(op, header)} in arrival order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def operations(self) -> Iterable[Operation]:
        for op in super().operations():
            yield dataclasses.replace(op, handler=self._recording(op.name, op.handler))

    def _recording(self, name: str, handler: Any) -> Any:
        def handle(request: Request) -> Any:
            self.seen.append((name, dict(request.header)))
            return handler(request)

        return handle

    def headers(self, op: str) -> list[dict[str, Any]]:
        """
        @return: the headers of the C{op} requests seen.
        """
        return [h for name, h in self.seen if name == op]


class _Ignored(Field):
    """
    A field a server does not know: whatever is sent, the handler sees
    what it would without it.
    """

    def __init__(self, absent: Any) -> None:
        super().__init__(default=absent, nullable=True)
        self.absent = absent

    def check(self, name: str, value: Any) -> Any:
        return self.absent


class OldStyleService(RecordingService):
    """
    A file service as it was before the negotiation: no C{hashes} in the
    greeting, and C{hash}/C{digest} are fields it does not know (so, like
    every unknown field, ignored): SHA-256 in C{sha256} only.
    """

    def greetingFields(self, connection: Any) -> dict[str, Any]:
        return {}

    def operations(self) -> Iterable[Operation]:
        for op in super().operations():
            fields = dict(op.fields)
            for name, absent in (("hash", ABSENT), ("digest", None)):
                if name in fields:
                    fields[name] = _Ignored(absent)
            yield dataclasses.replace(op, fields=fields)


class ChooseHashTests(SynchronousTestCase):
    """
    L{chooseHash}: the fastest hash both ends have, or the one forced.
    """

    def test_fastestOffered(self) -> None:
        """
        BLAKE3 where the server offers it, in whatever order it lists them.
        """
        self.assertEqual(chooseHash({"hashes": ["blake3", "sha256"]}), "blake3")
        self.assertEqual(chooseHash({"hashes": ["sha256", "blake3"]}), "blake3")
        self.assertEqual(chooseHash({"hashes": ["sha256"]}), "sha256")

    def test_oldServer(self) -> None:
        """
        A greeting without a list of C{hashes} (a server of before the
        negotiation) offers SHA-256; so does one listing only names this
        client does not know.
        """
        self.assertEqual(chooseHash({}), "sha256")
        self.assertEqual(chooseHash({"hashes": "blake3"}), "sha256")
        self.assertEqual(chooseHash({"hashes": ["k12", 7]}), "sha256")

    def test_forced(self) -> None:
        """
        A forced hash the server offers is used; one it does not is
        C{unsupported_hash}, naming what it has; one this client does not
        know is a C{ValueError}.
        """
        self.assertEqual(chooseHash({"hashes": ["blake3", "sha256"]}, "sha256"), "sha256")
        self.assertEqual(chooseHash({}, "sha256"), "sha256")
        with self.assertRaises(FramesError) as e:
            chooseHash({}, "blake3")
        self.assertEqual(e.exception.code, ErrorCode.UNSUPPORTED_HASH)
        self.assertEqual(
            e.exception.message, "the server does not offer hash blake3 (it has sha256)"
        )
        self.assertRaises(ValueError, chooseHash, {"hashes": ["md5"]}, "md5")

    def test_registry(self) -> None:
        """
        Each hash of L{HASHES} makes a fresh object named as on the wire,
        with a 32-byte digest (64 hex digits).
        """
        self.assertEqual(list(HASHES), ["blake3", "sha256"])
        for name in HASHES:
            h = newHash(name)
            h.update(b"abc")
            self.assertEqual((h.name, len(h.hexdigest())), (name, 64))
        self.assertEqual(newHash().name, "sha256")
        self.assertEqual(newHash("blake3").hexdigest(), b3(b""))


class NegotiationTests(FilesTestMixin, SynchronousTestCase):
    """
    A client of this version against this server: BLAKE3 unless forced.
    """

    def makeService(self) -> FileService:
        return RecordingService(self.root, runInThread=synchronousRunner, clock=self.clock)

    @property
    def recorded(self) -> RecordingService:
        assert isinstance(self.service, RecordingService)
        return self.service

    def test_greeting(self) -> None:
        """
        The greeting lists the server's hashes, fastest first, after the
        fields every greeting has.
        """
        greeting = self.client.greeting
        self.assertEqual(greeting["hashes"], ["blake3", "sha256"])
        self.assertEqual(list(greeting)[-1], "hashes")

    def test_blake3RoundTrip(self) -> None:
        """
        A segmented upload names C{hash} on every message and sends
        C{digest} (no C{sha256}) on the final one; the download asks for
        BLAKE3 and checks its digest; both results say so.
        """
        self.files.segmentSize = 1024 * 1024
        data = os.urandom(3 * 1024 * 1024 + 5)
        put = self.go(self.files.putFile(self.writeLocal("a", data), "a"))
        self.assertEqual(
            (put["hash"], put["digest"], "sha256" in put), ("blake3", b3(data), False)
        )
        headers = self.recorded.headers("put")
        self.assertEqual(len(headers), 6)
        self.assertTrue(all(h["hash"] == "blake3" and "sha256" not in h for h in headers))
        self.assertEqual([h.get("digest") for h in headers], [None] * 5 + [b3(data)])
        dst = os.path.join(self.local, "b")
        got = self.go(self.files.getFile("a", dst))
        self.assertEqual((got["hash"], got["digest"]), ("blake3", b3(data)))
        self.assertEqual(self.recorded.headers("get")[0]["hash"], "blake3")
        self.assertEqual(self.readBytes(dst), data)

    def test_smallAndStreamed(self) -> None:
        """
        A small file (one message) and an upload from a stream are
        verified with BLAKE3 too; so is a download to a descriptor.
        """
        import io

        put = self.go(self.files.putFile(self.writeLocal("s", b"small"), "s"))
        self.assertEqual(put["digest"], b3(b"small"))
        streamed = self.go(self.files.putStream(io.BytesIO(b"piped"), "p"))
        self.assertEqual((streamed["hash"], streamed["digest"]), ("blake3", b3(b"piped")))
        self.assertEqual(
            [(h["hash"], h["digest"]) for h in self.recorded.headers("put")],
            [("blake3", b3(b"small")), ("blake3", b3(b"piped"))],
        )
        out = os.path.join(self.local, "out")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            got = self.go(self.files.getStream("p", fd))
        finally:
            os.close(fd)
        self.assertEqual(got["digest"], b3(b"piped"))
        self.assertEqual(self.readBytes(out), b"piped")

    def test_hashedInWorkerThreads(self) -> None:
        """
        Every byte a client hashes, from a file, a stream or a download, is
        hashed inside C{runInThread}, never on the reactor's thread.
        """
        import io

        from twisted_frames.files import client as clientModule

        running: list[bool] = []
        outside: list[int] = []

        def runner(f: Any, *args: Any) -> Any:
            running.append(True)
            try:
                return synchronousRunner(f, *args)
            finally:
                running.pop()

        class Spy:
            def __init__(self, name: str) -> None:
                self.wrapped = newHash(name)
                self.name = name

            def update(self, data: bytes) -> None:
                if not running:
                    outside.append(len(data))
                self.wrapped.update(data)

            def hexdigest(self) -> str:
                return str(self.wrapped.hexdigest())

        self.patch(clientModule, "newHash", Spy)
        files = FileClient(self.client, runInThread=runner, segmentSize=1024 * 1024)
        data = os.urandom(2 * 1024 * 1024 + 1)
        files.segmentSize = 1024 * 1024
        self.go(files.putFile(self.writeLocal("a", data), "a"))
        self.go(files.putFile(self.writeLocal("s", b"small"), "s"))
        self.go(files.putStream(io.BytesIO(data), "p"))
        self.go(files.getFile("p", os.path.join(self.local, "p")))
        self.assertEqual(self.readBytes(self.rootFile("p")), data)
        self.assertEqual(outside, [])

    def test_forcedSha256(self) -> None:
        """
        C{hash="sha256"} sends exactly the fields of before the negotiation
        (C{sha256}, no C{hash}), and the result carries the digest both
        ways.
        """
        files = FileClient(self.client, runInThread=synchronousRunner, hash="sha256")
        put = self.go(files.putFile(self.writeLocal("a", b"data"), "a"))
        self.assertEqual(
            (put["sha256"], put["hash"], put["digest"]), (sha(b"data"), "sha256", sha(b"data"))
        )
        (header,) = self.recorded.headers("put")
        self.assertNotIn("hash", header)
        self.assertNotIn("digest", header)
        got = self.go(files.getFile("a", os.path.join(self.local, "b")))
        self.assertEqual(got["sha256"], sha(b"data"))
        self.assertNotIn("hash", self.recorded.headers("get")[0])

    def test_unknownForcedHash(self) -> None:
        """
        A hash this client does not have is refused when the client is
        made.
        """
        self.assertRaises(ValueError, FileClient, self.client, hash="md5")

    def test_blake3GetMismatch(self) -> None:
        """
        A download whose data does not match the server's BLAKE3 digest
        (or whose reply names another hash) is C{integrity_error}, and no
        local file is left.
        """
        lies: list[dict[str, Any]] = [{"digest": b3(b"other")}, {"hash": "sha256"}]

        class Lying(FileService):
            @operation("get")
            async def opGet(self, request: Request) -> Any:
                result = await super().opGet(request)
                result.update(lies[0])
                return result

        self.service = Lying(self.root, runInThread=synchronousRunner)
        self.connect()
        with open(self.rootFile("f"), "wb") as f:
            f.write(b"payload")
        dst = os.path.join(self.local, "f")
        for _ in range(2):
            error = self.goFails(self.files.getFile("f", dst), ErrorCode.INTEGRITY_ERROR)
            self.assertIn("f: BLAKE3 mismatch (got ", error.message)
            self.assertEqual(os.listdir(self.local), [])
            lies.pop(0)

    def test_resumedUploadBlake3(self) -> None:
        """
        An upload cut short by its connection resumes with BLAKE3 from the
        bytes the server kept (its hash state remembered), and so does one
        whose partial was left by a SHA-256 upload (the server hashes the
        prefix again with BLAKE3); the whole file is verified.
        """
        data = os.urandom(700_000)
        for first in ("blake3", "sha256"):
            target = f"f-{first}"
            firstFields = {"path": target, "offset": 0, "final": False}
            if first == "blake3":
                firstFields["hash"] = "blake3"
            self.request("put", firstFields, data[:300_000])
            self.reconnect()
            src = self.writeLocal("src", data)
            result = self.go(self.files.putFile(src, target, resume=True))
            self.assertEqual(
                (result["resumed_from"], result["hash"], result["digest"]),
                (300_000, "blake3", b3(data)),
            )
            self.assertEqual(self.readBytes(self.rootFile(target)), data)

    def test_resumedDownloadBlake3(self) -> None:
        """
        A download resumes from its local partial, hashing the prefix with
        BLAKE3 locally while the server hashes its own.
        """
        data = os.urandom(900_000)
        with open(self.rootFile("f"), "wb") as f:
            f.write(data)
        dst = os.path.join(self.local, "f")
        from twisted_frames.files.client import localPartialName

        with open(localPartialName(dst), "wb") as f:
            f.write(data[:123_456])
        result = self.go(self.files.getFile("f", dst, resume=True))
        self.assertEqual(
            (result["resumed_from"], result["hash"], result["digest"]),
            (123_456, "blake3", b3(data)),
        )
        self.assertEqual(self.recorded.headers("get")[0]["offset"], 123_456)
        self.assertEqual(self.readBytes(dst), data)

    def test_hashChangedBetweenMessages(self) -> None:
        """
        An upload whose messages change hash on one connection is verified
        with the hash of its final message (the server hashes what it has
        again).
        """
        self.request("put", {"path": "f", "offset": 0, "final": False}, b"abc")
        done = self.request(
            "put",
            {"path": "f", "offset": 3, "final": True, "hash": "blake3", "digest": b3(b"abcdef")},
            b"def",
        )
        self.assertEqual((done.header["hash"], done.header["digest"]), ("blake3", b3(b"abcdef")))
        self.assertEqual(self.readBytes(self.rootFile("f")), b"abcdef")


class OldServerTests(FilesTestMixin, SynchronousTestCase):
    """
    A client of this version against a server of before the negotiation
    (its greeting has no C{hashes}): it verifies with SHA-256 and sends
    only the fields that server knows.
    """

    def makeService(self) -> FileService:
        return OldStyleService(self.root, runInThread=synchronousRunner, clock=self.clock)

    def test_sha256(self) -> None:
        """
        Segmented and small uploads, a download and a tree: SHA-256 in
        C{sha256}, never C{hash} or C{digest} on the wire.
        """
        assert isinstance(self.service, OldStyleService)
        self.assertNotIn("hashes", self.client.greeting)
        self.files.segmentSize = 1024 * 1024
        data = os.urandom(2 * 1024 * 1024 + 1)
        put = self.go(self.files.putFile(self.writeLocal("a", data), "a"))
        self.assertEqual(
            (put["hash"], put["digest"], put["sha256"]), ("sha256", sha(data), sha(data))
        )
        got = self.go(self.files.getFile("a", os.path.join(self.local, "b")))
        self.assertEqual((got["hash"], got["sha256"]), ("sha256", sha(data)))
        tree = os.path.join(self.local, "tree")
        os.makedirs(os.path.join(tree, "d"))
        with open(os.path.join(tree, "d", "x"), "wb") as f:
            f.write(b"x")
        result = self.go(self.files.putTree(tree, "t"))
        self.assertEqual([f["sha256"] for f in result.files], [sha(b"x")])
        for op, header in self.service.seen:
            self.assertNotIn("hash", header, op)
            self.assertNotIn("digest", header, op)
        finals = [h for h in self.service.headers("put") if h.get("final")]
        self.assertEqual([h["sha256"] for h in finals], [sha(data), sha(b"x")])

    def test_forcedBlake3(self) -> None:
        """
        Forcing BLAKE3 on a server that does not offer it is
        C{unsupported_hash} before anything is sent, for files and trees;
        other ops still work.
        """
        assert isinstance(self.service, OldStyleService)
        files = FileClient(self.client, runInThread=synchronousRunner, hash="blake3")
        src = self.writeLocal("a", b"data")
        self.goFails(files.putFile(src, "a"), ErrorCode.UNSUPPORTED_HASH)
        self.goFails(files.getFile("a", os.path.join(self.local, "b")), ErrorCode.UNSUPPORTED_HASH)
        self.goFails(files.putTree(self.local, "t"), ErrorCode.UNSUPPORTED_HASH)
        self.goFails(files.getTree("", os.path.join(self.local, "t")), ErrorCode.UNSUPPORTED_HASH)
        self.assertEqual(self.service.seen, [])
        self.assertEqual(self.go(files.list()), [])


def frames(data: bytes) -> list[bytes]:
    """
    Cut a byte stream into its frames.
    """
    out = []
    while data:
        (n,) = struct.unpack("!I", data[:4])
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


class OldClientTests(FilesTestMixin, SynchronousTestCase):
    """
    A client of before the negotiation (it sends and reads C{sha256} only)
    against this server: what it receives is byte for byte what it
    received before.
    """

    def rawExchange(self, *messages: tuple[dict[str, Any], bytes]) -> list[bytes]:
        """
        Feed whole request messages to a new server connection.

        @return: the frames it sent back, after its greeting.
        """
        factory = FramesServerFactory([self.service], clock=Clock())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for header, body in messages:
            protocol.dataReceived(wire.encodeMessage(header, body))
        sent = frames(transport.value())
        greeting = json.loads(sent[0])
        self.assertEqual(greeting["event"], "hello")
        return sent[2:]

    def test_putBytes(self) -> None:
        """
        The one-message C{put} of docs/protocol.md gets the very reply
        bytes shown there.
        """
        os.mkdir(self.rootFile("docs"))
        digest = hashlib.sha256(b"hello\n").hexdigest()
        replies = self.rawExchange(
            ({"op": "put", "id": 3, "path": "docs/a.txt", "sha256": digest}, b"hello\n")
        )
        self.assertEqual(
            replies,
            [
                b'{"id":3,"ok":true,"path":"docs/a.txt","size":6,"sha256":"'
                + digest.encode()
                + b'"}',
                b"",
            ],
        )

    def test_segmentedPutAndGet(self) -> None:
        """
        A segmented upload and a resumed download in the old way: the
        replies have the fields, in the order, of before (the digest in
        C{sha256}, no C{hash} or C{digest}).
        """
        data = b"0123456789" * 1000
        fields = {"op": "put", "path": "f", "size": len(data), "overwrite": False}
        replies = self.rawExchange(
            ({**fields, "id": 1, "offset": 0, "final": False}, b""),
            ({**fields, "id": 2, "offset": 0, "final": False}, data[:4000]),
            ({**fields, "id": 3, "offset": 4000, "final": False}, data[4000:]),
            ({**fields, "id": 4, "offset": len(data), "final": True, "sha256": sha(data)}, b""),
            ({"op": "get", "id": 5, "path": "f", "offset": 10}, b""),
        )
        headers = [json.loads(r) for r in replies[::2]]
        self.assertEqual(
            headers[:3],
            [
                {"id": i, "ok": True, "path": "f", "have": h}
                for i, h in ((1, 0), (2, 4000), (3, len(data)))
            ],
        )
        self.assertEqual(
            headers[3], {"id": 4, "ok": True, "path": "f", "size": len(data), "sha256": sha(data)}
        )
        self.assertEqual(list(headers[3]), ["id", "ok", "path", "size", "sha256"])
        self.assertEqual((headers[4]["event"], replies[9]), ("data", data[10:]))
        self.assertEqual(
            list(headers[5]), ["id", "ok", "path", "size", "offset", "sha256", "mtime", "mode"]
        )
        self.assertEqual(headers[5]["sha256"], sha(data))

    def test_mismatch(self) -> None:
        """
        A wrong C{sha256} gets the error of before: its message and its
        C{sha256} detail.
        """
        (reply, _) = self.rawExchange(
            ({"op": "put", "id": 1, "path": "f", "sha256": sha(b"other")}, b"data")
        )
        error = json.loads(reply)["error"]
        self.assertEqual(
            error,
            {
                "code": "integrity_error",
                "message": f"f: SHA-256 mismatch: received data hashes to {sha(b'data')}, "
                f"expected {sha(b'other')}; nothing was stored",
                "path": "f",
                "sha256": sha(b"data"),
            },
        )
        self.assertEqual(os.listdir(self.root), [])


class RefusedTests(FilesTestMixin, SynchronousTestCase):
    """
    What the server refuses in the C{hash} and C{digest} fields, each a
    request-level error (the connection stays usable).
    """

    def test_unknownHash(self) -> None:
        """
        A C{put} or C{get} naming a hash the server does not have is
        C{unsupported_hash}, with the name and the server's C{hashes};
        the body is discarded, nothing is stored.
        """
        with open(self.rootFile("g"), "wb") as f:
            f.write(b"x")
        for op, fields, body in [
            ("put", {"path": "f", "hash": "md5", "digest": "00" * 16}, b"data"),
            ("put", {"path": "f", "final": False, "hash": "md5"}, b"data"),
            ("get", {"path": "g", "hash": "md5"}, b""),
        ]:
            error = self.request(op, fields, body)
            self.assertIsInstance(error, FramesError)
            self.assertEqual(error.code, ErrorCode.UNSUPPORTED_HASH)
            self.assertEqual(
                error.message, "unsupported hash 'md5': this server has blake3, sha256"
            )
            self.assertEqual(error.details, {"hash": "md5", "hashes": ["blake3", "sha256"]})
        self.assertEqual(sorted(os.listdir(self.root)), ["g"])
        self.assertEqual(self.request("ping", {}, b"still").body, b"still")

    def test_badFields(self) -> None:
        """
        A C{hash} that is not a name, a final message with C{hash} and no
        C{digest} (or one of the wrong length, or not hex), C{sha256} beside
        C{hash}, and C{digest} without C{hash} are each C{invalid_argument}.
        """
        cases = [
            ({"hash": 3, "digest": b3(b"x")}, "'hash' must be the name of a hash (a string)"),
            ({"hash": ""}, "'hash' must be the name of a hash (a string)"),
            ({"hash": "blake3"}, "'digest' is required on a final message with 'hash'"),
            ({"hash": "blake3", "digest": "ab"}, "'digest' must be 64 hex digits for blake3"),
            ({"hash": "blake3", "digest": "xyz"}, "'digest' must be a string of hex digits"),
            (
                {"hash": "sha256", "digest": sha(b"x"), "sha256": sha(b"x")},
                "'sha256' cannot be given with 'hash': send the digest in 'digest'",
            ),
            ({"digest": b3(b"x")}, "'digest' needs 'hash' (its name)"),
            ({}, "'sha256' must be 64 hex digits"),
        ]
        for fields, message in cases:
            error = self.request("put", {"path": "f", **fields}, b"x")
            self.assertIsInstance(error, FramesError, fields)
            self.assertEqual((error.code, error.message), (ErrorCode.INVALID_ARGUMENT, message))
        self.assertEqual(os.listdir(self.root), [])

    def test_blake3Mismatch(self) -> None:
        """
        A BLAKE3 upload whose data does not match its digest is
        C{integrity_error} naming BLAKE3, with C{hash} and C{digest} (what
        the server got) in the details; nothing is stored.  Upper-case hex
        is the same digest.
        """
        error = self.request(
            "put", {"path": "f", "hash": "blake3", "digest": b3(b"other")}, b"data"
        )
        self.assertEqual(error.code, ErrorCode.INTEGRITY_ERROR)
        self.assertEqual(
            error.message,
            f"f: BLAKE3 mismatch: received data hashes to {b3(b'data')}, expected "
            f"{b3(b'other')}; nothing was stored",
        )
        self.assertEqual(error.details, {"path": "f", "hash": "blake3", "digest": b3(b"data")})
        self.assertEqual(os.listdir(self.root), [])
        done = self.request(
            "put", {"path": "f", "hash": "blake3", "digest": b3(b"data").upper()}, b"data"
        )
        self.assertEqual(
            done.header,
            {
                "id": done.header["id"],
                "ok": True,
                "path": "f",
                "size": 4,
                "hash": "blake3",
                "digest": b3(b"data"),
            },
        )

    def test_sha256ByName(self) -> None:
        """
        SHA-256 may be named too (C{hash} and C{digest}); the reply then
        answers in the same way.
        """
        done = self.request("put", {"path": "f", "hash": "sha256", "digest": sha(b"x")}, b"x")
        self.assertEqual((done.header["hash"], done.header["digest"]), ("sha256", sha(b"x")))
        self.assertNotIn("sha256", done.header)
        got = self.request("get", {"path": "f", "hash": "sha256"})
        self.assertEqual((got.header["hash"], got.header["digest"]), ("sha256", sha(b"x")))
