# -*- test-case-name: tests.test_commands_process -*-
"""
Process plumbing for the command service: the scrubbed environment, the
launchers that put a command in its own session and directory, process-group
signals, and the output pipes and stdin sink that carry backpressure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping

#: The C{PATH} commands see.  The server's own C{PATH} is used only at
#: start-up, to resolve C{--allow-command} names to absolute paths.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Variables copied from the server's environment when set; everything else
#: is dropped (no secrets, no C{LD_PRELOAD}, no C{PYTHONPATH}).
ENV_ALLOWLIST = ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "TZ")


def scrubbedEnvironment(
    environ: Mapping[str, str], home: str, extra: Mapping[str, str] = {}
) -> dict[str, str]:
    """
    The environment a command gets: a safe C{PATH}, C{HOME} set to the root,
    the allow-listed locale and time-zone variables, then the command's
    own fixed variables.
    """
    env = {k: environ[k] for k in ENV_ALLOWLIST if k in environ}
    env["PATH"] = SAFE_PATH
    env["HOME"] = home
    env.update(extra)
    return env


def sessionLauncher() -> list[str]:
    """
    The argv prefix that makes a command the leader of a new session, so
    that it and everything it starts can be signalled as one process group.
    Twisted's C{spawnProcess} has no such option: util-linux C{setsid}
    calls C{setsid()} and execs in place (no extra fork, since the child is
    not a group leader); without it, a small Python trampoline does the same.
    """
    found = shutil.which("setsid")
    if found is not None:
        return [found]
    return [sys.executable, "-c", "import os,sys;os.setsid();os.execv(sys.argv[1],sys.argv[1:])"]


def chdirLauncher() -> list[str] | None:
    """
    The argv prefix (C{env -C}) that changes directory before exec, or
    C{None} where C{env} cannot.

    Why: Twisted's C{spawnProcess} uses C{posix_spawnp} only when no working
    directory is given; with one it forks the whole server process and sets
    the child up in Python, which costs several milliseconds per command.
    C{env -C DIR} (coreutils 8.28+) changes directory in the child instead.
    """
    found = shutil.which("env")
    if found is None or "=" in found:
        return None
    try:
        probe = subprocess.run(
            [found, "-C", "/", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [found, "-C"] if probe.returncode == 0 else None


def _killGroup(pgid: int, signum: int) -> None:
    os.killpg(pgid, signum)


def _signalName(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


#: The signature of L{_killGroup}, which tests replace.
KillGroup = Callable[[int, int], None]
