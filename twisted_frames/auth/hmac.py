# -*- test-case-name: tests.auth.test_auth -*-
"""
The login construction as pure functions, shared by client and server.

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
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


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
    # A TLS connection's handle exists only once pyOpenSSL is loaded: a
    # login over plain TCP does not import it just to say it is not TLS.
    SSL = sys.modules.get("OpenSSL.SSL")
    if SSL is not None and isinstance(handle, SSL.Connection):
        value = handle.export_keying_material(EXPORTER_LABEL, 32)
        return BINDING_TLS, bytes(value)
    return BINDING_NONE, b""
