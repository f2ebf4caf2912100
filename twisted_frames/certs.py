# -*- test-case-name: tests.cli.test_keys -*-
"""
Make a private CA and certificates signed by it, for a quick start with TLS
and mutual TLS (C{frames make-certs}), and for tests.

Every certificate carries a subjectAltName: Twisted skips the host-name
check for a certificate without one, so a certificate without SANs would be
accepted for any host.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .auth.keys import writePrivate

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its private key.
    """

    key: Key
    cert: x509.Certificate

    def certPEM(self) -> bytes:
        """
        @return: the certificate as PEM.
        """
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def keyPEM(self) -> bytes:
        """
        @return: the private key as unencrypted PKCS#8 PEM.
        """
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(commonName: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twisted-frames"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def makeCA(
    commonName: str = "twisted-frames private CA",
    days: int = 3650,
    notBefore: datetime.datetime | None = None,
) -> Issued:
    """
    A self-signed CA certificate (P-256 key), allowed to sign certificates
    and nothing else.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = notBefore or _now() - datetime.timedelta(minutes=5)
    name = _name(commonName)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(
    ca: Issued,
    commonName: str,
    hosts: Sequence[str] = (),
    client: bool = False,
    days: int = 825,
    notBefore: datetime.datetime | None = None,
) -> Issued:
    """
    A leaf certificate signed by C{ca}: for a server (subjectAltName from
    C{hosts}, required) or, with C{client}, for a client (subjectAltName
    C{commonName} as a DNS-style name, so it is never without one).

    @raise ValueError: for a server certificate without hosts.
    """
    if not client and not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    start = notBefore or _now() - datetime.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(commonName))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(_sans(hosts) if hosts else [x509.DNSName(commonName)]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def writeQuickStart(
    directory: str,
    hosts: Sequence[str],
    clientName: str = "client",
    days: int = 825,
) -> dict[str, str]:
    """
    Write a private CA, a server certificate for C{hosts} and a client
    certificate into C{directory} (created if needed): C{ca.pem},
    C{ca.key}, C{server.pem}, C{server.key}, C{client.pem}, C{client.key}.
    Keys are written with mode 0600; existing files are never overwritten.

    @return: what was written, by role.
    @raise FileExistsError: if any of the files exists.
    """
    os.makedirs(directory, exist_ok=True)
    paths = {
        role: os.path.join(directory, name)
        for role, name in [
            ("ca", "ca.pem"),
            ("ca-key", "ca.key"),
            ("server", "server.pem"),
            ("server-key", "server.key"),
            ("client", "client.pem"),
            ("client-key", "client.key"),
        ]
    }
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; not overwriting")
    ca = makeCA(days=max(days, 3650))
    server = issue(ca, hosts[0], hosts, days=days)
    client = issue(ca, clientName, client=True, days=days)
    for role, issued in [("ca", ca), ("server", server), ("client", client)]:
        writePrivate(paths[role], issued.certPEM().decode("ascii"))
        os.chmod(paths[role], 0o644)
        writePrivate(paths[f"{role}-key"], issued.keyPEM().decode("ascii"))
    return paths
