"""
TLS, in memory: channel binding makes a login proof useless on any other
TLS connection; certificate and host-name checks; mutual TLS.

Real-socket TLS tests (TLS 1.1 refused, C{openssl s_client}) are in
C{test_tls_sockets.py}.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.trial.unittest import SynchronousTestCase

from tests.inmemory import Credentials, makeCredentials, makeServer
from twisted_frames.auth.client import login
from twisted_frames.auth.hmac import authMessage, channelBinding, clientProof
from twisted_frames.testing import Connection, connectedPair, connectedTLSPair
from twisted_frames.tls import TLSConfigError, clientOptions, privateCertificate, serverOptions
from twisted_frames.wire import FramesError

_credentials: Credentials | None = None


def credentials() -> Credentials:
    """
    Certificates shared by the tests of this module (made once: key
    generation is the slow part).
    """
    global _credentials
    if _credentials is None:
        _credentials = makeCredentials(tempfile.mkdtemp(prefix="frames-tls-"))
    return _credentials


class InMemoryTLSTests(SynchronousTestCase):
    """
    Login over TLS connections pumped in memory.
    """

    def setUp(self) -> None:
        self.creds = credentials()
        self.server = makeServer(loginTimeout=None)
        self.serverOptions = serverOptions(self.creds.server, self.creds.serverKey, self.creds.ca)

    def connect(self, host: str = "localhost", **kw: Any) -> Connection:
        c = self.creds
        opts = clientOptions(
            host,
            kw.get("ca", c.ca),
            kw.get("cert", c.client),
            kw.get("key", c.clientKey),
        )
        return connectedTLSPair(
            self.server.factory, kw.get("serverOptions", self.serverOptions), opts
        )

    def test_loginOverTLS(self) -> None:
        """
        Both ends compute the same tls-exporter binding, and login works.
        """
        conn = self.connect()
        self.assertIsNotNone(conn.client.greeting)
        clientSide = channelBinding(conn.client.transport)
        serverSide = channelBinding(conn.server.transport)
        self.assertEqual(clientSide[0], "tls-exporter")
        self.assertEqual(clientSide, serverSide)
        self.assertEqual(len(clientSide[1]), 32)
        self.assertEqual(
            self.successResultOf(conn.run(login(conn.frames, self.server.alice))), "alice"
        )

    def test_aes128GCMPreferred(self) -> None:
        """
        The server picks AES-128-GCM over TLS 1.3, though the client (like
        OpenSSL by default) offers AES-256-GCM first.
        """
        conn = self.connect()
        for side in (conn.server, conn.client):
            handle = side.transport.getHandle()
            self.assertEqual(handle.get_protocol_version_name(), "TLSv1.3")
            self.assertEqual(handle.get_cipher_name(), "TLS_AES_128_GCM_SHA256")

    def test_aes128GCMPreferredOverTLS12(self) -> None:
        """
        A client limited to TLS 1.2 gets an AES-128-GCM cipher too.
        """
        from twisted.internet.ssl import TLSVersion, optionsForClientTLS

        from twisted_frames.tls import _identityOptions, trustRootFromFile

        c = self.creds
        extra: dict[str, Any] = {"lowerMaximumSecurityTo": TLSVersion.TLSv1_2}
        extra.update(_identityOptions(c.client, c.clientKey))
        opts = optionsForClientTLS(
            "localhost", trustRoot=trustRootFromFile(c.ca), extraCertificateOptions=extra
        )
        conn = connectedTLSPair(self.server.factory, self.serverOptions, opts)
        handle = conn.server.transport.getHandle()
        self.assertEqual(handle.get_protocol_version_name(), "TLSv1.2")
        self.assertIn("AES128-GCM", handle.get_cipher_name())

    def test_bindingDiffersPerConnection(self) -> None:
        """
        Two TLS connections have different exporter values.
        """
        a, b = self.connect(), self.connect()
        self.assertNotEqual(channelBinding(a.client.transport), channelBinding(b.client.transport))

    def _relay(self, attacker: Connection, victim: Connection) -> Any:
        """
        The attacker forwards its connection's nonce to the victim as if it
        were the server; the victim answers over its own connection (with
        its own channel binding); the attacker submits that answer.
        """
        keys = self.server.alice.keys()
        bindingType, binding = channelBinding(victim.client.transport)
        cnonce = "e" * 32
        message = authMessage(1, "alice", attacker.server.nonce, cnonce, bindingType, binding)
        fields = {
            "user": "alice",
            "mechanism": "hmac-sha256",
            "cnonce": cnonce,
            "binding": bindingType,
            "proof": clientProof(keys.clientKey, message).hex(),
        }
        return attacker.run(attacker.client.request("auth", fields))

    def test_relayAcrossTLSConnectionsRefused(self) -> None:
        """
        A proof relayed from one TLS connection into another is refused:
        the exporter values differ.
        """
        attacker, victim = self.connect(), self.connect()
        f = self.failureResultOf(self._relay(attacker, victim), FramesError)
        self.assertEqual(f.value.code, "auth_failed")
        self.assertIsNone(attacker.server.user)

    def test_noDeprecatedPyOpenSSLObjects(self) -> None:
        """
        Both ends hand pyOpenSSL C{cryptography} certificates and keys, not
        its deprecated C{X509} and C{PKey}: a mutual TLS connection whose
        server also sends a chain certificate warns of nothing.
        """
        c = self.creds
        chained = os.path.join(tempfile.mkdtemp(prefix="frames-tls-"), "chained.pem")
        with open(chained, "wb") as out:
            for path in (c.server, c.ca):
                with open(path, "rb") as f:
                    out.write(f.read())
        conn = self.connect(serverOptions=serverOptions(chained, c.serverKey, c.ca))
        self.assertIsNotNone(conn.client.greeting)
        self.assertEqual(self.flushWarnings(), [])

    def test_tcpRelayIsNotStopped(self) -> None:
        """
        Over plain TCP the same relay succeeds: this is the documented limit
        of logins without TLS, and shows that the binding is what stops it.
        """
        attacker, victim = connectedPair(self.server.factory), connectedPair(self.server.factory)
        self.successResultOf(self._relay(attacker, victim))
        self.assertEqual(attacker.server.user, "alice")

    def _handshakeFails(self, conn: Connection, expected: type[Exception] = SSL.Error) -> None:
        """
        The handshake failed with C{expected}, so no greeting came.
        """
        self.assertIsNone(conn.client.greeting)
        self.failureResultOf(conn.client.greeted, expected)
        self.assertTrue(conn.client.isClosed)

    def test_wrongHostName(self) -> None:
        """
        A certificate for localhost is refused when connecting to another
        name.
        """
        self._handshakeFails(self.connect("example.com"), VerificationError)

    def test_untrustedServer(self) -> None:
        """
        A server certificate from a CA the client does not trust is refused.
        """
        self._handshakeFails(self.connect(ca=self.creds.otherCA))

    def test_expiredServer(self) -> None:
        """
        An expired server certificate is refused.
        """
        expired = serverOptions(
            self.creds.expiredServer, self.creds.expiredServerKey, self.creds.ca
        )
        self._handshakeFails(self.connect(serverOptions=expired))

    def test_noClientCertificate(self) -> None:
        """
        Under mutual TLS a client without a certificate gets no greeting.
        """
        c = self.creds
        conn = connectedTLSPair(
            self.server.factory, self.serverOptions, clientOptions("localhost", c.ca)
        )
        self._handshakeFails(conn)

    def test_untrustedOrExpiredClientCertificate(self) -> None:
        """
        Under mutual TLS a client certificate from another CA, or expired,
        is refused.
        """
        c = self.creds
        self._handshakeFails(self.connect(cert=c.otherClient, key=c.otherClientKey))
        self._handshakeFails(self.connect(cert=c.expiredClient, key=c.expiredClientKey))

    def test_noCAMeansNoClientCertificateNeeded(self) -> None:
        """
        Without C{--tls-ca} the server does not ask for client certificates.
        """
        c = self.creds
        plain = serverOptions(c.server, c.serverKey)
        conn = connectedTLSPair(self.server.factory, plain, clientOptions("localhost", c.ca))
        self.assertIsNotNone(conn.client.greeting)


class OptionsFileTests(SynchronousTestCase):
    """
    Loading certificates and keys.
    """

    def test_mismatchedKey(self) -> None:
        """
        A key that does not belong to the certificate is refused.
        """
        c = credentials()
        e = self.assertRaises(TLSConfigError, privateCertificate, c.server, c.clientKey)
        self.assertIn("does not match", str(e))

    def test_missingAndMalformedFiles(self) -> None:
        """
        Missing or non-PEM files are refused with their path in the message.
        """
        c = credentials()
        e = self.assertRaises(TLSConfigError, serverOptions, "/nonexistent.pem")
        self.assertIn("/nonexistent.pem", str(e))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        self.assertRaises(TLSConfigError, serverOptions, path, c.serverKey)
        self.assertRaises(TLSConfigError, serverOptions, c.server, path)
