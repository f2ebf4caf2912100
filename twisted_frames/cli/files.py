# -*- test-case-name: tests.cli.test_files -*-
"""
The file commands of the C{frames} client: C{ls}, C{stat}, C{put}, C{get},
C{rm}, C{mkdir}::

    frames put big.iso isos/          # into a remote directory
    frames get --resume isos/big.iso  # continue an interrupted download
    frames put -r photos backup/photos
    tar c . | frames put - backup.tar
    frames put --hash sha256 big.iso  # verify with SHA-256, not BLAKE3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..printable import printable
from ..wire import ErrorCode, FramesError
from .base import (
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_USAGE,
    UI,
    interruptionOf,
    openClient,
    resumeCommand,
    shellQuote,
)
from .progress import TransferBar, humanSize, transferRate

# The client library is imported by each command as it runs, not when the
# parser is built: it (and the server-side constants it shares) would slow
# down every start of frames.
if TYPE_CHECKING:
    from ..files.client import FileClient
    from ..files.local import LocalError
    from ..files.tree import TreeResult


def register(sub: Any) -> None:
    """
    Add the file subcommands to the C{frames} parser.
    """
    p = sub.add_parser("ls", help="list a remote directory")
    p.add_argument("path", nargs="?", default="", metavar="DIR", help="default: the root")
    p.set_defaults(run=_ls)

    p = sub.add_parser("stat", help="show a remote path's type, size and mtime")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=_stat)

    p = sub.add_parser(
        "rm",
        help="remove a remote file, link or empty directory, and the partial upload to it"
        " (an upload in progress is cancelled)",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(run=_rm)

    p = sub.add_parser("mkdir", help="create a remote directory and its parents (like mkdir -p)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(run=_mkdir)

    p = sub.add_parser("put", help="upload a file ('-' reads stdin) or, with -r, a directory")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("remote", nargs="?", default=None, metavar="REMOTE")
    _transferFlags(p)
    p.set_defaults(run=_put)

    p = sub.add_parser("get", help="download a file ('-' writes stdout) or, with -r, a directory")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("local", nargs="?", default=None, metavar="LOCAL")
    _transferFlags(p)
    p.set_defaults(run=_get)


#: The transfer hashes C{--hash} takes: the keys of
#: L{twisted_frames.files.blocking.HASHES}, written out so that building the
#: parser imports no hashing (a test keeps the two the same).
HASH_NAMES = ("blake3", "sha256")


def _transferFlags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-r", "--recursive", action="store_true", help="transfer a directory tree")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted transfer (still verified); with -r, into the same"
        " place, skipping files already complete (same size)",
    )
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--hash",
        choices=HASH_NAMES,
        default=None,
        metavar="NAME",
        help="verify with this hash (blake3 or sha256); default: the fastest the server"
        " has too (blake3, else sha256)",
    )


def _during(
    args: argparse.Namespace,
    what: str,
    resume: list[str] | None = None,
    partial: str | None = None,
    kept: Callable[[], tuple[str, dict[str, Any]] | None] | None = None,
) -> None:
    """
    Say what a transfer does, for the line printed if it is interrupted:
    C{resume} are the C{put}/C{get} arguments that continue it (with
    C{--resume}, and C{-f}/C{-q} as given).
    """
    interruption = interruptionOf(args)
    if interruption is None:
        return
    interruption.during(what, None if resume is None else _resumeArgs(args, resume), partial, kept)


def _resumeArgs(args: argparse.Namespace, command: list[str]) -> list[str]:
    """
    The C{put}/C{get} arguments C{command} with C{--resume}, and C{-f}/C{-q}
    and C{--hash} as given.
    """
    flags = [flag for flag, given in (("-f", args.force), ("-q", args.quiet)) if given]
    if args.hash is not None:
        flags += ["--hash", args.hash]
    return [command[0], "--resume", *flags, *command[1:]]


class _StreamedUpload:
    """
    How much of an upload from stdin was sent and acknowledged, to say what
    the server keeps of it (a partial that cannot be resumed) if it is cut
    short, and the command that removes it.
    """

    def __init__(self, args: argparse.Namespace, remote: str) -> None:
        self.args = args
        self.remote = remote
        self.sent = 0
        self.acknowledged = 0

    def onSent(self, n: int) -> None:
        self.sent += n

    def onAcknowledged(self, n: int) -> None:
        self.acknowledged += n

    def kept(self) -> tuple[str, dict[str, Any]] | None:
        """
        The clause of the interruption's line: what the server keeps and
        how to give it back (C{None} if nothing was sent).
        """
        if not self.sent:
            return None
        if self.sent == self.acknowledged:
            what = f"the server keeps the {self.acknowledged} bytes that arrived"
        else:
            what = (
                f"the server keeps what arrived of the {self.sent} bytes sent "
                f"({self.acknowledged} acknowledged)"
            )
        argv = resumeCommand(self.args, ["rm", self.remote])
        data = {"path": self.remote, "sent": self.sent, "acknowledged": self.acknowledged}
        return (
            f"{what}; remove them with: {' '.join(shellQuote(a) for a in argv)}",
            {**data, "remove": argv},
        )


def _shuttingDown(ui: UI, args: argparse.Namespace, e: FramesError, command: list[str]) -> int:
    """
    Report a transfer of one file or a tree cut short by the server's
    shutdown with the command that resumes it (the server keeps an upload's
    partial, the client a download's).
    """
    argv = resumeCommand(args, _resumeArgs(args, command))
    line = f"{args.command}: {printable(e.message)} [{e.code}]; resume with: "
    line += " ".join(shellQuote(a) for a in argv)
    ui.error(line, {**e.toJSON(), "resume": argv}, escaped=True)
    return EXIT_REMOTE


def _stdioFlags(args: argparse.Namespace) -> str:
    """
    The flags given that a transfer from stdin or to stdout cannot take,
    named as given: C{"-r does not apply"}, C{"-r and --resume do not apply"}.
    """
    flags = [flag for flag, given in (("-r", args.recursive), ("--resume", args.resume)) if given]
    return f"{' and '.join(flags)} {'do' if len(flags) > 1 else 'does'} not apply"


def _remote(path: str) -> str:
    """
    Normalise a remote path typed by a user: C{./a//b/} becomes C{a/b}.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/"):
        # Keep it absolute so that the server explains why it is refused.
        return "/" + "/".join(parts)
    return "/".join(parts)


async def _ls(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    from ..files.client import FileClient

    client = await openClient(reactor, args)
    try:
        files = FileClient(client)
        path = _remote(args.path)
        reportListing(ui, await files.list(path))
        return EXIT_OK
    finally:
        await client.close()


def reportListing(ui: UI, entries: list[dict[str, Any]]) -> None:
    """
    Print what C{frames ls} prints: a line (or with C{--json} an object)
    per entry of a C{list} reply.
    """
    for e in entries:
        mark = {"directory": "/", "symlink": "@"}.get(e["type"], "")
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["mtime"]))
        ui.result(f"{e['type'][0]} {e['size']:>12} {stamp}  {printable(e['name'])}{mark}", e)


async def _stat(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    from ..files.client import FileClient

    client = await openClient(reactor, args)
    try:
        reportStat(ui, await FileClient(client).stat(_remote(args.path)))
        return EXIT_OK
    finally:
        await client.close()


def reportStat(ui: UI, info: dict[str, Any]) -> None:
    """
    Print what C{frames stat} prints for the header of a C{stat} reply.
    """
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["mtime"]))
    text = (
        f"{printable(info['path']) or '/'}: {info['type']}, {info['size']} bytes, "
        f"mode {info['mode']:o}, modified {stamp}"
    )
    if info.get("partial"):
        text += f" (an interrupted upload holds {info['partial']} bytes)"
    ui.result(text, {k: v for k, v in info.items() if k not in ("id",)})


async def _eachPath(
    reactor: Any,
    args: argparse.Namespace,
    ui: UI,
    op: str,
    action: Callable[[FileClient, str], Awaitable[dict[str, Any]]],
    describe: Callable[[dict[str, Any]], str],
) -> int:
    """
    Apply one remote operation to every path given, reporting each result
    or error; the exit status says whether any failed.
    """
    from ..files.client import FileClient

    client = await openClient(reactor, args)
    code = EXIT_OK
    try:
        files = FileClient(client)
        for path in args.paths:
            try:
                done = await action(files, _remote(path))
            except FramesError as e:
                reportPathFailed(ui, op, e)
                code = EXIT_REMOTE
                continue
            reportPathDone(ui, done, describe)
        return code
    finally:
        await client.close()


def reportPathFailed(ui: UI, op: str, error: FramesError) -> None:
    """
    Print the error line of one path of C{frames rm} or C{frames mkdir}.
    """
    ui.error(f"{op}: {error.message} [{error.code}]", error.toJSON())


def reportPathDone(
    ui: UI, done: dict[str, Any], describe: Callable[[dict[str, Any]], str]
) -> None:
    """
    Print the result of one path of C{frames rm} or C{frames mkdir}:
    C{describe(header)} for people, the reply's header with C{--json}.
    """
    # The line shows the path escaped; the JSON has it exact.
    shown = {**done, "path": printable(str(done.get("path")))}
    ui.result(describe(shown), _clean(done))


async def _rm(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    return await _eachPath(
        reactor,
        args,
        ui,
        "rm",
        lambda files, path: files.delete(path),
        _removed,
    )


def _removed(done: dict[str, Any]) -> str:
    """
    The line C{rm} prints for one path: what was removed, and the partial
    upload to it that went too (interrupted, or in progress and cancelled).
    """
    path, kind = done["path"], done["type"]
    if "partial" not in done:
        return f"removed {kind} {path}"
    size = done["partial"]
    if kind == "partial":
        if done.get("cancelled"):
            return f"cancelled the upload in progress to {path} ({size} bytes received)"
        return f"removed the interrupted upload to {path} ({size} bytes)"
    if done.get("cancelled"):
        return (
            f"removed {kind} {path}, and cancelled the upload in progress to it "
            f"({size} bytes received)"
        )
    return f"removed {kind} {path}, and the interrupted upload to it ({size} bytes)"


async def _mkdir(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    return await _eachPath(
        reactor,
        args,
        ui,
        "mkdir",
        lambda files, path: files.mkdir(path, parents=True),
        describeMkdir,
    )


def describeMkdir(done: dict[str, Any]) -> str:
    """
    The line C{mkdir} prints for one path.
    """
    return f"{'created' if done['created'] else 'exists:'} {done['path']}"


def _clean(header: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in header.items() if k != "id"}
    out["ok"] = True
    return out


def _reportFile(
    ui: UI,
    op: str,
    source: str,
    destination: str,
    result: dict[str, Any],
    started: float,
    extra: dict[str, Any],
) -> int:
    """
    Report one file copied by C{op} (put or get), verified; C{extra} goes
    into the JSON result beside the server's fields.
    """
    took = time.monotonic() - started
    size = int(result.get("size", 0))
    resumed = result.get("resumed_from", 0)
    ui.result(
        f"{op} {printable(source)} -> {printable(destination)}: {humanSize(size)} in {took:.2f} s "
        f"({transferRate(size - resumed, took)}), {result['hash']} {result['digest']} verified"
        + (f", resumed from byte {resumed}" if resumed else ""),
        {**_clean(result), **extra, "seconds": took},
    )
    return EXIT_OK


def _reportTree(ui: UI, op: str, result: TreeResult, started: float) -> int:
    for path, kind in result.skipped:
        ui.error(
            f"{op}: skipped {path}: {kind} (only files and directories are copied)",
            {"code": "skipped", "path": path, "type": kind},
        )
    for path, e in result.errors:
        if isinstance(e, FramesError):
            e = _flagHint(e)
        code = getattr(e, "code", ErrorCode.IO_ERROR)
        message = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
        # Most messages start with the path they are about: name it once.
        line = message if message.startswith(f"{path}: ") else f"{path}: {message}"
        ui.error(f"{op}: {line} [{code}]", {"code": code, "message": message, "path": path})
    total = sum(int(f.get("size", 0)) for f in result.files)
    took = time.monotonic() - started
    complete = f", {len(result.complete)} already complete" if result.complete else ""
    ui.result(
        f"{op}: {len(result.files)} files, {humanSize(total)} in {took:.2f} s "
        f"({transferRate(total, took)}){complete}, {len(result.skipped)} skipped, "
        f"{len(result.errors)} failed",
        {
            "ok": not result.errors,
            "summary": True,
            "files": len(result.files),
            "complete": len(result.complete),
            "bytes": total,
            "skipped": len(result.skipped),
            "failed": len(result.errors),
            "seconds": took,
        },
    )
    return EXIT_REMOTE if result.errors else EXIT_OK


def _fileDone(ui: UI, op: str, started: float) -> Callable[[str, dict[str, Any]], None]:
    def done(source: str, result: dict[str, Any]) -> None:
        took = time.monotonic() - started
        target = str(result.get("local", result.get("path")))
        ui.result(
            f"{op} {printable(source)} -> {printable(target)}: "
            f"{humanSize(int(result.get('size', 0)))}, "
            f"{result.get('hash')} {result.get('digest')}",
            {**_clean(result), "source": source, "seconds": took},
        )

    return done


async def _put(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    from ..files.client import FileClient, LocalError

    local = args.local
    refused = checkPutSource(ui, args)
    if refused is not None:
        return refused
    if local == "-" or args.recursive:
        # From a pipe nothing can be resumed (what the server keeps is said
        # once bytes are sent); a tree's resume command needs its remote
        # directory, resolved below.
        _during(args, f"put {'-r ' * args.recursive}{local}")
    else:
        given = [] if args.remote is None else [args.remote]
        _during(args, f"put {local}", ["put", local, *given])
    client = await openClient(reactor, args)
    files = FileClient(client, hash=args.hash)
    bar: TransferBar | None = None
    # The put/get arguments that resume the transfer under way, for the
    # server's shutdown.
    resumable: list[str] | None = None
    started = time.monotonic()
    try:
        base, remote = putTarget(args)
        if args.remote is not None and local != "-" and not (args.recursive and args.resume):
            # A resumed tree continues in REMOTE itself: the first run
            # resolved it, and its resume command names the result.
            remote = await _intoRemoteDir(files, args.remote, remote, base)
        if local == "-":
            bar = TransferBar(args, None, remote)
            return await _putStdin(files, args, ui, remote, bar, started)
        if args.recursive:
            resumable = ["put", "-r", local, remote]
            _during(args, f"put -r {local}", resumable)
            bar = TransferBar(args, None, remote)
            tree = await files.putTree(
                local, remote, args.force, args.resume, _fileDone(ui, "put", started), bar
            )
            bar.close()
            return _reportTree(ui, "put", tree, started)
        resumable = ["put", local, remote]
        _during(args, f"put {local}", resumable)
        bar = TransferBar(args, os.path.getsize(local), remote)
        result = await files.putFile(local, remote, args.force, args.resume, bar)
        bar.close()
        return _reportFile(ui, "put", local, result["path"], result, started, {"local": local})
    except LocalError as e:
        return reportLocalError(ui, "put", e)
    except FramesError as e:
        if resumable is not None and e.code == ErrorCode.SHUTTING_DOWN:
            return _shuttingDown(ui, args, e, resumable)
        raise _flagHint(e) from None
    finally:
        if bar is not None:
            bar.close()
        await client.close()


def checkPutSource(ui: UI, args: argparse.Namespace) -> int | None:
    """
    The checks of C{frames put}'s LOCAL made before connecting: REMOTE and
    no C{-r}/C{--resume} with stdin, a local path that exists, a directory
    only with C{-r}.

    @return: the exit status of a refusal (reported), or C{None}.
    """
    local = args.local
    if local == "-":
        if args.remote is None:
            ui.error("put: REMOTE is required when reading stdin", {"code": "usage"})
            return EXIT_USAGE
        if args.recursive or args.resume:
            ui.error(f"put: {_stdioFlags(args)} to stdin", {"code": "usage"})
            return EXIT_USAGE
    elif not os.path.lexists(local):
        ui.error(f"put: {local}: no such file or directory", {"code": "not_found"})
        return EXIT_REMOTE
    elif os.path.isdir(local) and not args.recursive:
        ui.error(f"put: {local} is a directory (use -r)", {"code": "is_a_directory"})
        return EXIT_USAGE
    return None


def putTarget(args: argparse.Namespace) -> tuple[str, str]:
    """
    The last segment of C{frames put}'s LOCAL, and the remote path before
    L{intoRemoteDir}: REMOTE normalised, or that segment if none is given.
    """
    base = os.path.basename(os.path.normpath(args.local))
    remote = _remote(args.remote) if args.remote is not None else base
    return base, remote


async def _putStdin(
    files: FileClient,
    args: argparse.Namespace,
    ui: UI,
    remote: str,
    bar: TransferBar,
    started: float,
) -> int:
    """
    C{put -}: upload stdin, saying what the server keeps if interrupted.
    """
    streamed = _StreamedUpload(args, remote)
    _during(args, "put -", kept=streamed.kept)

    def acknowledged(n: int) -> None:
        streamed.onAcknowledged(n)
        bar(n)

    result = await files.putStream(
        sys.stdin.buffer, remote, args.force, acknowledged, streamed.onSent
    )
    bar.close()
    _fileDone(ui, "put", started)("-", result)
    return EXIT_OK


def _flagHint(e: FramesError) -> FramesError:
    """
    The server's C{already_exists} asks the client to ask to overwrite:
    name the flag that does, in the words C{get} uses.
    """
    from ..files.local import ALREADY_EXISTS_HINT

    path = e.details.get("path")
    if e.code != ErrorCode.ALREADY_EXISTS or not isinstance(path, str):
        return e
    hinted = FramesError(e.code, f"{path}: {ALREADY_EXISTS_HINT}")
    hinted.details = e.details
    return hinted


async def _intoRemoteDir(files: FileClient, given: str, remote: str, base: str) -> str:
    """
    Like C{cp}: a REMOTE that is an existing directory (or ends in C{/})
    receives the file under its own name.
    """
    info: dict[str, Any] | None = None
    if needsRemoteStat(given, remote):
        try:
            info = await files.stat(remote)
        except FramesError:
            info = None
    return intoRemoteDir(given, remote, base, info)


def needsRemoteStat(given: str, remote: str) -> bool:
    """
    Whether L{intoRemoteDir} needs the remote path's C{stat} to decide: not
    for a REMOTE ending in C{/} or naming the root.
    """
    return not (given.endswith("/") or remote == "")


def intoRemoteDir(given: str, remote: str, base: str, info: dict[str, Any] | None) -> str:
    """
    The remote path C{frames put} of one file or a tree writes to, given
    REMOTE as typed (C{given}), normalised (C{remote}), LOCAL's last segment
    (C{base}) and the header of C{remote}'s C{stat} (C{None} if refused or
    not asked, see L{needsRemoteStat}): under C{base} in a directory.
    """
    from ..files.blocking import joinRemote

    if not needsRemoteStat(given, remote):
        return joinRemote(remote, base)
    if info is not None and info.get("type") == "directory":
        return joinRemote(remote, base)
    return remote


async def _get(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    from ..files.client import FileClient, LocalError

    remote, base, local = getTarget(args)
    if local == "-" and (args.recursive or args.resume):
        ui.error(f"get: {_stdioFlags(args)} to stdout", {"code": "usage"})
        return EXIT_USAGE
    if local == "-":
        _during(args, f"get {remote}")
    elif args.recursive:
        _during(args, f"get -r {remote}", ["get", "-r", remote, local])
    else:
        from ..files.client import localPartialName

        _during(args, f"get {remote}", ["get", remote, local], localPartialName(local))
    client = await openClient(reactor, args)
    files = FileClient(client, hash=args.hash)
    bar: TransferBar | None = None
    # As in _put.
    resumable: list[str] | None = None
    started = time.monotonic()
    try:
        if local == "-":
            bar = TransferBar(args, None, remote)
            sys.stdout.flush()
            result = await files.getStream(remote, sys.stdout.fileno(), bar)
            bar.close()
            if not args.quiet:
                ui.err.write(
                    f"get {printable(remote)} -> stdout: {result['size']} bytes, "
                    f"{result['hash']} {result['digest']} verified\n"
                )
            return EXIT_OK
        if args.recursive:
            resumable = ["get", "-r", remote, local]
            bar = TransferBar(args, None, remote)
            tree = await files.getTree(
                remote, local, args.force, args.resume, _fileDone(ui, "get", started), bar
            )
            bar.close()
            return _reportTree(ui, "get", tree, started)
        info = await files.stat(remote)
        if info.get("type") == "directory":
            return reportIsADirectory(ui, remote)
        resumable = ["get", remote, local]
        bar = TransferBar(args, int(info.get("size", 0)), base)
        result = await files.getFile(remote, local, args.force, args.resume, bar)
        bar.close()
        return _reportFile(ui, "get", remote, local, result, started, {})
    except LocalError as e:
        return reportLocalError(ui, "get", e)
    except FramesError as e:
        if resumable is not None and e.code == ErrorCode.SHUTTING_DOWN:
            return _shuttingDown(ui, args, e, resumable)
        raise
    finally:
        if bar is not None:
            bar.close()
        await client.close()


def getTarget(args: argparse.Namespace) -> tuple[str, str, str]:
    """
    What C{frames get} downloads where: the remote path (normalised), its
    last segment, and the local target (C{-} for stdout; into a local
    directory under the remote name, unless C{-r}).
    """
    remote = _remote(args.remote)
    base = remote.rsplit("/", 1)[-1]
    local = args.local if args.local is not None else (base or ".")
    if local != "-" and not args.recursive and os.path.isdir(local):
        local = os.path.join(local, base)
    return remote, base, local


def reportIsADirectory(ui: UI, remote: str) -> int:
    """
    Refuse C{frames get} of a remote directory without C{-r}.
    """
    ui.error(
        f"get: {remote or '/'} is a directory (use -r)",
        {"code": ErrorCode.IS_A_DIRECTORY, "path": remote},
    )
    return EXIT_USAGE


def reportLocalError(ui: UI, op: str, e: LocalError) -> int:
    """
    Report a transfer's local failure (L{LocalError}) of C{op}.
    """
    ui.error(f"{op}: {e.message} [{e.code}]", {"code": e.code, "message": e.message})
    return EXIT_REMOTE
