# -*- test-case-name: tests.auth.test_auth -*-
"""
The client's side of login: prove the key, then check the server's proof.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Protocol

from twisted.internet.defer import Deferred

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
from .keys import ClientSecret


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


async def login(client: LoginClient, secret: ClientSecret) -> str:
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
