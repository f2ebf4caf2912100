# -*- test-case-name: tests.auth.test_auth -*-
"""
The client's side of login: prove the key, then check the server's proof.

L{loginFields} and L{checkServerProof} are the two halves without I/O (and
this module imports no Twisted at run time), so that both L{login}, over a
L{twisted_frames.client.FramesClient}, and the C{frames} CLI's blocking
quick path (L{twisted_frames.cli.quick}) log in the same way.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any, Protocol

from .. import wire
from .hmac import (
    MAC_HEX,
    MECHANISM,
    NONCE_BYTES,
    AuthError,
    authMessage,
    channelBinding,
    clientProof,
    serverSignature,
)
from .secretfile import ClientSecret

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class LoginClient(Protocol):
    """
    What L{login} needs of a connected client: a
    L{twisted_frames.client.FramesClient}.  Named by its shape so that this
    module, which C{twisted_frames.client} imports, does not import it back.
    """

    @property
    def greeting(self) -> dict[str, Any]:
        """
        The server's greeting header.
        """

    @property
    def protocol(self) -> Any:
        """
        The connection's protocol (its C{transport} gives the TLS binding).
        """

    def request(self, op: str, fields: dict[str, Any] | None = None) -> Deferred[Any]:
        """
        Send a request; fire with its reply.
        """


def loginFields(
    greeting: dict[str, Any], secret: ClientSecret, bindingType: str, binding: bytes
) -> tuple[dict[str, Any], bytes]:
    """
    The fields of the C{auth} request that logs in with C{secret}, given the
    server's greeting and the connection's channel binding.

    @return: C{(fields, expected)}: the request's fields and the server
        proof its reply must carry (for L{checkServerProof}).
    @raise AuthError: if the server does not offer this mechanism or its
        greeting has no usable nonce.
    """
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
    keys = secret.keys()
    message = authMessage(
        wire.PROTOCOL_VERSION, secret.user, serverNonce, clientNonce, bindingType, binding
    )
    fields = {
        "user": secret.user,
        "mechanism": MECHANISM,
        "cnonce": clientNonce,
        "binding": bindingType,
        "proof": clientProof(keys.clientKey, message).hex(),
    }
    return fields, serverSignature(keys.serverKey, message)


def checkServerProof(header: dict[str, Any], expected: bytes, secret: ClientSecret) -> str:
    """
    Check the server's proof in the header of the C{auth} reply.

    @param expected: the proof L{loginFields} said to expect.
    @return: the user name the server logged us in as.
    @raise AuthError: if the proof is missing, malformed or wrong.
    """
    got = header.get("server_proof")
    if not isinstance(got, str) or len(got) != MAC_HEX:
        raise AuthError("the server's proof is missing or malformed: not the server you think")
    try:
        gotBytes = bytes.fromhex(got)
    except ValueError:
        raise AuthError("the server's proof is not hex: not the server you think") from None
    if not hmac.compare_digest(gotBytes, expected):
        raise AuthError("the server failed to prove it knows your key: not the server you think")
    return str(header.get("user", secret.user))


async def login(client: LoginClient, secret: ClientSecret) -> str:
    """
    Log in on a connected client and check the server's proof.

    @return: the user name the server logged us in as.
    @raise AuthError: if the server does not offer this mechanism or fails to
        prove it knows the key.
    @raise FramesError: C{auth_failed} for an unknown user or wrong secret.
    """
    bindingType, binding = channelBinding(client.protocol.transport)
    fields, expected = loginFields(client.greeting, secret, bindingType, binding)
    reply = await client.request("auth", fields)
    return checkServerProof(reply.header, expected, secret)
