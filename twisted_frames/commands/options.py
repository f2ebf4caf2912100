# -*- test-case-name: tests.test_tap -*-
"""
The command service's C{twistd frameserver} options, their checks, and the
service built from them (its entry in L{twisted_frames.tap.SERVICES}).
"""

from __future__ import annotations

import os
from typing import Any

from ..bounds import bounded
from ..services import Built, ServiceEntry
from .spec import CommandLimits, CommandSpec, loadCommandsFile, resolveCommand

_DEFAULT_LIMITS = CommandLimits()

#: The command service's C{twistd frameserver} options (C{optParameters}
#: rows) but C{--allow-command}, a method of L{CommandOptions}.
commandOptionParameters: list[list[Any]] = [
    ["commands", None, None, "TOML (or .json) file of allowed commands and their limits."],
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


class CommandOptions:
    """
    The command service's options, as a mix-in for C{usage.Options}.
    """

    optParameters = commandOptionParameters

    def opt_allow_command(self, name: str) -> None:
        """
        Allow a command (repeatable): a name resolved on the server's PATH
        now, or an absolute path; clients may give it any arguments.
        """
        self.setdefault("allow-command", []).append(name)  # type: ignore[attr-defined]


def checkCommands(config: Any) -> None:
    """
    L{configureCommands}, then the checks that tie commands to the rest of
    the server: the shutdown grace must outlast the kill grace, and
    commands off loopback need a login.

    @raise usage.UsageError: on any problem.
    """
    from twisted.python.usage import UsageError

    configureCommands(config)
    killGrace = config["command-limits"].killGrace
    if config["command-specs"] and config["shutdown-grace"] <= killGrace:
        # A command that ignores SIGTERM is killed killGrace seconds into
        # the shutdown; its final reply must still fit in the grace.
        raise UsageError(
            f"--shutdown-grace must be larger than the command kill grace "
            f"({killGrace:g} s) when commands are allowed, not {config['shutdown-grace']}"
        )
    if config["command-specs"] and not config["localOnly"] and config["usersFile"] is None:
        # Running programs for anyone who can reach the port is never a
        # default, not even with the insecure flag: commands need a login.
        raise UsageError(
            "the command service needs --users when listening off loopback "
            "(commands are never run for anonymous remote peers)"
        )


def buildCommands(config: Any, reactor: Any) -> Built:
    """
    The command service, confined to C{--root}; it is also a twistd service
    of the server, which stops its process groups when the server stops.
    """
    from .service import CommandService

    commands = CommandService(
        reactor, os.path.abspath(config["root"]), config["command-specs"], config["command-limits"]
    )
    return Built(services=[commands], children=[commands])


COMMANDS = ServiceEntry("commands", CommandOptions, buildCommands, checkCommands)
