"""
Run the real C{twistd frameserver} and the real C{frames} CLI as
subprocesses, on ports the kernel picks (C{tcp:0}, C{--udp} on a free port).

Used by the end-to-end tests; synchronous, so it works under both Trial and
pytest.  Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0
#: Runs twistd from the interpreter running the tests (the module has no
#: C{__main__} guard, so C{-m} would not start it).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

_LISTENING = re.compile(r"frameserver listening on tcp ([\d.]+):(\d+)")
_UDP = re.compile(r"udp echo listening on ([\d.]+):(\d+)")


def childEnv(extra: dict[str, str] | None = None) -> dict[str, str]:
    """
    The environment for child processes: the checkout first on C{sys.path},
    so an uninstalled tree is tested as it is.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("FRAMES_SERVER", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def freeUDPPort() -> int:
    """
    A UDP port on loopback that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """
    A running C{twistd -n frameserver}: C{with ServerProcess(root, ...) as s}.

    @ivar port: the TCP port it listens on.
    @ivar udpPort: the UDP echo port, or C{None}.
    @ivar log: everything it printed, once stopped.
    """

    def __init__(self, root: str, *extra: str, udp: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.extra = list(extra)
        self.udp = udp
        self.port = 0
        self.udpPort: int | None = None
        self.log = ""
        self._lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        """
        C{HOST:PORT} for C{frames --server}.
        """
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        args = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "frameserver",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--root",
            self.root,
            "--udp",
            str(freeUDPPort()) if self.udp else "0",
            *self.extra,
        ]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=childEnv(),
            cwd=self.root,
        )
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self._lines.append(line)
            if m := _UDP.search(line):
                self.udpPort = int(m.group(2))
            if m := _LISTENING.search(line):
                self.port = int(m.group(2))
            if self.port and (self.udpPort or not self.udp):
                return self
        self.stop()
        raise RuntimeError("frameserver did not start:\n" + self.log)

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """
        Stop the server (SIGTERM, then SIGKILL) and collect its output.
        """
        p = self.process
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                out, _ = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
        else:
            out, _ = p.communicate()
        self.log = "".join(self._lines) + (out or "")
        self.process = None


def frames(
    *args: str,
    server: str | None = None,
    input: bytes | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """
    Run the C{frames} CLI (as C{python -m twisted_frames}) to completion.
    """
    argv: Sequence[str] = [sys.executable, "-m", "twisted_frames"]
    if server is not None:
        argv = [*argv, "--server", server]
    return subprocess.run(
        [*argv, *args],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        env=childEnv(env),
        cwd=cwd,
    )
