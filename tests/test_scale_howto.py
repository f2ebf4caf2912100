"""
C{docs/howto/scale.md} works as written: every block runs, in order, in a
temporary directory, with the page's fixed ports replaced by free ones, and
HAProxy in front of the page's two servers (skipped where HAProxy is not
installed).
"""

from __future__ import annotations

import os
import re
import signal

from twisted.trial.unittest import SkipTest

from .serverprocess import freeUDPPort, stopLeftoverDaemon, waitUntil
from .test_haproxy import HAPROXY, freePort
from .test_howtos import (
    HOWTO,
    HowToTestCase,
    commandLines,
    fencedBlocks,
    normalized,
    replaceWords,
    shell,
)

PAGE = HOWTO / "scale.md"
#: How long the servers' workers may take to start on a loaded machine.
READY_TIMEOUT = 60.0


class ScaleGuideTests(HowToTestCase):
    """
    C{docs/howto/scale.md}, every step in order.
    """

    def setUp(self) -> None:
        super().setUp()
        if HAPROXY is None:
            raise SkipTest("haproxy is not installed (Debian/Ubuntu: apt-get install haproxy)")
        self.work = self.machine / "home"
        self.work.mkdir()
        self.env["PATH"] = os.pathsep.join([self.env["PATH"], os.path.dirname(HAPROXY)])
        tcp = freePort()
        self.words = {
            "tcp:8007:": f"tcp:{tcp}:",
            "127.0.0.1:8007": f"127.0.0.1:{tcp}",
            "--udp 8007": f"--udp {freeUDPPort()}",
        }
        for port in ("8100", "8101", "8102"):
            free = freePort()
            self.words[f":{port}"] = f":{free}"
        for pidfile in ("workers.pid", "a.pid", "b.pid"):
            self.addCleanup(stopLeftoverDaemon, self.work / pidfile)
        self.addCleanup(self.stopHAProxy)

    def stopHAProxy(self) -> None:
        """
        Stop an HAProxy a failed test left running.
        """
        pidfile = self.work / "haproxy.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass

    def here(self, text: str) -> str:
        """
        C{text} with free ports in place of the page's.
        """
        return replaceWords(text, self.words)

    def runBlock(self, script: str) -> str:
        """
        Run C{script} as written (with L{here}); it must succeed.

        @return: what it printed.
        """
        result = shell(self.here(script), self.work, self.env)
        self.assertEqual(result.returncode, 0, (script, result.stdout, result.stderr))
        return result.stdout + result.stderr

    def waitForLog(self, name: str, pattern: str) -> None:
        """
        Wait until the log C{name} has a line matching C{pattern}.
        """
        log = self.work / name
        waitUntil(
            lambda: log.exists() and re.search(pattern, log.read_text()) is not None,
            READY_TIMEOUT,
            f"{pattern!r} in {name}",
        )

    def stopDaemons(self, line: str, pidfiles: list[str]) -> None:
        """
        Run the page's C{kill} line; wait until every daemon has exited and
        removed its pidfile.
        """
        self.runBlock(line)
        for pidfile in pidfiles:
            path = self.work / pidfile
            waitUntil(lambda path=path: not path.exists(), 30, f"{pidfile} removed")

    def test_everyBlockAsWritten(self) -> None:
        """
        The workers example serves a ping and stops; the log sample's lines
        are in its log; the two servers behind HAProxy take a file through
        the balancer and give it back; everything stops.  Only the
        production check, which needs C{--metrics}, is not run.
        """
        blocks = fencedBlocks(PAGE)
        kinds = []
        for language, block in blocks:
            if "--workers 2" in block and "kill $(cat workers.pid)" in block:
                kinds.append("workers")
                lines = commandLines(block)
                self.assertEqual(lines[-1], "kill $(cat workers.pid)")
                output = self.runBlock("\n".join(lines[:-1]))
                self.assertIn("pong from", output)
                self.stopDaemons(lines[-1], ["workers.pid"])
            elif language == "text" and "[worker 1] worker 1 ready" in block:
                kinds.append("log sample")
                logged = normalized((self.work / "workers.log").read_text().splitlines())
                for line in normalized(block.splitlines()):
                    self.assertTrue(any(lg.endswith(line) for lg in logged), line)
            elif language == "sh" and "--name a" in block:
                kinds.append("servers")
                self.runBlock(block)
                for log in ("a.log", "b.log"):
                    for worker in (1, 2):
                        self.waitForLog(log, rf"worker {worker} ready")
            elif language == "text" and "frontend frames" in block:
                kinds.append("haproxy.cfg")
                (self.work / "haproxy.cfg").write_text(self.here(block))
            elif language == "sh" and "haproxy -f haproxy.cfg" in block:
                kinds.append("through the balancer")
                output = self.runBlock(block)
                self.assertIn("hello through the balancer", output)
                self.assertEqual(
                    (self.work / "shared" / "hello.txt").read_text(),
                    "hello through the balancer\n",
                )
                self.assertIn("connection from", output)
            elif language == "sh" and block.startswith("kill $(cat haproxy.pid)"):
                kinds.append("stop")
                self.stopDaemons(block, ["a.pid", "b.pid"])
                for log in ("a.log", "b.log"):
                    self.waitForLog(log, r"worker 2 \(pid \d+\) stopped")
            elif language == "text" and "option httpchk GET /healthz" in block:
                kinds.append("production check (needs --metrics)")
            else:
                self.fail(f"an untested {language} block:\n{block}")
        self.assertEqual(
            kinds,
            [
                "workers",
                "log sample",
                "servers",
                "haproxy.cfg",
                "through the balancer",
                "stop",
                "production check (needs --metrics)",
            ],
        )
