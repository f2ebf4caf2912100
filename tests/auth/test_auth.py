"""
Tests for L{twisted_frames.auth}: the HMAC construction, the file formats,
the twisted.cred pieces and the C{auth} op against every attack on login.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.inmemory import Server, makeServer
from tests.serverprocess import ROOT
from tests.test_docs import codeBlocks
from twisted_frames.auth import service as authmod
from twisted_frames.auth.client import login
from twisted_frames.auth.cred import HMACCredentials, UsersChecker
from twisted_frames.auth.hmac import (
    AuthError,
    authMessage,
    clientProof,
    deriveKeys,
    serverSignature,
    verifyClientProof,
)
from twisted_frames.auth.keys import (
    ClientSecret,
    UserRecord,
    UsersFile,
    UsersFileError,
    addUser,
    loadSecretFile,
    newSecret,
    parseSecret,
    parseUsers,
)
from twisted_frames.testing import Connection, connectedPair
from twisted_frames.wire import ErrorCode, FramesError


def _message(**overrides: Any) -> bytes:
    fields: dict[str, Any] = dict(
        version=1,
        user="alice",
        serverNonce="a" * 32,
        clientNonce="b" * 32,
        bindingType="none",
        binding=b"",
    )
    fields.update(overrides)
    return authMessage(**fields)


class ConstructionTests(SynchronousTestCase):
    """
    The pure functions both sides share.
    """

    def setUp(self) -> None:
        self.secret = newSecret("alice")
        self.keys = self.secret.keys()

    def test_proofVerifies(self) -> None:
        """
        A proof made with the client key verifies against the stored key.
        """
        m = _message()
        self.assertTrue(
            verifyClientProof(self.keys.storedKey, m, clientProof(self.keys.clientKey, m))
        )

    def test_flippedBit(self) -> None:
        """
        Flipping any single bit of a good proof makes it fail.
        """
        m = _message()
        proof = clientProof(self.keys.clientKey, m)
        for i in range(len(proof) * 8):
            bad = bytearray(proof)
            bad[i // 8] ^= 1 << (i % 8)
            self.assertFalse(verifyClientProof(self.keys.storedKey, m, bytes(bad)), i)

    def test_wrongLength(self) -> None:
        """
        Proofs one byte short or long, or empty, fail.
        """
        m = _message()
        proof = clientProof(self.keys.clientKey, m)
        for bad in (proof[:-1], proof + b"\0", b""):
            self.assertFalse(verifyClientProof(self.keys.storedKey, m, bad))

    def test_messageCoversEveryField(self) -> None:
        """
        A proof for one message fails for a message differing in any field.
        """
        m = _message()
        proof = clientProof(self.keys.clientKey, m)
        for change in (
            {"version": 2},
            {"user": "bob"},
            {"serverNonce": "c" * 32},
            {"clientNonce": "c" * 32},
            {"bindingType": "tls-exporter"},
            {"binding": b"x" * 32},
        ):
            self.assertFalse(
                verifyClientProof(self.keys.storedKey, _message(**change), proof), change
            )

    def test_unambiguous(self) -> None:
        """
        Moving bytes from one field to the next changes the message.
        """
        self.assertNotEqual(
            _message(user="ab", serverNonce="c"), _message(user="a", serverNonce="bc")
        )

    def test_serverSignatureNeedsServerKey(self) -> None:
        """
        The server's proof comes from the server key, which the client key
        and stored key do not give.
        """
        m = _message()
        sig = serverSignature(self.keys.serverKey, m)
        self.assertNotIn(
            sig, {serverSignature(self.keys.storedKey, m), serverSignature(self.keys.clientKey, m)}
        )

    def test_saltMatters(self) -> None:
        """
        The same secret with another salt gives other keys.
        """
        other = deriveKeys(self.secret.secret, b"\0" * 16)
        self.assertNotEqual(other.storedKey, self.keys.storedKey)

    def test_newSecretIsRandom(self) -> None:
        """
        Secrets are 32 random bytes and salts 16; two are never equal.
        """
        a, b = newSecret("a"), newSecret("a")
        self.assertEqual((len(a.secret), len(a.salt)), (32, 16))
        self.assertNotEqual(a.secret, b.secret)
        self.assertNotEqual(a.salt, b.salt)


class FileFormatTests(SynchronousTestCase):
    """
    Users files and client secret files.
    """

    def test_usersRoundTrip(self) -> None:
        """
        A record written as a line parses back to itself; comments and blank
        lines are ignored.
        """
        record = newSecret("alice").record()
        users = parseUsers(f"# comment\n\n{record.toLine()}\n")
        self.assertEqual(users, {"alice": record})

    def test_usersFileHoldsNoClientKey(self) -> None:
        """
        The users line contains neither the secret nor the client key, so a
        copy of it cannot make a proof.
        """
        secret = newSecret("alice")
        line = secret.record().toLine()
        import base64

        for hidden in (secret.secret, secret.keys().clientKey):
            self.assertNotIn(base64.b64encode(hidden).decode(), line)

    def test_usersMalformed(self) -> None:
        """
        Malformed lines are refused with the line number.
        """
        good = newSecret("alice").record().toLine()
        for text, fragment in [
            ("alice:hmac-sha256:AAAA", "expected NAME"),
            (good.replace("hmac-sha256", "md5"), "unknown mechanism"),
            (good.replace("alice", "-x"), "bad user name"),
            (f"{good}\n{good}", "appears twice"),
            (good[:-4] + "!!!!", "not base64"),
        ]:
            e = self.assertRaises(UsersFileError, parseUsers, text)
            self.assertIn(fragment, str(e))
            self.assertIn("line ", str(e))

    def test_secretRoundTrip(self) -> None:
        """
        A secret file parses back to the secret it was written from.
        """
        secret = newSecret("alice")
        self.assertEqual(parseSecret(secret.toText()), secret)

    def test_emptySecretRefused(self) -> None:
        """
        An empty or short secret is refused, not used.
        """
        text = newSecret("alice").toText()
        line = next(x for x in text.splitlines() if x.startswith("secret ="))
        for replacement in ("secret =", "secret = AAAA"):
            self.assertRaises(UsersFileError, parseSecret, text.replace(line, replacement))

    def _write(self, text: str, mode: int) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_worldReadableUsersFileRefused(self) -> None:
        """
        A users file others can read (or group/others can write) is refused;
        owner-only and group-readable are accepted.
        """
        line = newSecret("alice").record().toLine() + "\n"
        for mode in (0o644, 0o604, 0o620, 0o602):
            e = self.assertRaises(UsersFileError, UsersFile, self._write(line, mode))
            self.assertIn("too open", str(e))
        for mode in (0o600, 0o640, 0o400):
            self.assertIn("alice", UsersFile(self._write(line, mode)))

    def test_looseSecretFileRefused(self) -> None:
        """
        A client secret file anyone but its owner can access is refused, as
        OpenSSH refuses such a private key.
        """
        text = newSecret("alice").toText()
        for mode in (0o644, 0o640, 0o604):
            e = self.assertRaises(UsersFileError, loadSecretFile, self._write(text, mode))
            self.assertIn("too open", str(e))
        self.assertEqual(loadSecretFile(self._write(text, 0o600)).user, "alice")

    def test_addUser(self) -> None:
        """
        L{addUser} creates the file with mode 0600, refuses a duplicate and
        replaces on request.
        """
        path = self.mktemp()
        first = newSecret("alice").record()
        addUser(path, first)
        addUser(path, newSecret("bob").record())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertRaises(UsersFileError, addUser, path, newSecret("alice").record())
        second = newSecret("alice").record()
        addUser(path, second, replace=True)
        users = UsersFile(path)
        self.assertEqual(users["alice"], second)
        self.assertIn("bob", users)

    def test_usersFileReloads(self) -> None:
        """
        A user added while the server runs can log in without a restart; a
        later unsafe change is ignored and the last good contents kept.
        """
        path = self.mktemp()
        addUser(path, newSecret("alice").record())
        users = UsersFile(path)
        self.assertNotIn("bob", users)
        addUser(path, newSecret("bob").record())
        self.assertIn("bob", users)
        with open(path, "a") as f:
            f.write("garbage\n")
        self.assertIn("bob", users)


class CheckerTests(SynchronousTestCase):
    """
    The twisted.cred checker.
    """

    def test_unknownUserDoesTheSameWork(self) -> None:
        """
        An unknown user is checked against a decoy record (the same HMAC
        work as a wrong secret) and fails the same way.
        """
        alice = newSecret("alice")
        checker = UsersChecker({"alice": alice.record()})
        calls: list[str] = []

        class Spy(HMACCredentials):
            def checkKeys(self, storedKey: bytes, serverKey: bytes) -> bool:
                calls.append(self.username)
                return super().checkKeys(storedKey, serverKey)

        m = _message()
        wrong = self.failureResultOf(
            checker.requestAvatarId(Spy("alice", m, b"\0" * 32)), UnauthorizedLogin
        )
        unknown = self.failureResultOf(
            checker.requestAvatarId(Spy("mallory", m, b"\0" * 32)), UnauthorizedLogin
        )
        self.assertEqual(calls, ["alice", "mallory"])
        self.assertEqual(type(wrong.value), type(unknown.value))

    def test_goodProof(self) -> None:
        """
        A good proof yields the user name and the server's signature.
        """
        alice = newSecret("alice")
        keys = alice.keys()
        m = _message()
        creds = HMACCredentials("alice", m, clientProof(keys.clientKey, m))
        self.assertEqual(
            self.successResultOf(UsersChecker({"alice": alice.record()}).requestAvatarId(creds)),
            "alice",
        )
        self.assertEqual(creds.serverProof, serverSignature(keys.serverKey, m))


def _documentedVector() -> tuple[dict[str, str], list[dict[str, str]]]:
    """
    The login test vector of C{docs/security.md}: its common fields, and the
    fields of each binding case (a C{message} as its frames, spaces removed).
    """
    [block] = [b for b in codeBlocks(ROOT / "docs" / "security.md", "text") if "server_proof" in b]
    common: dict[str, str] = {}
    cases: list[dict[str, str]] = []
    current = common
    name = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if sep and key.strip():
            name = key.strip()
            if name == "binding_type":
                current = {}
                cases.append(current)
            current[name] = value.strip().replace(" ", "")
        else:
            # A continuation line of the message's frames.
            current[name] += line.replace(" ", "")
    return common, cases


class DocumentedVectorTests(SynchronousTestCase):
    """
    The test vector in C{docs/security.md} follows from the formulas printed
    beside it, computed here with nothing but C{hmac} and C{hashlib}, and the
    server's code gives the same values.
    """

    def test_vector(self) -> None:
        """
        Keys, message, proof and server proof of both binding cases.
        """
        common, cases = _documentedVector()
        self.assertEqual([c["binding_type"] for c in cases], ["none", "tls-exporter"])
        secret, salt = bytes.fromhex(common["secret"]), bytes.fromhex(common["salt"])

        def mac(key: bytes, message: bytes) -> bytes:
            return hmac.new(key, message, hashlib.sha256).digest()

        salted = mac(salt, secret)
        clientKey = mac(salted, b"twisted-frames client key")
        storedKey = hashlib.sha256(clientKey).digest()
        serverKey = mac(salted, b"twisted-frames server key")
        self.assertEqual(
            [common[k] for k in ("salted", "clientKey", "storedKey", "serverKey")],
            [salted.hex(), clientKey.hex(), storedKey.hex(), serverKey.hex()],
        )
        keys = deriveKeys(secret, salt)
        self.assertEqual(
            (keys.clientKey, keys.storedKey, keys.serverKey), (clientKey, storedKey, serverKey)
        )
        for case in cases:
            binding = bytes.fromhex(case["binding"])
            # Every field as the text (or, for the binding, the raw bytes)
            # the page says, each behind its 4-byte length.
            fields = [
                b"twisted-frames auth v1",
                b"hmac-sha256",
                b"1",
                common["user"].encode(),
                common["server_nonce"].encode("ascii"),
                common["cnonce"].encode("ascii"),
                case["binding_type"].encode("ascii"),
                binding,
            ]
            message = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
            self.assertEqual(case["message"], message.hex())
            proof = bytes(a ^ b for a, b in zip(clientKey, mac(storedKey, message), strict=True))
            self.assertEqual(case["proof"], proof.hex())
            self.assertEqual(case["server_proof"], mac(serverKey, message).hex())
            code = authMessage(
                1,
                common["user"],
                common["server_nonce"],
                common["cnonce"],
                case["binding_type"],
                binding,
            )
            self.assertEqual(code, message)
            self.assertEqual(clientProof(keys.clientKey, code), proof)
            self.assertTrue(verifyClientProof(keys.storedKey, code, proof))
            self.assertEqual(serverSignature(keys.serverKey, code), mac(serverKey, message))


class LoginTests(SynchronousTestCase):
    """
    The C{auth} op over an in-memory connection, against the attacks it
    must resist.
    """

    def setUp(self) -> None:
        # The login deadline has its own test; the others advance the clock
        # past it to wait out penalties.
        self.server: Server = makeServer(loginTimeout=None)
        self.events: list[dict[str, Any]] = []
        self.patch(authmod, "log", Logger(namespace="test", observer=self.events.append))

    def connect(self, host: str = "192.0.2.7") -> Connection:
        return connectedPair(self.server.factory, peer=host)

    def authFields(self, conn: Connection, secret: ClientSecret, **over: Any) -> dict[str, Any]:
        """
        The fields of a correct C{auth} request for C{conn}, with changes.
        """
        assert conn.client.greeting is not None
        keys = secret.keys()
        fields: dict[str, Any] = {
            "user": secret.user,
            "mechanism": "hmac-sha256",
            "cnonce": "c" * 32,
            "binding": "none",
        }
        fields.update({k: v for k, v in over.items() if k in fields})
        m = authMessage(
            1, secret.user, over.get("nonce", conn.server.nonce), fields["cnonce"], "none", b""
        )
        fields["proof"] = over.get("proof", clientProof(keys.clientKey, m).hex())
        return fields

    def nextAttempt(self, conn: Connection) -> Connection:
        """
        Wait out the source's penalty; reconnect if the connection was
        closed after too many failures.
        """
        self.server.clock.advance(60)
        conn.pump.flush()
        return self.connect() if conn.client.isClosed else conn

    def auth(self, conn: Connection, fields: dict[str, Any]) -> Any:
        d = conn.run(conn.client.request("auth", fields))
        return d

    def failed(
        self, conn: Connection, fields: dict[str, Any], code: str = "auth_failed"
    ) -> FramesError:
        f = self.failureResultOf(self.auth(conn, fields), FramesError)
        self.assertEqual(f.value.code, code)
        return f.value

    def test_loginUnlocksOps(self) -> None:
        """
        Before login only the greeting, C{auth} and C{ping} are served;
        after it, the other ops are, and the request knows the user.
        """
        conn = self.connect()
        f = self.failureResultOf(conn.run(conn.frames.request("whoami")), FramesError)
        self.assertEqual(f.value.code, ErrorCode.AUTH_REQUIRED)
        self.assertEqual(self.successResultOf(conn.run(conn.frames.ping(b"hi"))), b"hi")
        self.assertEqual(
            self.successResultOf(conn.run(login(conn.frames, self.server.alice))), "alice"
        )
        reply = self.successResultOf(conn.run(conn.frames.request("whoami")))
        self.assertEqual(reply.header["user"], "alice")
        self.assertEqual(conn.server.user, "alice")

    def test_serverProvesKey(self) -> None:
        """
        A server whose users file has the right stored key but not the
        server key (an impostor with half a copy) fails the client's check.
        """
        alice = newSecret("alice")
        record = alice.record()
        forged = UserRecord("alice", record.salt, record.storedKey, b"\1" * 32)
        self.server = makeServer(records=[forged])
        conn = self.connect()
        f = self.failureResultOf(conn.run(login(conn.frames, alice)), AuthError)
        self.assertIn("failed to prove", str(f.value))

    def test_clientInsistsOnMutualAuth(self) -> None:
        """
        A client given a secret refuses a server that does not offer login,
        rather than carrying on unauthenticated.
        """
        self.server = makeServer(authRequired=False)
        conn = self.connect()
        f = self.failureResultOf(conn.run(login(conn.frames, self.server.alice)), AuthError)
        self.assertIn("does not offer", str(f.value))

    def test_replayedResponseOnAnotherConnection(self) -> None:
        """
        A good C{auth} request captured from one connection is refused on
        another: the server's nonce differs.
        """
        first = self.connect()
        fields = self.authFields(first, self.server.alice)
        self.successResultOf(self.auth(first, fields))
        second = self.connect()
        self.failed(second, fields)
        self.assertIsNone(second.server.user)

    def test_nonceIsSingleUse(self) -> None:
        """
        Each attempt consumes the server nonce: a request made for the nonce
        of a failed attempt is refused, and the failure carries the new one.
        """
        conn = self.connect()
        greetingNonce = conn.server.nonce
        error = self.failed(
            conn, self.authFields(conn, self.server.alice, cnonce="d" * 32, proof="0" * 64)
        )
        self.assertNotEqual(error.details["nonce"], greetingNonce)
        self.assertEqual(error.details["nonce"], conn.server.nonce)
        self.server.clock.advance(60)
        stale = self.authFields(conn, self.server.alice, nonce=greetingNonce)
        self.failed(conn, stale)
        self.server.clock.advance(60)
        self.successResultOf(self.auth(conn, self.authFields(conn, self.server.alice)))

    def test_wrongLengthMAC(self) -> None:
        """
        A proof of the wrong length is refused before any MAC is computed,
        and counts as a failure.
        """
        conn = self.connect()
        good = self.authFields(conn, self.server.alice)["proof"]
        for bad in (good[:-2], good + "00", "", "zz" * 32):
            error = self.failed(
                conn, dict(self.authFields(conn, self.server.alice), proof=bad), "invalid_argument"
            )
            self.assertIn("64 hex digits", error.message)
            conn = self.nextAttempt(conn)
        self.assertTrue(self.server.auth.penalties.failures("192.0.2.7") >= 4)

    def test_flippedBitOnTheWire(self) -> None:
        """
        A proof with one bit flipped is refused.
        """
        conn = self.connect()
        fields = self.authFields(conn, self.server.alice)
        proof = bytearray(bytes.fromhex(fields["proof"]))
        proof[17] ^= 0x08
        self.failed(conn, dict(fields, proof=proof.hex()))
        self.assertIsNone(conn.server.user)

    def test_unknownUserLooksLikeWrongSecret(self) -> None:
        """
        An unknown user gets the same reply (code, message, fields) after the
        same delay as a wrong secret; only the server's log tells them apart.
        """
        mallory = newSecret("mallory")
        wrongAlice = ClientSecret("alice", mallory.secret, mallory.salt)
        replies = []
        for n, secret in enumerate([wrongAlice, mallory]):
            conn = self.connect(f"192.0.2.{10 + n}")
            # One earlier failure each, so the same penalty applies.
            self.failed(conn, self.authFields(conn, secret))
            d = self.auth(conn, self.authFields(conn, secret))
            self.assertNoResult(d)
            self.server.clock.advance(0.999)
            conn.pump.flush()
            self.assertNoResult(d)
            self.server.clock.advance(0.001)
            conn.pump.flush()
            error = self.failureResultOf(d, FramesError).value
            replies.append((error.code, error.message, sorted(error.details)))
        self.assertEqual(replies[0], replies[1])
        reasons = [e.get("reason") for e in self.events if e.get("reason")]
        self.assertEqual(reasons, ["wrong secret"] * 2 + ["unknown user"] * 2)

    def test_emptySecret(self) -> None:
        """
        A proof made from an empty secret does not log in.
        """
        conn = self.connect()
        empty = ClientSecret("alice", b"", self.server.alice.salt)
        self.failed(conn, self.authFields(conn, empty))

    def test_noWeakerMechanism(self) -> None:
        """
        Any mechanism but hmac-sha256 is refused: nothing weaker can be
        negotiated.
        """
        conn = self.connect()
        for mechanism in ("hmac-md5", "plain", None, ""):
            error = self.failed(
                conn,
                dict(self.authFields(conn, self.server.alice), mechanism=mechanism),
                "invalid_argument",
            )
            self.assertIn("only hmac-sha256", error.message)
            conn = self.nextAttempt(conn)

    def test_bindingMismatch(self) -> None:
        """
        A client that believes it is on TLS while the server sees plain TCP
        (something in between) is refused with the message security.md
        quotes, and that counts as a failed attempt.
        """
        conn = self.connect()
        error = self.failed(
            conn, dict(self.authFields(conn, self.server.alice), binding="tls-exporter")
        )
        self.assertEqual(
            error.message,
            "channel binding mismatch: the server sees 'none', the client 'tls-exporter' "
            "(a TLS-terminating proxy in between?)",
        )
        self.assertEqual(error.details, {"nonce": conn.server.nonce, "attempts_left": 2})
        self.assertEqual(self.server.auth.penalties.failures("192.0.2.7"), 1)

    def received(self, conn: Connection) -> list[dict[str, Any]]:
        """
        Record every message header the client receives from now on, as
        sent (the client API folds the C{error} member into an exception).
        """
        headers: list[dict[str, Any]] = []
        messageStarted = conn.client.messageStarted

        def record(header: dict[str, Any], bodyLength: int) -> Any:
            headers.append(header)
            return messageStarted(header, bodyLength)

        self.patch(conn.client, "messageStarted", record)
        return headers

    def test_closeAfterThreeFailures(self) -> None:
        """
        The third failed attempt on one connection closes it; its reply says
        so with a top-level C{"closing": true}, as every closing message
        does, not inside C{error}.
        """
        conn = self.connect()
        headers = self.received(conn)
        for n in range(3):
            d = self.auth(conn, self.authFields(conn, self.server.alice, proof="0" * 64))
            self.server.clock.advance(60)
            conn.pump.flush()
            error = self.failureResultOf(d, FramesError).value
            self.assertEqual(error.details["attempts_left"], 2 - n)
        self.assertNotIn("closing", error.details)
        self.assertTrue(conn.client.isClosed)
        self.assertEqual([h.get("closing") for h in headers], [None, None, True])
        self.assertEqual(
            headers[2],
            {
                "id": 3,
                "ok": False,
                "error": {
                    "code": "auth_failed",
                    "message": "authentication failed: unknown user or wrong secret",
                    "nonce": conn.server.nonce,
                    "attempts_left": 0,
                },
                "closing": True,
            },
        )

    def test_growingDelayPerSource(self) -> None:
        """
        After each failure from a source, its next attempt waits 1, 2, 4, 8,
        8 s; a new connection does not escape it; another source is not
        delayed; a good attempt waits too, then succeeds.
        """
        clock = self.server.clock
        bad = {"proof": "0" * 64}
        for expected in (1, 2, 4, 8, 8):
            conn = self.connect()
            if expected == 1:
                self.failed(conn, self.authFields(conn, self.server.alice, **bad))
            d = self.auth(conn, self.authFields(conn, self.server.alice, **bad))
            self.assertNoResult(d)
            clock.advance(expected - 0.01)
            conn.pump.flush()
            self.assertNoResult(d)
            clock.advance(0.01)
            conn.pump.flush()
            self.failureResultOf(d, FramesError)
        other = self.connect("198.51.100.1")
        self.successResultOf(self.auth(other, self.authFields(other, self.server.alice)))
        conn = self.connect()
        d = self.auth(conn, self.authFields(conn, self.server.alice))
        self.assertNoResult(d)
        clock.advance(8)
        conn.pump.flush()
        self.successResultOf(d)

    def test_penaltyForgotten(self) -> None:
        """
        A source's failures are forgotten ten minutes after the last one.
        """
        conn = self.connect()
        self.failed(conn, self.authFields(conn, self.server.alice, proof="0" * 64))
        self.server.clock.advance(601)
        conn = self.connect()
        self.successResultOf(self.auth(conn, self.authFields(conn, self.server.alice)))

    def test_failureLogLine(self) -> None:
        """
        Each failure logs one line naming the peer and the user.
        """
        conn = self.connect()
        self.failed(conn, self.authFields(conn, self.server.alice, proof="0" * 64))
        failures = [e for e in self.events if e["log_format"].startswith("login failure")]
        self.assertEqual(len(failures), 1)
        self.assertEqual((failures[0]["peer"], failures[0]["user"]), ("192.0.2.7:40000", "alice"))

    def test_loginDeadline(self) -> None:
        """
        A connection that has not logged in 10 s after connecting is told so
        and closed; one that has logged in stays.
        """
        self.server = makeServer()
        idle = self.connect()
        done = self.connect("198.51.100.2")
        self.successResultOf(done.run(login(done.frames, self.server.alice)))
        self.server.clock.advance(9.9)
        idle.pump.flush()
        self.assertFalse(idle.client.isClosed)
        self.server.clock.advance(0.1)
        idle.pump.flush()
        done.pump.flush()
        self.assertTrue(idle.client.isClosed)
        self.assertEqual(
            idle.client.serverError.code if idle.client.serverError else None, "timeout"
        )
        self.assertFalse(done.client.isClosed)
        self.assertTrue(any("did not log in" in e["log_format"] for e in self.events))

    def test_deadlineAnswersAttemptWaitingOutDelay(self) -> None:
        """
        An C{auth} still waiting out its source's delay when the login
        deadline passes gets the deadline's error as its one final reply
        (its id, C{"closing": true}) and the connection closes.  The attempt
        is never checked: it neither logs in nor counts as a failure, and
        nothing of it is left scheduled.
        """
        self.server = makeServer()
        clock = self.server.clock
        conn = self.connect()
        headers = self.received(conn)
        clock.advance(5)
        for _ in range(4):
            # Four failures from this source elsewhere: the next attempt
            # waits 8 s, from 5 s to 13 s, past the deadline at 10 s.
            self.server.auth.penalties.failed("192.0.2.7")
        d = self.auth(conn, self.authFields(conn, self.server.alice))
        clock.advance(4.9)
        conn.pump.flush()
        self.assertNoResult(d)
        clock.advance(0.1)
        conn.pump.flush()
        error = self.failureResultOf(d, FramesError).value
        self.assertEqual((error.code, error.message), ("timeout", "no login within 10 s"))
        self.assertEqual(
            headers,
            [
                {
                    "id": 1,
                    "ok": False,
                    "error": {"code": "timeout", "message": "no login within 10 s"},
                    "closing": True,
                }
            ],
        )
        self.assertTrue(conn.client.isClosed)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertIsNone(conn.server.user)
        self.assertEqual(self.server.auth.penalties.failures("192.0.2.7"), 4)
        self.assertFalse(any(e["log_format"].startswith("login:") for e in self.events))

    def test_lostConnectionCancelsAttemptWaitingOutDelay(self) -> None:
        """
        An C{auth} still waiting out its source's delay when its connection
        is lost is never checked: nothing is left scheduled, and when the
        delay would have ended it neither logs in, nor logs, nor counts a
        failure for the connection that is gone.
        """
        for proof in (None, "0" * 64):
            self.server = makeServer(loginTimeout=None)
            clock = self.server.clock
            for _ in range(4):
                # The next attempt from this source waits 8 s.
                self.server.auth.penalties.failed("192.0.2.7")
            conn = self.connect()
            over = {} if proof is None else {"proof": proof}
            d = self.auth(conn, self.authFields(conn, self.server.alice, **over))
            conn.serverTransport.loseConnection()
            conn.pump.flush()
            self.failureResultOf(d)
            self.assertEqual(clock.getDelayedCalls(), [])
            clock.advance(60)
            self.assertIsNone(conn.server.user)
            self.assertEqual(self.server.auth.penalties.failures("192.0.2.7"), 4)
        self.assertEqual(
            [e["log_format"] for e in self.events if e["log_format"].startswith("login")], []
        )

    def test_deadlineWithoutAttemptPending(self) -> None:
        """
        When the deadline passes between attempts, its message has id
        C{null}: no request is waiting for it.
        """
        self.server = makeServer()
        conn = self.connect()
        headers = self.received(conn)
        self.failed(conn, self.authFields(conn, self.server.alice, proof="0" * 64))
        self.server.clock.advance(10)
        conn.pump.flush()
        self.assertEqual(
            headers[1],
            {
                "id": None,
                "ok": False,
                "error": {"code": "timeout", "message": "no login within 10 s"},
                "closing": True,
            },
        )
        self.assertTrue(conn.client.isClosed)

    def test_malformedAttemptsCount(self) -> None:
        """
        A malformed C{auth} (bad user name, mechanism, C{cnonce}, C{proof})
        is a failed attempt like a wrong proof: it waits out the delay, is
        answered with the next nonce and C{attempts_left}, counts against
        the source, and the third closes the connection.  A refused C{busy}
        or already-logged-in C{auth} is not an attempt: answered at once,
        it counts nothing.
        """
        # One earlier failure from this source, so the first attempt waits.
        self.server.auth.penalties.failed("192.0.2.7")
        conn = self.connect()
        headers = self.received(conn)
        good = self.authFields(conn, self.server.alice)
        pending = self.auth(conn, dict(good, user="-bad"))
        self.failed(conn, good, "busy")
        self.server.clock.advance(60)
        conn.pump.flush()
        self.failureResultOf(pending, FramesError)
        for change in ({"mechanism": "plain"}, {"cnonce": "c" * 31 + " "}):
            d = self.auth(conn, dict(self.authFields(conn, self.server.alice), **change))
            self.server.clock.advance(60)
            conn.pump.flush()
            self.failureResultOf(d, FramesError)
        self.assertEqual(
            [
                (h["error"]["code"], h["error"].get("attempts_left"), h.get("closing"))
                for h in headers
            ],
            [
                ("busy", None, None),
                ("invalid_argument", 2, None),
                ("invalid_argument", 1, None),
                ("invalid_argument", 0, True),
            ],
        )
        self.assertEqual(
            [h["error"]["message"] for h in headers],
            [
                "a login attempt is already in progress",
                "'user' must be a valid user name",
                "unsupported mechanism 'plain': this server offers only hmac-sha256",
                "'cnonce' must be 32 hex digits",
            ],
        )
        self.assertTrue(conn.client.isClosed)
        self.assertEqual(self.server.auth.penalties.failures("192.0.2.7"), 4)
        self.server.clock.advance(60)
        conn = self.connect()
        self.successResultOf(self.auth(conn, self.authFields(conn, self.server.alice)))
        self.failed(conn, self.authFields(conn, self.server.alice), "invalid_argument")
        self.assertEqual(self.server.auth.penalties.failures("192.0.2.7"), 4)

    def test_hexFieldsAreHexDigitsOnly(self) -> None:
        """
        C{cnonce} and C{proof} must be hex digits (either case), nothing
        else, even when C{bytes.fromhex} would take the text (spaces).
        """
        conn = self.connect()
        good = self.authFields(conn, self.server.alice)
        for field, bad in (
            ("cnonce", "cc " * 10 + "cc"),
            ("proof", "00 " * 21 + "0"),
            ("proof", good["proof"][:-1] + "\n"),
        ):
            error = self.failed(conn, dict(good, **{field: bad}), "invalid_argument")
            self.assertEqual(error.message, f"'{field}' must be {len(bad)} hex digits")
            conn = self.nextAttempt(conn)
            good = self.authFields(conn, self.server.alice)

    def test_nonceFramedAsSent(self) -> None:
        """
        The MAC covers each nonce's hex text as sent, not the bytes it
        spells: a client nonce sent in capitals is MACed in capitals.
        """
        conn = self.connect()
        secret = self.server.alice
        upper = "ABCDEF0123456789" * 2
        asSent = authMessage(1, "alice", conn.server.nonce, upper, "none", b"")
        lowered = authMessage(1, "alice", conn.server.nonce, upper.lower(), "none", b"")
        fields = dict(self.authFields(conn, secret), cnonce=upper)
        fields["proof"] = clientProof(secret.keys().clientKey, lowered).hex()
        self.failed(conn, fields)
        conn = self.nextAttempt(conn)
        asSent = authMessage(1, "alice", conn.server.nonce, upper, "none", b"")
        fields = dict(self.authFields(conn, secret), cnonce=upper)
        fields["proof"] = clientProof(secret.keys().clientKey, asSent).hex()
        reply = self.successResultOf(self.auth(conn, fields))
        self.assertEqual(
            reply.header["server_proof"], serverSignature(secret.keys().serverKey, asSent).hex()
        )

    def test_oneAttemptAtATime(self) -> None:
        """
        A second C{auth} while one is pending is refused as busy.
        """
        conn = self.connect()
        self.failed(conn, self.authFields(conn, self.server.alice, proof="0" * 64))
        first = self.auth(conn, self.authFields(conn, self.server.alice))
        self.failed(conn, self.authFields(conn, self.server.alice), "busy")
        self.server.clock.advance(1)
        conn.pump.flush()
        self.successResultOf(first)

    def test_alreadyLoggedIn(self) -> None:
        """
        C{auth} after a successful login is refused.
        """
        conn = self.connect()
        self.successResultOf(self.auth(conn, self.authFields(conn, self.server.alice)))
        self.failed(conn, self.authFields(conn, self.server.alice), "invalid_argument")
        self.assertEqual(conn.server.user, "alice")

    def test_preAuthBodyLimit(self) -> None:
        """
        Before login a body over 64 KiB is a violation (even to C{ping});
        after login the usual limits apply.
        """
        conn = self.connect()
        f = self.failureResultOf(conn.run(conn.frames.ping(b"x" * (64 * 1024 + 1))), FramesError)
        self.assertEqual(f.value.code, "body_too_large")
        self.assertTrue(conn.client.isClosed)
        conn = self.connect()
        self.successResultOf(conn.run(login(conn.frames, self.server.alice)))
        body = b"x" * (64 * 1024 + 1)
        self.assertEqual(self.successResultOf(conn.run(conn.frames.ping(body))), body)
