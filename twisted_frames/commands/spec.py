# -*- test-case-name: tests.commands.test_commands -*-
"""
Which commands a server allows: L{CommandSpec}, L{CommandLimits}, and the
C{--allow-command} and TOML C{--commands} file forms that make them.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CommandSpec:
    """
    One allowed command.

    @ivar name: what a client puts in C{argv[0]}.
    @ivar path: the absolute path executed.
    @ivar args: fixed leading arguments, placed before the client's.
    @ivar users: if not C{None}, only these logged-in users may run it (an
        anonymous caller is refused).
    @ivar timeout: this command's longest run, in seconds (overrides the
        server's maximum; also its default).
    @ivar maxOutput: this command's output cap in bytes (stdout + stderr).
    @ivar cwd: working directory relative to the root (default: the root).
    @ivar env: fixed extra environment variables.
    """

    name: str
    path: str
    args: tuple[str, ...] = ()
    users: frozenset[str] | None = None
    timeout: float | None = None
    maxOutput: int | None = None
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandLimits:
    """
    Server-wide limits of the command service.

    @ivar timeout: wall-clock seconds a run gets when the client asks for
        nothing.
    @ivar maxTimeout: the most a client may ask for.
    @ivar maxOutput: stdout + stderr bytes forwarded before the command is
        killed and its output marked truncated.
    @ivar maxProcsPerConnection: concurrent runs on one connection.
    @ivar maxProcs: concurrent runs on the whole server.
    @ivar killGrace: seconds between C{SIGTERM} (or the cancel signal) and
        C{SIGKILL}.
    """

    timeout: float = 60.0
    maxTimeout: float = 3600.0
    maxOutput: int = 1024 * 1024 * 1024
    maxProcsPerConnection: int = 4
    maxProcs: int = 32
    killGrace: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= self.maxTimeout:
            raise ValueError("the command timeout must be > 0 and at most the maximum timeout")
        if self.maxOutput < 0:
            raise ValueError("the output cap must not be negative")
        if self.maxProcsPerConnection < 1 or self.maxProcs < 1:
            raise ValueError("process caps must be at least 1")
        if self.killGrace < 0:
            raise ValueError("the kill grace period must not be negative")


def resolveCommand(name: str, searchPath: str | None = None) -> CommandSpec:
    """
    Resolve a C{--allow-command} name: a bare name is looked up on the
    server's C{PATH} (now, once); a name with a C{/} must be an executable
    file and is allowed under that exact name.

    @raise ValueError: if nothing executable is found.
    """
    if not name or "\0" in name:
        raise ValueError(f"bad command name {name!r}")
    found = shutil.which(name, path=searchPath)
    if found is None:
        raise ValueError(f"command {name!r} not found on the server's PATH (or not executable)")
    return CommandSpec(name=name, path=os.path.abspath(found))


def loadCommandsFile(path: str, searchPath: str | None = None) -> list[CommandSpec]:
    """
    Read a C{--commands} file: TOML (or JSON if the name ends in C{.json})
    with one table per command under C{commands}::

        [commands.backup]
        path = "/usr/local/bin/backup"   # default: the name on the PATH
        args = ["--quiet"]                # fixed leading arguments
        users = ["alice"]                 # only these logged-in users
        timeout = 600                     # seconds
        max-output = 10485760             # bytes
        cwd = "jobs"                      # relative to --root
        env = { MODE = "nightly" }

    @raise ValueError: with a message naming the file and the bad entry.
    """
    try:
        with open(path, "rb") as f:
            if path.endswith(".json"):
                data = json.load(f)
            else:
                data = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from e
    except (ValueError, tomllib.TOMLDecodeError) as e:
        kind = "JSON" if path.endswith(".json") else "TOML"
        raise ValueError(f"{path}: not valid {kind}: {e}") from e
    if not isinstance(data, dict) or set(data) - {"commands"}:
        raise ValueError(f"{path}: expected only a 'commands' table")
    table = data.get("commands", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: 'commands' must be a table of commands")
    return [_specFromTable(path, name, entry, searchPath) for name, entry in table.items()]


_SPEC_KEYS = {"path", "args", "users", "timeout", "max-output", "cwd", "env"}


def _specFromTable(source: str, name: str, entry: Any, searchPath: str | None) -> CommandSpec:
    where = f"{source}: command {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a table")
    unknown = set(entry) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_SPEC_KEYS)})")
    if "path" in entry:
        p = entry["path"]
        if not isinstance(p, str) or not os.path.isabs(p):
            raise ValueError(f"{where}: 'path' must be an absolute path")
        if not (os.path.isfile(p) and os.access(p, os.X_OK)):
            raise ValueError(f"{where}: {p} is not an executable file")
        spec = CommandSpec(name=name, path=p)
    else:
        try:
            spec = resolveCommand(name, searchPath)
        except ValueError as e:
            raise ValueError(f"{where}: {e}; give its 'path'") from None
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a for a in args):
        raise ValueError(f"{where}: 'args' must be a list of strings")
    users = entry.get("users")
    if users is not None and (
        not isinstance(users, list) or not all(isinstance(u, str) for u in users)
    ):
        raise ValueError(f"{where}: 'users' must be a list of user names")
    timeout = entry.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ValueError(f"{where}: 'timeout' must be a positive number of seconds")
    maxOutput = entry.get("max-output")
    if maxOutput is not None and (
        isinstance(maxOutput, bool) or not isinstance(maxOutput, int) or maxOutput < 0
    ):
        raise ValueError(f"{where}: 'max-output' must be a whole number of bytes")
    cwd = entry.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or os.path.isabs(cwd) or "\0" in cwd):
        raise ValueError(f"{where}: 'cwd' must be a path relative to the root")
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str)
        and isinstance(v, str)
        and k
        and "=" not in k
        and "\0" not in k
        and "\0" not in v
        for k, v in env.items()
    ):
        # A NUL would only fail later, at every run of the command.
        raise ValueError(f"{where}: 'env' must be a table of strings (no '=' in names, no NUL)")
    return CommandSpec(
        name=name,
        path=spec.path,
        args=tuple(args),
        users=frozenset(users) if users is not None else None,
        timeout=float(timeout) if timeout is not None else None,
        maxOutput=maxOutput,
        cwd=cwd,
        env=dict(env),
    )
