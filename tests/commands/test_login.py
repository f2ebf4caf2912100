"""
The command service's per-command C{users} lists with real logins: the real
C{twistd frameserver} with C{--users} and a C{--commands} file, and the real
C{frames} CLI logging in as different users.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ServerProcess, frames


class CommandUsersTests(SynchronousTestCase):
    """
    A command restricted to C{users = ["alice"]}.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        users = os.path.join(self.dir, "users")
        for name in ("alice", "bob"):
            made = frames(
                "keygen", name, "--users", users, "-o", os.path.join(self.dir, f"{name}.secret")
            )
            self.assertEqual(made.returncode, 0, made.stderr)
        commands = os.path.join(self.dir, "commands.toml")
        with open(commands, "w") as f:
            f.write('[commands.sh]\nusers = ["alice"]\n')
        root = os.path.join(self.dir, "srv")
        os.makedirs(root)
        self.server = ServerProcess(root, "--users", users, "--commands", commands).__enter__()
        self.addCleanup(self.server.stop)

    def runAs(self, name: str | None) -> tuple[int, str]:
        """
        C{frames run -- sh -c 'exit 3'}, logged in as C{name} (or not).
        """
        login = (
            []
            if name is None
            else ["--user", name, "--secret-file", os.path.join(self.dir, f"{name}.secret")]
        )
        result = frames(
            *login, "run", "-n", "--", "sh", "-c", "exit 3", server=self.server.address
        )
        return result.returncode, result.stderr.decode()

    def test_listedUserRuns(self) -> None:
        """
        Alice, on the list, runs it: the remote exit status comes back.
        """
        self.assertEqual(self.runAs("alice"), (3, ""))

    def test_otherUserRefused(self) -> None:
        """
        Bob, logged in but not on the list, is refused with
        C{command_not_allowed}, and the refusal is logged.
        """
        code, err = self.runAs("bob")
        self.assertEqual(code, 1)
        self.assertIn("[command_not_allowed]", err)
        self.server.stop()
        self.assertIn("refused command", self.server.log)

    def test_anonymousRefused(self) -> None:
        """
        Without a login nothing but C{ping}/C{auth} is served at all.
        """
        code, err = self.runAs(None)
        self.assertEqual(code, 1)
        self.assertIn("[auth_required]", err)
