# -*- test-case-name: tests.test_bounds -*-
"""
Numbers from the command line, checked against their bounds: one coercer
for C{twistd frameserver}'s C{usage.Options} (L{bounded}) and one for the
C{frames} CLI's C{argparse} (L{boundedArgument}), both with the same
one-line messages::

    --udp must be a whole number, not 'x'
    --udp must be in 0..65535, not 70000
    --max-output must be at least 0, not -1

This module imports neither side, so the client side and the server side
may both use it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def _check(
    value: str,
    name: str,
    low: Number,
    high: Number | None,
    kind: type[Number],
    noun: str | None,
    range: str,
) -> Number:
    """
    Parse C{value} as a C{kind} within C{low..high}.

    @raise ValueError: with the one-line reason, if it is not.
    """
    subject = f"{name} must be" if name else "must be"
    try:
        n = kind(value)
    except ValueError:
        n = None
    if n is None or (kind is float and not math.isfinite(n)):
        noun = noun or ("a whole number" if kind is int else "a number")
        raise ValueError(f"{subject} {noun}, not {value!r}") from None
    if n < low or (high is not None and n > high):
        shown = f"{n:g}" if kind is float else str(n)
        raise ValueError(f"{subject} {range}, not {shown}")
    return n


def _describe(low: float, high: float | None, unit: str, note: str) -> str:
    """
    The range as the messages name it: C{in 0..65535 seconds (0: none)}, or
    C{at least 1}.
    """
    if high is None:
        return f"at least {low}{unit}{note}"
    return f"in {low}..{high}{unit}{note}"


def bounded(
    name: str,
    low: Number,
    high: Number | None = None,
    kind: type[Number] = int,  # type: ignore[assignment]
    *,
    noun: str | None = None,
    unit: str = "",
    note: str = "",
    doc: str | None = None,
) -> Callable[[str], Number]:
    """
    A C{usage.Options} coercer (the last element of an C{optParameters}
    row) for a number in C{low..high}.

    @param name: the option as the message names it, e.g. C{"--udp"}.
    @param high: the largest value allowed; C{None} for no upper bound.
    @param kind: C{int} or C{float} (non-finite floats are refused).
    @param noun: what a value must be when it is not a number at all
        (default: C{a whole number} or C{a number}).
    @param unit: said after the range, e.g. C{" seconds"}.
    @param note: said after that, e.g. C{" (0: no limit)"}.
    @param doc: the C{coerceDoc} shown in C{--help} and the option
        reference (default: C{An integer in LOW..HIGH.} or C{At least LOW.}).
    @return: a function turning the option's text into the number, raising
        C{ValueError} (which C{usage.Options} reports) with one line.
    """
    range = _describe(low, high, unit, note)

    def coerce(value: str) -> Number:
        return _check(value, name, low, high, kind, noun, range)

    if doc is None:
        doc = f"At least {low}." if high is None else f"An integer in {low}..{high}."
    coerce.coerceDoc = doc  # type: ignore[attr-defined]
    return coerce


def boundedArgument(
    low: Number,
    high: Number | None = None,
    kind: type[Number] = int,  # type: ignore[assignment]
    *,
    noun: str | None = None,
    unit: str = "",
) -> Callable[[str], Number]:
    """
    An C{argparse} C{type=} for a number in C{low..high}; argparse names the
    option in front of the message (C{argument -c/--count: must be at least
    1, not 0}).

    @param high: the largest value allowed; C{None} for no upper bound.
    @param kind: C{int} or C{float} (non-finite floats are refused).
    @param noun: what a value must be when it is not a number at all.
    @param unit: said after the range, e.g. C{" seconds"}.
    @return: a function turning the argument into the number, raising
        C{argparse.ArgumentTypeError} with one line.
    """
    range = _describe(low, high, unit, "")

    def coerce(value: str) -> Number:
        try:
            return _check(value, "", low, high, kind, noun, range)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return coerce
