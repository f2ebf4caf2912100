"""
End to end: the real C{twistd -n frameserver} and the real C{frames} CLI as
subprocesses, for every file command, including a killed upload resumed.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.serverprocess import ServerProcess, childEnv
from tests.serverprocess import frames as runFrames
from twisted_frames import wire
from twisted_frames.files.client import localPartialName
from twisted_frames.files.paths import partialName

TIMEOUT = 60
GREETING = {"event": "hello", "protocol": "twisted-frames", "version": wire.PROTOCOL_VERSION}


@pytest.fixture
def frameserver(tmp_path: Path) -> Any:
    """
    A real server on a loopback port the kernel chose, its root, and a
    function running the CLI against it.
    """
    root = tmp_path / "root"
    root.mkdir()
    with ServerProcess(str(root)) as server:

        def frames(*args: str, stdin: bytes | None = None, cwd: Path = tmp_path) -> Any:
            return runFrames(
                *args, server=server.address, input=stdin, timeout=TIMEOUT, cwd=str(cwd)
            )

        yield {
            "root": root,
            "port": server.port,
            "frames": frames,
            "tmp": tmp_path,
            "server": server,
        }


def _lines(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_fileCommands(frameserver: Any) -> None:
    """
    mkdir, put, ls, stat, get (to a file and to stdout), put from stdin,
    --force, rm, and the errors of each, through the real CLI.
    """
    frames, root, tmp = frameserver["frames"], frameserver["root"], frameserver["tmp"]
    data = os.urandom(3 * 1024 * 1024 + 11)
    (tmp / "f.bin").write_bytes(data)

    r = frames("mkdir", "a/b")
    assert r.returncode == 0, r.stderr
    assert (root / "a" / "b").is_dir()

    r = frames("--json", "put", "f.bin", "a/b/")
    assert r.returncode == 0, r.stderr
    (result,) = _lines(r.stdout)
    assert result["path"] == "a/b/f.bin"
    # The server offers BLAKE3, so the client verifies with it.
    assert (result["hash"], result["digest"]) == ("blake3", blake3.blake3(data).hexdigest())
    assert "sha256" not in result
    assert (root / "a" / "b" / "f.bin").read_bytes() == data
    assert r.stderr == b""  # no progress bar when stderr is not a terminal

    r = frames("--json", "ls", "a/b")
    assert r.returncode == 0, r.stderr
    assert [(e["name"], e["type"], e["size"]) for e in _lines(r.stdout)] == [
        ("f.bin", "file", len(data))
    ]
    r = frames("ls", "a")
    assert b"b/" in r.stdout

    r = frames("--json", "stat", "a/b/f.bin")
    assert _lines(r.stdout)[0]["size"] == len(data)

    r = frames("get", "a/b/f.bin", "copy.bin")
    assert r.returncode == 0, r.stderr
    assert f"blake3 {blake3.blake3(data).hexdigest()} verified".encode() in r.stdout
    assert (tmp / "copy.bin").read_bytes() == data

    r = frames("get", "a/b/f.bin", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data

    r = frames("put", "-", "a/stdin.txt", stdin=b"from a pipe\n")
    assert r.returncode == 0, r.stderr
    assert (root / "a" / "stdin.txt").read_bytes() == b"from a pipe\n"

    r = frames("put", "f.bin", "a/b/f.bin")
    assert r.returncode == 1
    assert b"already_exists" in r.stderr
    r = frames("get", "a/b/f.bin", "copy.bin")
    assert r.returncode == 1
    assert b"already exists" in r.stderr
    (tmp / "f.bin").write_bytes(b"new")
    r = frames("put", "--force", "f.bin", "a/b/f.bin")
    assert r.returncode == 0, r.stderr
    assert (root / "a" / "b" / "f.bin").read_bytes() == b"new"

    r = frames("rm", "a")
    assert r.returncode == 1
    assert b"not_empty" in r.stderr
    r = frames("rm", "a/b/f.bin", "a/stdin.txt")
    assert r.returncode == 0, r.stderr
    r = frames("rm", "a/b", "a")
    assert r.returncode == 0, r.stderr
    assert list(root.iterdir()) == []

    for args in (["ls", "../"], ["get", "/etc/passwd", "x"], ["stat", "a/../.."]):
        r = frames(*args)
        assert r.returncode == 1, args
        assert b"forbidden_path" in r.stderr, args
    r = frames("get", "missing", "x")
    assert r.returncode == 1
    assert b"not_found" in r.stderr
    assert not (tmp / "x").exists()


def test_recursive(frameserver: Any) -> None:
    """
    put -r and get -r copy a tree; links are reported and skipped.
    """
    frames, tmp = frameserver["frames"], frameserver["tmp"]
    tree = tmp / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_bytes(b"top")
    (tree / "sub" / "deeper" / "x.bin").write_bytes(os.urandom(70000))
    os.symlink("/etc", tree / "link")
    r = frames("put", "-r", "tree", "backup/tree")
    assert r.returncode == 0, r.stderr
    assert b"skipped" in r.stderr and b"link" in r.stderr
    r = frames("get", "-r", "backup/tree", "restored")
    assert r.returncode == 0, r.stderr
    assert (tmp / "restored" / "top.txt").read_bytes() == b"top"
    assert (tmp / "restored" / "sub" / "deeper" / "x.bin").read_bytes() == (
        tree / "sub" / "deeper" / "x.bin"
    ).read_bytes()
    assert not (tmp / "restored" / "link").exists()


def test_killedUploadResumes(frameserver: Any) -> None:
    """
    An upload killed mid-way leaves nothing under the final name and a
    hidden partial; C{put --resume} sends only the rest and the result
    matches the file's SHA-256.
    """
    frames, root, tmp = frameserver["frames"], frameserver["root"], frameserver["tmp"]
    data = os.urandom(12 * 1024 * 1024)
    (tmp / "big").write_bytes(data)
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twisted_frames",
            "-s",
            f"127.0.0.1:{frameserver['port']}",
            "put",
            "-",
            "big",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=childEnv(),
    )
    assert client.stdin is not None
    # From a pipe the client sends 8 MiB messages; give it one and a bit,
    # then kill it while it waits for more.
    client.stdin.write(data[: 9 * 1024 * 1024])
    client.stdin.flush()
    partial = root / partialName("big")
    # The server logs each message it has finished: the first 8 MiB one.
    frameserver["server"].waitFor(r"op=put id=\d+ in=8388608 .*outcome=ok", timeout=TIMEOUT)
    assert partial.stat().st_size == 8 * 1024 * 1024
    client.kill()
    client.wait(timeout=TIMEOUT)
    assert not (root / "big").exists()
    r = frames("ls")
    assert r.stdout == b""

    r = frames("--json", "stat", "big")
    assert r.returncode == 1
    r = frames("--json", "put", "--resume", "big", "big")
    assert r.returncode == 0, r.stderr
    (result,) = _lines(r.stdout)
    assert result["resumed_from"] == 8 * 1024 * 1024
    # Resumed and verified with BLAKE3 (the server hashes its partial's
    # prefix with it: it was written by a BLAKE3 upload too).
    assert (result["hash"], result["digest"]) == ("blake3", blake3.blake3(data).hexdigest())
    assert (root / "big").read_bytes() == data
    assert sorted(p.name for p in root.iterdir()) == ["big"]


def test_killedDownloadResumes(frameserver: Any) -> None:
    """
    A download's partial file is hidden beside the target, and
    C{get --resume} continues it and verifies the whole file.
    """
    frames, root, tmp = frameserver["frames"], frameserver["root"], frameserver["tmp"]
    root.mkdir(exist_ok=True)
    data = os.urandom(5 * 1024 * 1024)
    (root / "f").write_bytes(data)
    (tmp / ".f.frames-partial").write_bytes(data[:1_000_000])
    r = frames("--json", "get", "--resume", "f", "f")
    assert r.returncode == 0, r.stderr
    (result,) = _lines(r.stdout)
    assert result["resumed_from"] == 1_000_000
    assert (tmp / "f").read_bytes() == data
    assert not (tmp / ".f.frames-partial").exists()


def test_controlCharactersEscaped(frameserver: Any) -> None:
    """
    Remote names with control characters are printed escaped by ls, stat,
    get and error lines (one entry stays one line, nothing can rewrite the
    terminal); C{--json} keeps the exact names.
    """
    frames, root = frameserver["frames"], frameserver["root"]
    names = ["two\nlines", "back\rline", "red\x1b[31m", "back\\slash"]
    for name in names:
        (root / name).write_bytes(b"x")
    r = frames("ls")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == len(names), lines
    assert sorted(line.rsplit("  ", 1)[1] for line in lines) == sorted(
        [r"back\\slash", r"back\rline", r"red\x1b[31m", r"two\nlines"]
    )
    assert b"\r" not in r.stdout and b"\x1b" not in r.stdout
    r = frames("--json", "ls")
    assert sorted(e["name"] for e in _lines(r.stdout)) == sorted(names)

    r = frames("stat", "two\nlines")
    assert r.stdout.decode().startswith(r"two\nlines: file, 1 bytes"), r.stdout
    r = frames("get", "red\x1b[31m", "copy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith(r"get red\x1b[31m -> copy: 1 B"), r.stdout
    r = frames("get", "gone\x1b[2J", "copy2")
    assert r.returncode == 1
    assert r.stderr.decode().count("\n") == 1 and b"\x1b" not in r.stderr
    assert r"gone\x1b[2J" in r.stderr.decode()
    r = frames("--json", "get", "gone\x1b[2J", "copy2")
    assert _lines(r.stdout)[0]["error"]["path"] == "gone\x1b[2J"
    r = frames("rm", "two\nlines")
    assert (r.returncode, r.stdout) == (0, b"removed file two\\nlines\n"), r.stderr


def test_longNamesDownload(frameserver: Any) -> None:
    """
    Files with 255-byte names (in characters of 1 to 4 bytes of UTF-8)
    upload and download through the CLI, and an interrupted download of
    one resumes from its partial.
    """
    frames, root, tmp = frameserver["frames"], frameserver["root"], frameserver["tmp"]
    names = ["a" * 255, "é" * 127 + "x", "日" * 85, "\U0001f600" * 63 + "abc"]
    up, down = tmp / "up", tmp / "down"
    up.mkdir()
    down.mkdir()
    for name in names:
        assert len(name.encode()) == 255
        data = name.encode() * 100
        (up / name).write_bytes(data)
        r = frames("put", name, cwd=up)
        assert r.returncode == 0, r.stderr
        r = frames("get", name, cwd=down)
        assert r.returncode == 0, r.stderr
        assert (down / name).read_bytes() == data
    assert sorted(os.listdir(down)) == sorted(names)

    name = names[1]
    data = os.urandom(3 * 1024 * 1024)
    (root / name).write_bytes(data)
    (down / name).unlink()
    (down / localPartialName(name)).write_bytes(data[:1_000_000])
    r = frames("--json", "get", "--resume", name, cwd=down)
    assert r.returncode == 0, r.stderr
    assert _lines(r.stdout)[0]["resumed_from"] == 1_000_000
    assert (down / name).read_bytes() == data
    assert sorted(os.listdir(down)) == sorted(names)


def test_wording(frameserver: Any) -> None:
    """
    An existing target names C{-f/--force} for put (one file or a tree)
    and get alike, and a tree's error line names the path once; C{get} of
    a directory suggests C{-r} (exit 2, as put of a local directory) and
    leaves no partial, nor does a refused get.
    """
    frames, root, tmp = frameserver["frames"], frameserver["root"], frameserver["tmp"]
    hint = b"already exists (use -f/--force to overwrite) [already_exists]"
    (tmp / "f").write_bytes(b"local")
    (root / "f").write_bytes(b"remote")
    r = frames("put", "f")
    assert (r.returncode, r.stderr) == (1, b"frames: put: f: " + hint + b"\n")
    r = frames("get", "f")
    assert (r.returncode, r.stderr) == (1, b"frames: get: f: " + hint + b"\n")
    (tmp / "tree").mkdir()
    (tmp / "tree" / "f").write_bytes(b"x")
    (root / "tree").mkdir()
    (root / "tree" / "f").write_bytes(b"y")
    r = frames("put", "-r", "tree", ".")
    assert r.returncode == 1
    assert b"frames: put: tree/f: " + hint in r.stderr
    assert b"tree/f: tree/f" not in r.stderr
    r = frames("get", "-r", "tree", "tree")
    assert r.returncode == 1
    assert b"frames: get: tree/f: " + hint in r.stderr
    assert b"tree/f: tree/f" not in r.stderr

    (root / "d").mkdir()
    r = frames("get", "d")
    assert (r.returncode, r.stderr) == (2, b"frames: get: d is a directory (use -r)\n")
    r = frames("get", "missing")
    assert r.returncode == 1 and b"not_found" in r.stderr
    assert sorted(p.name for p in tmp.iterdir()) == ["f", "root", "tree"]


def test_stdioFlagWording(frameserver: Any) -> None:
    """
    C{-r} or C{--resume} with C{-} (stdin for put, stdout for get) is bad
    usage (exit 2) whose message names the flag that was given, not both.
    """
    frames = frameserver["frames"]
    for op, args, stream in (("put", ["-", "x"], "stdin"), ("get", ["x", "-"], "stdout")):
        for flag in ("-r", "--resume"):
            r = frames(op, flag, *args, stdin=b"")
            expected = f"frames: {op}: {flag} does not apply to {stream}\n".encode()
            assert (r.returncode, r.stderr) == (2, expected)
        r = frames(op, "-r", "--resume", *args, stdin=b"")
        expected = f"frames: {op}: -r and --resume do not apply to {stream}\n".encode()
        assert (r.returncode, r.stderr) == (2, expected)


def _shuttingDownPeer(listener: socket.socket) -> None:
    """
    Play a server that greets, answers C{stat} with C{not_found} and the
    first C{put} or C{get} with C{shutting_down}, then reads until the client
    hangs up (so that closing sends no reset over the reply).
    """
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        conn.sendall(wire.encodeMessage(GREETING))
        stream = conn.makefile("rb")
        while True:
            (n,) = wire.PREFIX.unpack(stream.read(4))
            header = json.loads(stream.read(n))
            (n,) = wire.PREFIX.unpack(stream.read(4))
            stream.read(n)
            if header["op"] == "stat":
                info = {"id": header["id"], "ok": True, "type": "file", "size": 100_000}
                conn.sendall(wire.encodeMessage(info))
                continue
            error = {"code": "shutting_down", "message": "the server is shutting down"}
            conn.sendall(wire.encodeMessage({"id": header["id"], "ok": False, "error": error}))
            break
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass  # the client aborted: a reset


@pytest.mark.parametrize(
    "args, resume",
    [
        (["put", "-f", "big.bin", "x y"], "put --resume -f big.bin 'x y'"),
        (
            ["put", "--hash", "sha256", "big.bin", "x y"],
            "put --resume --hash sha256 big.bin 'x y'",
        ),
        (["get", "x y", "out.bin"], "get --resume 'x y' out.bin"),
        (["put", "-r", "tree", "x y"], "put --resume -r tree 'x y'"),
        (["get", "-r", "x y", "out"], "get --resume -r 'x y' out"),
    ],
)
def test_shutdownPrintsResume(tmp_path: Path, args: list[str], resume: str) -> None:
    """
    A transfer of one file or a tree answered C{shutting_down} (the server
    stopped while it ran; it keeps an upload's partial, the client a
    download's) exits 1 with the command that resumes it, as an interrupted
    one does.
    """
    (tmp_path / "big.bin").write_bytes(os.urandom(100_000))
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"x")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(30)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        thread = threading.Thread(target=_shuttingDownPeer, args=(listener,), daemon=True)
        thread.start()
        r = runFrames(*args, server=address, timeout=TIMEOUT, cwd=str(tmp_path))
        thread.join(30)
    assert (r.returncode, r.stderr.decode()) == (
        1,
        f"frames: {args[0]}: the server is shutting down [shutting_down]; "
        f"resume with: frames --server {address} {resume}\n",
    )


def test_progressBarUnits() -> None:
    """
    The progress bar counts bytes and rate in the binary units of the
    summary line (C{KiB}, C{MiB}), not tqdm's decimal-looking C{MB}.
    """
    from twisted_frames.cli.progress import humanSize as _human
    from twisted_frames.cli.progress import progressBar

    out = io.StringIO()
    bar = progressBar(3 * 1024 * 1024, "big.iso", out)
    try:
        bar.update(1536 * 1024)
        text = str(bar)
    finally:
        bar.close()
    assert text.startswith("big.iso:  50%|"), text
    assert f"| {_human(1536 * 1024)}/{_human(3 * 1024 * 1024)} [" in text
    assert "1.5 MiB/3.0 MiB" in text
    assert re.search(r"(MiB|KiB|B)/s\]$|\?\]$", text), text
    assert not re.search(r"\d[kMG]B", text), text
