"""
The code in the documentation runs as printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from .serverprocess import ROOT, ServerProcess, childEnv


def codeBlocks(path: Path, language: str) -> list[str]:
    """
    The fenced code blocks of one language in a Markdown file.
    """
    text = path.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


class DocumentedCodeTests(SynchronousTestCase):
    """
    Python examples from the docs, run against a real server.
    """

    def runAgainstServer(self, code: str, address: str) -> str:
        """
        Run C{code} with C{address} (as printed in the docs) replaced by the
        address of a real server; return what it printed.
        """
        root = self.mktemp()
        os.makedirs(root)
        with ServerProcess(root) as server:
            port = str(server.port)
            runnable = code.replace(address, address.replace("8007", port))
            self.assertNotEqual(runnable, code, f"{address} is not in the example")
            result = subprocess.run(
                [sys.executable, "-c", runnable],
                capture_output=True,
                text=True,
                timeout=30,
                env=childEnv(),
            )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_protocolSpecClient(self) -> None:
        """
        The standard-library-only client of C{docs/protocol.md}, section 7,
        talks to the real server and prints the echoed ping.
        """
        [client] = [
            b for b in codeBlocks(ROOT / "docs" / "protocol.md", "python") if "recv_exactly" in b
        ]
        out = self.runAgainstServer(client, '("127.0.0.1", 8007)')
        self.assertEqual(out, "({'id': 1, 'ok': True}, b'hello')\n")

    def test_readmeLibraryExample(self) -> None:
        """
        The README's async example connects, pings and closes.
        """
        [example] = [b for b in codeBlocks(ROOT / "README.md", "python") if "connect(" in b]
        out = self.runAgainstServer(example, '"127.0.0.1:8007"')
        self.assertTrue(out.endswith(" b'hello'\n"), out)


#: What differs between two runs of the README's session: times, rates and
#: dates (the rest, sizes and hashes included, is printed as it is).
_VOLATILE = [
    (r"in \d+\.\d\d s \([^)]*\)", "in T s (RATE)"),
    (r"\d{4}-\d\d-\d\d \d\d:\d\d", "DATE"),
]


def _steady(line: str) -> str:
    for pattern, replacement in _VOLATILE:
        line = re.sub(pattern, replacement, line)
    return line


class ReadmeSessionTests(SynchronousTestCase):
    """
    The README's 30-second session prints what the CLI prints.
    """

    def test_fileSession(self) -> None:
        """
        The session's shell and file commands, run against a real server,
        print the README's lines (with times, rates and dates masked):
        sizes and the full SHA-256 as shown.  C{ping} and C{udp-echo} are
        left out (host name and UDP port differ).
        """
        [session] = [b for b in codeBlocks(ROOT / "README.md", "console") if "frames put" in b]
        steps: list[tuple[str, list[str]]] = []
        for line in session.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        here = Path(self.mktemp())
        root = here / "root"
        root.mkdir(parents=True)
        # The session runs in the checkout, where the README is.
        shutil.copy(ROOT / "README.md", here / "README.md")
        ran = 0
        with ServerProcess(str(root)) as server:
            for command, printed in steps:
                if command.startswith(("frames ping", "frames udp-echo", ". ")):
                    continue
                if command.startswith("frames "):
                    argv = [sys.executable, "-m", "twisted_frames", "--server", server.address]
                    result = subprocess.run(
                        [*argv, *command.split()[1:]],
                        cwd=here,
                        capture_output=True,
                        text=True,
                        timeout=30,
                        env=childEnv(),
                    )
                else:
                    result = subprocess.run(
                        command, shell=True, cwd=here, capture_output=True, text=True, timeout=30
                    )
                self.assertEqual(result.returncode, 0, (command, result.stderr))
                self.assertEqual(
                    [_steady(x) for x in result.stdout.splitlines()],
                    [_steady(x) for x in printed],
                    command,
                )
                ran += 1
        self.assertGreaterEqual(ran, 5)
