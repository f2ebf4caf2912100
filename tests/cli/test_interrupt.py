"""
End to end: SIGINT and SIGTERM sent to the real C{frames} CLI in the middle
of a transfer with the real C{twistd frameserver}: exit status 130/143, one
line saying what was interrupted and the command that resumes it, the
partial kept, and the printed command finishing the transfer.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serverprocess import ServerProcess, childEnv
from twisted_frames.files.client import localPartialName
from twisted_frames.files.paths import partialName

TIMEOUT = 60
SIZE = 48 * 1024 * 1024
FRAMES = [sys.executable, "-m", "twisted_frames"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """
    A real server whose root is C{tmp_path/root}.
    """
    root = tmp_path / "root"
    root.mkdir()
    with ServerProcess(str(root)) as s:
        yield s


def _waitUntil(condition: Callable[[], bool], what: str) -> None:
    """
    Poll C{condition} until it holds, for at most L{TIMEOUT} seconds.
    """
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _interrupt(
    server: ServerProcess, argv: list[str], cwd: Path, growing: Path, signum: int
) -> subprocess.CompletedProcess[str]:
    """
    Run C{frames ARGV}; once C{growing} (a partial) holds data, freeze the
    server (SIGSTOP), so that the transfer cannot end before the signal
    lands, send C{signum} to the client, and let the server go on.
    """
    assert server.process is not None
    client = subprocess.Popen(
        [*FRAMES, "--server", server.address, *argv],
        cwd=cwd,
        env=childEnv(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _waitUntil(lambda: _size(growing) > 0 or client.poll() is not None, f"{growing} to grow")
        server.process.send_signal(signal.SIGSTOP)
        try:
            assert client.poll() is None, client.communicate()
            client.send_signal(signum)
            out, err = client.communicate(timeout=TIMEOUT)
        finally:
            server.process.send_signal(signal.SIGCONT)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    return subprocess.CompletedProcess(client.args, client.returncode, out, err)


def _resume(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """
    Run the command printed after C{resume with:} as a shell would split it.
    """
    argv = shlex.split(line.split("; resume with: ", 1)[1])
    assert argv[0] == "frames"
    return subprocess.run(
        [*FRAMES, *argv[1:]],
        cwd=cwd,
        env=childEnv(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


@pytest.mark.parametrize(("signum", "status"), SIGNALS)
def test_getInterrupted(server: ServerProcess, tmp_path: Path, signum: int, status: int) -> None:
    """
    C{frames get} interrupted: exit 128+N, one line with the partial kept
    and the exact C{get --resume} command, which completes the download
    from the partial and verifies it.
    """
    data = os.urandom(SIZE)
    (Path(server.root) / "big.bin").write_bytes(data)
    here = tmp_path / "here"
    here.mkdir()
    partial = here / localPartialName("copy.bin")
    r = _interrupt(server, ["get", "big.bin", "copy.bin"], here, partial, signum)
    name = signal.Signals(signum).name
    assert r.returncode == status, r.stderr
    assert r.stdout == ""
    assert r.stderr == (
        f"frames: get big.bin interrupted ({name}); partial .copy.bin.frames-partial kept; "
        f"resume with: frames --server {server.address} get --resume big.bin copy.bin\n"
    )
    kept = _size(partial)
    assert 0 < kept < SIZE
    assert not (here / "copy.bin").exists()

    done = _resume(r.stderr, here)
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout and f"resumed from byte {kept}" in done.stdout
    assert (here / "copy.bin").read_bytes() == data
    assert sorted(os.listdir(here)) == ["copy.bin"]


@pytest.mark.parametrize(("signum", "status"), SIGNALS)
def test_putInterrupted(server: ServerProcess, tmp_path: Path, signum: int, status: int) -> None:
    """
    C{frames put -f} interrupted: exit 128+N, one line with the exact
    C{put --resume -f} command; the server keeps its partial, and the
    command resumes from it and stores the verified file.
    """
    root = Path(server.root)
    (root / "big.bin").write_bytes(b"old")
    data = os.urandom(SIZE)
    here = tmp_path / "here"
    here.mkdir()
    (here / "big.bin").write_bytes(data)
    partial = root / partialName("big.bin")
    r = _interrupt(server, ["put", "-f", "big.bin"], here, partial, signum)
    name = signal.Signals(signum).name
    assert r.returncode == status, r.stderr
    assert r.stderr == (
        f"frames: put big.bin interrupted ({name}); "
        f"resume with: frames --server {server.address} put --resume -f big.bin big.bin\n"
    )
    assert (root / "big.bin").read_bytes() == b"old"
    assert _size(partial) > 0

    done = _resume(r.stderr, here)
    assert done.returncode == 0, done.stderr
    assert "verified, resumed from byte" in done.stdout
    assert hashlib.sha256((root / "big.bin").read_bytes()).digest() == (
        hashlib.sha256(data).digest()
    )


def test_interruptedWhileConnecting(tmp_path: Path) -> None:
    """
    Interrupted before the server greets (nothing to resume): exit 130 and
    one line, at once rather than after C{--timeout}.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        client = subprocess.Popen(
            [*FRAMES, "--server", f"127.0.0.1:{port}", "--json", "ls"],
            env=childEnv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            accepted, _ = listener.accept()
            with accepted:
                started = time.monotonic()
                client.send_signal(signal.SIGINT)
                out, err = client.communicate(timeout=TIMEOUT)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
    assert time.monotonic() - started < 10
    assert client.returncode == 130
    assert err == "frames: ls interrupted (SIGINT)\n"
    assert '"code": "interrupted"' in out and '"signal": "SIGINT"' in out


#: The number of the C{read} system call, by machine.
_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}


def _readingStdin(pid: int) -> bool:
    """
    Whether a thread of process C{pid} is blocked in C{read(0, ...)}, as
    C{/proc/PID/task/TID/syscall} shows (number, then arguments in hex).
    """
    wanted = f"{_READ_SYSCALL[platform.machine()]} 0x0 "
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                if f.read().startswith(wanted):
                    return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(
    platform.machine() not in _READ_SYSCALL or not os.path.exists("/proc/self/task"),
    reason="needs Linux's /proc/PID/task/TID/syscall to see the blocked read",
)
def test_putFromBlockedPipe(server: ServerProcess) -> None:
    """
    C{put -} interrupted while its thread waits for a pipe that gives
    nothing: that thread cannot be stopped, so the process reports and
    exits after the wind-down time instead of waiting for the pipe (there is
    nothing to resume).
    """
    client = subprocess.Popen(
        [*FRAMES, "--server", server.address, "put", "-", "piped.bin"],
        env=childEnv(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _waitUntil(lambda: _readingStdin(client.pid), "the client to read stdin")
        started = time.monotonic()
        client.send_signal(signal.SIGTERM)
        # Not communicate(): it would close stdin, ending the read.
        client.wait(timeout=20)
        took = time.monotonic() - started
        assert client.stderr is not None
        err = client.stderr.read()
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 143, err
    assert err == "frames: put - interrupted (SIGTERM)\n"
    assert took < 15
    assert not (Path(server.root) / "piped.bin").exists()


@pytest.mark.skipif(
    platform.machine() not in _READ_SYSCALL or not os.path.exists("/proc/self/task"),
    reason="needs Linux's /proc/PID/task/TID/syscall to see the blocked read",
)
def test_putFromPipeSaysWhatServerKeeps(server: ServerProcess) -> None:
    """
    C{put -} interrupted after two messages were acknowledged: the line
    says that the server keeps those bytes (a partial that cannot be
    resumed) and the exact C{rm} command that removes it, which does.
    """
    chunk = 8 * 1024 * 1024
    partial = Path(server.root) / partialName("piped.bin")
    client = subprocess.Popen(
        [*FRAMES, "--server", server.address, "put", "-", "piped.bin"],
        env=childEnv(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert client.stdin is not None and client.stderr is not None
    try:
        # Two chunks' worth, then the pipe stays open: the client sends
        # both, and waits in read() for the third once the second is
        # acknowledged.
        writer = threading.Thread(target=client.stdin.write, args=(os.urandom(2 * chunk),))
        writer.start()
        _waitUntil(
            lambda: _size(partial) == 2 * chunk and _readingStdin(client.pid),
            "two chunks stored and the client reading stdin again",
        )
        writer.join(TIMEOUT)
        client.send_signal(signal.SIGINT)
        client.wait(timeout=20)
        err = client.stderr.read().decode()
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 130, err
    assert err == (
        f"frames: put - interrupted (SIGINT); the server keeps the {2 * chunk} bytes that "
        f"arrived; remove them with: frames --server {server.address} rm piped.bin\n"
    )
    assert _size(partial) == 2 * chunk
    argv = shlex.split(err.split("; remove them with: ", 1)[1])
    done = subprocess.run(
        [*FRAMES, *argv[1:]], env=childEnv(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert not partial.exists()


def _tree(top: Path, big: bytes) -> dict[str, bytes]:
    """
    Write a tree whose middle file (in name order) is C{big}: the first is
    complete and the last not started when the middle one is interrupted.
    """
    files = {"a.bin": b"first", "b.bin": big, "sub/c.bin": b"last"}
    for name, data in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(data)
    return files


def _sameTree(top: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert hashlib.sha256((top / name).read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        ), name


def test_putTreeInterruptedResumes(server: ServerProcess, tmp_path: Path) -> None:
    """
    C{put -r} interrupted prints the exact C{put --resume -r} command, into
    the same remote directory; it skips the file already complete, resumes
    the interrupted one and copies the rest.  A new run without C{--resume}
    still follows the C{cp} rule (an existing remote directory receives
    the tree inside it).
    """
    root = Path(server.root)
    here = tmp_path / "here"
    (here / "tree").mkdir(parents=True)
    files = _tree(here / "tree", os.urandom(SIZE))
    partial = root / "tree" / partialName("b.bin")
    r = _interrupt(server, ["put", "-r", "tree", "tree"], here, partial, signal.SIGINT)
    assert r.returncode == 130, r.stderr
    assert r.stderr == (
        "frames: put -r tree interrupted (SIGINT); "
        f"resume with: frames --server {server.address} put --resume -r tree tree\n"
    )
    assert (root / "tree" / "a.bin").exists() and _size(partial) > 0

    done = _resume(r.stderr, here)
    assert done.returncode == 0, done.stderr
    assert "1 already complete, 0 skipped, 0 failed" in done.stdout
    assert "put tree/b.bin -> tree/b.bin" in done.stdout
    assert "put tree/a.bin" not in done.stdout
    _sameTree(root / "tree", files)
    assert not (root / "tree" / "tree").exists() and not partial.exists()

    again = subprocess.run(
        [*FRAMES, "--server", server.address, "put", "-r", "tree", "tree"],
        cwd=here,
        env=childEnv(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert again.returncode == 0, again.stderr
    _sameTree(root / "tree" / "tree", files)


def test_getTreeInterruptedResumes(server: ServerProcess, tmp_path: Path) -> None:
    """
    C{get -r} interrupted prints the exact C{get --resume -r} command; it
    skips the file already complete (instead of failing it as existing),
    resumes the interrupted one from its partial and copies the rest.
    """
    root = Path(server.root)
    (root / "tree").mkdir()
    files = _tree(root / "tree", os.urandom(SIZE))
    here = tmp_path / "here"
    here.mkdir()
    partial = here / "tree" / localPartialName("b.bin")
    r = _interrupt(server, ["get", "-r", "tree"], here, partial, signal.SIGINT)
    assert r.returncode == 130, r.stderr
    assert r.stderr == (
        "frames: get -r tree interrupted (SIGINT); "
        f"resume with: frames --server {server.address} get --resume -r tree tree\n"
    )
    assert (here / "tree" / "a.bin").exists() and _size(partial) > 0

    done = _resume(r.stderr, here)
    assert done.returncode == 0, done.stderr
    assert "1 already complete, 0 skipped, 0 failed" in done.stdout
    assert "get tree/a.bin" not in done.stdout
    _sameTree(here / "tree", files)
    assert not partial.exists()
