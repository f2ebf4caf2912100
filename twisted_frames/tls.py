# -*- test-case-name: tests.test_tls -*-
"""
TLS options for both ends, from PEM files.

Server: L{serverOptions} builds a C{CertificateOptions} with TLS 1.2 as the
minimum, AES-128-GCM preferred, and, given a CA file, client certificates
required and verified (mutual TLS: the C{ssl:} endpoint string cannot ask
for that).  Client:
L{clientOptions} checks the server's certificate against a CA file (or the
platform's trust store) and its host name, and can present a client
certificate.
"""

from __future__ import annotations

from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)

#: The oldest protocol either end accepts.
MINIMUM_TLS = TLSVersion.TLSv1_2
#: The server's TLS 1.3 cipher suites, in its order of preference (it
#: chooses: Twisted sets C{OP_CIPHER_SERVER_PREFERENCE}): AES-128-GCM
#: first, which encrypts bulk data faster than OpenSSL's default first
#: choice, AES-256-GCM, and is as strong as the P-256 keys of the
#: certificates; a client that does not offer it gets the next.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#: The server's TLS 1.2 ciphers: Twisted's defaults with the AES-128-GCM
#: ones first, for the same reason.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDH+AESGCM:ECDH+CHACHA20:DH+AESGCM:DH+CHACHA20:ECDH+AES256:DH+AES256:"
    "ECDH+AES128:DH+AES:RSA+AESGCM:RSA+AES:!aNULL:!MD5:!DSS"
)


class TLSConfigError(ValueError):
    """
    A certificate, key or CA file is missing, unreadable or malformed.
    """


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def loadCertificates(path: str, what: str = "certificate file") -> list[x509.Certificate]:
    """
    All certificates in a PEM file, in order.

    @raise TLSConfigError: if there are none or the file is not PEM.
    """
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(f"{what} {path} holds no PEM certificate: {e}") from None
    return certs


def loadPrivateKey(path: str) -> Any:
    """
    The first private key in a PEM file (unencrypted).

    @raise TLSConfigError: if there is none, or it is encrypted.
    """
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(f"private key {path} is not an unencrypted PEM key: {e}") from None


def _twistedCertificate(cert: x509.Certificate) -> Certificate:
    # A trust root is still made of pyOpenSSL certificates: Twisted adds
    # them to the context's X509Store, whose add_cert takes no other kind
    # (and does not warn about it).
    return Certificate(crypto.X509.from_cryptography(cert))  # type: ignore[no-untyped-call]


def trustRootFromFile(path: str) -> Any:
    """
    A Twisted trust root made of every CA certificate in a PEM file.
    """
    certificates = [_twistedCertificate(c) for c in loadCertificates(path, "CA file")]
    return trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]


def _spki(key: Any) -> bytes:
    return cast(
        bytes,
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def _chainAndKey(certFile: str, keyFile: str | None) -> tuple[list[x509.Certificate], Any]:
    """
    The certificates in C{certFile} (leaf first) and the private key that
    matches the leaf, as C{cryptography} objects.

    @raise TLSConfigError: on a bad file, or if the key does not match.
    """
    certs = loadCertificates(certFile)
    key = loadPrivateKey(keyFile or certFile)
    if _spki(certs[0].public_key()) != _spki(key.public_key()):
        raise TLSConfigError(f"the key in {keyFile or certFile} does not match {certFile}")
    return certs, key


def _identityOptions(certFile: str, keyFile: str | None) -> dict[str, Any]:
    """
    The C{CertificateOptions} arguments that present C{certFile}'s chain
    and its key.

    They are C{cryptography} objects: C{CertificateOptions} hands them on
    to pyOpenSSL's C{Context}, which takes them as they are and deprecates
    its own C{X509} and C{PKey} wrappers.
    """
    certs, key = _chainAndKey(certFile, keyFile)
    return {"privateKey": key, "certificate": certs[0], "extraCertChain": certs[1:]}


def privateCertificate(certFile: str, keyFile: str | None = None) -> PrivateCertificate:
    """
    A certificate and its key (the key may be in the certificate's file).

    @raise TLSConfigError: if the key does not match the certificate.
    """
    certs, key = _chainAndKey(certFile, keyFile)
    pair = KeyPair(crypto.PKey.from_cryptography_key(key))  # type: ignore[no-untyped-call]
    leaf = PrivateCertificate.fromCertificateAndKeyPair(  # type: ignore[no-untyped-call]
        _twistedCertificate(certs[0]), pair
    )
    return cast(PrivateCertificate, leaf)


def serverOptions(certFile: str, keyFile: str | None = None, caFile: str | None = None) -> Any:
    """
    Server TLS options: TLS 1.2 or newer; with C{caFile}, a client
    certificate signed by one of its CAs is required.

    @param certFile: the server's certificate, followed by any intermediate
        certificates (sent along as the chain).
    @raise TLSConfigError: on a bad file.
    """
    kwargs = _identityOptions(certFile, keyFile)
    if caFile is not None:
        kwargs["trustRoot"] = trustRootFromFile(caFile)
    ciphers = AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS)  # type: ignore[no-untyped-call]
    options = CertificateOptions(raiseMinimumTo=MINIMUM_TLS, acceptableCiphers=ciphers, **kwargs)
    # The options keep the context they make: every connection uses this one.
    options.getContext().set_tls13_ciphersuites(TLS13_SUITES.encode("ascii"))
    return options


def clientOptions(
    hostname: str,
    caFile: str | None = None,
    certFile: str | None = None,
    keyFile: str | None = None,
) -> IOpenSSLClientConnectionCreator:
    """
    Client TLS options: the server's certificate must chain to C{caFile}
    (or the platform's trust store) and name C{hostname} in its
    subjectAltName; C{certFile}/C{keyFile} are presented to a server that
    asks for a client certificate.
    """
    trustRoot = trustRootFromFile(caFile) if caFile is not None else None
    # The client certificate goes in through extraCertificateOptions rather
    # than clientCertificate=, which would pass pyOpenSSL objects on.
    extra: dict[str, Any] = {"raiseMinimumTo": MINIMUM_TLS}
    if certFile is not None:
        extra.update(_identityOptions(certFile, keyFile))
    return optionsForClientTLS(hostname, trustRoot=trustRoot, extraCertificateOptions=extra)
