# -*- test-case-name: tests.cli.test_keys -*-
"""
The client's security flags and the key-making commands of C{frames}.

Global flags (L{addArguments}): C{--tls}, C{--ca}, C{--cert}, C{--key},
C{--user}, C{--secret-file}, with environment variables C{FRAMES_CA},
C{FRAMES_CERT}, C{FRAMES_KEY}, C{FRAMES_USER}, C{FRAMES_SECRET_FILE}.

Commands (L{register}): C{frames keygen NAME} makes a user's secret, adds
the user to a users file and writes (or prints) the client's secret file;
C{frames make-certs DIR} makes a private CA with a server and a client
certificate for a quick start with mutual TLS.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..auth.hmac import AuthError
from ..auth.secretfile import ClientSecret, UsersFileError, loadSecretFile
from ..bounds import boundedArgument
from ..wire import ErrorCode, FramesError, parseServer


class TLSFailure(Exception):
    """
    A TLS handshake failed; the message says why in words.
    """


def addArguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the client's TLS and login flags to the top-level parser.
    """
    env = os.environ.get
    group = parser.add_argument_group("security")
    group.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, checking the server's certificate and host name "
        "(implied by --ca/--cert)",
    )
    group.add_argument(
        "--ca",
        default=env("FRAMES_CA"),
        metavar="FILE",
        help="PEM CA certificate(s) to trust for the server (env FRAMES_CA; "
        "default: the system's trust store)",
    )
    group.add_argument(
        "--cert",
        default=env("FRAMES_CERT"),
        metavar="FILE",
        help="PEM client certificate, for servers requiring one (env FRAMES_CERT)",
    )
    group.add_argument(
        "--key",
        default=env("FRAMES_KEY"),
        metavar="FILE",
        help="PEM private key of --cert (env FRAMES_KEY; default: in the --cert file)",
    )
    group.add_argument(
        "--user",
        default=env("FRAMES_USER"),
        metavar="NAME",
        help="log in as NAME (env FRAMES_USER; must match the secret file)",
    )
    group.add_argument(
        "--secret-file",
        default=env("FRAMES_SECRET_FILE"),
        metavar="FILE",
        help="secret file made by 'frames keygen' (env FRAMES_SECRET_FILE); "
        "logs in and checks the server's proof",
    )


def clientSecret(args: argparse.Namespace) -> ClientSecret | None:
    """
    The secret to log in with, from C{--secret-file} (checked against
    C{--user}), or C{None} for no login.

    @raise ValueError: for inconsistent flags or an unusable file (the
        message says which).
    """
    secret: ClientSecret | None = None
    if args.secret_file:
        try:
            secret = loadSecretFile(args.secret_file)
        except OSError as e:
            # Name the file, as the TLS files' errors do (a usage error).
            raise UsersFileError(
                f"cannot read secret file {args.secret_file}: {e.strerror or e}"
            ) from None
        if args.user and args.user != secret.user:
            raise UsersFileError(
                f"--user {args.user} does not match the secret file, which is for {secret.user}"
            )
    elif args.user:
        raise UsersFileError("--user (or FRAMES_USER) needs --secret-file (or FRAMES_SECRET_FILE)")
    return secret


def clientSecurity(args: argparse.Namespace) -> dict[str, Any]:
    """
    The C{tls} and C{secret} arguments of C{connect()} from the flags.

    @raise ValueError: for inconsistent flags or unusable files (the
        message says which).
    """
    secret = clientSecret(args)
    tls = None
    if args.tls or args.ca or args.cert:
        if ":" in args.server and args.server.split(":", 1)[0] in ("tcp", "unix", "ssl", "tls"):
            raise ValueError("--tls needs --server HOST:PORT (the host name is checked)")
        # Here, not at the top: pyOpenSSL loads only once the command runs
        # (see twisted_frames.cli.main.main).
        from ..tls import clientOptions

        host, _ = parseServer(args.server)
        tls = clientOptions(host, args.ca, args.cert, args.key)
    return {"tls": tls, "secret": secret}


def explainTLSFailure(error: BaseException, server: str) -> TLSFailure | None:
    """
    Turn an OpenSSL or host-name verification error into one sentence, or
    C{None} if C{error} is not a TLS failure.
    """
    # An error of pyOpenSSL, service_identity or the standard library's ssl
    # (the quick path's, twisted_frames.cli.quick) can only come from a
    # module that is loaded: a command without TLS does not import them
    # for this.
    identity = sys.modules.get("service_identity.exceptions")
    stdlib = sys.modules.get("ssl")
    if (identity is not None and isinstance(error, identity.VerificationError)) or (
        stdlib is not None
        and isinstance(error, stdlib.SSLCertVerificationError)
        and error.verify_code in NAME_MISMATCH
    ):
        return TLSFailure(
            f"the server's certificate is not valid for the host name in {server} "
            "(host name mismatch)"
        )
    SSL = sys.modules.get("OpenSSL.SSL")
    isOpenSSL = SSL is not None and isinstance(error, SSL.Error)
    if not isOpenSSL and not (stdlib is not None and isinstance(error, stdlib.SSLError)):
        return None
    text = str(error)
    if "certificate verify failed" in text:
        return TLSFailure(
            "cannot verify the server's certificate (unknown CA, expired or not yet "
            "valid): check --ca"
        )
    if "certificate required" in text or "handshake failure" in text:
        return TLSFailure(
            "the server requires a client certificate signed by its CA: give --cert/--key"
        )
    if "unknown ca" in text or "bad certificate" in text or "certificate expired" in text:
        return TLSFailure("the server rejected our client certificate (--cert/--key)")
    if "wrong version number" in text or "packet length too long" in text:
        return TLSFailure("the server does not speak TLS on this port (drop --tls?)")
    if "protocol version" in text or "unsupported protocol" in text:
        return TLSFailure("no TLS version in common (TLS 1.2 or newer is required)")
    return TLSFailure(f"TLS handshake failed: {text}")


#: OpenSSL's verification errors for a certificate that does not name the
#: host: X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH.
NAME_MISMATCH = frozenset({62, 64})


def explainLoginFailure(error: FramesError, user: str) -> FramesError:
    """
    Name the user in a failed login's message.
    """
    if error.code == ErrorCode.AUTH_FAILED:
        return FramesError(
            error.code,
            f"login as {user} failed: unknown user or wrong secret (the server does "
            "not say which)",
        )
    return error


async def _keygen(reactor: Any, args: argparse.Namespace, ui: Any) -> int:
    from ..auth.keys import addUser, checkUserName, newSecret, writePrivate

    checkUserName(args.name)
    secret = newSecret(args.name)
    if args.users:
        addUser(args.users, secret.record(), replace=args.replace)
    text = secret.toText()
    notes = []
    if args.users:
        notes.append(f"user {args.name} added to {args.users}")
    else:
        notes.append(f"add this line to the server's users file:\n{secret.record().toLine()}")
    if args.output:
        writePrivate(args.output, text, replaceExisting=args.replace)
        notes.append(f"secret file written to {args.output} (mode 0600)")
    data = {
        "ok": True,
        "user": args.name,
        "users_file": args.users,
        "users_line": None if args.users else secret.record().toLine(),
        "secret_file": args.output,
        "secret": None if args.output else text,
    }
    if ui.json:
        ui.result("", data)
        return 0
    # Notes go to stderr, so that stdout is exactly the secret file when it
    # is printed ("frames keygen alice --users u > alice.secret" works).
    ui.err.write("\n".join(notes) + "\n")
    ui.err.flush()
    if not args.output:
        ui.out.write(text)
        ui.out.flush()
    return 0


async def _makeCerts(reactor: Any, args: argparse.Namespace, ui: Any) -> int:
    from ..certs import writeQuickStart

    hosts = args.host or ["localhost", "127.0.0.1", "::1"]
    paths = writeQuickStart(args.directory, hosts, clientName=args.client_name, days=args.days)
    d = args.directory
    ui.result(
        f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} in {d}\n"
        f"server certificate for: {', '.join(hosts)}\n"
        "serve:   twistd -n frameserver --listen tcp:8443:interface=127.0.0.1 "
        f"--tls-cert {paths['server']} --tls-key {paths['server-key']} --tls-ca {paths['ca']}\n"
        f"connect: frames --server {hosts[0]}:8443 --ca {paths['ca']} "
        f"--cert {paths['client']} --key {paths['client-key']} ping\n"
        f"keep {paths['ca-key']} offline: it can issue certificates your server trusts",
        {"ok": True, "files": paths, "hosts": hosts},
    )
    return 0


_days = boundedArgument(1, 36500)


def register(sub: Any) -> None:
    """
    Add C{keygen} and C{make-certs} to the C{frames} subcommands.
    """
    k = sub.add_parser(
        "keygen",
        help="make a user's secret: add it to a users file, write the client's secret file",
    )
    k.add_argument("name", help="user name (letters, digits, '.', '_', '-')")
    k.add_argument("--users", metavar="FILE", help="users file to add the user to (made 0600)")
    k.add_argument(
        "-o", "--output", metavar="FILE", help="write the client's secret file here (0600)"
    )
    k.add_argument("--replace", action="store_true", help="replace an existing user / secret file")
    k.set_defaults(run=_keygen)

    c = sub.add_parser(
        "make-certs",
        help="make a private CA, a server and a client certificate (quick start for TLS)",
    )
    c.add_argument("directory", help="directory to write the PEM files to")
    c.add_argument(
        "--host",
        action="append",
        help="server host name or address (repeatable; default localhost, 127.0.0.1, ::1)",
    )
    c.add_argument("--client-name", default="client", help="client certificate's name")
    c.add_argument("--days", type=_days, default=825, help="validity in days (default 825)")
    c.set_defaults(run=_makeCerts)


__all__ = [
    "AuthError",
    "TLSFailure",
    "addArguments",
    "clientSecret",
    "clientSecurity",
    "explainLoginFailure",
    "explainTLSFailure",
    "register",
]
