"""
End to end: the C{frames} CLI's transfer hash, as subprocesses: BLAKE3 with
this server by default, C{--hash sha256} for files and trees, and a server of
before the negotiation (a blocking peer on a loopback port: its greeting has
no C{hashes} and it knows only C{sha256}).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.serverprocess import ServerProcess
from tests.serverprocess import frames as runFrames
from twisted_frames import wire
from twisted_frames.cli.files import HASH_NAMES
from twisted_frames.files.blocking import HASHES

TIMEOUT = 60
#: The greeting of a server of before the negotiation.
OLD_GREETING = {
    "event": "hello",
    "protocol": "twisted-frames",
    "version": wire.PROTOCOL_VERSION,
    "server": "old",
    "auth": {"required": False, "mechanisms": []},
    "nonce": "00" * 16,
    "limits": {"header": 65536, "body": 2**32 - 1},
    "ops": ["delete", "get", "list", "mkdir", "ping", "put", "stat"],
}


def test_choicesAreTheHashes() -> None:
    """
    C{--hash} takes exactly the hashes the client library has (the parser
    names them without importing it).
    """
    assert HASH_NAMES == tuple(HASHES)


def test_defaultAndForced(tmp_path: Path) -> None:
    """
    With this server, put and get verify with BLAKE3 and say so;
    C{--hash sha256} verifies with SHA-256, for one file and for trees (each
    file's line names its hash); an unknown name is a usage error.
    """
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(1024 * 1024 + 3)
    (tmp_path / "f.bin").write_bytes(data)
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "x").write_bytes(b"x")
    b3, sha = blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest()
    with ServerProcess(str(root)) as server:

        def frames(*args: str) -> Any:
            r = runFrames(*args, server=server.address, timeout=TIMEOUT, cwd=str(tmp_path))
            return r

        r = frames("put", "f.bin", "a")
        assert r.returncode == 0, r.stderr
        assert f"), blake3 {b3} verified\n".encode() in r.stdout
        r = frames("--json", "get", "--hash", "sha256", "a", "b")
        assert r.returncode == 0, r.stderr
        (result,) = [json.loads(line) for line in r.stdout.splitlines()]
        assert (result["hash"], result["digest"], result["sha256"]) == ("sha256", sha, sha)
        assert (tmp_path / "b").read_bytes() == data
        r = frames("get", "--hash", "sha256", "a", "-")
        assert r.returncode == 0, r.stderr
        assert r.stdout == data
        assert f"a -> stdout: {len(data)} bytes, sha256 {sha} verified\n".encode() in r.stderr

        r = frames("put", "-r", "--hash", "sha256", "tree", "t")
        assert r.returncode == 0, r.stderr
        x = hashlib.sha256(b"x").hexdigest()
        assert f"put tree/d/x -> t/d/x: 1 B, sha256 {x}\n".encode() in r.stdout
        r = frames("get", "-r", "t", "back")
        assert r.returncode == 0, r.stderr
        assert (
            f"get t/d/x -> back/d/x: 1 B, blake3 {blake3.blake3(b'x').hexdigest()}".encode()
            in (r.stdout)
        )

        r = frames("put", "--hash", "md5", "f.bin", "c")
        assert r.returncode == 2
        assert b"argument --hash: invalid choice: 'md5'" in r.stderr


def _oldServer(listener: socket.socket, seen: list[dict[str, Any]]) -> None:
    """
    Play a server of before the negotiation for one connection: greet
    without C{hashes}, store a one-message C{put} after checking its
    C{sha256}, answer as it did, until the client hangs up.
    """
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        conn.sendall(wire.encodeMessage(OLD_GREETING))
        stream = conn.makefile("rb")
        while True:
            prefix = stream.read(4)
            if len(prefix) < 4:
                return
            (n,) = wire.PREFIX.unpack(prefix)
            header = json.loads(stream.read(n))
            (n,) = wire.PREFIX.unpack(stream.read(4))
            body = stream.read(n)
            seen.append(header)
            rid = header["id"]
            if header["op"] == "stat":
                error = {"code": "not_found", "message": "no such file", "path": header["path"]}
                conn.sendall(wire.encodeMessage({"id": rid, "ok": False, "error": error}))
                continue
            digest = hashlib.sha256(body).hexdigest()
            assert header["op"] == "put" and header.get("sha256") == digest, header
            reply = {"id": rid, "ok": True, "path": header["path"], "size": len(body)}
            conn.sendall(wire.encodeMessage({**reply, "sha256": digest}))


@pytest.mark.parametrize("force", [[], ["--hash", "sha256"]])
def test_oldServer(tmp_path: Path, force: list[str]) -> None:
    """
    Against a server of before the negotiation, C{put} verifies with
    SHA-256 and sends only the fields that server knows, forced or not.
    """
    (tmp_path / "f").write_bytes(b"hello\n")
    seen: list[dict[str, Any]] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(30)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        thread = threading.Thread(target=_oldServer, args=(listener, seen), daemon=True)
        thread.start()
        r = runFrames("put", *force, "f", "f", server=address, timeout=TIMEOUT, cwd=str(tmp_path))
        thread.join(30)
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert f"), sha256 {digest} verified\n".encode() in r.stdout
    put = seen[-1]
    assert "hash" not in put and "digest" not in put
    assert (put["op"], put["sha256"]) == ("put", digest)


def test_oldServerForcedBlake3(tmp_path: Path) -> None:
    """
    C{--hash blake3} against a server of before the negotiation fails
    with C{unsupported_hash}, exit status 1, sending no C{put}.
    """
    (tmp_path / "f").write_bytes(b"hello\n")
    seen: list[dict[str, Any]] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(30)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        thread = threading.Thread(target=_oldServer, args=(listener, seen), daemon=True)
        thread.start()
        r = runFrames(
            "put", "--hash", "blake3", "f", server=address, timeout=TIMEOUT, cwd=str(tmp_path)
        )
        thread.join(30)
    assert (r.returncode, r.stderr) == (
        1,
        b"frames: put: the server does not offer hash blake3 (it has sha256) [unsupported_hash]\n",
    )
    assert [h["op"] for h in seen if h["op"] == "put"] == []
