"""
End to end, in subprocesses: C{twistd -n frameserver} with mutual TLS and a
users file, and the C{frames} CLI logging in (or being refused, with a clear
message and exit status).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests import serverprocess
from tests.serverprocess import ServerProcess, twistd

ROOT = str(serverprocess.ROOT)
ENV = {**os.environ, "PYTHONPATH": ROOT}
for _name in ("FRAMES_USER", "FRAMES_SECRET_FILE", "FRAMES_CA", "FRAMES_CERT", "FRAMES_KEY"):
    ENV.pop(_name, None)


def frames(*argv: str) -> subprocess.CompletedProcess[str]:
    """
    Run the C{frames} CLI.
    """
    return subprocess.run(
        [sys.executable, "-m", "twisted_frames", "--timeout", "15", *argv],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    """
    Certificates, a users file with alice, alice's secret file, and a
    running server on a port the system chose.
    """
    d = str(tmp_path_factory.mktemp("e2e"))
    certs = os.path.join(d, "certs")
    assert frames("make-certs", certs, "--host", "localhost").returncode == 0
    users, secret = os.path.join(d, "users"), os.path.join(d, "alice.secret")
    assert frames("keygen", "alice", "--users", users, "-o", secret).returncode == 0
    root = os.path.join(d, "srv")
    os.makedirs(root)
    with ServerProcess(
        root,
        "--users",
        users,
        "--tls-cert",
        os.path.join(certs, "server.pem"),
        "--tls-key",
        os.path.join(certs, "server.key"),
        "--tls-ca",
        os.path.join(certs, "ca.pem"),
    ) as server:
        yield {
            "server": f"localhost:{server.port}",
            "ca": os.path.join(certs, "ca.pem"),
            "cert": os.path.join(certs, "client.pem"),
            "key": os.path.join(certs, "client.key"),
            "secret": secret,
            "process": server,
            "dir": d,
        }


def tlsArgs(s: dict[str, Any]) -> list[str]:
    return ["--server", s["server"], "--ca", s["ca"], "--cert", s["cert"], "--key", s["key"]]


def test_loginAndPing(setup: dict[str, Any]) -> None:
    """
    With the CA, a client certificate and alice's secret, ping works; the
    server logs the login.
    """
    r = frames(*tlsArgs(setup), "--secret-file", setup["secret"], "ping", "--size", "100000")
    assert r.returncode == 0, r.stderr
    assert "pong" in r.stdout
    setup["process"].waitFor(r"login: \S+ user=alice")


def test_envVariables(setup: dict[str, Any]) -> None:
    """
    C{FRAMES_USER}/C{FRAMES_SECRET_FILE} stand in for the flags.
    """
    env = {**ENV, "FRAMES_USER": "alice", "FRAMES_SECRET_FILE": setup["secret"]}
    r = subprocess.run(
        [sys.executable, "-m", "twisted_frames", *tlsArgs(setup), "ping"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_wrongSecret(setup: dict[str, Any]) -> None:
    """
    A wrong secret: exit status 1 and a message naming the user.
    """
    other = os.path.join(setup["dir"], "wrong.secret")
    with open(other, "w") as f:
        f.write(frames("keygen", "alice").stdout)
    os.chmod(other, 0o600)
    r = frames(*tlsArgs(setup), "--secret-file", other, "ping")
    assert r.returncode == 1
    assert "login as alice failed: unknown user or wrong secret" in r.stderr


def test_noClientCertificate(setup: dict[str, Any]) -> None:
    """
    Without a client certificate: exit status 3 and what to add.
    """
    r = frames("--server", setup["server"], "--ca", setup["ca"], "ping")
    assert r.returncode == 3
    assert "requires a client certificate" in r.stderr


def test_untrustedServer(setup: dict[str, Any]) -> None:
    """
    Without the private CA (the system store does not know it): exit
    status 3, pointing at --ca.
    """
    r = frames(
        "--server",
        setup["server"],
        "--tls",
        "--cert",
        setup["cert"],
        "--key",
        setup["key"],
        "ping",
    )
    assert r.returncode == 3
    assert "check --ca" in r.stderr


def test_publicListenWithoutUsersRefused(tmp_path: Any) -> None:
    """
    twistd refuses a non-loopback listen without --users, and says how to
    proceed.
    """
    r = twistd("--root", str(tmp_path), "--udp", "0", "--listen", "tcp:0", cwd=str(tmp_path))
    assert r.returncode != 0
    assert "refusing to listen on tcp:0" in r.stderr + r.stdout
