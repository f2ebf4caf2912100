"""
Run the real C{twistd frameserver} and the real C{frames} CLI as
subprocesses, on ports the kernel picks (C{tcp:0}, C{--udp} on a free port).

Used by the end-to-end tests; synchronous, so it works under both Trial and
pytest.  Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
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

    @ivar listen: its C{--listen} (a TCP one, on port 0).
    @ivar port: the TCP port it listens on.
    @ivar udpPort: the UDP echo port, or C{None}.
    @ivar log: everything it printed, once stopped.
    """

    def __init__(
        self, root: str, *extra: str, udp: bool = False, listen: str = "tcp:0:interface=127.0.0.1"
    ) -> None:
        self.root = os.path.abspath(root)
        self.listen = listen
        self.extra = list(extra)
        self.udp = udp
        self.port = 0
        self.udpPort: int | None = None
        self.log = ""
        self._lines: list[str] = []
        self._newLine = threading.Condition()
        self._reader: threading.Thread | None = None
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
            self.listen,
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
                self._reader = threading.Thread(target=self._readLines, daemon=True)
                self._reader.start()
                return self
        self.stop()
        raise RuntimeError("frameserver did not start:\n" + self.log)

    def _readLines(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._newLine:
                self._lines.append(line)
                self._newLine.notify_all()

    def waitFor(self, pattern: str, timeout: float = 30.0) -> str:
        """
        Wait until the server logs a line matching C{pattern} (a regular
        expression), woken by each new line rather than polling.

        @return: the first matching line.
        @raise AssertionError: if none comes within C{timeout} seconds.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._newLine:
            while True:
                for line in self._lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no log line matching {pattern!r}:\n" + "".join(self._lines)
                    )
                self._newLine.wait(left)

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
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._reader is not None:
            # It reads to the end of the output, which comes once the
            # process has exited.
            self._reader.join(timeout=10)
            rest = ""
        else:
            assert p.stdout is not None
            rest = p.stdout.read()
        if p.stdout is not None:
            p.stdout.close()
        self.log = "".join(self._lines) + rest
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


def twistd(
    *args: str,
    timeout: float = 60.0,
    cwd: str | None = None,
    twistdOptions: Sequence[str] = ("-n", "--pidfile="),
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd TWISTDOPTIONS frameserver ARGS} to completion: a server
    that is expected to refuse to start or, without C{-n} in
    C{twistdOptions}, the launcher of a daemon, which returns once the
    daemon has started or failed.
    """
    return subprocess.run(
        [sys.executable, "-c", TWISTD, *twistdOptions, "frameserver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=childEnv(),
        cwd=cwd,
    )


def listeningPort(log: str) -> int:
    """
    The TCP port of the first C{frameserver listening on tcp} line in C{log}.

    @raise AssertionError: if there is none.
    """
    m = _LISTENING.search(log)
    if m is None:
        raise AssertionError("no listening line in the log:\n" + log)
    return int(m.group(2))


def stopDaemon(
    pidfile: str | os.PathLike[str],
    timeout: float = 10.0,
    stop: Callable[[], object] | None = None,
) -> None:
    """
    Stop the daemon whose process id is in C{pidfile} with C{SIGTERM}, as an
    operator would (or by calling C{stop}, e.g. to run a documented command
    that does), and wait until it has exited and twistd has removed the
    pidfile; C{SIGKILL} it if it does not exit in time.

    The daemon is not our child (twistd forks twice), so its exit is watched
    through a pidfd where the platform has one, else by polling.

    @raise AssertionError: if it did not exit within C{timeout} seconds, or
        left its pidfile behind.
    """
    pid = int(Path(pidfile).read_text())
    watch = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    try:
        if stop is None:
            os.kill(pid, signal.SIGTERM)
        else:
            stop()
        if not _exits(pid, watch, timeout):
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"daemon {pid} still running {timeout} s after SIGTERM")
    finally:
        if watch is not None:
            os.close(watch)
    if os.path.exists(pidfile):
        raise AssertionError(f"daemon {pid} exited but left {pidfile}")


def waitUntil(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """
    Wait until C{condition()} is true, checking it every 10 ms, for a state
    that no event announces (a file another process removes).

    @raise AssertionError: naming C{what}, if it is still false after
        C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(0.01)


def stopLeftoverDaemon(pidfile: str | os.PathLike[str]) -> None:
    """
    Stop the daemon named by C{pidfile}, if a failed test left one running;
    remove a stale pidfile (one whose process is gone).
    """
    if os.path.exists(pidfile):
        try:
            stopDaemon(pidfile)
        except ProcessLookupError:
            os.remove(pidfile)


def _exits(pid: int, watch: int | None, timeout: float) -> bool:
    if watch is not None:
        readable, _, _ = select.select([watch], [], [], timeout)
        return bool(readable)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False
