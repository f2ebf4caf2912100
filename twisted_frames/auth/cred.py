# -*- test-case-name: tests.auth.test_auth -*-
"""
The C{twisted.cred} pieces of login: credentials, the users checker, the realm
and the portal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from .hmac import serverSignature, verifyClientProof
from .keys import UserRecord, newSecret

if TYPE_CHECKING:
    pass


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
