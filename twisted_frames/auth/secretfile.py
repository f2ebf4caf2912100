# -*- test-case-name: tests.auth.test_auth -*-
"""
The client's secret file: its format, and reading it safely.  Without
Twisted, so that the C{frames} CLI's quick path (L{twisted_frames.cli.quick})
logs in without loading it; L{twisted_frames.auth.keys} re-exports these
names beside the users file, which the server reads.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass

from .hmac import (
    _SECRET_HEADER,
    _USERS_TAG,
    MECHANISM,
    SALT_BYTES,
    SECRET_BYTES,
    USER_NAME,
    DerivedKeys,
    deriveKeys,
)


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
