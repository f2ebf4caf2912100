"""
The greeting deadline: a peer that does not greet (most often a TLS server,
waiting for a ClientHello a plain client never sends) is reported within
seconds, with what to try, instead of after the whole C{--timeout}; and
C{--tls} against a plain server says so.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.cli.base import EXIT_CONNECT, EXIT_TIMEOUT
from twisted_frames.client import ClientProtocol, NoGreeting, connect
from twisted_frames.wire import ProtocolViolation

from .inmemory import makeCredentials
from .serverprocess import ServerProcess, frames

GREETING = {"event": "hello", "protocol": "twisted-frames", "version": wire.PROTOCOL_VERSION}
#: A TLS alert record (fatal, handshake_failure), as a TLS server may send.
TLS_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"


class SilentEndpoint:
    """
    A client endpoint that connects at once to a peer that sends nothing
    unless told to.

    @ivar transport: the client's transport.
    """

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return defer.succeed(self.protocol)


class GreetingDeadlineTests(SynchronousTestCase):
    """
    L{connect}'s C{greetingTimeout}, with a fake clock.
    """

    def test_silentPeer(self) -> None:
        """
        A peer silent for C{greetingTimeout} fails the connect with
        L{NoGreeting} (long before C{timeout}) and the connection is aborted.
        """
        clock, endpoint = Clock(), SilentEndpoint()
        d = connect(clock, endpoint, timeout=30, greetingTimeout=3)
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = self.failureResultOf(d, NoGreeting).value
        self.assertEqual((error.seconds, error.tlsRecord), (3, False))
        self.assertTrue(endpoint.transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_tlsRecord(self) -> None:
        """
        Bytes that start a TLS record instead of a greeting fail the connect
        at once, saying so; fed one byte at a time too.
        """
        for chunks in ([TLS_ALERT], [bytes([b]) for b in TLS_ALERT]):
            clock, endpoint = Clock(), SilentEndpoint()
            d = connect(clock, endpoint, timeout=30, greetingTimeout=3)
            for chunk in chunks:
                endpoint.protocol.dataReceived(chunk)
            self.assertTrue(self.failureResultOf(d, NoGreeting).value.tlsRecord)
            self.assertTrue(endpoint.transport.disconnected)
            self.assertEqual(clock.getDelayedCalls(), [])

    def test_otherProtocolBanner(self) -> None:
        """
        A peer that speaks another protocol (an SSH banner, whose first four
        bytes are a length prefix over the frame limit) fails the connect at
        once with L{ProtocolViolation} saying that it did not greet as
        twisted-frames, not with a connection "closed cleanly".
        """
        clock, endpoint = Clock(), SilentEndpoint()
        d = connect(clock, endpoint, timeout=30, greetingTimeout=3)
        endpoint.protocol.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
        error = self.failureResultOf(d, ProtocolViolation).value
        self.assertIn("did not greet as twisted-frames", error.message)
        self.assertTrue(endpoint.transport.disconnecting or endpoint.transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_greetedInTime(self) -> None:
        """
        A greeting before the deadline connects and cancels the deadline,
        even when it comes a byte at a time.
        """
        clock, endpoint = Clock(), SilentEndpoint()
        d = connect(clock, endpoint, timeout=30, greetingTimeout=3)
        clock.advance(2)
        for b in wire.encodeMessage(GREETING):
            endpoint.protocol.dataReceived(bytes([b]))
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(endpoint.transport.disconnected)

    def test_longerThanTimeout(self) -> None:
        """
        A greeting deadline not shorter than C{timeout} (or C{None}) leaves
        the overall timeout in charge.
        """
        for greetingTimeout in (5, None):
            clock = Clock()
            d = connect(clock, SilentEndpoint(), timeout=5, greetingTimeout=greetingTimeout)
            clock.advance(5)
            self.failureResultOf(d, defer.TimeoutError)

    def test_tlsRecordAfterGreetingIsData(self) -> None:
        """
        Once greeted, the bytes C{0x15 0x03} are only part of a frame.
        """
        client = ClientProtocol()
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(wire.encodeMessage(GREETING))
        d = client.request("ping")
        client.dataReceived(wire.encodeMessage({"id": 1, "ok": True}, TLS_ALERT))
        self.assertEqual(self.successResultOf(d).body, TLS_ALERT)


class EndToEndTests(SynchronousTestCase):
    """
    The real CLI against real servers.
    """

    def setUp(self) -> None:
        self.creds = makeCredentials(os.path.abspath(self.mktemp()))

    def startServer(self, *extra: str) -> ServerProcess:
        root = self.mktemp()
        os.makedirs(root)
        server = ServerProcess(root, *extra).__enter__()
        self.addCleanup(server.stop)
        return server

    def test_forgottenTLS(self) -> None:
        """
        Without C{--tls} against a TLS server: exit 3 within the default
        greeting deadline (well under the 30 s C{--timeout}), with one line
        naming the server and suggesting C{--tls}.
        """
        server = self.startServer(
            "--tls-cert", self.creds.server, "--tls-key", self.creds.serverKey
        )
        started = time.monotonic()
        r = frames("ping", server=server.address)
        took = time.monotonic() - started
        self.assertEqual(r.returncode, EXIT_CONNECT, r.stderr)
        self.assertEqual(
            r.stderr.decode(),
            f"frames: no greeting from {server.address} within 5 s; "
            "is it a TLS server? try --tls\n",
        )
        self.assertLess(took, 15)
        # The same server with --tls works.
        r = frames("--ca", self.creds.ca, "ping", server=f"localhost:{server.port}")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_greetingTimeoutOption(self) -> None:
        """
        C{--greeting-timeout S} sets the deadline; 0 leaves only
        C{--timeout} (exit 4, "no answer").
        """
        server = self.startServer(
            "--tls-cert", self.creds.server, "--tls-key", self.creds.serverKey
        )
        r = frames("--greeting-timeout", "0.5", "ping", server=server.address)
        self.assertEqual(r.returncode, EXIT_CONNECT, r.stderr)
        self.assertIn(b"within 0.5 s; is it a TLS server? try --tls", r.stderr)
        r = frames(
            "--greeting-timeout", "0", "--timeout", "0.5", "--json", "ping", server=server.address
        )
        self.assertEqual(r.returncode, EXIT_TIMEOUT, r.stderr)
        self.assertIn(b"no answer", r.stderr)
        r = frames("--greeting-timeout", "-1", "ping", server=server.address)
        self.assertEqual(r.returncode, 2)

    def test_tlsRecordPeer(self) -> None:
        """
        A peer that sends a TLS record instead of a greeting is named a TLS
        server at once.
        """
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.settimeout(30)
            port = listener.getsockname()[1]

            def answer() -> None:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(TLS_ALERT)
                    conn.settimeout(30)
                    try:
                        conn.recv(1)  # until the client hangs up
                    except OSError:
                        pass  # it aborts: a reset

            thread = threading.Thread(target=answer, daemon=True)
            thread.start()
            started = time.monotonic()
            r = frames("--json", "ping", server=f"127.0.0.1:{port}")
            thread.join(30)
        self.assertEqual(r.returncode, EXIT_CONNECT, r.stderr)
        self.assertEqual(
            r.stderr.decode(),
            f"frames: no greeting from 127.0.0.1:{port}: it answered with a TLS record; "
            "it is a TLS server: try --tls\n",
        )
        self.assertIn(b'"code": "no_greeting"', r.stdout)
        self.assertLess(time.monotonic() - started, 4)

    def test_tlsAgainstPlainServer(self) -> None:
        """
        C{--tls} against a plain server: exit 3 at once, saying the server
        does not speak TLS.
        """
        server = self.startServer()
        started = time.monotonic()
        r = frames("--ca", self.creds.ca, "ping", server=f"localhost:{server.port}")
        self.assertEqual(r.returncode, EXIT_CONNECT, r.stderr)
        self.assertEqual(
            r.stderr.decode(),
            f"frames: TLS with localhost:{server.port} failed: the server does not speak "
            "TLS on this port (drop --tls?)\n",
        )
        self.assertLess(time.monotonic() - started, 4)
