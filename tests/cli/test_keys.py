"""
Tests for L{twisted_frames.cli.keys}: C{frames keygen}, C{frames make-certs}
and the client's security flags.
"""

from __future__ import annotations

import io
import ipaddress
import os
import stat
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from service_identity.exceptions import DNSMismatch, VerificationError
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.auth.keys import UsersFile, UsersFileError, loadSecretFile, parseSecret
from twisted_frames.cli.base import UI
from twisted_frames.cli.keys import clientSecurity, explainTLSFailure
from twisted_frames.cli.main import buildParser, runCommand


def runFrames(case: SynchronousTestCase, *argv: str) -> tuple[int, str, str]:
    """
    Run C{frames ARGV...} (offline commands: they never touch the reactor).

    @return: exit status, stdout, stderr.
    """
    args = buildParser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    d = defer.Deferred.fromCoroutine(runCommand(None, args, UI(args.json, out, err)))
    return case.successResultOf(d), out.getvalue(), err.getvalue()


class CommandTests(SynchronousTestCase):
    """
    The offline commands, run through the real parser and L{runCommand}.
    """

    def frames(self, *argv: str) -> tuple[int, str, str]:
        return runFrames(self, *argv)

    def test_keygenFiles(self) -> None:
        """
        C{keygen NAME --users FILE -o FILE} adds the user and writes a 0600
        secret file that matches the users file.
        """
        users, secretPath = self.mktemp(), self.mktemp()
        code, out, err = self.frames("keygen", "alice", "--users", users, "-o", secretPath)
        self.assertEqual(code, 0)
        self.assertIn("user alice added", err)
        self.assertEqual(out, "")
        for path in (users, secretPath):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        secret = loadSecretFile(secretPath)
        self.assertEqual(UsersFile(users)["alice"], secret.record())

    def test_keygenPrints(self) -> None:
        """
        Without C{-o}, stdout is exactly the secret file, and the users-file
        line goes to stderr.
        """
        code, out, err = self.frames("keygen", "bob")
        self.assertEqual(code, 0)
        secret = parseSecret(out)
        self.assertIn(secret.record().toLine(), err)

    def test_keygenRefusesDuplicates(self) -> None:
        """
        An existing user or secret file is not overwritten without
        C{--replace}.
        """
        users, secretPath = self.mktemp(), self.mktemp()
        self.frames("keygen", "alice", "--users", users, "-o", secretPath)
        code, _, err = self.frames("keygen", "alice", "--users", users)
        self.assertEqual(code, 2)
        self.assertIn("already exists", err)
        code, _, err = self.frames("keygen", "carol", "-o", secretPath)
        self.assertEqual(code, 2)
        code, _, _ = self.frames(
            "keygen", "alice", "--users", users, "-o", secretPath, "--replace"
        )
        self.assertEqual(code, 0)
        self.assertEqual(UsersFile(users)["alice"], loadSecretFile(secretPath).record())

    def test_keygenBadName(self) -> None:
        """
        A bad user name is a usage error.
        """
        code, _, err = self.frames("keygen", "../x")
        self.assertEqual(code, 2)
        self.assertIn("bad user name", err)

    def test_makeCerts(self) -> None:
        """
        C{make-certs} writes a CA, a server certificate whose
        subjectAltNames are the hosts, and a client certificate; keys are
        0600; it never overwrites.
        """
        directory = self.mktemp()
        code, out, _ = self.frames(
            "make-certs", directory, "--host", "frames.test", "--host", "::1"
        )
        self.assertEqual(code, 0)
        self.assertIn("--tls-ca", out)
        with open(os.path.join(directory, "server.pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["frames.test"])
        self.assertEqual(sans.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("::1")])
        for key in ("ca.key", "server.key", "client.key"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(directory, key)).st_mode), 0o600)
        code, _, err = self.frames("make-certs", directory)
        self.assertEqual(code, 2)
        self.assertIn("not overwriting", err)


class FlagTests(SynchronousTestCase):
    """
    L{clientSecurity}: the flags to C{connect()} arguments.
    """

    def args(self, *argv: str) -> Any:
        return buildParser().parse_args([*argv, "ping"])

    def test_nothing(self) -> None:
        """
        No flags: no TLS, no login.
        """
        self.assertEqual(clientSecurity(self.args()), {"tls": None, "secret": None})

    def test_userNeedsSecret(self) -> None:
        """
        C{--user} alone is refused, and must match the secret file.
        """
        e = self.assertRaises(UsersFileError, clientSecurity, self.args("--user", "alice"))
        self.assertIn("needs --secret-file", str(e))
        path = self.mktemp()
        self.assertEqual(runFrames(self, "keygen", "alice", "-o", path)[0], 0)
        e = self.assertRaises(
            UsersFileError, clientSecurity, self.args("--user", "bob", "--secret-file", path)
        )
        self.assertIn("is for alice", str(e))
        secret = clientSecurity(self.args("--secret-file", path))["secret"]
        self.assertEqual(secret.user, "alice")

    def test_missingSecretFile(self) -> None:
        """
        A C{--secret-file} that does not exist is a usage error (exit 2, as
        for C{--ca}) whose one line names the file, before any connection.
        """
        path = self.mktemp()
        code, out, err = runFrames(self, "--secret-file", path, "ping")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err, f"frames: ping: cannot read secret file {path}: No such file or directory\n"
        )

    def test_caImpliesTLS(self) -> None:
        """
        C{--ca} turns TLS on; TLS needs a HOST:PORT server.
        """
        directory = self.mktemp()
        runFrames(self, "make-certs", directory)
        ca = os.path.join(directory, "ca.pem")
        self.assertIsNotNone(clientSecurity(self.args("--ca", ca))["tls"])
        self.assertRaises(
            ValueError, clientSecurity, self.args("--tls", "--server", "unix:path=/x")
        )


class ExplainTests(SynchronousTestCase):
    """
    L{explainTLSFailure}: one sentence per kind of TLS failure.
    """

    def test_messages(self) -> None:
        """
        Host-name mismatch, untrusted server, missing or rejected client
        certificate each get their own advice.
        """
        from service_identity.hazmat import DNS_ID

        cases = [
            (VerificationError(errors=[DNSMismatch(DNS_ID("x"))]), "host name mismatch"),
            (SSL.Error([("SSL routines", "", "certificate verify failed")]), "check --ca"),
            (
                SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]),
                "--cert/--key",
            ),
            (SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]), "rejected our client"),
            (SSL.Error([("SSL routines", "", "wrong version number")]), "does not speak TLS"),
        ]
        for error, fragment in cases:
            explained = explainTLSFailure(error, "h:1")
            assert explained is not None
            self.assertIn(fragment, str(explained))
        self.assertIsNone(explainTLSFailure(ValueError("x"), "h:1"))
