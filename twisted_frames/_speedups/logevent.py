# -*- test-case-name: tests.test_speedups -*-
"""
A log event built by hand, for the one line logged per request:
C{Logger.emit} re-validates the level against every C{LogLevel} on each
call, a large share of a small request's cost.  The event has the keys
C{Logger.info} gives it and goes to the same observer.

Used only if C{Logger.info} still builds an event of those keys (checked
once, on a logger of its own) and the speed paths are enabled
(L{twisted_frames._speedups.setEnabled}); else C{Logger.info} itself.
"""

from __future__ import annotations

import time
from typing import Any, cast

from twisted.logger import ILogObserver, Logger, LogLevel

from . import onChange

#: The keys Logger.emit adds to an event's own fields.
_KEYS = {"log_logger", "log_level", "log_namespace", "log_source", "log_format", "log_time"}


def _emitBuildsKeys() -> bool:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    Logger(namespace="probe", observer=observer).info("{log_text}", log_text="")
    return len(events) == 1 and set(events[0]) == _KEYS | {"log_text"}


_known = _emitBuildsKeys()
#: Whether the event is built here (kept by L{_select}, not asked per event).
_fast = _known


def _select(enabled: bool) -> None:
    global _fast
    _fast = _known and enabled


onChange(_select)


def logInfo(logger: Logger, text: str, fields: dict[str, Any]) -> None:
    """
    Log C{text} (already formatted, so that a text observer does not format
    it again) at info level through C{logger}, with C{fields} (which this
    may use as the event itself) for JSON observers.
    """
    if not _fast:
        logger.info("{log_text}", log_text=text, **fields)
        return
    fields["log_logger"] = logger
    fields["log_level"] = LogLevel.info
    fields["log_namespace"] = logger.namespace
    fields["log_source"] = logger.source
    fields["log_format"] = "{log_text}"
    fields["log_text"] = text
    fields["log_time"] = time.time()
    logger.observer(fields)
