# -*- test-case-name: tests.files.test_files -*-
"""
Directory trees over a file client: C{put -r} and C{get -r}, and their
resume.

A resumed tree transfer (C{resume=True}) continues into the same place: a
file whose target is already complete (a regular file of the same size;
its content is not read again) is counted in L{TreeResult.complete} and
not sent, the interrupted one resumes from its partial, and the others are
copied.  The server's shutdown (C{shutting_down}) ends the whole transfer:
every file after it would fail the same way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..wire import ErrorCode, FramesError
from .blocking import joinRemote
from .local import LocalError, checkRemoteName, makeLocalDir
from .store import ThreadRunner

Progress = Callable[[int], None]
#: Called with the source and the result of each file copied.
OnFile = Callable[[str, dict[str, Any]], None]


class FileTransfers(Protocol):
    """
    What a tree transfer needs of a file client
    (L{twisted_frames.files.client.FileClient}).
    """

    run: ThreadRunner

    async def list(self, path: str = "") -> list[dict[str, Any]]: ...

    async def mkdir(self, path: str, parents: bool = True) -> dict[str, Any]: ...

    async def putFile(
        self,
        local: str,
        remote: str,
        overwrite: bool = False,
        resume: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]: ...

    async def getFile(
        self,
        remote: str,
        local: str,
        overwrite: bool = False,
        resume: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]: ...


@dataclass
class TreeResult:
    """
    The outcome of a recursive transfer.

    @ivar files: one result dict per file transferred.
    @ivar skipped: C{(path, reason)} for links and special files.
    @ivar errors: C{(path, error)} for files that failed.
    @ivar complete: the source paths of files a resumed transfer found
        already complete at the target (same size), not sent again.
    """

    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, Exception]] = field(default_factory=list)
    complete: list[str] = field(default_factory=list)


@dataclass
class _Walk:
    """
    One tree transfer in progress: its options and what it has done.
    """

    files: FileTransfers
    overwrite: bool
    resume: bool
    onFile: OnFile | None
    progress: Progress | None
    result: TreeResult = field(default_factory=TreeResult)

    def copied(self, source: str, done: dict[str, Any]) -> None:
        self.result.files.append(done)
        if self.onFile is not None:
            self.onFile(source, done)

    def failed(self, path: str, error: Exception) -> None:
        """
        Record one file's failure, unless it ends the whole transfer.
        """
        if isinstance(error, FramesError) and error.code == ErrorCode.SHUTTING_DOWN:
            raise error
        self.result.errors.append((path, error))

    async def putDir(self, local: str, remote: str) -> None:
        entries = await self.files.run(_scan, local)
        there: dict[str, Any] = {}
        if self.resume:
            there = {
                str(e.get("name")): e.get("size")
                for e in await self.files.list(remote)
                if e.get("type") == "file"
            }
        for name, kind, size in entries:
            lpath = os.path.join(local, name)
            rpath = joinRemote(remote, name)
            try:
                if kind == "directory":
                    await self.files.mkdir(rpath, parents=True)
                    await self.putDir(lpath, rpath)
                elif kind == "file" and self.resume and there.get(name) == size:
                    self.result.complete.append(lpath)
                elif kind == "file":
                    done = await self.files.putFile(
                        lpath, rpath, self.overwrite, self.resume, self.progress
                    )
                    self.copied(lpath, done)
                else:
                    self.result.skipped.append((lpath, kind))
            except (FramesError, LocalError, OSError) as e:
                self.failed(lpath, e)

    async def getDir(self, remote: str, local: str) -> None:
        for entry in await self.files.list(remote):
            rpath = joinRemote(remote, str(entry.get("name")))
            try:
                name = checkRemoteName(entry.get("name"))
                lpath = os.path.join(local, name)
                kind = entry.get("type")
                if kind == "directory":
                    await self.files.run(makeLocalDir, lpath)
                    await self.getDir(rpath, lpath)
                elif (
                    kind == "file"
                    and self.resume
                    and await self.files.run(_fileSize, lpath) == entry.get("size")
                ):
                    self.result.complete.append(rpath)
                elif kind == "file":
                    done = await self.files.getFile(
                        rpath, lpath, self.overwrite, self.resume, self.progress
                    )
                    self.copied(rpath, done)
                else:
                    self.result.skipped.append((rpath, str(kind)))
            except (FramesError, LocalError, OSError) as e:
                self.failed(rpath, e)


async def putTree(
    files: FileTransfers,
    local: str,
    remote: str,
    overwrite: bool = False,
    resume: bool = False,
    onFile: OnFile | None = None,
    progress: Progress | None = None,
) -> TreeResult:
    """
    Upload a directory recursively: regular files and directories only;
    links and special files are reported in C{skipped}.

    @param resume: continue an interrupted C{putTree} of the same tree to
        the same C{remote} (see the module's docstring).
    """
    walk = _Walk(files, overwrite, resume, onFile, progress)
    await files.mkdir(remote, parents=True)
    await walk.putDir(local, remote)
    return walk.result


async def getTree(
    files: FileTransfers,
    remote: str,
    local: str,
    overwrite: bool = False,
    resume: bool = False,
    onFile: OnFile | None = None,
    progress: Progress | None = None,
) -> TreeResult:
    """
    Download a remote directory recursively; remote names that could
    escape C{local} are refused and reported in C{errors}.

    @param resume: continue an interrupted C{getTree} of the same tree to
        the same C{local} (see the module's docstring).
    """
    walk = _Walk(files, overwrite, resume, onFile, progress)
    os.makedirs(local, exist_ok=True)
    await walk.getDir(remote, local)
    return walk.result


def _fileSize(path: str) -> int | None:
    """
    The size of a local regular file (not through a link), or C{None}.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _scan(path: str) -> list[tuple[str, str, int]]:
    """
    A local directory's entries as C{(name, kind, size)}, sorted by name.
    """
    out = []
    with os.scandir(path) as it:
        for entry in it:
            size = 0
            if entry.is_symlink():
                kind = "symlink"
            elif entry.is_dir(follow_symlinks=False):
                kind = "directory"
            elif entry.is_file(follow_symlinks=False):
                kind = "file"
                size = entry.stat(follow_symlinks=False).st_size
            else:
                kind = "other"
            out.append((entry.name, kind, size))
    out.sort()
    return out
