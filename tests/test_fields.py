"""
Tests for L{twisted_frames.fields}: the declared request fields an op
takes, and the dispatcher's check of them.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.fields import (
    ABSENT,
    Argv,
    Choice,
    Count,
    Field,
    Flag,
    HexDigits,
    Seconds,
    Text,
    checkFields,
)
from twisted_frames.files.paths import PathField, RequestPath
from twisted_frames.server import Service, operation
from twisted_frames.wire import ErrorCode, FramesError

#: Few examples and no example database, as in the other property tests.
fast = settings(max_examples=40, deadline=None, database=None)
jsonScalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()


class FieldTypeTests(SynchronousTestCase):
    """
    Each field type accepts exactly its values, with its op's message.
    """

    def refused(self, field: Field, value: Any, name: str = "x") -> FramesError:
        error = self.assertRaises(FramesError, field.check, name, value)
        return error

    @fast
    @given(jsonScalars)
    def test_count(self, value: Any) -> None:
        """
        L{Count} takes integers >= 0 and never a boolean.
        """
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if ok:
            self.assertEqual(Count().check("offset", value), value)
        else:
            error = self.refused(Count(), value, "offset")
            self.assertEqual(
                (error.code, error.message),
                (ErrorCode.INVALID_ARGUMENT, "'offset' must be a non-negative integer"),
            )

    def test_perOpMessage(self) -> None:
        """
        A field's message may be given per op.
        """
        field = Count(message="{name!r} must be a whole number of bytes")
        self.assertEqual(
            self.refused(field, -1, "maxOutput").message,
            "'maxOutput' must be a whole number of bytes",
        )

    @fast
    @given(jsonScalars)
    def test_flag(self, value: Any) -> None:
        """
        L{Flag} takes only C{true} and C{false}.
        """
        if isinstance(value, bool):
            self.assertIs(Flag().check("final", value), value)
        else:
            self.assertEqual(
                self.refused(Flag(), value, "final").message, "'final' must be true or false"
            )

    @fast
    @given(st.text(alphabet="0123456789abcdefABCDEF xyz", max_size=70))
    def test_hexDigits(self, value: str) -> None:
        """
        L{HexDigits} takes exactly that many hex digits, either case, and
        nothing else (not the spaces C{bytes.fromhex} takes).
        """
        field = HexDigits(8)
        if len(value) == 8 and re.fullmatch("[0-9a-fA-F]*", value):
            self.assertEqual(field.check("n", value), value)
            self.assertEqual(HexDigits(8, lower=True).check("n", value), value.lower())
        else:
            self.assertEqual(self.refused(field, value, "n").message, "'n' must be 8 hex digits")

    def test_seconds(self) -> None:
        """
        L{Seconds} takes positive numbers, as floats.
        """
        self.assertEqual(Seconds().check("timeout", 2), 2.0)
        self.assertIsInstance(Seconds().check("timeout", 2), float)
        for bad in (0, -1, True, "1", float("nan")):
            self.assertEqual(
                self.refused(Seconds(), bad, "timeout").message,
                "'timeout' must be a positive number",
            )

    def test_choice(self) -> None:
        """
        L{Choice} takes one of its strings; its message may quote the value.
        """
        field = Choice(("a", "b"), message="{value!r} is not offered")
        self.assertEqual(field.check("m", "a"), "a")
        self.assertEqual(self.refused(field, "c").message, "'c' is not offered")
        self.assertEqual(self.refused(Choice(("a",)), 1, "m").message, "'m' must be one of ['a']")

    def test_text(self) -> None:
        """
        L{Text} takes strings without NUL that match its pattern.
        """
        field = Text(pattern=re.compile(r"[a-z]+\Z"))
        self.assertEqual(field.check("u", "abc"), "abc")
        for bad in ("ab1", "a\0", 3, None):
            self.assertEqual(self.refused(field, bad, "u").message, "'u' must be a string")

    @fast
    @given(st.lists(st.text(max_size=4), max_size=3) | jsonScalars)
    def test_argv(self, value: Any) -> None:
        """
        L{Argv} takes a non-empty list of strings without NUL.
        """
        if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
            if any("\0" in a for a in value):
                self.assertEqual(
                    self.refused(Argv(), value).message, "arguments cannot contain NUL"
                )
            else:
                self.assertEqual(Argv().check("argv", value), value)
        else:
            self.assertEqual(
                self.refused(Argv(), value, "argv").message,
                "'argv' must be a non-empty list of strings",
            )

    def test_path(self) -> None:
        """
        L{PathField} checks with C{checkPath} and hands on the text and its
        segments; a missing path is not a string.
        """
        self.assertEqual(PathField().check("path", "a/b"), RequestPath("a/b", ["a", "b"]))
        self.assertEqual(checkFields({"path": PathField(allowRoot=True)}, {})["path"], ("", []))
        error = self.assertRaises(FramesError, checkFields, {"path": PathField()}, {})
        self.assertEqual(error.message, "'path' must be a string")
        error = self.assertRaises(FramesError, PathField().check, "path", "../x")
        self.assertEqual(error.code, ErrorCode.FORBIDDEN_PATH)


class CheckFieldsTests(SynchronousTestCase):
    """
    L{checkFields} checks the declared fields in order, with defaults.
    """

    declared = {
        "offset": Count(default=0),
        "size": Count(default=None, nullable=True),
        "cwd": Text(nullable=True),
        "final": Flag(default=True),
        "sha256": HexDigits(4, default=None, onlyIf="final"),
    }

    def test_defaults(self) -> None:
        """
        An absent field takes its default; one whose default is L{ABSENT}
        is left out; C{null} is accepted only where nullable.
        """
        self.assertIs(Field().default, ABSENT)
        self.assertEqual(
            checkFields(self.declared, {"sha256": "abcd", "cwd": None, "other": 1}),
            {"offset": 0, "size": None, "cwd": None, "final": True, "sha256": "abcd"},
        )
        error = self.assertRaises(FramesError, checkFields, self.declared, {"offset": None})
        self.assertEqual(error.message, "'offset' must be a non-negative integer")

    def test_onlyIf(self) -> None:
        """
        A field with C{onlyIf} is checked only when that flag is true.
        """
        self.assertEqual(
            checkFields(self.declared, {"final": False, "sha256": "nope"})["sha256"], None
        )
        error = self.assertRaises(FramesError, checkFields, self.declared, {})
        self.assertEqual(error.message, "'sha256' must be 4 hex digits")

    def test_order(self) -> None:
        """
        The first bad field, in the order declared, is the one reported.
        """
        error = self.assertRaises(
            FramesError, checkFields, self.declared, {"final": 1, "offset": -1}
        )
        self.assertEqual(error.message, "'offset' must be a non-negative integer")


class InheritedFieldsTests(SynchronousTestCase):
    """
    A subclass overriding a handler keeps the fields its base declared.
    """

    def test_override(self) -> None:
        """
        Re-marking an op without fields keeps the base's; declaring them
        replaces them.
        """

        class Base(Service):
            @operation("a", fields={"n": Count()})
            def opA(self, request: Any) -> None:
                pass

            @operation("b", fields={"n": Count()})
            def opB(self, request: Any) -> None:
                pass

        class Sub(Base):
            @operation("a")
            def opA(self, request: Any) -> None:
                pass

            @operation("b", fields={"m": Flag()})
            def opB(self, request: Any) -> None:
                pass

        ops = {op.name: op for op in Sub().operations()}
        self.assertEqual(list(ops["a"].fields), ["n"])
        self.assertEqual(list(ops["b"].fields), ["m"])


class FieldTableTests(SynchronousTestCase):
    """
    The docs' op tables are made from the declarations.
    """

    def test_table(self) -> None:
        """
        C{% op-fields: put} renders one row per declared field, in order,
        with its type, default and doc string.
        """
        import importlib.util
        from pathlib import Path

        path = Path(__file__).resolve().parent.parent / "docs" / "_ext" / "frames_reference.py"
        spec = importlib.util.spec_from_file_location("frames_reference", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rows = module.opFields("put", "files").splitlines()
        self.assertEqual(rows[0], "| request field | type | default | |")
        self.assertEqual(
            [row.split("|")[1].strip() for row in rows[2:]],
            [
                "`path`",
                "`offset`",
                "`final`",
                "`overwrite`",
                "`size`",
                "`sha256`",
                "`hash`",
                "`digest`",
            ],
        )
        self.assertIn("| `final` | boolean | `true` | this message completes the file |", rows)
        self.assertIn("required if `final` without `hash`", rows[-3])
        self.assertIn("required if `final` with `hash`", rows[-1])
