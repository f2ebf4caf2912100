"""
Tests for the parts of the benchmarks that must work on any machine: a
benchmark that cannot run says why and how to fix it, instead of failing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from .serverprocess import ROOT

VS_SSH = str(ROOT / "bench" / "bench_vs_ssh.py")


class VsSSHSkipTests(SynchronousTestCase):
    """
    C{bench/bench_vs_ssh.py} where OpenSSH's programs cannot be found.
    """

    def runWithoutOpenSSH(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run the benchmark with a C{PATH} holding none of C{ssh}, C{sftp},
        C{scp} and C{ssh-keygen}.
        """
        empty = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, empty)
        env = dict(os.environ, PATH=empty)
        return subprocess.run(
            [sys.executable, VS_SSH, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_skipsWithInstallHint(self) -> None:
        """
        It exits 0 without measuring, naming what is missing and the command
        that installs it.
        """
        done = self.runWithoutOpenSSH("--quick")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("skipped", done.stdout)
        self.assertIn("ssh-keygen", done.stdout)
        self.assertIn("apt-get install openssh-server openssh-client", done.stdout)
        self.assertNotIn("Transfers of", done.stdout)

    def test_skipRecordedInJSON(self) -> None:
        """
        With C{--json}, the file it writes says the run was skipped and why.
        """
        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        done = self.runWithoutOpenSSH("--json", path)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(path) as f:
            written = json.load(f)
        self.assertIn("ssh", written["skipped"])
