# -*- test-case-name: tests.auth.test_auth -*-
"""
The server's C{auth} operation: the greeting's challenge, the login deadline
and the delay after failures.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, cast

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .. import wire
from ..fields import Choice, Field, HexDigits, Text, checkFields
from ..policy import FailurePenalties, sourceKey
from ..server import Request, ServerProtocol, Service, operation
from ..wire import ErrorCode, FramesError
from .cred import FramesUser, HMACCredentials, IFramesUser
from .hmac import (
    MAC_HEX,
    MECHANISM,
    NONCE_BYTES,
    NONCE_HEX,
    USER_NAME,
    authMessage,
    channelBinding,
)

if TYPE_CHECKING:
    pass

log = Logger(namespace="twisted_frames.auth")

log = Logger(namespace="twisted_frames.auth")


# -- the server's auth operation ---------------------------------------------------


#: The fields of C{auth}, checked by the op itself after its source's delay.
AUTH_FIELDS: dict[str, Field] = {
    "user": Text(
        "the user's name",
        default=None,
        pattern=USER_NAME,
        message="'user' must be a valid user name",
    ),
    "mechanism": Choice(
        (MECHANISM,),
        "the only one offered",
        default=None,
        message=f"unsupported mechanism {{value!r}}: this server offers only {MECHANISM}",
    ),
    "cnonce": HexDigits(NONCE_HEX, "the client's nonce", default=None),
    "binding": Field(
        '`"tls-exporter"` (over TLS) or `"none"`: what the server sees, else `auth_failed`',
        typeName="string",
    ),
    "proof": HexDigits(MAC_HEX, "the client's proof (see the security page)", default=None),
}


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
        connection.refusal("login_timeout")
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
        Forget the connection, and cancel a login attempt still waiting out
        its source's delay: it is never checked, so it neither logs in nor
        counts as a failure for a connection that is gone.
        """
        self.userLoggedIn(connection)
        state = self._states.pop(connection, None)
        if state is not None and state.waiting is not None:
            state.waiting.cancel()

    @operation("auth", public=True, fields=AUTH_FIELDS, lateFields=True)
    async def opAuth(self, request: Request) -> dict[str, Any] | None:
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
        try:
            await state.waiting
        except defer.CancelledError:
            # The login deadline answered it, or the connection is gone.
            return None
        state.waiting = None
        # The nonce is single-use: whatever happens, the next attempt on this
        # connection must MAC a new one.
        serverNonce = connection.nonce
        connection.nonce = secrets.token_hex(NONCE_BYTES)
        try:
            credentials, avatar = await self._verify(connection, serverNonce, header, userForLog)
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
        if connection.factory.metrics is not None:
            connection.factory.metrics.loginAttempt(True)
        log.info("login: {peer} user={user}", peer=connection.peerName(), user=name)
        return {"user": name, "server_proof": credentials.serverProof.hex()}

    async def _verify(
        self, connection: ServerProtocol, serverNonce: str, header: dict[str, Any], userForLog: str
    ) -> tuple[HMACCredentials, Any]:
        """
        Check an attempt: its fields (only now, after the delay, so that a
        malformed attempt waits and counts like a wrong one), its channel
        binding, then its proof through the portal.

        @return: the credentials (with the server's proof) and the avatar.
        @raise FramesError: C{invalid_argument} or C{auth_failed}.
        """
        fields = checkFields(AUTH_FIELDS, header)
        bindingType, binding = channelBinding(connection.transport)
        if fields.get("binding") != bindingType:
            raise FramesError(
                ErrorCode.AUTH_FAILED,
                f"channel binding mismatch: the server sees {bindingType!r}, the client "
                f"{fields.get('binding')!r} (a TLS-terminating proxy in between?)",
            )
        user = fields["user"]
        message = authMessage(
            wire.PROTOCOL_VERSION, user, serverNonce, fields["cnonce"], bindingType, binding
        )
        credentials = HMACCredentials(user, message, bytes.fromhex(fields["proof"]))
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
        return credentials, avatar

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
        if connection.factory.metrics is not None:
            connection.factory.metrics.loginAttempt(False)
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
        connection.refusal("login_attempts")
        request.fail(answer, closing=True)
        # Closing waits for the reply to drain (or the close timeout).
        connection.loseConnectionSoon()
        return None
