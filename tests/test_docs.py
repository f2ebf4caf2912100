"""
The code in the documentation runs as printed.
"""

from __future__ import annotations

import os
import re
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
