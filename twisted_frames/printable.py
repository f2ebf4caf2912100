# -*- test-case-name: tests.test_printable -*-
"""
Text from the other side of a connection (remote file names, server
messages, request ids) made safe to print on a terminal or in a log line.

A name may hold any character but C{/} and NUL: a newline makes one entry
look like two, a carriage return or an escape sequence rewrites the line.
L{printable} shows such characters as backslash escapes instead (a
newline as the two characters C{\\n}, ESC as C{\\x1b}), and doubles a
backslash itself, so that the printed text is unambiguous.

Machine-readable output (C{--json}) carries the exact text instead.
"""

from __future__ import annotations

_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """
    C{text} with every character that is not printable (per
    L{str.isprintable}: control characters, line and paragraph
    separators, format characters such as bidirectional overrides, lone
    surrogates, unassigned code points; every space but U+0020) written as
    an escape, and a backslash doubled.

    Escapes are C{\\\\}, C{\\n}, C{\\r}, C{\\t}, and otherwise C{\\xHH},
    C{\\uHHHH} or C{\\UHHHHHHHH} for the code point, as in Python's string
    literals; printable text comes back unchanged.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
