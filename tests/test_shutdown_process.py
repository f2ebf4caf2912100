"""
Graceful shutdown of the real C{twistd frameserver}, stopped by C{SIGTERM}
while the real C{frames} CLI (or a raw socket client) has work in flight.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from twisted_frames import wire

from .commands.test_process import alive
from .serverprocess import ServerProcess, childEnv, frames

#: A command that ignores SIGTERM, as does the grandchild it starts in its
#: process group (an ignored signal stays ignored across fork and exec):
#: only SIGKILL stops them.  It prints both pids.
STUBBORN = 'trap "" TERM; sleep 100 & echo $$ $!; wait'
GRACE = 8


def readLine(stream: IO[bytes], timeout: float) -> bytes:
    """
    One line from a child's pipe, waiting at most C{timeout} seconds.
    """
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return stream.readline()


def stopServer(server: ServerProcess, timeout: float) -> tuple[int, float]:
    """
    C{SIGTERM} the server and wait for it to exit.

    @return: its exit status and how long it took.
    """
    assert server.process is not None
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(timeout)
    return status, time.monotonic() - started


def test_killedCommandGetsItsFinalReply(tmp_path: Path) -> None:
    """
    C{SIGTERM} to the server while C{frames run} runs a command that
    ignores C{SIGTERM}: the command and its grandchild are killed with
    C{SIGKILL} after the kill grace, the CLI still gets the final reply
    (exit status 137, nothing on stderr), no process is left, and the
    server exits well within its grace period.
    """
    with ServerProcess(
        str(tmp_path), "--allow-command", "sh", "--shutdown-grace", str(GRACE)
    ) as server:
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twisted_frames",
                "--server",
                server.address,
                "run",
                "--",
                "sh",
                "-c",
                STUBBORN,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=childEnv(),
        )
        try:
            assert cli.stdout is not None
            pids = [int(p) for p in readLine(cli.stdout, 30).split()]
            status, took = stopServer(server, GRACE + 10)
            rest, err = cli.communicate(timeout=30)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    assert cli.returncode == 128 + signal.SIGKILL, (cli.returncode, err, server.log)
    assert err == b""
    assert rest == b""
    # twistd exits by the signal that stopped it, once shut down.
    assert status == -signal.SIGTERM, server.log
    assert took < GRACE, server.log
    assert [pid for pid in pids if alive(pid)] == []
    assert "signal=SIGKILL" in server.log
    assert "op=run id=1 " in server.log and "outcome=ok" in server.log


def sendMessage(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    """
    Send one whole message.
    """
    sock.sendall(wire.encodeMessage(header, body))


def recvExactly(sock: socket.socket, n: int) -> bytes:
    """
    C{n} bytes from C{sock}.

    @raise EOFError: if the connection ends first.
    """
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recvMessage(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """
    One message from C{sock}.
    """
    (length,) = wire.PREFIX.unpack(recvExactly(sock, 4))
    header = wire.decodeHeader(recvExactly(sock, length))
    (length,) = wire.PREFIX.unpack(recvExactly(sock, 4))
    return header, recvExactly(sock, length)


def waitForPartial(port: int, path: str, over: int, timeout: float = 30.0) -> None:
    """
    Ask the server (C{stat}, on a connection of its own) until the partial
    upload of C{path} holds more than C{over} bytes, for at most
    C{timeout} seconds: the upload's body is then being received.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        recvMessage(sock)
        rid = 0
        while time.monotonic() < deadline:
            rid += 1
            sendMessage(sock, {"op": "stat", "id": rid, "path": path})
            header, _ = recvMessage(sock)
            if header.get("error", header).get("partial", 0) > over:
                return
    raise AssertionError(f"the partial of {path} never grew over {over} bytes")


def test_interruptedUploadResumes(tmp_path: Path) -> None:
    """
    An upload in progress at shutdown is answered C{shutting_down}; what
    had arrived is kept, and C{frames put --resume} against a server
    restarted on the same root completes it from there.
    """
    root = tmp_path / "root"
    root.mkdir()
    local = tmp_path / "big.bin"
    data = os.urandom(4 * 1024 * 1024)
    local.write_bytes(data)
    half = len(data) // 2
    with ServerProcess(str(root), "--shutdown-grace", str(GRACE)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            greeting, _ = recvMessage(sock)
            assert greeting["event"] == "hello"
            # A first segment, stored for certain once it is answered.
            sendMessage(
                sock,
                {"op": "put", "id": 1, "path": "big.bin", "offset": 0, "final": False},
                data[:half],
            )
            first, _ = recvMessage(sock)
            assert first == {"id": 1, "ok": True, "path": "big.bin", "have": half}
            # The last segment, cut off in the middle of its body.
            last = {
                "op": "put",
                "id": 2,
                "path": "big.bin",
                "offset": half,
                "final": True,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            message = wire.encodeMessage(last, data[half:])
            sock.sendall(message[: len(message) - half // 2])
            waitForPartial(server.port, "big.bin", half)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            reply, _ = recvMessage(sock)
            assert reply == {
                "id": 2,
                "ok": False,
                "error": {"code": "shutting_down", "message": "the server is shutting down"},
            }
            # The rest of the body is read (and dropped), then the
            # connection is closed with the closing message.
            sock.sendall(message[len(message) - half // 2 :])
            closing, _ = recvMessage(sock)
            assert closing["closing"] is True
            assert closing["error"]["code"] == "shutting_down"
        status = server.process.wait(GRACE + 10)
    assert status == -signal.SIGTERM, server.log
    assert not (root / "big.bin").exists()
    with ServerProcess(str(root)) as again:
        done = frames("put", "--resume", str(local), "big.bin", server=again.address)
    assert done.returncode == 0, done
    out = done.stdout.decode()
    resumed = int(out.split("resumed from byte ")[1].split()[0].rstrip(","))
    assert resumed >= half, out
    assert (root / "big.bin").read_bytes() == data


def test_peerNotReadingDoesNotHoldShutdown(tmp_path: Path) -> None:
    """
    A client that asked for a large file and never reads cannot hold the
    shutdown: the server exits within its grace period plus the flush
    time, however much it still had to send.
    """
    (tmp_path / "big.bin").write_bytes(b"\0" * (32 * 1024 * 1024))
    grace = 2
    with ServerProcess(str(tmp_path), "--shutdown-grace", str(grace)) as server:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", server.port))
            recvMessage(sock)
            sendMessage(sock, {"op": "get", "id": 1, "path": "big.bin"})
            # The header of its first data event shows the download is under
            # way; the body is left unread.
            (length,) = wire.PREFIX.unpack(recvExactly(sock, 4))
            assert wire.decodeHeader(recvExactly(sock, length))["event"] == "data"
            status, took = stopServer(server, grace + 20)
    assert status == -signal.SIGTERM, server.log
    assert took < grace + 1 + 2, server.log
    assert "shutdown grace of 2 s is over: closing 1 connections" in server.log
