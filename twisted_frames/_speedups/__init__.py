# -*- test-case-name: tests.test_speedups -*-
"""
The speed paths that reach into private parts of CPython and Twisted, kept
here so that they are in one place: the C functions of the C{json} module
(L{cjson}), C{tcp.Connection}'s buffer and state (L{tcp}), and log events
built by hand (L{logevent}).

Each is found by feature detection when it is first needed, and falls back
to the public API (C{JSONEncoder.encode}/C{JSONDecoder.decode},
C{transport.write}, C{Logger.info}, plain C{transport.startTLS}) when it is
not there.  Setting C{TWISTED_FRAMES_NO_SPEEDUPS=1} in the environment, or
calling L{setEnabled}C{(False)}, forces every fallback: the tests run the
core of the suite that way, so the fallbacks stay correct.
"""

from __future__ import annotations

import os
from collections.abc import Callable

_enabled = os.environ.get("TWISTED_FRAMES_NO_SPEEDUPS", "") in ("", "0")
# Called with the new state whenever it changes, to re-select what is used.
_selectors: list[Callable[[bool], None]] = []


def enabled() -> bool:
    """
    @return: whether the speed paths may be used (each still only where
        its feature detection finds what it relies on).
    """
    return _enabled


def setEnabled(flag: bool) -> None:
    """
    Allow the speed paths, or force every fallback (for tests).
    """
    global _enabled
    _enabled = flag
    for select in _selectors:
        select(flag)


def onChange(select: Callable[[bool], None]) -> None:
    """
    Call C{select} with the current state now and on every L{setEnabled}.
    """
    _selectors.append(select)
    select(_enabled)
