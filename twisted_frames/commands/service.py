# -*- test-case-name: tests.commands.test_commands -*-
"""
The command service: run commands the server allows, never through a shell.

Ops (see C{docs/commands.md} for the wire reference):

  - C{run}: C{argv} names an allowed command and its arguments, as a list.
    The request body is the start of the command's stdin.  Replies: one
    C{started} event, C{stdout}/C{stderr} events as output arrives (each
    body a chunk, in order within its stream), then a final reply with the
    exit code or signal, the elapsed time and whether the run timed out,
    was cancelled or had its output truncated.
  - C{stdin}: more stdin for a run started with C{"stdin": "stream"}; the
    body is the chunk, C{"eof": true} closes it.  The reply (an
    acknowledgement) is sent once the chunk has gone into the pipe, so a
    client that keeps a few chunks in flight never makes the server buffer
    more than that, and the connection stays free to carry a C{cancel}.
  - C{cancel}: signal a run's whole process group, then kill it after a
    grace period.

Every command runs through C{reactor.spawnProcess} in its own session
(hence its own process group) via C{setsid}, with a scrubbed environment and
a working directory confined to the server's root; a wall-clock timeout,
output cap, client disconnect, cancel or server shutdown kill the whole
group (C{SIGTERM}, then C{SIGKILL} after L{CommandLimits.killGrace}).
Output is forwarded with backpressure: while a chunk cannot be handed to the
connection's transport, the process's pipes are not read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.application.service import Service as ApplicationService
from twisted.internet import defer
from twisted.logger import Logger

from ..fields import Argv, Choice, Count, Field, Flag, Seconds, Text
from ..protocol import BodySink
from ..server import Request, ServerProtocol, Service, operation, shuttingDownError
from ..wire import ErrorCode, FramesError, RequestId
from .process import (
    CANCEL_SIGNALS,
    MAX_STDIN_CHUNK,
    KillGroup,
    RunningCommand,
    _killGroup,
    _openOutputPipe,
    _OutputPipe,
    _StdinSink,
    chdirLauncher,
    scrubbedEnvironment,
    sessionLauncher,
)
from .spec import CommandLimits, CommandSpec

log = Logger(namespace="twisted_frames.commands")


#: The fields of C{run}.
RUN_FIELDS: dict[str, Field] = {
    "argv": Argv("non-empty, no NUL; `argv[0]` is an allowed name"),
    "stdin": Choice(
        ("close", "stream"),
        "`close`: the body is all of stdin, which is closed after it. `stream`: more stdin "
        "follows in `stdin` messages",
        default="close",
        message="'stdin' must be 'close' or 'stream'",
    ),
    "timeout": Seconds(
        "wall-clock seconds; at most the command's (or server's) maximum",
        default=None,
        nullable=True,
        defaultDoc="the server's `--command-timeout` (or the command's `timeout`)",
    ),
    "maxOutput": Count(
        "ask for a lower output cap than the server's",
        default=None,
        nullable=True,
        message="{name!r} must be a whole number of bytes",
        defaultDoc="the cap that applies",
    ),
    "cwd": Text(
        "working directory relative to the root",
        nullable=True,
        message="'cwd' must be a relative path",
        defaultDoc="the command's `cwd`, or the root",
    ),
}


def _hashable(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


class CommandService(Service, ApplicationService):
    """
    The C{run}, C{stdin} and C{cancel} ops, and (as a Twisted service) the
    owner of every process they start: stopping it kills them all.

    @ivar commands: allowed command name to L{CommandSpec}.
    """

    def __init__(
        self,
        reactor: Any,
        root: str,
        commands: Iterable[CommandSpec] = (),
        limits: CommandLimits | None = None,
        environ: Mapping[str, str] | None = None,
        killGroup: KillGroup = _killGroup,
        launcher: list[str] | None = None,
        outputPipes: bool = True,
    ) -> None:
        self.reactor = reactor
        self.root = os.path.realpath(root)
        self.commands: dict[str, CommandSpec] = {}
        for spec in commands:
            if spec.name in self.commands:
                raise ValueError(f"command {spec.name!r} is defined twice")
            self.commands[spec.name] = spec
        self.limits = limits or CommandLimits()
        self.environ = dict(os.environ if environ is None else environ)
        self.killGroup = killGroup
        self.launcher = sessionLauncher() if launcher is None else launcher
        # Only with the default launcher: env would read a leading NAME=VALUE
        # argument as an assignment, and ours never has one.
        self.chdir = chdirLauncher() if launcher is None else None
        self.outputPipes = outputPipes
        self.runs: dict[ServerProtocol, dict[RequestId, RunningCommand]] = {}
        self.ended: list[RunningCommand] = []
        self.count = 0
        self.stopping = False

    # -- ops ------------------------------------------------------------------

    @operation("run", body="stream", fields=RUN_FIELDS)
    def opRun(self, request: Request) -> BodySink:
        """
        Start an allowed command; its stdin is the request body (and, with
        C{"stdin": "stream"}, the C{stdin} messages that follow).
        """
        fields = request.fields
        argv = fields["argv"]
        spec = self.commands.get(argv[0])
        if spec is None:
            log.warn(
                "refused command {name!r} from {peer} (user {user}): not allowed",
                name=argv[0],
                peer=request.connection.peerName(),
                user=request.user or "-",
            )
            raise FramesError(
                ErrorCode.COMMAND_NOT_ALLOWED,
                f"command {argv[0]!r} is not allowed on this server",
                command=argv[0],
            )
        self._checkUser(request, spec)
        timeout = self._timeoutFor(fields["timeout"], spec)
        limit = spec.maxOutput if spec.maxOutput is not None else self.limits.maxOutput
        maxOutput = limit if fields["maxOutput"] is None else min(fields["maxOutput"], limit)
        cwd = self._cwdFor(fields.get("cwd", spec.cwd))
        self._checkRoom(request)
        run = RunningCommand(self, request, spec, argv, timeout, maxOutput)
        run.started = self.reactor.seconds()
        command = [*self.launcher, spec.path, *spec.args, *argv[1:]]
        env = scrubbedEnvironment(self.environ, self.root, spec.env)
        try:
            self._spawn(run, command, env, cwd)
        except OSError as e:
            log.warn("cannot start {name}: {e}", name=spec.name, e=e)
            raise FramesError(
                ErrorCode.IO_ERROR, f"cannot start {spec.name!r}: {e.strerror or e}"
            ) from e
        self.runs.setdefault(request.connection, {})[request.id] = run
        self.count += 1
        if request.connection.factory.metrics is not None:
            request.connection.factory.metrics.commandStarted()
        run.startTimer()
        log.info(
            "run id={rid} {name} pid={pid} argc={argc} for {peer} (user {user})",
            rid=request.id,
            name=spec.name,
            pid=run.pid,
            argc=len(argv),
            peer=request.connection.peerName(),
            user=request.user or "-",
        )
        request.event("started", {"pid": run.pid, "timeout": timeout, "maxOutput": maxOutput})
        run.setReady()
        if fields["stdin"] == "close":
            return _StdinSink(run, request.connection, run.closeStdin)
        return _StdinSink(run, request.connection, lambda: None)

    @operation(
        "stdin",
        body="stream",
        maxBody=MAX_STDIN_CHUNK,
        fields={
            "run": Field("the `run` request's id", typeName="int or string"),
            "eof": Flag("true closes stdin after this body", default=False),
        },
    )
    def opStdin(self, request: Request) -> BodySink:
        """
        More stdin for a run started with C{"stdin": "stream"}; acknowledged
        once the chunk is in the pipe.
        """
        run = self._findRun(request)
        if request.bodyLength > MAX_STDIN_CHUNK:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"a stdin chunk is at most {MAX_STDIN_CHUNK} bytes ({request.bodyLength} sent)",
            )
        eof = request.fields["eof"]

        def acknowledge() -> None:
            if not request.finished:
                request.reply({"run": run.request.id, "closed": not run.stdinOpen})

        def finished() -> None:
            if eof:
                run.closeStdin()
                acknowledge()
            else:
                run.whenStdinDrained(acknowledge)

        return _StdinSink(run, request.connection, finished)

    @operation("cancel")
    def opCancel(self, request: Request) -> dict[str, Any]:
        """
        Signal a run's process group (C{SIGTERM} unless C{signal} names
        another), then kill it after the grace period.
        """
        run = self._findRun(request)
        name = request.header.get("signal", "SIGTERM")
        if isinstance(name, str) and not name.startswith("SIG"):
            name = "SIG" + name
        if not isinstance(name, str) or name.upper() not in CANCEL_SIGNALS:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"'signal' must be one of {sorted(CANCEL_SIGNALS)}",
            )
        name = name.upper()
        log.info(
            "run id={rid} {cmd}: cancelled with {sig}",
            rid=run.request.id,
            cmd=run.spec.name,
            sig=name,
        )
        run.cancel(CANCEL_SIGNALS[name])
        return {"run": run.request.id, "signal": name}

    def _spawn(
        self, run: RunningCommand, command: list[str], env: dict[str, str], cwd: str
    ) -> Any:
        path: str | None = cwd
        if self.chdir is not None:
            command = [*self.chdir, cwd, *command]
            path = None
        if not self.outputPipes:
            return self.reactor.spawnProcess(run, command[0], command, env=env, path=path)
        outRead, outWrite = _openOutputPipe()
        errRead, errWrite = _openOutputPipe()
        try:
            transport = self.reactor.spawnProcess(
                run,
                command[0],
                command,
                env=env,
                path=path,
                childFDs={0: "w", 1: outWrite, 2: errWrite},
            )
        except BaseException:
            os.close(outRead)
            os.close(errRead)
            raise
        finally:
            # Only the child may hold the write ends, or EOF never comes.
            os.close(outWrite)
            os.close(errWrite)
        run.attachOutput(
            [
                _OutputPipe(self.reactor, outRead, run, 1),
                _OutputPipe(self.reactor, errRead, run, 2),
            ]
        )
        return transport

    # -- request checks ---------------------------------------------------------

    def _findRun(self, request: Request) -> RunningCommand:
        rid = request.header.get("run")
        run = (
            self.runs.get(request.connection, {}).get(rid) if isinstance(rid, int | str) else None
        )
        if run is None:
            raise FramesError(
                ErrorCode.NOT_FOUND,
                f"no running command with request id {rid!r} on this connection",
                run=rid if _hashable(rid) else None,
            )
        return run

    def _checkUser(self, request: Request, spec: CommandSpec) -> None:
        if spec.users is None:
            return
        if request.user is None:
            log.warn(
                "refused command {name!r} from {peer}: restricted to users, caller anonymous",
                name=spec.name,
                peer=request.connection.peerName(),
            )
            raise FramesError(
                ErrorCode.AUTH_REQUIRED, f"command {spec.name!r} needs a logged-in user"
            )
        if request.user not in spec.users:
            log.warn(
                "refused command {name!r} from {peer}: user {user} not allowed",
                name=spec.name,
                peer=request.connection.peerName(),
                user=request.user,
            )
            raise FramesError(
                ErrorCode.COMMAND_NOT_ALLOWED,
                f"user {request.user!r} may not run {spec.name!r}",
                command=spec.name,
            )

    def _checkRoom(self, request: Request) -> None:
        """
        @raise FramesError: if no more commands may start (the server is
            stopping, or the connection or the server runs its maximum).
        """
        if self.stopping:
            raise shuttingDownError()
        mine = self.runs.get(request.connection, {})
        if len(mine) >= self.limits.maxProcsPerConnection:
            raise FramesError(
                ErrorCode.BUSY,
                f"at most {self.limits.maxProcsPerConnection} commands may run per connection",
            )
        if self.count >= self.limits.maxProcs:
            raise FramesError(
                ErrorCode.BUSY, f"the server is running its maximum of {self.limits.maxProcs}"
            )

    def _timeoutFor(self, asked: float | None, spec: CommandSpec) -> float:
        # The type is checked by the declaration; the bound is the spec's.
        limit = spec.timeout if spec.timeout is not None else self.limits.maxTimeout
        if asked is None:
            return min(self.limits.timeout, limit)
        if asked > limit:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT,
                f"'timeout' may be at most {limit:g} s for {spec.name!r}",
                maxTimeout=limit,
            )
        return asked

    def _cwdFor(self, relative: str | None) -> str:
        # A string without NUL (the declaration); confined to the root here.
        if relative is None:
            return self.root
        if os.path.isabs(relative):
            raise FramesError(
                ErrorCode.FORBIDDEN_PATH, "'cwd' must be relative to the server's root"
            )
        resolved = os.path.realpath(os.path.join(self.root, relative))
        if os.path.commonpath([resolved, self.root]) != self.root:
            raise FramesError(
                ErrorCode.FORBIDDEN_PATH, f"'cwd' {relative!r} leads outside the root"
            )
        if not os.path.exists(resolved):
            raise FramesError(ErrorCode.NOT_FOUND, f"'cwd' {relative!r} does not exist")
        if not os.path.isdir(resolved):
            raise FramesError(ErrorCode.NOT_A_DIRECTORY, f"'cwd' {relative!r} is not a directory")
        return resolved

    # -- lifetime ------------------------------------------------------------

    def runEnded(self, run: RunningCommand) -> None:
        """
        Forget a finished run.
        """
        mine = self.runs.get(run.request.connection)
        if mine is not None and mine.get(run.request.id) is run:
            del mine[run.request.id]
            self.count -= 1
            if not mine:
                del self.runs[run.request.connection]
        if run.killPending:
            self.ended = [r for r in self.ended if r.killPending]
            self.ended.append(run)

    def connectionLost(self, connection: ServerProtocol) -> None:
        """
        Kill the process groups of every run of a lost connection.
        """
        for run in list(self.runs.get(connection, {}).values()):
            run.clientGone()

    def stopService(self) -> defer.Deferred[None]:
        """
        Refuse new runs, kill every process group, and fire once all have
        ended.
        """
        ApplicationService.stopService(self)  # type: ignore[no-untyped-call]
        self.stopping = True
        runs = [run for mine in self.runs.values() for run in mine.values()]
        for run in runs:
            run.shutDown()
        d = defer.DeferredList([run.ended for run in runs], consumeErrors=True)

        def killLeftovers(_: object) -> None:
            # Background jobs of finished runs still within their grace
            # period: the server is going, so they go now.
            for run in self.lingering():
                run.killNow()

        return d.addCallback(killLeftovers)

    def lingering(self) -> list[RunningCommand]:
        """
        Finished runs whose process group still has a C{SIGKILL} pending.
        """
        self.ended = [run for run in self.ended if run.killPending]
        return list(self.ended)
