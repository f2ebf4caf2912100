"""
Tests that a directory listing is built (scanned, sorted, JSON-encoded) in
the worker thread, in batches short enough that the reactor thread gets the
GIL between them, and that its bytes are those one C{json.dumps} call gave.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.files.test_files import FilesTestMixin
from twisted_frames.files.paths import LISTING_BATCH, encodeListing, sortListing
from twisted_frames.files.service import FileService
from twisted_frames.files.store import synchronousRunner


def entry(name: str) -> dict[str, Any]:
    """
    A listing entry for C{name}, as L{twisted_frames.files.paths.describe} makes.
    """
    return {"name": name, "type": "file", "size": len(name), "mtime": 1.5e9 + 0.25, "mode": 420}


#: Names JSON must escape or encode as several UTF-8 bytes.
AWKWARD = ['quote"', "back\\slash", "new\nline", "tab\t", "\x1b[2J", "é", "日本", "🎉", "\u2028"]


class ListingBuildTests(FilesTestMixin, SynchronousTestCase):
    """
    C{list} on a directory of several batches.
    """

    def makeService(self) -> FileService:
        self.inRunner = False
        return FileService(self.root, runInThread=self.flaggingRunner, clock=self.clock)

    def flaggingRunner(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run C{f} at once, with C{self.inRunner} true meanwhile: the code
        that would run in a worker thread.
        """
        self.inRunner = True
        try:
            return synchronousRunner(f, *args)
        finally:
            self.inRunner = False

    def test_builtInRunnerInBatches(self) -> None:
        """
        Every JSON encoding of listing entries happens in the runner, over
        at most L{LISTING_BATCH} entries per call (the C encoder holds the
        GIL for a whole call); the body is the sorted listing.
        """
        names = [f"n{i:05d}" for i in range(2 * LISTING_BATCH + 1)] + AWKWARD
        os.mkdir(self.rootFile("big"))
        for name in names:
            with open(self.rootFile("big", name), "wb"):
                pass
        encoded: list[tuple[int, bool]] = []
        realEncode = json.JSONEncoder.encode

        def recordingEncode(encoder: json.JSONEncoder, o: Any) -> str:
            if isinstance(o, list):
                encoded.append((len(o), self.inRunner))
            return realEncode(encoder, o)

        self.patch(json.JSONEncoder, "encode", recordingEncode)
        reply = self.request("list", {"path": "big"})
        self.assertEqual(reply.header["count"], len(names))
        self.assertEqual([e["name"] for e in json.loads(reply.body)], sorted(names))
        self.assertEqual(sum(n for n, _ in encoded), len(names))
        self.assertEqual([(n, inRunner) for n, inRunner in encoded if n > LISTING_BATCH], [])
        self.assertEqual([(n, inRunner) for n, inRunner in encoded if not inRunner], [])


class EncodeListingTests(SynchronousTestCase):
    """
    L{encodeListing} and L{sortListing}.
    """

    def test_sameBytesAsOneCall(self) -> None:
        """
        Around every batch boundary, the body is byte for byte what one
        compact C{json.dumps(..., ensure_ascii=False)} call gives (so
        clients see no change).
        """
        batch = LISTING_BATCH
        for n in [0, 1, batch - 1, batch, batch + 1, 2 * batch + 3]:
            entries = [entry(AWKWARD[i % len(AWKWARD)] + str(i)) for i in range(n)]
            expected = json.dumps(entries, separators=(",", ":"), ensure_ascii=False)
            self.assertEqual(encodeListing(entries), expected.encode("utf-8"), n)

    def test_sortListing(self) -> None:
        """
        Entries come out sorted by name (code point order, as C{sorted}),
        whatever order they went in, across several runs.
        """
        names = [f"{i:x}" for i in range(3 * LISTING_BATCH + 7)] + AWKWARD
        rng = random.Random(10)
        rng.shuffle(names)
        got = sortListing([entry(name) for name in names])
        self.assertEqual([e["name"] for e in got], sorted(names))
        self.assertEqual(sortListing([]), [])
