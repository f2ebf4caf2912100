"""
Tests for L{twisted_frames.files.client.localPartialName}: every name the
server accepts (up to 255 bytes of UTF-8) has a local partial that the file
system accepts too.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.files.client import localPartialName
from twisted_frames.files.paths import MAX_NAME

#: Linux's C{NAME_MAX}, what the file systems of the tests enforce.
MAX_LOCAL_NAME = 255

#: One character of each UTF-8 length.
CHARACTERS = ["a", "é", "日", "\U0001f600"]


def _longest(ch: str, extra: str = "") -> str:
    """
    The longest name of repeated C{ch} (then C{extra}) within the server's
    limit.
    """
    n = (MAX_NAME - len(extra.encode())) // len(ch.encode())
    return ch * n + extra


class LocalPartialNameTests(SynchronousTestCase):
    """
    L{localPartialName}.
    """

    def test_shortNamesKeepTheirForm(self) -> None:
        """
        A name that fits is C{.NAME.frames-partial} beside the target, as
        before (a partial left by an earlier version is resumed).
        """
        self.assertEqual(localPartialName("f"), ".f.frames-partial")
        inDir = os.path.join("d", "x.iso")
        self.assertEqual(localPartialName(inDir), os.path.join("d", ".x.iso.frames-partial"))
        fits = "a" * (MAX_LOCAL_NAME - len("..frames-partial"))
        self.assertEqual(localPartialName(fits), f".{fits}.frames-partial")

    def test_everyLengthFits(self) -> None:
        """
        For names of every length up to the server's limit, in characters
        of 1 to 4 bytes, the partial's name is at most 255 bytes, hidden,
        ends like a partial and stays in the target's directory.
        """
        for ch in CHARACTERS:
            for n in range(1, MAX_NAME // len(ch.encode()) + 1):
                name = ch * n
                part = localPartialName(os.path.join("dir", name))
                head, tail = os.path.split(part)
                self.assertEqual(head, "dir")
                self.assertLessEqual(len(tail.encode()), MAX_LOCAL_NAME, (ch, n))
                self.assertTrue(tail.startswith(".") and tail.endswith(".frames-partial"))
                # Cut at a character: the prefix decodes.
                tail.encode("utf-8").decode("utf-8")

    def test_longNamesDistinctAndStable(self) -> None:
        """
        Long names that share their first 230 bytes get different partials;
        the same name always gets the same one (so C{--resume} finds it).
        """
        a, b = _longest("a", "1"), _longest("a", "2")
        self.assertNotEqual(localPartialName(a), localPartialName(b))
        self.assertEqual(localPartialName(a), localPartialName(a))
        for ch in CHARACTERS:
            name = _longest(ch)
            self.assertEqual(localPartialName(name), localPartialName(name))
            self.assertTrue(localPartialName(name)[1:].startswith(ch * 10))

    def test_fileSystemAccepts(self) -> None:
        """
        The partial of a 255-byte name can be created on a real file system.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        for ch in CHARACTERS:
            target = os.path.join(directory, _longest(ch, "x" * (MAX_NAME % len(ch.encode()))))
            self.assertEqual(len(os.path.basename(target).encode()), MAX_NAME)
            with open(localPartialName(target), "wb") as f:
                f.write(b"ok")
        self.assertEqual(len(os.listdir(directory)), len(CHARACTERS))
