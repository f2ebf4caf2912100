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


class ProtocolSpecClientTests(SynchronousTestCase):
    """
    The stand-alone client in C{docs/protocol.md}, section 7.
    """

    def test_minimalClientRuns(self) -> None:
        """
        The standard-library-only client from the spec talks to the real
        server and prints the echoed ping.
        """
        [client] = [
            b for b in codeBlocks(ROOT / "docs" / "protocol.md", "python") if "recv_exactly" in b
        ]
        root = self.mktemp()
        os.makedirs(root)
        with ServerProcess(root) as server:
            code = client.replace('("127.0.0.1", 8007)', f'("127.0.0.1", {server.port})')
            self.assertNotEqual(code, client)
            result = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=30,
                env=childEnv(),
            )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "({'id': 1, 'ok': True}, b'hello')\n")


class ReadmeLibraryExampleTests(SynchronousTestCase):
    """
    The client-library example in the README.
    """

    def test_runs(self) -> None:
        """
        The README's async example connects, pings and closes.
        """
        [example] = [b for b in codeBlocks(ROOT / "README.md", "python") if "connect(" in b]
        root = self.mktemp()
        os.makedirs(root)
        with ServerProcess(root) as server:
            code = example.replace('"127.0.0.1:8007"', f'"127.0.0.1:{server.port}"')
            self.assertNotEqual(code, example)
            result = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=30,
                env=childEnv(),
            )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.endswith(" b'hello'\n"), result.stdout)
