"""
Tests for L{twisted_frames._speedups.decrypt}: the record reader decrypts
every whole record ready into the caller's buffer in one call, stops at the
count asked, says when OpenSSL needs more ciphertext, leaves anything else
(the peer's close) to pyOpenSSL, and is not used where the speed paths are
off or pyOpenSSL's private binding is not as it expects.  A pair of
pyOpenSSL connections with memory BIOs, pumped in memory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from tests.test_speedups import force
from twisted_frames._speedups import decrypt
from twisted_frames.certs import writeQuickStart

#: A TLS record's most plaintext.
RECORD = 16384

_certs: dict[str, str] = {}


def _files() -> dict[str, str]:
    """
    A CA and server certificate, made once for the module.
    """
    if not _certs:
        _certs.update(writeQuickStart(os.path.join(tempfile.mkdtemp(), "c"), ["localhost"]))
    return _certs


def _pump(a: SSL.Connection, b: SSL.Connection) -> bool:
    """
    Move what C{a} has sent to C{b}; return whether anything moved.
    """
    moved = False
    while True:
        try:
            data = a.bio_read(65536)
        except SSL.WantReadError:
            return moved
        b.bio_write(data)
        moved = True


def _pair() -> tuple[SSL.Connection, SSL.Connection]:
    """
    A server and a client connection with memory BIOs, handshake done.
    """
    files = _files()
    serverContext = SSL.Context(SSL.TLS_METHOD)
    serverContext.use_certificate_file(files["server"])
    serverContext.use_privatekey_file(files["server-key"])
    clientContext = SSL.Context(SSL.TLS_METHOD)
    clientContext.load_verify_locations(files["ca"])
    clientContext.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    server = SSL.Connection(serverContext, None)
    server.set_accept_state()
    client = SSL.Connection(clientContext, None)
    client.set_connect_state()
    for _ in range(20):
        for c in (client, server):
            try:
                c.do_handshake()
            except SSL.WantReadError:
                pass
        if not (_pump(client, server) | _pump(server, client)):
            break
    # TLS 1.3 tickets and the like, read and dropped.
    try:
        client.recv(1)
    except SSL.WantReadError:
        pass
    return server, client


class RecordReaderTests(SynchronousTestCase):
    """
    L{decrypt.recordReader} on a real pyOpenSSL connection.
    """

    def setUp(self) -> None:
        force(self, True)
        self.server, self.client = _pair()
        reader = decrypt.recordReader(self.client)
        assert reader is not None
        self.reader = reader

    def send(self, data: bytes) -> None:
        """
        Have the server send C{data} and the client's BIO hold its records.
        """
        self.server.sendall(data)
        _pump(self.server, self.client)

    def test_manyRecordsInOneCall(self) -> None:
        """
        All the records the BIO holds are decrypted into the buffer by one
        call, in order.
        """
        data = os.urandom(5 * RECORD + 123)
        self.send(data)
        buf = bytearray(len(data) + 1000)
        n = self.reader(memoryview(buf), len(buf))
        self.assertEqual(n, len(data))
        self.assertEqual(bytes(buf[:n]), data)

    def test_stopsAtCount(self) -> None:
        """
        No more than the count asked is written; the rest comes on the next
        call, into the buffer's start.
        """
        data = os.urandom(3 * RECORD)
        self.send(data)
        buf = bytearray(3 * RECORD)
        view = memoryview(buf)
        first = self.reader(view, RECORD + 10)
        self.assertEqual(first, RECORD + 10)
        self.assertEqual(bytes(buf[first:]), bytes(len(buf) - first))
        rest = self.reader(view[first:], len(buf) - first)
        self.assertEqual(first + rest, len(data))
        self.assertEqual(bytes(buf), data)

    def test_needsMore(self) -> None:
        """
        With no whole record in the BIO, the reader says 0 (needs more
        ciphertext), and decrypts the record once the rest arrives.
        """
        buf = bytearray(RECORD)
        self.assertEqual(self.reader(memoryview(buf), len(buf)), 0)
        self.server.sendall(b"x" * 100)
        record = self.server.bio_read(65536)
        self.client.bio_write(record[:10])
        self.assertEqual(self.reader(memoryview(buf), len(buf)), 0)
        self.client.bio_write(record[10:])
        self.assertEqual(self.reader(memoryview(buf), len(buf)), 100)

    def test_closeLeftToPyOpenSSL(self) -> None:
        """
        After the data, the peer's close is not data nor "needs more": the
        reader says -1, and pyOpenSSL's C{recv_into} then raises
        C{ZeroReturnError} for it.
        """
        self.server.sendall(b"last")
        self.server.shutdown()
        _pump(self.server, self.client)
        buf = bytearray(RECORD)
        self.assertEqual(self.reader(memoryview(buf), len(buf)), 4)
        self.assertEqual(self.reader(memoryview(buf), len(buf)), -1)
        self.assertRaises(SSL.ZeroReturnError, self.client.recv_into, buf)


class FallbackTests(SynchronousTestCase):
    """
    Where the reader cannot be used, L{decrypt.recordReader} gives C{None}.
    """

    def test_disabled(self) -> None:
        """
        Not with the speed paths disabled.
        """
        force(self, False)
        self.assertIsNone(decrypt.recordReader(_pair()[1]))

    def test_bindingChanged(self) -> None:
        """
        Not if pyOpenSSL's private binding lacks what the reader calls.
        """
        force(self, True)
        client = _pair()[1]

        class Partial:
            SSL_get_error = SSL._lib.SSL_get_error  # type: ignore[attr-defined]
            SSL_ERROR_WANT_READ = SSL._lib.SSL_ERROR_WANT_READ  # type: ignore[attr-defined]

        self.patch(SSL, "_lib", Partial())
        self.assertIsNone(decrypt.recordReader(client))

    def test_notAConnection(self) -> None:
        """
        Not for anything but a pyOpenSSL C{Connection}.
        """
        force(self, True)
        fake: Any = object()
        self.assertIsNone(decrypt.recordReader(fake))
