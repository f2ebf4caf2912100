# -*- test-case-name: tests.test_jsonlog -*-
"""
JSON logs for C{twistd}: one JSON object per line on standard output::

    twistd -n --logger=twisted_frames.jsonlog.observer frameserver ...

C{twistd --logger} takes the name of a factory called with no arguments, so
the destination is standard output: under systemd it goes to the journal, or
to a file with C{StandardOutput=append:/var/log/...}; in a shell, redirect it.
Each line is an event in Twisted's own JSON format (C{log_namespace},
C{log_level}, C{log_time}, C{log_format} and the event's fields), which
C{twisted.logger.eventsFromJSONLogFile} reads back.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import ILogObserver, jsonFileLogObserver


def observer(out: IO[str] | None = None) -> ILogObserver:
    """
    A log observer writing each event as one line of JSON.

    @param out: where to write; standard output by default.
    @return: the observer, for C{twistd --logger}.
    """
    # An empty record separator gives newline-delimited JSON, which line
    # tools (jq, journalctl, log shippers) read, instead of RFC 7464's RS.
    return jsonFileLogObserver(out if out is not None else sys.stdout, recordSeparator="")
