# -*- test-case-name: tests.auth.test_auth -*-
"""
The users-file and secret-file formats, and writing them safely (the
secret file itself is read by L{twisted_frames.auth.secretfile}).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from .hmac import _USERS_TAG, MAC_BYTES, SALT_BYTES, SECRET_BYTES

# The secret file's pieces live in the Twisted-free secretfile module (the
# CLI's quick path reads secret files without Twisted); these names stay
# importable from here, where they always were.
from .secretfile import (
    SECRET_FILE_FORBIDDEN,
    ClientSecret,
    UserRecord,
    UsersFileError,
    _unb64,
    checkFileMode,
    checkUserName,
    loadSecretFile,
    parseSecret,
)

__all__ = [
    "SECRET_FILE_FORBIDDEN",
    "USERS_FILE_FORBIDDEN",
    "ClientSecret",
    "UserRecord",
    "UsersFile",
    "UsersFileError",
    "addUser",
    "checkFileMode",
    "checkUserName",
    "loadSecretFile",
    "newSecret",
    "parseSecret",
    "parseUsers",
    "writePrivate",
]

log = Logger(namespace="twisted_frames.auth")


def newSecret(user: str) -> ClientSecret:
    """
    Make a fresh random secret (256 bits) and salt for C{user}.
    """
    return ClientSecret(
        checkUserName(user), secrets.token_bytes(SECRET_BYTES), secrets.token_bytes(SALT_BYTES)
    )


def parseUsers(text: str) -> dict[str, UserRecord]:
    """
    Parse a users file: C{NAME:hmac-sha256:SALT:STOREDKEY:SERVERKEY} per
    line, base64 fields; blank lines and C{#} comments are ignored.

    @raise UsersFileError: naming the line at fault.
    """
    users: dict[str, UserRecord] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parts = line.split(":")
            if len(parts) != 5:
                raise UsersFileError("expected NAME:hmac-sha256:SALT:STOREDKEY:SERVERKEY")
            name, tag, salt, stored, server = parts
            checkUserName(name)
            if tag != _USERS_TAG:
                raise UsersFileError(f"unknown mechanism {tag!r} (only {_USERS_TAG})")
            if name in users:
                raise UsersFileError(f"user {name!r} appears twice")
            users[name] = UserRecord(
                name,
                _unb64(salt, SALT_BYTES, "salt"),
                _unb64(stored, MAC_BYTES, "stored key"),
                _unb64(server, MAC_BYTES, "server key"),
            )
        except UsersFileError as e:
            raise UsersFileError(f"line {number}: {e}") from None
    return users


#: Users file: nobody but owner and group may write, and others may not read.
USERS_FILE_FORBIDDEN = 0o026


class UsersFile(Mapping[str, UserRecord]):
    """
    A users file, read again whenever it changes on disk (so that
    C{frames keygen} takes effect without a restart).  A change that makes it
    unsafe or malformed is logged and the last good contents are kept.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._users: dict[str, UserRecord] = {}
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> None:
        """
        Read the file again if its inode, size or times changed.

        @param strict: raise instead of logging (used at start-up).
        @raise UsersFileError: with C{strict}, if the file is unsafe or
            malformed.
        """
        try:
            st = checkFileMode(self.path, USERS_FILE_FORBIDDEN, "users file")
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8") as f:
                users = parseUsers(f.read())
        except (OSError, UsersFileError) as e:
            message = f"users file {self.path}: {e}" if isinstance(e, UsersFileError) else str(e)
            if strict:
                raise UsersFileError(message) from None
            log.error("keeping the previous users: {message}", message=message)
            return
        self._users = users
        self._stamp = stamp

    def __getitem__(self, name: str) -> UserRecord:
        self.reload()
        return self._users[name]

    def __iter__(self) -> Any:
        return iter(self._users)

    def __len__(self) -> int:
        return len(self._users)


def addUser(path: str, record: UserRecord, replace: bool = False) -> None:
    """
    Add (or with C{replace}, replace) a user in a users file, creating it
    with mode 0600 if needed.  The file is rewritten through a temporary file
    and C{os.replace}, so a reader never sees half of it.

    @raise UsersFileError: if the user exists and not C{replace}, or the file
        is unsafe or malformed.
    """
    lines: list[str] = []
    if os.path.exists(path):
        checkFileMode(path, USERS_FILE_FORBIDDEN, "users file")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        existing = parseUsers(text)
        if record.name in existing and not replace:
            raise UsersFileError(f"user {record.name!r} already exists in {path} (use --replace)")
        for raw in text.splitlines():
            if raw.strip().split(":", 1)[0] == record.name and not raw.lstrip().startswith("#"):
                continue
            lines.append(raw)
    else:
        lines.append("# twisted-frames users: NAME:hmac-sha256:SALT:STOREDKEY:SERVERKEY (base64)")
    lines.append(record.toLine())
    writePrivate(path, "\n".join(lines) + "\n", replaceExisting=True)


def writePrivate(path: str, text: str, replaceExisting: bool = False) -> None:
    """
    Write C{text} to a new file readable by its owner only.

    @raise FileExistsError: if C{path} exists and not C{replaceExisting}.
    """
    if os.path.exists(path) and not replaceExisting:
        raise FileExistsError(f"{path} already exists")
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
