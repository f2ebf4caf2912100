"""
End to end: a real C{twistd -n frameserver} and the C{frames run} command
line, each in its own process.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverprocess import ROOT

REPO = ROOT
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
FRAMES = [sys.executable, "-m", "twisted_frames"]
DEADLINE = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Server:
    """
    A C{twistd -n frameserver} on a port the kernel picks, found in its log.
    """

    def __init__(self, root: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                "frameserver",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--udp",
                "0",
                "--root",
                str(root),
                *options,
            ],
            cwd=str(REPO),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.log = b""
        self.port = self._waitForPort()

    def _waitForPort(self) -> int:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.log += chunk
            found = re.search(rb"starting on (\d+)", self.log)
            if found:
                return int(found.group(1))
        self.stop()
        raise AssertionError(f"server did not start:\n{self.log.decode(errors='replace')}")

    def frames(
        self, *args: str, stdin: bytes | None = None, timeout: float = DEADLINE
    ) -> subprocess.CompletedProcess[bytes]:
        """
        Run the C{frames} CLI against this server.
        """
        return subprocess.run(
            [*FRAMES, "--server", f"127.0.0.1:{self.port}", *args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            cwd=str(REPO),
            env=_env(),
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """
    A server allowing C{sh} and C{cat}.
    """
    s = Server(tmp_path_factory.mktemp("root"), "--allow-command", "sh", "--allow-command", "cat")
    yield s
    s.stop()


def test_exitStatus(server: Server) -> None:
    """
    C{frames run -- sh -c 'exit 3'} exits 3 when C{sh} is allowed; output
    goes to the local stdout and stderr.
    """
    done = server.frames("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3, done
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"


def test_refusedWhenNotAllowed(tmp_path: Path) -> None:
    """
    The same command is refused by a server that does not allow C{sh}:
    exit status 1 and a one-line reason.
    """
    s = Server(tmp_path, "--allow-command", "cat")
    try:
        done = s.frames("run", "--", "sh", "-c", "exit 3")
    finally:
        s.stop()
    assert done.returncode == 1
    assert b"command_not_allowed" in done.stderr
    assert s.process.stdout is not None
    log = s.log + s.process.stdout.read()
    assert b"refused command 'sh'" in log


def test_stdinForwarded(server: Server) -> None:
    """
    Stdin that is not a terminal is forwarded to the command.
    """
    data = os.urandom(1024 * 1024)
    done = server.frames("run", "--", "cat", stdin=data)
    assert done.returncode == 0
    assert done.stdout == data


def test_signalStatus(server: Server) -> None:
    """
    A command killed by signal N makes the CLI exit 128+N.
    """
    done = server.frames("run", "--", "sh", "-c", "kill -KILL $$")
    assert done.returncode == 128 + 9


def test_timeout(server: Server) -> None:
    """
    C{--timeout} is applied by the server; the CLI says so and exits 124.
    """
    done = server.frames("run", "--timeout", "0.3", "--", "sh", "-c", "sleep 1000")
    assert done.returncode == 124
    assert b"timed out" in done.stderr


def test_json(server: Server) -> None:
    """
    C{--json} prints the outputs and status as one JSON object.
    """
    done = server.frames("run", "--json", "--", "sh", "-c", "printf 'a;b'; printf e >&2; exit 2")
    assert done.returncode == 2
    data = json.loads(done.stdout)
    assert data["stdout"] == "a;b"
    assert data["stderr"] == "e"
    assert (data["exit"], data["status"], data["timedOut"]) == (2, 2, False)


def test_usage(server: Server) -> None:
    """
    Without a command, C{frames run} is a usage error.
    """
    done = server.frames("run", "--")
    assert done.returncode == 2


def test_interruptCancels(server: Server) -> None:
    """
    Ctrl-C (SIGINT to the CLI) cancels the remote command, which dies of
    C{SIGINT}: exit status 130.
    """
    cli = subprocess.Popen(
        [*FRAMES, "--server", f"127.0.0.1:{server.port}", "run", "-n", "--"]
        + ["sh", "-c", "echo started; exec sleep 1000"],
        cwd=str(REPO),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert cli.stdout is not None
        ready, _, _ = select.select([cli.stdout], [], [], DEADLINE)
        assert ready and cli.stdout.readline() == b"started\n"
        cli.send_signal(signal.SIGINT)
        assert cli.wait(DEADLINE) == 130
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
