# -*- test-case-name: tests.test_fields -*-
"""
Declared request fields: what an op takes, checked before it runs.

As AMP's C{Command.arguments} name each argument with an C{Argument} that
parses it, an L{operation<twisted_frames.server.operation>} names its
request fields with a L{Field} each::

    @operation("get", fields={"path": PathField(), "offset": Count()})
    async def opGet(self, request: Request) -> ...:
        offset = request.fields["offset"]

The dispatcher checks the fields in the order declared and hands the
handler the checked values in C{request.fields}; a bad value is answered
C{invalid_argument} (or the code the field type raises) with the field's
message, and the handler never runs.  Fields an op does not declare are
ignored, as before.  The docs' op tables are made from the same
declarations (C{docs/_ext/frames_reference.py}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .wire import ErrorCode, FramesError


class _Absent:
    """
    The type of L{ABSENT}.
    """

    def __repr__(self) -> str:
        return "ABSENT"


#: The default of a field left out of C{request.fields} when the request
#: does not send it (the handler then decides, e.g. from its configuration).
ABSENT: Any = _Absent()

_HEX = re.compile(r"[0-9a-fA-F]*")


class Field:
    """
    One request field: how to check it, and how to document it.

    Subclasses override L{check} and L{typeName}; a field's message may be
    given per op (C{message}, a format string with C{{name}} and C{{value}}),
    so that each op keeps its own wording.

    @ivar doc: what the field means, for the docs' op tables.
    @ivar default: the value used when the request does not send the field
        (checked like a sent one); L{ABSENT}: left out of C{request.fields}.
    @ivar nullable: whether C{null} (or a C{None} default) is accepted, and
        handed on as C{None}.
    @ivar onlyIf: the name of a L{Flag} declared before this one: this field
        is checked only when that flag is true, else it is C{None}.
    @ivar typeName: the type as the docs say it.
    @ivar defaultDoc: the default as the docs say it, when the op decides
        it (e.g. from its configuration).
    """

    typeName = "any JSON value"
    defaultMessage = "{name!r} is not valid"

    def __init__(
        self,
        doc: str = "",
        *,
        default: Any = ABSENT,
        nullable: bool = False,
        message: str | None = None,
        onlyIf: str | None = None,
        defaultDoc: str | None = None,
        typeName: str | None = None,
    ) -> None:
        self.doc = doc
        self.defaultDoc = defaultDoc
        if typeName is not None:
            self.typeName = typeName
        self.default = default
        self.nullable = nullable
        self.message = message if message is not None else self.defaultMessage
        self.onlyIf = onlyIf

    def error(self, name: str, value: Any, code: str = ErrorCode.INVALID_ARGUMENT) -> FramesError:
        """
        @return: the error for a bad C{value} of field C{name}.
        """
        return FramesError(code, self.message.format(name=name, value=value))

    def check(self, name: str, value: Any) -> Any:
        """
        @return: C{value}, checked (and possibly converted).
        @raise FramesError: if it is not acceptable.
        """
        return value


class Count(Field):
    """
    A non-negative integer (a size, an offset); never a boolean.
    """

    typeName = "integer ≥ 0"
    defaultMessage = "{name!r} must be a non-negative integer"

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(name, value)
        return value


class Flag(Field):
    """
    C{true} or C{false}.
    """

    typeName = "boolean"
    defaultMessage = "{name!r} must be true or false"

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(name, value)
        return value


class Seconds(Field):
    """
    A positive, finite number of seconds (an integer or a float); the bound
    an op allows may depend on its configuration, so it checks that itself.
    """

    typeName = "number > 0"
    defaultMessage = "{name!r} must be a positive number"

    def check(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self.error(name, value)
        return float(value)


class HexDigits(Field):
    """
    Exactly C{digits} hex digits, either case: nothing else, not even the
    spaces C{bytes.fromhex} would take (so "32 hex digits" cannot decode to
    fewer bytes).

    @ivar lower: hand on the value lower-cased (a digest compared with
        another), rather than as sent (a nonce MACed as framed).
    """

    defaultMessage = "{name!r} must be {digits} hex digits"

    def __init__(self, digits: int, doc: str = "", *, lower: bool = False, **kw: Any) -> None:
        super().__init__(doc, **kw)
        self.digits = digits
        self.lower = lower
        self.typeName = f"{digits} hex digits"

    def error(self, name: str, value: Any, code: str = ErrorCode.INVALID_ARGUMENT) -> FramesError:
        return FramesError(code, self.message.format(name=name, value=value, digits=self.digits))

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) != self.digits or not _HEX.fullmatch(value):
            raise self.error(name, value)
        return value.lower() if self.lower else value


class Text(Field):
    """
    A string, without NUL characters, optionally matching C{pattern}.
    """

    typeName = "string"
    defaultMessage = "{name!r} must be a string"

    def __init__(
        self, doc: str = "", *, pattern: re.Pattern[str] | None = None, **kw: Any
    ) -> None:
        super().__init__(doc, **kw)
        self.pattern = pattern

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or "\0" in value:
            raise self.error(name, value)
        if self.pattern is not None and not self.pattern.match(value):
            raise self.error(name, value)
        return value


class Choice(Field):
    """
    One of a few strings.
    """

    defaultMessage = "{name!r} must be one of {choices}"

    def __init__(self, choices: tuple[str, ...], doc: str = "", **kw: Any) -> None:
        super().__init__(doc, **kw)
        self.choices = choices
        self.typeName = " or ".join(f'"{c}"' for c in choices)

    def error(self, name: str, value: Any, code: str = ErrorCode.INVALID_ARGUMENT) -> FramesError:
        text = self.message.format(name=name, value=value, choices=list(self.choices))
        return FramesError(code, text)

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self.error(name, value)
        return value


class Argv(Field):
    """
    A non-empty list of strings, none containing NUL (a process's argv).
    """

    typeName = "list of strings"
    defaultMessage = "{name!r} must be a non-empty list of strings"
    nulMessage = "arguments cannot contain NUL"

    def check(self, name: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            raise self.error(name, value)
        if any("\0" in a for a in value):
            raise FramesError(ErrorCode.INVALID_ARGUMENT, self.nulMessage)
        return value


def checkFields(declared: Mapping[str, Field], header: Mapping[str, Any]) -> dict[str, Any]:
    """
    Check a request's declared fields, in the order declared.

    @return: field name to checked value (fields that are absent with an
        L{ABSENT} default are left out).
    @raise FramesError: for the first field that is not acceptable.
    """
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if spec.onlyIf is not None and not values.get(spec.onlyIf):
            values[name] = None
            continue
        value = header.get(name, spec.default)
        if value is ABSENT:
            continue
        if value is None and spec.nullable:
            values[name] = None
            continue
        values[name] = spec.check(name, value)
    return values
