"""
Tests for L{twisted_frames.jsonlog}.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogPublisher, eventsFromJSONLogFile
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.jsonlog import observer


class ObserverTests(SynchronousTestCase):
    """
    L{observer} writes newline-delimited JSON that Twisted reads back.
    """

    def test_oneLinePerEvent(self) -> None:
        """
        Each event is one line holding one JSON object with its namespace,
        level, format and fields.
        """
        out = io.StringIO()
        publisher = LogPublisher(observer(out))
        log = Logger(namespace="twisted_frames.test", observer=publisher)
        log.info("request {op} took {ms} ms", op="ping", ms=3)
        log.warn("second")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["log_namespace"], "twisted_frames.test")
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertEqual(first["log_format"], "request {op} took {ms} ms")
        self.assertEqual((first["op"], first["ms"]), ("ping", 3))
        self.assertEqual(json.loads(lines[1])["log_level"]["name"], "warn")

    def test_readBack(self) -> None:
        """
        C{eventsFromJSONLogFile} reads the events back.
        """
        out = io.StringIO()
        publisher = LogPublisher(observer(out))
        Logger(namespace="ns", observer=publisher).info("hello {who}", who="you")
        out.seek(0)
        [event] = list(eventsFromJSONLogFile(out))
        self.assertEqual(event["who"], "you")
        self.assertEqual(event["log_namespace"], "ns")
