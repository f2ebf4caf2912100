"""
Tests for L{twisted_frames.printable}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.printable import printable


class PrintableTests(SynchronousTestCase):
    """
    L{printable} escapes what a terminal would act on, and nothing else.
    """

    def test_printableUnchanged(self) -> None:
        """
        Printable text, non-ASCII letters and spaces included, comes back
        as it is.
        """
        for text in ("", "plain.txt", "a b", "déjà vu", "日本語", "emoji \U0001f600"):
            self.assertEqual(printable(text), text)

    def test_controlCharacters(self) -> None:
        """
        Newline, carriage return and tab get their short escapes; other C0
        and C1 controls and DEL are C{\\xHH}.
        """
        self.assertEqual(printable("a\nb\rc\td"), r"a\nb\rc\td")
        self.assertEqual(printable("\x00\x1b[2J\x7f\x85"), r"\x00\x1b[2J\x7f\x85")

    def test_backslashDoubled(self) -> None:
        """
        A literal backslash is doubled, so that C{a\\n} (backslash, n) and
        a newline print differently.
        """
        self.assertEqual(printable("a\\nb"), r"a\\nb")
        self.assertNotEqual(printable("a\\nb"), printable("a\nb"))

    def test_otherUnicode(self) -> None:
        """
        Line separators, bidirectional overrides, lone surrogates (from
        undecodable names) and non-ASCII spaces are escaped by code point.
        """
        self.assertEqual(printable("\u2028\u202eevil"), r"\u2028\u202eevil")
        self.assertEqual(printable("\udcff"), r"\udcff")
        self.assertEqual(printable("a\xa0b"), r"a\xa0b")
        self.assertEqual(printable("\U000e0001"), r"\U000e0001")
