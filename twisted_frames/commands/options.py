# -*- test-case-name: tests.test_tap -*-
"""
The command service's C{twistd frameserver} options and how they configure
the service.
"""

from __future__ import annotations

from typing import Any

from ..bounds import bounded
from .spec import CommandLimits, CommandSpec, loadCommandsFile, resolveCommand

_DEFAULT_LIMITS = CommandLimits()

#: The command service's C{twistd frameserver} options (C{optParameters}
#: rows); C{--allow-command} and C{--commands} are defined in the tap.
commandOptionParameters: list[list[Any]] = [
    [
        "command-timeout",
        None,
        _DEFAULT_LIMITS.timeout,
        "Seconds a command may run when the client asks for no timeout.",
        bounded("--command-timeout", 0.001, kind=float, noun="a number"),
    ],
    [
        "command-max-timeout",
        None,
        _DEFAULT_LIMITS.maxTimeout,
        "Most seconds a client may ask a command to run.",
        bounded("--command-max-timeout", 0.001, kind=float, noun="a number"),
    ],
    [
        "max-output",
        None,
        _DEFAULT_LIMITS.maxOutput,
        "Output bytes (stdout + stderr) of one run before it is killed and truncated.",
        bounded("--max-output", 0, noun="a number"),
    ],
    [
        "max-procs-per-conn",
        None,
        _DEFAULT_LIMITS.maxProcsPerConnection,
        "Commands running at once on one connection.",
        bounded("--max-procs-per-conn", 1, noun="a number"),
    ],
    [
        "max-procs",
        None,
        _DEFAULT_LIMITS.maxProcs,
        "Commands running at once on the whole server.",
        bounded("--max-procs", 1, noun="a number"),
    ],
]


def configureCommands(config: Any) -> None:
    """
    Check the command options of parsed tap options, resolving every
    allowed command now; sets C{config["command-specs"]} and
    C{config["command-limits"]}.

    @raise usage.UsageError: on a command that cannot be found, a bad
        C{--commands} file, a name defined twice, or inconsistent limits.
    """
    from twisted.python.usage import UsageError

    specs: list[CommandSpec] = []
    try:
        for name in config.get("allow-command", []):
            specs.append(resolveCommand(name))
        if config.get("commands"):
            specs.extend(loadCommandsFile(config["commands"]))
        limits = CommandLimits(
            timeout=min(config["command-timeout"], config["command-max-timeout"]),
            maxTimeout=config["command-max-timeout"],
            maxOutput=config["max-output"],
            maxProcsPerConnection=config["max-procs-per-conn"],
            maxProcs=config["max-procs"],
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UsageError(
                f"command {spec.name!r} is allowed twice (--allow-command/--commands)"
            )
        seen.add(spec.name)
    config["command-specs"] = specs
    config["command-limits"] = limits
