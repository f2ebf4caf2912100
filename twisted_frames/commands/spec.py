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
from collections.abc import Callable, Mapping
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


def _isNumber(value: Any, kinds: type | tuple[type, ...] = (int, float)) -> bool:
    # TOML and JSON booleans are ints to Python; a limit of "true" is a mistake.
    return isinstance(value, kinds) and not isinstance(value, bool)


def _isEnv(value: Any) -> bool:
    # A NUL would only fail later, at every run of the command.
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and isinstance(v, str)
        and k
        and "=" not in k
        and "\0" not in k
        and "\0" not in v
        for k, v in value.items()
    )


@dataclass(frozen=True)
class _Field:
    """
    How one key of a C{--commands} table becomes an attribute of its
    L{CommandSpec}.

    @ivar attr: the attribute.
    @ivar valid: whether a value is acceptable.
    @ivar problem: what the error says a value must be.
    @ivar convert: turns an acceptable value into the attribute's.
    @ivar default: the value of a missing key; a key whose value is
        C{None} (JSON's C{null}) is missing too when this is C{None}.
    """

    attr: str
    valid: Callable[[Any], bool]
    problem: str
    convert: Callable[[Any], Any]
    default: Any = None


#: The keys of a command's table but C{path}, checked in this order.
_FIELDS = {
    "args": _Field(
        "args",
        lambda v: isinstance(v, list) and all(isinstance(a, str) and "\0" not in a for a in v),
        "'args' must be a list of strings",
        tuple,
        default=[],
    ),
    "users": _Field(
        "users",
        lambda v: isinstance(v, list) and all(isinstance(u, str) for u in v),
        "'users' must be a list of user names",
        frozenset,
    ),
    "timeout": _Field(
        "timeout",
        lambda v: _isNumber(v) and v > 0,
        "'timeout' must be a positive number of seconds",
        float,
    ),
    "max-output": _Field(
        "maxOutput",
        lambda v: _isNumber(v, int) and v >= 0,
        "'max-output' must be a whole number of bytes",
        int,
    ),
    "cwd": _Field(
        "cwd",
        lambda v: isinstance(v, str) and not os.path.isabs(v) and "\0" not in v,
        "'cwd' must be a path relative to the root",
        str,
    ),
    "env": _Field(
        "env",
        _isEnv,
        "'env' must be a table of strings (no '=' in names, no NUL)",
        dict,
        default={},
    ),
}
_SPEC_KEYS = {"path", *_FIELDS}


def _specFromTable(source: str, name: str, entry: Any, searchPath: str | None) -> CommandSpec:
    where = f"{source}: command {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a table")
    unknown = set(entry) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_SPEC_KEYS)})")
    values: dict[str, Any] = {"path": _pathOf(where, name, entry, searchPath)}
    for key, spec in _FIELDS.items():
        value = entry.get(key, spec.default)
        if value is None and spec.default is None:
            continue
        if not spec.valid(value):
            raise ValueError(f"{where}: {spec.problem}")
        values[spec.attr] = spec.convert(value)
    return CommandSpec(name=name, **values)


def _pathOf(where: str, name: str, entry: dict[str, Any], searchPath: str | None) -> str:
    """
    The program a command's table runs: its C{path}, which must be an
    executable file, or else its name looked up on the server's C{PATH}.
    """
    path = entry.get("path")
    if "path" not in entry:
        try:
            return resolveCommand(name, searchPath).path
        except ValueError as e:
            raise ValueError(f"{where}: {e}; give its 'path'") from None
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError(f"{where}: 'path' must be an absolute path")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError(f"{where}: {path} is not an executable file")
    return path
