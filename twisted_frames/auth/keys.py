# -*- test-case-name: tests.auth.test_auth -*-
"""
The users-file and secret-file formats, and writing them safely.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from .hmac import (
    _SECRET_HEADER,
    _USERS_TAG,
    MAC_BYTES,
    MECHANISM,
    SALT_BYTES,
    SECRET_BYTES,
    USER_NAME,
    DerivedKeys,
    deriveKeys,
)

if TYPE_CHECKING:
    pass

log = Logger(namespace="twisted_frames.auth")


class UsersFileError(ValueError):
    """
    A users file or secret file is malformed or unsafe.
    """


def checkUserName(name: str) -> str:
    """
    @raise UsersFileError: if C{name} is not 1..64 characters of letters,
        digits, C{.}, C{_}, C{-} (not starting with a punctuation mark).
    """
    if not USER_NAME.match(name):
        raise UsersFileError(
            f"bad user name {name!r}: use 1..64 letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


# -- files -----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, length: int, what: str) -> bytes:
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise UsersFileError(f"{what} is not base64") from None
    if len(data) != length:
        raise UsersFileError(f"{what} must be {length} bytes, not {len(data)}")
    return data


@dataclass(frozen=True)
class UserRecord:
    """
    One line of a users file: what the server knows about a user.
    """

    name: str
    salt: bytes
    storedKey: bytes
    serverKey: bytes

    def toLine(self) -> str:
        """
        @return: the record as a users-file line (without newline).
        """
        return ":".join(
            [self.name, _USERS_TAG, _b64(self.salt), _b64(self.storedKey), _b64(self.serverKey)]
        )


@dataclass(frozen=True)
class ClientSecret:
    """
    What a client needs to log in: its name, secret and salt.
    """

    user: str
    secret: bytes
    salt: bytes

    def keys(self) -> DerivedKeys:
        """
        @return: the keys derived from this secret.
        """
        return deriveKeys(self.secret, self.salt)

    def record(self) -> UserRecord:
        """
        @return: the users-file record matching this secret.
        """
        k = self.keys()
        return UserRecord(self.user, self.salt, k.storedKey, k.serverKey)

    def toText(self) -> str:
        """
        @return: the contents of a client secret file.
        """
        return (
            f"{_SECRET_HEADER} for user {self.user}.\n"
            "# Keep it private (chmod 600): whoever holds it can log in as this user.\n"
            f"user = {self.user}\n"
            f"mechanism = {MECHANISM}\n"
            f"salt = {_b64(self.salt)}\n"
            f"secret = {_b64(self.secret)}\n"
        )


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


def parseSecret(text: str) -> ClientSecret:
    """
    Parse a client secret file (C{key = value} lines: C{user}, C{mechanism},
    C{salt}, C{secret}).

    @raise UsersFileError: if a field is missing or malformed; an empty or
        short secret is refused.
    """
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UsersFileError(f"malformed line {line[:40]!r} (expected key = value)")
        fields[key.strip()] = value.strip()
    for needed in ("user", "salt", "secret"):
        if not fields.get(needed):
            raise UsersFileError(f"no {needed!r} in the secret file")
    mechanism = fields.get("mechanism", MECHANISM)
    if mechanism != MECHANISM:
        raise UsersFileError(f"unknown mechanism {mechanism!r} (only {MECHANISM})")
    return ClientSecret(
        checkUserName(fields["user"]),
        _unb64(fields["secret"], SECRET_BYTES, "secret"),
        _unb64(fields["salt"], SALT_BYTES, "salt"),
    )


def checkFileMode(path: str, forbidden: int, what: str) -> os.stat_result:
    """
    Refuse a file whose permission bits include any of C{forbidden}, as
    OpenSSH refuses a private key that others can read.

    @raise UsersFileError: if the file is not a regular file or its mode is
        too open.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UsersFileError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & forbidden:
        raise UsersFileError(
            f"permissions {mode:04o} for {what} {path} are too open "
            f"(it must not be accessible by others: chmod {mode & ~forbidden & 0o777:o} {path})"
        )
    return st


#: Users file: nobody but owner and group may write, and others may not read.
USERS_FILE_FORBIDDEN = 0o026
#: Client secret file: owner only, as OpenSSH requires of private keys.
SECRET_FILE_FORBIDDEN = 0o077


def loadSecretFile(path: str) -> ClientSecret:
    """
    Read a client secret file, refusing one that others can access.

    @raise UsersFileError: on unsafe permissions or a malformed file.
    @raise OSError: if it cannot be read.
    """
    checkFileMode(path, SECRET_FILE_FORBIDDEN, "secret file")
    with open(path, encoding="utf-8") as f:
        try:
            return parseSecret(f.read())
        except UsersFileError as e:
            raise UsersFileError(f"secret file {path}: {e}") from None


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
