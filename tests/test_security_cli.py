"""
End to end, in subprocesses: C{twistd -n frameserver} with mutual TLS and a
users file, and the C{frames} CLI logging in (or being refused, with a clear
message and exit status).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: twistd, run by this interpreter (whatever is on PATH may be another).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
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
def setup(tmp_path_factory: Any) -> Iterator[dict[str, str]]:
    """
    Certificates, a users file with alice, alice's secret file, and a
    running server on a port the system chose.
    """
    d = str(tmp_path_factory.mktemp("e2e"))
    certs = os.path.join(d, "certs")
    assert frames("make-certs", certs, "--host", "localhost").returncode == 0
    users, secret = os.path.join(d, "users"), os.path.join(d, "alice.secret")
    assert frames("keygen", "alice", "--users", users, "-o", secret).returncode == 0
    log = os.path.join(d, "server.log")
    server = subprocess.Popen(
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "--logfile",
            log,
            "frameserver",
            "--root",
            os.path.join(d, "srv"),
            "--udp",
            "0",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--users",
            users,
            "--tls-cert",
            os.path.join(certs, "server.pem"),
            "--tls-key",
            os.path.join(certs, "server.key"),
            "--tls-ca",
            os.path.join(certs, "ca.pem"),
        ],
        env=ENV,
        cwd=d,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.05)
            if os.path.exists(log):
                with open(log) as f:
                    m = re.search(r"\(TLS\) starting on (\d+)", f.read())
                port = m.group(1) if m else None
        assert port is not None, "the server did not start"
        yield {
            "server": f"localhost:{port}",
            "ca": os.path.join(certs, "ca.pem"),
            "cert": os.path.join(certs, "client.pem"),
            "key": os.path.join(certs, "client.key"),
            "secret": secret,
            "log": log,
            "dir": d,
        }
    finally:
        server.terminate()
        server.wait(15)


def tlsArgs(s: dict[str, str]) -> list[str]:
    return ["--server", s["server"], "--ca", s["ca"], "--cert", s["cert"], "--key", s["key"]]


def test_loginAndPing(setup: dict[str, str]) -> None:
    """
    With the CA, a client certificate and alice's secret, ping works; the
    server logs the login.
    """
    r = frames(*tlsArgs(setup), "--secret-file", setup["secret"], "ping", "--size", "100000")
    assert r.returncode == 0, r.stderr
    assert "pong" in r.stdout
    with open(setup["log"]) as f:
        assert "user=alice" in f.read()


def test_envVariables(setup: dict[str, str]) -> None:
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


def test_wrongSecret(setup: dict[str, str]) -> None:
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


def test_noClientCertificate(setup: dict[str, str]) -> None:
    """
    Without a client certificate: exit status 3 and what to add.
    """
    r = frames("--server", setup["server"], "--ca", setup["ca"], "ping")
    assert r.returncode == 3
    assert "requires a client certificate" in r.stderr


def test_untrustedServer(setup: dict[str, str]) -> None:
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
    r = subprocess.run(
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "frameserver",
            "--root",
            str(tmp_path),
            "--udp",
            "0",
            "--listen",
            "tcp:0",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert r.returncode != 0
    assert "refusing to listen on tcp:0" in r.stderr + r.stdout
