"""
TLS over real loopback sockets, with clients that are not ours: Python's
C{ssl} module restricted to TLS 1.1 (refused), and C{openssl s_client} (the
real client) reading the greeting.  Run by pytest, which owns the reactor.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.protocols.tls import TLSMemoryBIOFactory

from tests.inmemory import Credentials, makeCredentials, makeServer
from twisted_frames.auth.client import login
from twisted_frames.client import connect
from twisted_frames.tls import clientOptions, serverOptions

# The TLS 1.1 client is deliberately obsolete.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")


@pytest.fixture(scope="module")
def creds(tmp_path_factory: Any) -> Credentials:
    """
    Certificates for this module.
    """
    return makeCredentials(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def server(creds: Credentials) -> Iterator[tuple[int, Any]]:
    """
    A mutual-TLS server with login on 127.0.0.1, port chosen by the system;
    idle connections are closed after 1 s so that clients reading until
    EOF finish.
    """
    from twisted.internet import reactor as r

    s = makeServer()
    s.factory.clock = r
    s.auth.clock = r
    s.auth.penalties._clockOrNone = r
    s.factory.idleTimeout = 1
    options = serverOptions(creds.server, creds.serverKey, creds.ca)
    port = r.listenTCP(0, TLSMemoryBIOFactory(options, False, s.factory), interface="127.0.0.1")
    yield port.getHost().port, s
    port.stopListening()


def _tls11Client(port: int, creds: Credentials) -> str:
    """
    Connect with a context that can only speak TLS 1.1 (security level 0
    so that OpenSSL lets the client try it).

    @return: the negotiated version.
    @raise ssl.SSLError: if the handshake fails.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(creds.client, creds.clientKey)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return str(tls.version())


def _permissiveTLS11Server(creds: Credentials) -> tuple[int, threading.Thread]:
    """
    A plain Python TLS server that allows TLS 1.1: the control showing the
    TLS 1.1 client works where it is allowed.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(creds.server, creds.serverKey)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            listener.settimeout(10)
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_tls11ClientWorksWhereAllowed(creds: Credentials) -> None:
    """
    Control: the TLS 1.1 test client does complete a handshake with a
    server that allows TLS 1.1, so its failure below is the server's doing.
    """
    port, thread = _permissiveTLS11Server(creds)
    assert _tls11Client(port, creds) == "TLSv1.1"
    thread.join(10)


@pytest_twisted.ensureDeferred
async def test_tls11Refused(server: tuple[int, Any], creds: Credentials) -> None:
    """
    A client that speaks at most TLS 1.1 cannot complete a handshake.
    """
    port, _ = server
    with pytest.raises(ssl.SSLError):
        await threads.deferToThread(_tls11Client, port, creds)


@pytest_twisted.ensureDeferred
async def test_loginOverRealTLS(server: tuple[int, Any], creds: Credentials) -> None:
    """
    Our client logs in over real mutual TLS, with the tls-exporter binding.
    """
    port, s = server
    options = clientOptions("localhost", creds.ca, creds.client, creds.clientKey)
    client = await connect(reactor, f"127.0.0.1:{port}", timeout=10, tls=options)
    try:
        assert await login(client, s.alice) == "alice"
        assert await client.ping(b"over tls") == b"over tls"
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_largePingOverRealTLS(server: tuple[int, Any], creds: Credentials) -> None:
    """
    A ping whose body is far larger than the socket and TLS buffers comes
    back whole over real TLS: the client keeps reading the echo while its
    own sending of the body waits for the server, which echoes only as fast
    as the client reads (each side waiting on the other was a deadlock).
    """
    port, s = server
    options = clientOptions("localhost", creds.ca, creds.client, creds.clientKey)
    client = await connect(reactor, f"127.0.0.1:{port}", timeout=10, tls=options)
    try:
        assert await login(client, s.alice) == "alice"
        payload = bytes(range(256)) * (16 * 4096)
        ping = client.ping(payload)
        # Bounded well under the write deadline and the client's timeout.
        ping.addTimeout(20, reactor)
        assert await ping == payload
    finally:
        await client.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
@pytest_twisted.ensureDeferred
async def test_opensslSClientReadsGreeting(server: tuple[int, Any], creds: Credentials) -> None:
    """
    C{openssl s_client}, verifying the server's certificate and host name
    and presenting a client certificate, completes the handshake and
    receives the greeting frame.
    """
    port, _ = server
    command = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        "localhost",
        "-verify_hostname",
        "localhost",
        "-CAfile",
        creds.ca,
        "-verify_return_error",
        "-cert",
        creds.client,
        "-key",
        creds.clientKey,
        "-ign_eof",
    ]
    result = await threads.deferToThread(
        subprocess.run, command, stdin=subprocess.DEVNULL, capture_output=True, timeout=30
    )
    out = result.stdout
    assert b"Verify return code: 0 (ok)" in out, result.stderr
    assert b'"event":"hello"' in out
    assert b'"protocol":"twisted-frames"' in out
