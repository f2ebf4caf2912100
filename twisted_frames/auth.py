"""
Login: an HMAC-SHA256 challenge-response in which both sides prove the key.

The construction is SCRAM's (RFC 5802 / RFC 7677) with HMAC-SHA256, adapted
to one round trip because the salt travels in the client's secret file::

    salted    = HMAC(salt, secret)                 # secret: 32 random bytes
    clientKey = HMAC(salted, "twisted-frames client key")
    storedKey = SHA256(clientKey)
    serverKey = HMAC(salted, "twisted-frames server key")

The server's users file holds only C{storedKey} and C{serverKey}: a copy of
it does not let anyone log in (it lets them impersonate the server to
clients, which is why it is kept private too).  The client proves it holds
C{clientKey} without sending it::

    message   = authMessage(version, user, serverNonce, clientNonce,
                            bindingType, binding)
    proof     = clientKey XOR HMAC(storedKey, message)
    serverSig = HMAC(serverKey, message)           # the server's proof

C{message} covers the protocol version, the user name, the server's
single-use nonce, the client's nonce and, over TLS, the TLS exporter value
(RFC 9266 C{tls-exporter}), so a proof is good for one attempt on one
connection and cannot be relayed into another TLS connection.

This module holds the pure construction (shared by client and server), the
users-file and secret-file formats, the C{twisted.cred} checker and realm,
the server's C{auth} operation and the client's L{login}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from OpenSSL import SSL
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from . import wire
from .policy import FailurePenalties, sourceKey
from .server import Request, ServerProtocol, Service, operation
from .wire import ErrorCode, FramesError

if TYPE_CHECKING:
    from .client import FramesClient

log = Logger(namespace="twisted_frames.auth")

#: The only mechanism there is.  Nothing weaker can be negotiated because
#: nothing else is implemented.
MECHANISM = "hmac-sha256"
SECRET_BYTES = 32
SALT_BYTES = 16
NONCE_BYTES = 16
MAC_BYTES = 32
NONCE_HEX = 2 * NONCE_BYTES
MAC_HEX = 2 * MAC_BYTES

#: User names: short and boring, so they are safe in logs and file formats.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

#: RFC 9266 channel binding for TLS 1.3 (and 1.2 with extended master
#: secret, which OpenSSL negotiates by default).
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
BINDING_TLS = "tls-exporter"
BINDING_NONE = "none"

_CONTEXT = b"twisted-frames auth v1"
_CLIENT_KEY_LABEL = b"twisted-frames client key"
_SERVER_KEY_LABEL = b"twisted-frames server key"
_USERS_TAG = "hmac-sha256"
_SECRET_HEADER = "# twisted-frames secret file"


class AuthError(Exception):
    """
    A login could not be made, for a reason to show the user.
    """


class UsersFileError(ValueError):
    """
    A users file or secret file is malformed or unsafe.
    """


# -- the construction, as pure functions -----------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class DerivedKeys:
    """
    The keys derived from a secret and its salt.

    @ivar clientKey: what the client proves it holds (never sent, never
        stored on the server).
    @ivar storedKey: C{SHA256(clientKey)}, kept by the server.
    @ivar serverKey: what the server proves it holds.
    """

    clientKey: bytes
    storedKey: bytes
    serverKey: bytes


def deriveKeys(secret: bytes, salt: bytes) -> DerivedKeys:
    """
    Derive the login keys from a secret and its salt.

    No slow key-derivation function is used: the secret is 256 random bits,
    not a password, so there is nothing for iterations to protect.
    """
    salted = _hmac(salt, secret)
    clientKey = _hmac(salted, _CLIENT_KEY_LABEL)
    return DerivedKeys(
        clientKey=clientKey,
        storedKey=hashlib.sha256(clientKey).digest(),
        serverKey=_hmac(salted, _SERVER_KEY_LABEL),
    )


def authMessage(
    version: int,
    user: str,
    serverNonce: str,
    clientNonce: str,
    bindingType: str,
    binding: bytes,
) -> bytes:
    """
    The bytes both sides MAC.  Every field is length-prefixed, so no two
    different sets of fields give the same bytes.
    """
    fields = [
        _CONTEXT,
        MECHANISM.encode("ascii"),
        str(version).encode("ascii"),
        user.encode("utf-8"),
        serverNonce.encode("ascii"),
        clientNonce.encode("ascii"),
        bindingType.encode("ascii"),
        binding,
    ]
    return b"".join(struct.pack("!I", len(f)) + f for f in fields)


def clientProof(clientKey: bytes, message: bytes) -> bytes:
    """
    The client's proof for C{message}: C{clientKey} masked by a MAC only a
    holder of C{storedKey} can compute.
    """
    storedKey = hashlib.sha256(clientKey).digest()
    return _xor(clientKey, _hmac(storedKey, message))


def verifyClientProof(storedKey: bytes, message: bytes, proof: bytes) -> bool:
    """
    Check a client's proof in constant time.

    @return: whether C{proof} shows knowledge of the client key behind
        C{storedKey}.
    """
    if len(proof) != MAC_BYTES or len(storedKey) != MAC_BYTES:
        return False
    candidate = _xor(proof, _hmac(storedKey, message))
    return hmac.compare_digest(hashlib.sha256(candidate).digest(), storedKey)


def serverSignature(serverKey: bytes, message: bytes) -> bytes:
    """
    The server's proof for C{message}.
    """
    return _hmac(serverKey, message)


def channelBinding(transport: Any) -> tuple[str, bytes]:
    """
    The channel binding of a connection: the RFC 9266 TLS exporter value
    over TLS, nothing over plain TCP (which therefore does not stop an
    active man-in-the-middle; see docs/security.md).

    @return: C{(bindingType, value)}.
    """
    getHandle = getattr(transport, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    if isinstance(handle, SSL.Connection):
        value = handle.export_keying_material(EXPORTER_LABEL, 32)
        return BINDING_TLS, bytes(value)
    return BINDING_NONE, b""


def _fromHex(value: Any, length: int, what: str) -> bytes:
    # Hex digits only, either case: bytes.fromhex alone would also take
    # spaces, so "32 hex digits" could decode to fewer bytes.
    if not isinstance(value, str) or len(value) != 2 * length or not _HEX.fullmatch(value):
        raise FramesError(ErrorCode.INVALID_ARGUMENT, f"{what} must be {2 * length} hex digits")
    return bytes.fromhex(value)


_HEX = re.compile(r"[0-9a-fA-F]*")


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


# -- twisted.cred ------------------------------------------------------------------


class IHMACCredentials(ICredentials, Interface):
    """
    A login attempt: a user name and a proof over an auth message, which can
    check itself against the keys of a users-file record.
    """

    username = Attribute("The user name claimed (str).")

    def checkKeys(storedKey: bytes, serverKey: bytes) -> bool:
        """
        @return: whether the proof matches these keys; on success the
            server's signature is then available as C{serverProof}.
        """


@implementer(IHMACCredentials)
class HMACCredentials:
    """
    The credentials of one C{auth} request.

    @ivar serverProof: set by L{checkKeys} when the proof is good.
    """

    def __init__(self, username: str, message: bytes, proof: bytes) -> None:
        self.username = username
        self.message = message
        self.proof = proof
        self.serverProof: bytes | None = None

    def checkKeys(self, storedKey: bytes, serverKey: bytes) -> bool:
        """
        See L{IHMACCredentials.checkKeys}.
        """
        good = verifyClientProof(storedKey, self.message, self.proof)
        # Computed whatever the outcome, so a failure costs the same time.
        signature = serverSignature(serverKey, self.message)
        self.serverProof = signature if good else None
        return good


@implementer(ICredentialsChecker)
class UsersChecker:
    """
    Checks L{IHMACCredentials} against a users file (or any mapping of
    names to L{UserRecord}).

    An unknown user is checked against a decoy record made of random keys,
    so that it takes the same work and gets the same answer as a wrong
    secret.
    """

    credentialInterfaces = (IHMACCredentials,)

    def __init__(self, users: Mapping[str, UserRecord]) -> None:
        self.users = users
        decoy = newSecret("decoy").record()
        self._decoy = UserRecord("", decoy.salt, decoy.storedKey, decoy.serverKey)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        """
        @return: a Deferred firing with the user name, or failing with
            L{UnauthorizedLogin}.
        """
        record = self.users.get(credentials.username)
        known = record is not None
        if record is None:
            record = self._decoy
        good = credentials.checkKeys(record.storedKey, record.serverKey)
        if good and known:
            return defer.succeed(credentials.username)
        reason = "wrong secret" if known else "unknown user"
        return defer.fail(UnauthorizedLogin(reason))


class IFramesUser(Interface):
    """
    A logged-in user, as the realm hands it out.
    """

    name = Attribute("The user's name (str).")


@implementer(IFramesUser)
@dataclass(frozen=True)
class FramesUser:
    """
    The avatar of a logged-in user: for now just a name, which services see
    as C{request.user}.
    """

    name: str


@implementer(IRealm)
class FramesRealm:
    """
    Hands out a L{FramesUser} for each user the checker vouches for.
    """

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        """
        See L{IRealm.requestAvatar}.
        """
        if IFramesUser not in interfaces:
            raise NotImplementedError("this realm only makes IFramesUser avatars")
        return IFramesUser, FramesUser(str(avatarId)), lambda: None


def makePortal(users: Mapping[str, UserRecord]) -> Portal:
    """
    A portal checking HMAC proofs against C{users}.
    """
    return Portal(FramesRealm(), [UsersChecker(users)])


# -- the server's auth operation ---------------------------------------------------


class _LoginState:
    def __init__(self) -> None:
        self.failures = 0
        # The auth request being worked on, and the penalty it waits out.
        self.pending: Request | None = None
        self.waiting: defer.Deferred[None] | None = None
        self.deadline: Any = None


class AuthService(Service):
    """
    The C{auth} operation and the rules around logging in: a login deadline
    per connection, a per-source delay that grows with failures, a cap on
    failed attempts per connection, one log line per failure.

    @ivar loginTimeout: seconds a connection has to log in (C{None}: none).
    @ivar maxAttempts: failed attempts after which the connection is closed.
    """

    def __init__(
        self,
        portal: Portal,
        clock: IReactorTime | None = None,
        loginTimeout: float | None = 10.0,
        maxAttempts: int = 3,
        penalties: FailurePenalties | None = None,
    ) -> None:
        self.portal = portal
        self.clock = clock
        self.loginTimeout = loginTimeout
        self.maxAttempts = maxAttempts
        self.penalties = penalties if penalties is not None else FailurePenalties(clock)
        self._states: dict[ServerProtocol, _LoginState] = {}

    def _clockFor(self, connection: ServerProtocol) -> IReactorTime:
        return self.clock if self.clock is not None else connection._clock()

    def connectionMade(self, connection: ServerProtocol) -> None:
        """
        Start the login deadline of a connection to a server that requires
        login.
        """
        state = self._states[connection] = _LoginState()
        if connection.factory.authRequired and self.loginTimeout is not None:
            state.deadline = self._clockFor(connection).callLater(
                self.loginTimeout, self._deadlinePassed, connection
            )

    def _deadlinePassed(self, connection: ServerProtocol) -> None:
        state = self._states.get(connection)
        if state is not None:
            state.deadline = None
        if connection.user is not None or connection._closing:
            return
        log.warn(
            "login failure: {peer} did not log in within {timeout:g} s",
            peer=connection.peerName(),
            timeout=self.loginTimeout,
        )
        error = FramesError(ErrorCode.TIMEOUT, f"no login within {self.loginTimeout:g} s")
        pending = state.pending if state is not None else None
        if pending is None or pending.finished:
            connection.refuse(error)
            return
        # The deadline is not extended for an attempt still waiting out its
        # source's delay (which may be longer than what is left of it): it
        # answers that attempt, so that the request still gets its one final
        # reply, and closes.  The attempt is never checked, so it is not a
        # failure either.
        assert state is not None
        pending.fail(error, closing=True)
        connection.loseConnectionSoon()
        if state.waiting is not None:
            state.waiting.cancel()

    def userLoggedIn(self, connection: ServerProtocol) -> None:
        """
        Stop the login deadline.
        """
        state = self._states.get(connection)
        if state is not None and state.deadline is not None:
            if state.deadline.active():
                state.deadline.cancel()
            state.deadline = None

    def connectionLost(self, connection: ServerProtocol) -> None:
        """
        Forget the connection.
        """
        self.userLoggedIn(connection)
        self._states.pop(connection, None)

    @operation("auth", public=True)
    async def auth(self, request: Request) -> dict[str, Any] | None:
        """
        C{auth}: fields C{user}, C{mechanism} (C{"hmac-sha256"}), C{cnonce}
        (32 hex digits), C{binding} (C{"tls-exporter"} or C{"none"}),
        C{proof} (64 hex digits).  Replies C{user} and C{server_proof}
        (64 hex digits), or C{auth_failed} with a fresh C{nonce} for the next
        attempt.  The last allowed failure, and an attempt the login deadline
        overtakes, are answered with C{"closing": true} and close the
        connection.
        """
        connection = request.connection
        state = self._states.setdefault(connection, _LoginState())
        if connection.user is not None:
            raise FramesError(
                ErrorCode.INVALID_ARGUMENT, f"already logged in as {connection.user}"
            )
        if state.pending is not None:
            raise FramesError(ErrorCode.BUSY, "a login attempt is already in progress")
        state.pending = request
        try:
            return await self._attempt(request, state)
        finally:
            state.pending = None
            state.waiting = None

    async def _attempt(self, request: Request, state: _LoginState) -> dict[str, Any] | None:
        connection = request.connection
        header = request.header
        user = header.get("user")
        userForLog = user if isinstance(user, str) and USER_NAME.match(user) else repr(user)[:80]
        source = sourceKey(request.peer)
        # Every attempt waits out the penalty its source has earned, before
        # any checking, so dropping the connection early gains nothing.
        state.waiting = self.penalties.wait(source)
        await state.waiting
        state.waiting = None
        # The nonce is single-use: whatever happens, the next attempt on this
        # connection must MAC a new one.
        serverNonce = connection.nonce
        connection.nonce = secrets.token_hex(NONCE_BYTES)
        try:
            if not isinstance(user, str) or not USER_NAME.match(user):
                raise FramesError(ErrorCode.INVALID_ARGUMENT, "'user' must be a valid user name")
            mechanism = header.get("mechanism")
            if mechanism != MECHANISM:
                raise FramesError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"unsupported mechanism {mechanism!r}: this server offers only {MECHANISM}",
                )
            clientNonce = header.get("cnonce")
            _fromHex(clientNonce, NONCE_BYTES, "'cnonce'")
            proof = _fromHex(header.get("proof"), MAC_BYTES, "'proof'")
            bindingType, binding = channelBinding(connection.transport)
            if header.get("binding") != bindingType:
                raise FramesError(
                    ErrorCode.AUTH_FAILED,
                    f"channel binding mismatch: the server sees {bindingType!r}, the client "
                    f"{header.get('binding')!r} (a TLS-terminating proxy in between?)",
                )
            assert isinstance(clientNonce, str)
            message = authMessage(
                wire.PROTOCOL_VERSION, user, serverNonce, clientNonce, bindingType, binding
            )
            credentials = HMACCredentials(user, message, proof)
            try:
                _, avatar, _ = await self.portal.login(credentials, None, IFramesUser)
            except UnauthorizedLogin as e:
                log.warn(
                    "login failure: {peer} user={user}: {reason}",
                    peer=connection.peerName(),
                    user=userForLog,
                    reason=str(e) or "rejected",
                )
                raise FramesError(
                    ErrorCode.AUTH_FAILED, "authentication failed: unknown user or wrong secret"
                ) from None
        except FramesError as e:
            if e.code != ErrorCode.AUTH_FAILED:
                log.warn(
                    "login failure: {peer} user={user}: {reason}",
                    peer=connection.peerName(),
                    user=userForLog,
                    reason=e.message,
                )
            error = self._failed(request, state, source, e)
            if error is None:
                return None
            raise error from None
        if request.finished:
            # The login deadline answered it meanwhile: too late to log in.
            return None
        assert credentials.serverProof is not None
        name = cast(FramesUser, avatar).name
        connection.logIn(name)
        log.info("login: {peer} user={user}", peer=connection.peerName(), user=name)
        return {"user": name, "server_proof": credentials.serverProof.hex()}

    def _failed(
        self, request: Request, state: _LoginState, source: str, error: FramesError
    ) -> FramesError | None:
        """
        Count a failed attempt.

        @return: the error to answer it with, or C{None} if it was the last
            one allowed: then it has been answered here, with C{"closing":
            true}, and the connection is closing.
        """
        connection = request.connection
        self.penalties.failed(source)
        state.failures += 1
        left = self.maxAttempts - state.failures
        details = dict(error.details)
        details["nonce"] = connection.nonce
        details["attempts_left"] = max(left, 0)
        answer = FramesError(error.code, error.message, **details)
        if left > 0 or request.finished:
            # (Finished: the login deadline answered it while a slow checker
            # worked, and is closing the connection already.)
            return answer
        log.warn(
            "login failure: {peer}: {n} failed attempts, closing",
            peer=connection.peerName(),
            n=state.failures,
        )
        request.fail(answer, closing=True)
        # Closing waits for the reply to drain (or the close timeout).
        connection.loseConnectionSoon()
        return None


# -- the client's side ---------------------------------------------------------------


async def login(client: FramesClient, secret: ClientSecret) -> str:
    """
    Log in on a connected client and check the server's proof.

    @return: the user name the server logged us in as.
    @raise AuthError: if the server does not offer this mechanism or fails to
        prove it knows the key.
    @raise FramesError: C{auth_failed} for an unknown user or wrong secret.
    """
    greeting = client.greeting
    auth = greeting.get("auth")
    mechanisms = auth.get("mechanisms") if isinstance(auth, dict) else None
    if not isinstance(mechanisms, list) or MECHANISM not in mechanisms:
        raise AuthError(
            f"the server does not offer {MECHANISM} login; refusing to go on without "
            "mutual authentication (drop --user/--secret-file to connect anonymously)"
        )
    serverNonce = greeting.get("nonce")
    if not isinstance(serverNonce, str) or not 16 <= len(serverNonce) <= 128:
        raise AuthError("the server's greeting has no usable nonce")
    clientNonce = secrets.token_hex(NONCE_BYTES)
    bindingType, binding = channelBinding(client.protocol.transport)
    keys = secret.keys()
    message = authMessage(
        wire.PROTOCOL_VERSION, secret.user, serverNonce, clientNonce, bindingType, binding
    )
    reply = await client.request(
        "auth",
        {
            "user": secret.user,
            "mechanism": MECHANISM,
            "cnonce": clientNonce,
            "binding": bindingType,
            "proof": clientProof(keys.clientKey, message).hex(),
        },
    )
    expected = serverSignature(keys.serverKey, message)
    got = reply.header.get("server_proof")
    if not isinstance(got, str) or len(got) != MAC_HEX:
        raise AuthError("the server's proof is missing or malformed: not the server you think")
    try:
        gotBytes = bytes.fromhex(got)
    except ValueError:
        raise AuthError("the server's proof is not hex: not the server you think") from None
    if not hmac.compare_digest(gotBytes, expected):
        raise AuthError("the server failed to prove it knows your key: not the server you think")
    return str(reply.header.get("user", secret.user))


__all__ = [
    "AuthError",
    "AuthService",
    "ClientSecret",
    "FramesRealm",
    "FramesUser",
    "HMACCredentials",
    "IFramesUser",
    "IHMACCredentials",
    "UserRecord",
    "UsersChecker",
    "UsersFile",
    "UsersFileError",
    "addUser",
    "authMessage",
    "channelBinding",
    "clientProof",
    "deriveKeys",
    "loadSecretFile",
    "login",
    "makePortal",
    "newSecret",
    "parseSecret",
    "parseUsers",
    "serverSignature",
    "verifyClientProof",
]
