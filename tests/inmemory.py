"""
Servers and certificates for the security tests, which connect to them in
memory with L{twisted_frames.testing}: no sockets, a L{Clock} for every
deadline.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock

from twisted_frames.auth.cred import makePortal
from twisted_frames.auth.keys import ClientSecret, UserRecord, newSecret
from twisted_frames.auth.service import AuthService
from twisted_frames.certs import Issued, issue, writeQuickStart
from twisted_frames.policy import ConnectionGuard, ConnectionLimits, FailurePenalties
from twisted_frames.server import FramesServerFactory, Request, Service, operation


class WhoAmIService(Service):
    """
    A non-public op, to show what login unlocks.
    """

    @operation("whoami")
    def whoami(self, request: Request) -> dict[str, Any]:
        """
        Reply with the logged-in user's name.
        """
        return {"user": request.user}


@dataclass
class Server:
    """
    A login-requiring server factory and its parts.
    """

    factory: FramesServerFactory
    auth: AuthService
    guard: ConnectionGuard
    clock: Clock
    alice: ClientSecret


def makeServer(
    limits: ConnectionLimits | None = None,
    records: list[UserRecord] | None = None,
    authRequired: bool = True,
    **authKwargs: Any,
) -> Server:
    """
    A server requiring login, with user C{alice} (unless C{records} says
    otherwise), a L{ConnectionGuard} with no limits by default, and a Clock.
    """
    clock = Clock()
    alice = newSecret("alice")
    users = {r.name: r for r in (records if records is not None else [alice.record()])}
    auth = AuthService(
        makePortal(users), clock=clock, penalties=FailurePenalties(clock), **authKwargs
    )
    guard = ConnectionGuard(limits or ConnectionLimits(None, None, None, None))
    factory = FramesServerFactory([guard, auth, WhoAmIService()], clock=clock)
    factory.authRequired = authRequired
    factory.authMechanisms = ["hmac-sha256"] if authRequired else []
    return Server(factory, auth, guard, clock, alice)


@dataclass
class Credentials:
    """
    Certificate files for TLS tests: a CA with server and client
    certificates, and a second, untrusted CA with its own.
    """

    ca: str
    server: str
    serverKey: str
    client: str
    clientKey: str
    otherCA: str
    otherServer: str
    otherServerKey: str
    otherClient: str
    otherClientKey: str
    expiredServer: str
    expiredServerKey: str
    expiredClient: str
    expiredClientKey: str


def makeCredentials(directory: str) -> Credentials:
    """
    Write a CA, server (localhost, 127.0.0.1) and client certificates, plus
    another CA's and expired ones, into C{directory}.
    """
    main = writeQuickStart(os.path.join(directory, "main"), ["localhost", "127.0.0.1"])
    other = writeQuickStart(os.path.join(directory, "other"), ["localhost", "127.0.0.1"])
    with open(main["ca"], "rb") as f:
        caCert = x509.load_pem_x509_certificate(f.read())
    with open(main["ca-key"], "rb") as f:
        caKey = serialization.load_pem_private_key(f.read(), None)
    assert isinstance(caKey, ec.EllipticCurvePrivateKey)
    ca = Issued(caKey, caCert)
    longAgo = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    paths = {}
    for role, client in (("server", False), ("client", True)):
        expired = issue(
            ca, "localhost", ["localhost", "127.0.0.1"], client=client, days=1, notBefore=longAgo
        )
        paths[role] = os.path.join(directory, f"expired-{role}.pem")
        paths[role + "-key"] = os.path.join(directory, f"expired-{role}.key")
        with open(paths[role], "wb") as f:
            f.write(expired.certPEM())
        with open(paths[role + "-key"], "wb") as f:
            f.write(expired.keyPEM())
    return Credentials(
        main["ca"],
        main["server"],
        main["server-key"],
        main["client"],
        main["client-key"],
        other["ca"],
        other["server"],
        other["server-key"],
        other["client"],
        other["client-key"],
        paths["server"],
        paths["server-key"],
        paths["client"],
        paths["client-key"],
    )
