"""
Tests for the server's security options (L{twisted_frames.security}) as
C{twistd frameserver} parses and applies them.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.auth.keys import addUser, newSecret
from twisted_frames.auth.service import AuthService
from twisted_frames.certs import writeQuickStart
from twisted_frames.policy import ConnectionGuard
from twisted_frames.security import isLocalEndpoint
from twisted_frames.server import FramesServerFactory
from twisted_frames.tap import Options, makeService


class LocalEndpointTests(SynchronousTestCase):
    """
    L{isLocalEndpoint}.
    """

    def test_local(self) -> None:
        """
        Loopback TCP/TCP6/SSL listens and UNIX sockets are local.
        """
        for description in [
            "tcp:8007:interface=127.0.0.1",
            "tcp:8007:127.0.0.1",
            "tcp:port=8007:interface=127.1.2.3",
            "tcp:8007:interface=localhost",
            "tcp6:8007:interface=\\:\\:1",
            "ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
            "unix:/run/frames.sock",
            "unix:address=/tmp/x:mode=600",
        ]:
            self.assertTrue(isLocalEndpoint(description), description)

    def test_notLocal(self) -> None:
        """
        No interface (all interfaces), wildcard or routable addresses, and
        endpoint types this cannot judge, are not local.
        """
        for description in [
            "tcp:8007",
            "tcp:8007:interface=0.0.0.0",
            "tcp:8007:interface=192.0.2.1",
            "tcp6:8007",
            "tcp6:8007:interface=\\:\\:",
            "ssl:8443:privateKey=k.pem",
            "systemd:domain=INET:index=0",
            "tcp:8007:interface=localhost.example.com",
        ]:
            self.assertFalse(isLocalEndpoint(description), description)


class OptionsTests(SynchronousTestCase):
    """
    C{twistd frameserver}'s security options.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.users = self.mktemp()
        addUser(self.users, newSecret("alice").record())

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--root", self.root, "--udp", "0", *argv])
        return options

    def refused(self, *argv: str) -> str:
        e = self.assertRaises(SystemExit, self.parse, *argv)
        return str(e)

    def test_defaults(self) -> None:
        """
        With no options the server listens on loopback only, needs no login,
        and has every limit and deadline at its documented default.
        """
        o = self.parse()
        self.assertTrue(o["localOnly"])
        self.assertIsNone(o["usersFile"])
        self.assertEqual(
            [
                o[k]
                for k in (
                    "max-connections",
                    "max-per-source",
                    "max-unauthenticated",
                    "max-unauthenticated-per-source",
                    "login-timeout",
                    "idle-timeout",
                    "frame-timeout",
                )
            ],
            [512, 32, 64, 8, 10.0, 300.0, 30.0],
        )

    def test_publicWithoutUsersRefused(self) -> None:
        """
        Listening beyond loopback without C{--users} is refused, naming the
        way out.
        """
        message = self.refused("--listen", "tcp:8007")
        self.assertIn("refusing to listen on tcp:8007", message)
        self.assertIn("--insecure-no-auth-on-public-interface", message)
        self.refused("--listen", "tcp:8007:interface=127.0.0.1", "--listen", "tcp6:8007")

    def test_publicWithUsersOrInsecureFlag(self) -> None:
        """
        With C{--users}, or the loudly named flag, a public listen is
        accepted (and flagged as not local, for the services to see).
        """
        self.assertFalse(self.parse("--listen", "tcp:8007", "--users", self.users)["localOnly"])
        insecure = self.parse("--listen", "tcp:8007", "--insecure-no-auth-on-public-interface")
        self.assertFalse(insecure["localOnly"])

    def test_looseUsersFileRefused(self) -> None:
        """
        A world-readable users file stops start-up.
        """
        os.chmod(self.users, 0o644)
        self.assertIn("too open", self.refused("--users", self.users))

    def test_malformedUsersFileRefused(self) -> None:
        """
        A malformed users file stops start-up with the line number.
        """
        with open(self.users, "a") as f:
            f.write("bob:nonsense\n")
        self.assertIn("line 3", self.refused("--users", self.users))

    def test_tlsOptionsChecked(self) -> None:
        """
        C{--tls-key}/C{--tls-ca} need C{--tls-cert}; an C{ssl:} listen with
        C{--tls-cert} is ambiguous; unreadable files are named.
        """
        self.assertIn("need --tls-cert", self.refused("--tls-ca", "ca.pem"))
        certs = writeQuickStart(self.mktemp(), ["localhost"])
        self.assertIn(
            "already TLS",
            self.refused(
                "--tls-cert",
                certs["server"],
                "--tls-key",
                certs["server-key"],
                "--listen",
                "ssl:8443:privateKey=k.pem:interface=127.0.0.1",
            ),
        )
        self.assertIn("/nonexistent", self.refused("--tls-cert", "/nonexistent"))

    def test_badNumbers(self) -> None:
        """
        Limits must be whole numbers in range.
        """
        self.assertIn("whole number", self.refused("--max-connections", "many"))
        self.assertIn("seconds", self.refused("--login-timeout", "-1"))


class MakeServiceTests(SynchronousTestCase):
    """
    What L{makeService} builds from the security options.
    """

    def build(self, *argv: str) -> tuple[Any, MemoryReactorClock]:
        options = Options()
        root = self.mktemp()
        os.makedirs(root)
        options.parseOptions(["--root", root, "--udp", "0", *argv])
        reactor = MemoryReactorClock()
        top = makeService(options, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        return top, reactor

    def test_tlsAndLogin(self) -> None:
        """
        With C{--users} and C{--tls-cert}, every listen is TLS-wrapped, login
        is required, the guard comes before the other services, and the
        limits and deadlines reach the factory (0 meaning none).
        """
        users = self.mktemp()
        addUser(users, newSecret("alice").record())
        certs = writeQuickStart(self.mktemp(), ["localhost"])
        top, reactor = self.build(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--users",
            users,
            "--tls-cert",
            certs["server"],
            "--tls-key",
            certs["server-key"],
            "--tls-ca",
            certs["ca"],
            "--max-per-source",
            "0",
            "--idle-timeout",
            "0",
            "--frame-timeout",
            "5",
        )
        listened = reactor.tcpServers[0][1]
        self.assertIsInstance(listened, TLSMemoryBIOFactory)
        factory = listened.wrappedFactory
        self.assertIsInstance(factory, FramesServerFactory)
        self.assertTrue(factory.authRequired)
        self.assertEqual(factory.authMechanisms, ["hmac-sha256"])
        kinds = [type(s) for s in factory.services]
        self.assertLess(kinds.index(ConnectionGuard), kinds.index(AuthService))
        guard = factory.services[kinds.index(ConnectionGuard)]
        assert isinstance(guard, ConnectionGuard)
        self.assertIsNone(guard.limits.maxPerSource)
        self.assertEqual(guard.limits.maxConnections, 512)
        self.assertIsNone(factory.idleTimeout)
        self.assertEqual(factory.frameTimeout, 5)
        self.assertIn("auth", factory.operations)

    def test_plainLocal(self) -> None:
        """
        Without them the factory is not wrapped and needs no login, but the
        guard and deadlines are still there.
        """
        top, reactor = self.build()
        factory = reactor.tcpServers[0][1]
        self.assertIsInstance(factory, FramesServerFactory)
        self.assertFalse(factory.authRequired)
        self.assertNotIn("auth", factory.operations)
        self.assertTrue(any(isinstance(s, ConnectionGuard) for s in factory.services))
        self.assertEqual((factory.idleTimeout, factory.frameTimeout), (300.0, 30.0))
