"""
The quick path of the C{frames} CLI (L{twisted_frames.cli.quick}) against
the Twisted path: the same scenarios run through both (C{FRAMES_TWISTED=0}
and C{=1}), as real subprocesses against a real server or a misbehaving
peer on loopback, must print the same and exit with the same status.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.inmemory import makeCredentials
from tests.serverprocess import ServerProcess, childEnv, frames
from twisted_frames import wire
from twisted_frames.cli import quick
from twisted_frames.cli.failures import NoAnswer
from twisted_frames.cli.main import buildParser

DEADLINE = 30.0


def both(
    *argv: str, input: bytes = b"", prepare: Callable[[], None] = lambda: None
) -> list[tuple[int, Any, str]]:
    """
    Run C{frames ARGV} through the quick path and through Twisted.

    @param prepare: called before each run (to set the server's files up
        for it).
    @return: for each, C{(status, stdout, stderr)}, with what differs from
        one run to the next (round-trip times, elapsed seconds) taken out.
    """
    results = []
    for force in ("0", "1"):
        prepare()
        r = frames(*argv, input=input, env={quick.FORCE_TWISTED: force}, timeout=DEADLINE)
        results.append((r.returncode, _stable(r.stdout.decode()), r.stderr.decode()))
    return results


def _stable(out: str) -> Any:
    """
    C{out} without round-trip times and durations: JSON lines parsed
    without C{rtt_ms} and C{elapsed}; numbers with a decimal point in
    text replaced.
    """
    lines: list[Any] = []
    for line in out.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            lines.append(re.sub(r"\d+\.\d+", "N", line))
            continue
        if isinstance(data, dict):
            data.pop("rtt_ms", None)
            data.pop("elapsed", None)
        lines.append(data)
    return lines


def assertSame(results: list[tuple[int, Any, str]], status: int) -> tuple[Any, str]:
    """
    Both paths gave the same, with exit status C{status}.

    @return: the output and error text.
    """
    quickResult, twistedResult = results
    assert quickResult == twistedResult
    assert quickResult[0] == status, quickResult
    return quickResult[1], quickResult[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """
    A real server allowing C{sh}, C{cat} and C{true}.
    """
    root = tmp_path_factory.mktemp("root")
    with ServerProcess(
        str(root), "--allow-command", "sh", "--allow-command", "cat", "--allow-command", "true"
    ) as s:
        yield s


OK_CASES = [
    (["ping"], 0),
    (["--json", "ping", "-c", "3", "--size", "70000"], 0),
    (["ping", "-c", "2"], 0),
    (["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], 3),
    (["run", "--", "sh", "-c", "kill -KILL $$"], 128 + 9),
    (["run", "--timeout", "0.2", "--", "sh", "-c", "exec sleep 30"], 124),
    (["--json", "run", "--", "sh", "-c", "printf 'a;b'; printf e >&2; exit 2"], 2),
    (["run", "--json", "--", "sh", "-c", "printf '\\377'"], 0),
    (["run", "--max-output", "1000", "--", "sh", "-c", "exec yes"], 128 + 15),
    (["run", "--cwd", "nowhere", "--", "true"], 1),
    (["run", "--", "ls"], 1),
    (["--json", "run", "--", "ls"], 1),
    (["run", "--"], 2),
    (["run", "--timeout", "0", "--", "true"], 2),
    (["--user", "bob", "ping"], 2),
    (["--secret-file", "/nonexistent", "ping"], 2),
]


@pytest.mark.parametrize(("argv", "status"), OK_CASES)
def test_server(server: ServerProcess, argv: list[str], status: int) -> None:
    """
    Against a real server: success, an error reply, a remote exit status,
    signal, timeout and output cap, bad usage: the same from both paths.
    """
    assertSame(both("--server", server.address, *argv), status)


def _files(root: Path) -> None:
    """
    Make C{root} hold C{d/} with C{d/f} (5 bytes) and C{d/e/}, and nothing
    else.
    """
    for child in sorted(root.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"hello")
    for path in (root / "d" / "f", root / "d" / "e", root / "d"):
        os.utime(path, (1_700_000_000, 1_700_000_000))


FILE_CASES = [
    (["ls"], 0),
    (["--json", "ls", "d"], 0),
    (["ls", "nowhere"], 1),
    (["ls", "../up"], 1),
    (["stat", "d/f"], 0),
    (["--json", "stat", "./d//e/"], 0),
    (["stat", "nowhere"], 1),
    (["rm", "d/f", "nowhere", "d/e"], 1),
    (["--json", "rm", "d/f"], 0),
    (["rm", "d"], 1),
    (["mkdir", "d", "n/m", "d/f"], 1),
    (["--json", "mkdir", "x"], 0),
]


@pytest.mark.parametrize(("argv", "status"), FILE_CASES)
def test_files(server: ServerProcess, argv: list[str], status: int) -> None:
    """
    C{ls}, C{stat}, C{rm} and C{mkdir}, each from the same files: the same
    lines, objects and status from both paths, errors for some paths
    included.
    """
    root = Path(server.root)
    assertSame(both("--server", server.address, *argv, prepare=lambda: _files(root)), status)


def test_closingErrorForEveryPath(
    peer: Callable[[Callable[[socket.socket], None]], Peer],
) -> None:
    """
    A server that closes with an error during C{rm a b}: both paths report
    it for each path.
    """
    p = peer(_closesForViolation)
    _, err = assertSame(both("--server", p.address, "rm", "a", "b"), 1)
    assert err == "frames: rm: the server is shutting down [shutting_down]\n" * 2


def test_stdin(server: ServerProcess) -> None:
    """
    C{frames run -- cat} forwards stdin (several chunks and windows of it)
    and gives back the same bytes on both paths.
    """
    data = os.urandom(3 * 1024 * 1024 + 17)
    for force in ("0", "1"):
        r = frames(
            "--server",
            server.address,
            "run",
            "--",
            "cat",
            input=data,
            env={quick.FORCE_TWISTED: force},
            timeout=DEADLINE,
        )
        assert (r.returncode, r.stderr) == (0, b"")
        assert r.stdout == data


def test_streamed(server: ServerProcess) -> None:
    """
    The quick path writes the remote command's output as it arrives: the
    first line is read while the command still waits for its stdin.
    """
    cli = subprocess.Popen(
        [sys.executable, "-m", "twisted_frames", "--server", server.address]
        + ["run", "--", "sh", "-c", 'echo first; read x; echo "got $x"'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=childEnv({quick.FORCE_TWISTED: "0"}),
    )
    try:
        assert cli.stdin is not None and cli.stdout is not None
        ready, _, _ = select.select([cli.stdout], [], [], DEADLINE)
        assert ready and cli.stdout.readline() == b"first\n"
        assert cli.poll() is None
        out, err = cli.communicate(b"more\n", timeout=DEADLINE)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert (cli.returncode, out, err) == (0, b"got more\n", b"")


def test_stdoutClosed(server: ServerProcess) -> None:
    """
    A closed stdout (C{frames run -- yes | head -2}) stops the remote
    command and exits 141 (128 + SIGPIPE) on both paths.
    """
    for force in ("0", "1"):
        cli = subprocess.Popen(
            [sys.executable, "-m", "twisted_frames", "--server", server.address]
            + ["run", "-n", "--", "sh", "-c", "exec yes"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=childEnv({quick.FORCE_TWISTED: force}),
        )
        try:
            assert cli.stdout is not None and cli.stderr is not None
            assert cli.stdout.readline() == b"y\n"
            cli.stdout.close()
            assert cli.wait(DEADLINE) == 128 + signal.SIGPIPE, force
            assert cli.stderr.read() == b""
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
            assert cli.stderr is not None
            cli.stderr.close()


def test_refused() -> None:
    """
    Nobody listening: the same line and status 3.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for verb in (["ping"], ["--json", "run", "--", "true"]):
        _, err = assertSame(both("--server", f"127.0.0.1:{port}", *verb), 3)
        assert err == f"frames: cannot connect to 127.0.0.1:{port}: Connection refused\n"


def test_unknownHost() -> None:
    """
    A name that does not resolve: the same line and status 3.
    """
    assertSame(both("--server", "nosuch.invalid:1", "ping"), 3)


_HELLO = {"event": "hello", "protocol": "twisted-frames", "version": 1, "server": "peer"}


def _message(header: dict[str, Any], body: bytes = b"") -> bytes:
    data = json.dumps(header).encode()
    return struct.pack("!I", len(data)) + data + struct.pack("!I", len(body)) + body


def _holdUntilClosed(c: socket.socket) -> None:
    while c.recv(65536):
        pass


def _silent(c: socket.socket) -> None:
    _holdUntilClosed(c)


def _tlsRecord(c: socket.socket) -> None:
    c.sendall(b"\x16\x03\x01\x00\x05hello")
    _holdUntilClosed(c)


def _closes(c: socket.socket) -> None:
    pass


def _sshBanner(c: socket.socket) -> None:
    c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
    _holdUntilClosed(c)


def _greetsThenCloses(c: socket.socket) -> None:
    c.sendall(_message(_HELLO))
    c.recv(65536)


def _greetsThenResets(c: socket.socket) -> None:
    c.sendall(_message(_HELLO))
    c.recv(65536)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _greetsThenSilent(c: socket.socket) -> None:
    c.sendall(_message(_HELLO))
    _holdUntilClosed(c)


def _refuses(c: socket.socket) -> None:
    error = {"code": "busy", "message": "too many connections"}
    c.sendall(_message({"id": None, "ok": False, "closing": True, "error": error}))


def _otherVersion(c: socket.socket) -> None:
    c.sendall(_message({**_HELLO, "version": 2}))
    _holdUntilClosed(c)


def _closesForViolation(c: socket.socket) -> None:
    c.sendall(_message(_HELLO))
    c.recv(65536)
    error = {"code": "shutting_down", "message": "the server is shutting down"}
    c.sendall(_message({"id": None, "ok": False, "closing": True, "error": error}))


class Peer:
    """
    A listener on loopback whose every connection is handled by C{behave}
    in a thread; C{accepted} is set at the first.
    """

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.behave = behave
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.set()
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c: socket.socket) -> None:
        with c:
            try:
                self.behave(c)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def peer() -> Iterator[Callable[[Callable[[socket.socket], None]], Peer]]:
    """
    Makes L{Peer}s, closed at the end of the test.
    """
    made: list[Peer] = []

    def make(behave: Callable[[socket.socket], None]) -> Peer:
        made.append(Peer(behave))
        return made[-1]

    yield make
    for p in made:
        p.close()


PEER_CASES = [
    (_silent, ["--greeting-timeout", "0.3"], 3, "is it a TLS server? try --tls"),
    (_silent, ["--greeting-timeout", "0", "--timeout", "0.3"], 4, "no answer from"),
    (_tlsRecord, [], 3, "it answered with a TLS record"),
    (_closes, [], 3, "lost: Connection was closed cleanly"),
    (_sshBanner, [], 1, "did not greet as twisted-frames (header frame of"),
    (_greetsThenCloses, [], 3, "lost: Connection was closed cleanly"),
    (_greetsThenResets, [], 3, "lost in a non-clean fashion"),
    (_greetsThenSilent, ["--timeout", "0.3"], 4, "no answer from"),
    (_refuses, [], 1, "too many connections [busy]"),
    (_otherVersion, [], 1, "[version_mismatch]"),
    (_closesForViolation, [], 1, "the server is shutting down [shutting_down]"),
]


@pytest.mark.parametrize(("behave", "flags", "status", "words"), PEER_CASES)
def test_peer(
    peer: Callable[[Callable[[socket.socket], None]], Peer],
    behave: Callable[[socket.socket], None],
    flags: list[str],
    status: int,
    words: str,
) -> None:
    """
    A peer that is silent, speaks TLS or SSH, closes or resets, refuses,
    speaks another version, or never answers a request: the same line (and
    JSON object) and status from both paths, for C{ping} and C{run}.
    """
    p = peer(behave)
    verbs = [["ping"], ["--json", "run", "--", "true"]]
    if behave is _greetsThenSilent:
        # A run waits for its command as long as it takes (--timeout is
        # for connecting and each reply, not for the command's end).
        del verbs[1:]
    for verb in verbs:
        _, err = assertSame(both("--server", p.address, *flags, *verb), status)
        assert words in err


def _started(cli: subprocess.Popen[bytes]) -> None:
    assert cli.stdout is not None
    ready, _, _ = select.select([cli.stdout], [], [], DEADLINE)
    assert ready and cli.stdout.readline() == b"started\n"


def _signalled(
    argv: list[str], signum: int, ready: Callable[[subprocess.Popen[bytes]], None]
) -> list[tuple[int, bytes, bytes]]:
    """
    Run C{frames ARGV} through each path, send it C{signum} once C{ready}
    returns, and collect its status and outputs.
    """
    results = []
    for force in ("0", "1"):
        cli = subprocess.Popen(
            [sys.executable, "-m", "twisted_frames", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=childEnv({quick.FORCE_TWISTED: force}),
        )
        try:
            ready(cli)
            cli.send_signal(signum)
            out, err = cli.communicate(timeout=DEADLINE)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
        results.append((cli.returncode, out, err))
    return results


TRAPS_INT = "trap 'echo got INT; exit 7' INT; echo started; while :; do sleep 0.05; done"


def test_ctrlCCancelsRemotely(server: ServerProcess) -> None:
    """
    Ctrl-C during C{frames run} is sent to the remote command (which here
    traps it and exits 7) on both paths.
    """
    argv = ["--server", server.address, "run", "-n", "--", "sh", "-c", TRAPS_INT]
    quickResult, twistedResult = _signalled(argv, signal.SIGINT, _started)
    assert quickResult == twistedResult == (7, b"got INT\n", b"")


def test_sigtermHangsUp(server: ServerProcess) -> None:
    """
    SIGTERM during C{frames run}: 143 and the same line on both paths (the
    connection is dropped; the server kills the command).
    """
    argv = ["--server", server.address, "run", "-n", "--", "sh", "-c", TRAPS_INT]
    quickResult, twistedResult = _signalled(argv, signal.SIGTERM, _started)
    assert quickResult == twistedResult == (143, b"", b"frames: run interrupted (SIGTERM)\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interruptedBeforeGreeting(
    peer: Callable[[Callable[[socket.socket], None]], Peer], signum: int
) -> None:
    """
    Interrupted while waiting for a greeting: 128+N at once and the same
    JSON object and line on both paths.
    """
    p = peer(_silent)

    def accepted(cli: subprocess.Popen[bytes]) -> None:
        assert p.accepted.wait(DEADLINE)
        p.accepted.clear()

    argv = ["--server", p.address, "--json", "ping"]
    quickResult, twistedResult = _signalled(argv, signum, accepted)
    name = signal.Signals(signum).name
    assert quickResult == twistedResult
    assert quickResult[0] == 128 + signum
    assert quickResult[2] == f"frames: ping interrupted ({name})\n".encode()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """
    A server with mutual TLS and a users file with alice; her secret file,
    a wrong one, and the certificates.
    """
    d = tmp_path_factory.mktemp("secure")
    certs = str(d / "certs")
    assert frames("make-certs", certs, "--host", "localhost").returncode == 0
    users, secret = str(d / "users"), str(d / "alice.secret")
    assert frames("keygen", "alice", "--users", users, "-o", secret).returncode == 0
    wrong = d / "wrong.secret"
    wrong.write_bytes(frames("keygen", "alice").stdout)
    wrong.chmod(0o600)
    root = d / "srv"
    root.mkdir()
    with ServerProcess(
        str(root),
        "--users",
        users,
        "--allow-command",
        "sh",
        "--tls-cert",
        os.path.join(certs, "server.pem"),
        "--tls-key",
        os.path.join(certs, "server.key"),
        "--tls-ca",
        os.path.join(certs, "ca.pem"),
    ) as s:
        yield {
            "port": str(s.port),
            "certs": certs,
            "secret": secret,
            "wrong": str(wrong),
            "root": str(root),
        }


def _tls(s: dict[str, str], host: str = "localhost", key: str = "client.key") -> list[str]:
    c = s["certs"]
    return [
        "--server",
        f"{host}:{s['port']}",
        "--ca",
        os.path.join(c, "ca.pem"),
        "--cert",
        os.path.join(c, "client.pem"),
        "--key",
        os.path.join(c, key),
    ]


def test_tlsLogin(secure: dict[str, str]) -> None:
    """
    Mutual TLS and login (its channel binding computed by the quick path
    from the standard library's TLS connection): ping and run work the
    same on both paths.
    """
    login = [*_tls(secure), "--secret-file", secure["secret"]]
    out, _ = assertSame(both(*login, "ping"), 0)
    assert out[0].startswith("pong from ")
    out, err = assertSame(both(*login, "run", "--", "sh", "-c", "echo hi; exit 5"), 5)
    assert (out, err) == (["hi"], "")


def test_tlsFailures(secure: dict[str, str], server: ServerProcess) -> None:
    """
    A wrong secret, no client certificate, an untrusted server, a host
    name the certificate does not name, C{--tls} against a plain server,
    a missing CA file, a key that does not match: the same line and status
    on both paths.
    """
    c = secure["certs"]
    port = secure["port"]
    plain = server.address.replace("127.0.0.1", "localhost")
    cases = [
        ([*_tls(secure), "--secret-file", secure["wrong"]], 1, "login as alice failed"),
        (["--server", f"localhost:{port}", "--ca", f"{c}/ca.pem"], 3, "client certificate"),
        (
            ["--server", f"localhost:{port}", "--tls", "--cert", f"{c}/client.pem"]
            + ["--key", f"{c}/client.key"],
            3,
            "check --ca",
        ),
        (_tls(secure, host="127.0.0.1"), 3, "host name mismatch"),
        (["--server", plain, "--ca", f"{c}/ca.pem"], 3, "does not speak TLS"),
        (["--server", f"localhost:{port}", "--ca", f"{c}/none.pem"], 2, "cannot read CA file"),
        (_tls(secure, key="server.key"), 2, "does not match"),
        (["--server", f"localhost:{port}"], 3, "try --tls"),
    ]
    for flags, status, words in cases:
        _, err = assertSame(both("--greeting-timeout", "2", *flags, "ping"), status)
        assert words in err, flags


def _tlsPeer(
    secure: dict[str, str], then: Callable[[socket.socket], None]
) -> Callable[[socket.socket], None]:
    """
    A peer behaviour: the TLS handshake with the server certificate of
    C{secure}, then C{then} on the TLS socket.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certs = secure["certs"]
    context.load_cert_chain(os.path.join(certs, "server.pem"), os.path.join(certs, "server.key"))

    def behave(c: socket.socket) -> None:
        tls = context.wrap_socket(c, server_side=True)
        with tls:
            then(tls)

    return behave


def _closeNotify(tls: socket.socket) -> None:
    tls.sendall(_message(_HELLO))
    tls.recv(65536)
    tls.unwrap()  # type: ignore[attr-defined]


TLS_PEER_CASES = [
    (_closes, "lost: Connection lost"),
    (_greetsThenCloses, "lost: Connection lost"),
    (_greetsThenResets, "lost: Connection lost"),
    (_closeNotify, "lost: Connection was closed cleanly"),
]


@pytest.mark.parametrize(("then", "words"), TLS_PEER_CASES)
def test_tlsPeer(
    secure: dict[str, str],
    peer: Callable[[Callable[[socket.socket], None]], Peer],
    then: Callable[[socket.socket], None],
    words: str,
) -> None:
    """
    A TLS peer that closes without close_notify (during the handshake or
    after the greeting), resets, or closes cleanly: the same line from
    both paths.
    """
    p = peer(_tlsPeer(secure, then))
    server = p.address.replace("127.0.0.1", "localhost")
    ca = os.path.join(secure["certs"], "ca.pem")
    _, err = assertSame(both("--server", server, "--ca", ca, "ping"), 3)
    assert words in err


def test_tlsHandshakeLost(
    secure: dict[str, str], peer: Callable[[Callable[[socket.socket], None]], Peer]
) -> None:
    """
    A peer that hangs up before the TLS handshake ends: the same line from
    both paths.
    """
    p = peer(_closes)
    server = p.address.replace("127.0.0.1", "localhost")
    ca = os.path.join(secure["certs"], "ca.pem")
    _, err = assertSame(both("--server", server, "--ca", ca, "ping"), 3)
    assert err.endswith("lost: Connection lost\n")


def test_forcedAndEndpointStrings() -> None:
    """
    L{quick.applies}: the quick verbs with C{HOST:PORT}, unless
    C{FRAMES_TWISTED} is set to something but C{0}; never an endpoint
    string or another verb.
    """
    parse = buildParser().parse_args
    old = os.environ.pop(quick.FORCE_TWISTED, None)
    try:
        assert quick.applies(parse(["--server", "h:1", "ping"]))
        assert quick.applies(parse(["--server", "[::1]:1", "run", "--", "true"]))
        assert not quick.applies(parse(["--server", "tcp:host=h:port=1", "ping"]))
        assert not quick.applies(parse(["--server", "unix:path=/s", "ping"]))
        assert quick.applies(parse(["--server", "h:1", "ls"]))
        assert quick.applies(parse(["--server", "h:1", "put", "a"]))
        assert not quick.applies(parse(["--server", "h:1", "udp-echo", "a"]))
        assert quick.applies(parse(["--server", "h:1", "get", "a", "b"]))
        for value, applies in (("", True), ("0", True), ("1", False), ("yes", False)):
            os.environ[quick.FORCE_TWISTED] = value
            assert quick.applies(parse(["--server", "h:1", "ping"])) is applies, value
    finally:
        os.environ.pop(quick.FORCE_TWISTED, None)
        if old is not None:
            os.environ[quick.FORCE_TWISTED] = old


def test_readMessageBytewise() -> None:
    """
    L{quick.Connection.readMessage} reads messages whose bytes come one at
    a time, and several that come in one piece, through L{wire}'s codec.
    """
    messages = [({"id": 1, "ok": True}, b""), ({"id": 2, "event": "stdout"}, b"x" * 70000)]
    data = b"".join(wire.encodeMessage(h, b) for h, b in messages)
    signals = quick.Signals()
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        connection = quick.Connection(ours, signals)
        writer = threading.Thread(target=lambda: [theirs.send(data[i : i + 1]) for i in range(99)])
        writer.start()
        writer.join(DEADLINE)
        theirs.sendall(data[99:] + data)
        got = [connection.readMessage(quick.time.monotonic() + DEADLINE) for _ in range(4)]
        assert got == messages + messages
        with pytest.raises(NoAnswer):
            connection.readMessage(quick.time.monotonic())
    finally:
        ours.close()
        theirs.close()
        signals.restore()


def test_tlsExporterChecked(tmp_path: Path) -> None:
    """
    L{quick.tlsExporter} refuses (L{quick.Fallback}) a socket that is not
    a TLS one of the standard library, rather than read a wrong pointer.
    """
    with socket.socket() as s:
        with pytest.raises(quick.Fallback):
            quick.tlsExporter(s)


def test_tlsExporterUnknownLayout(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    On a Python whose C{PySSLSocket} layout is not known, L{quick.tlsExporter}
    falls back before it reads any pointer out of the C{SSLObject}, even one
    that looks like a TLS socket's.
    """

    class Looks:
        _sslobj = object()

        def fileno(self) -> int:
            raise AssertionError("the pointer was looked at")

    monkeypatch.setattr(quick, "KNOWN_SSL_LAYOUT", ((3, 0), (3, 1)))
    with pytest.raises(quick.Fallback):
        quick.tlsExporter(Looks())  # type: ignore[arg-type]


# -- frames get ---------------------------------------------------------------------

#: A file of a few segments of the quick path's body buffer, the same in
#: every run.
BIG = bytes(range(256)) * (5 * 1024 * 1024 // 256 + 3)


def _getStable(results: list[tuple[int, Any, str]]) -> list[tuple[int, Any, str]]:
    """
    C{results} of L{both} without what differs from one run of C{frames
    get} to the next: JSON's C{seconds}, and the rate.
    """
    stable = []
    for status, out, err in results:
        lines = []
        for line in out:
            if isinstance(line, dict):
                line = {k: v for k, v in line.items() if k != "seconds"}
            else:
                line = re.sub(r"\([^()]*/s\)", "(RATE)", line)
            lines.append(line)
        stable.append((status, lines, err))
    return stable


def _getFiles(root: Path, local: Path) -> None:
    """
    L{_files}, with C{d/big} (L{BIG}) too, and nothing at C{local} or its
    partial.
    """
    _files(root)
    (root / "d" / "big").write_bytes(BIG)
    os.utime(root / "d" / "big", (1_700_000_000, 1_700_000_000))
    for path in (local, _partial(local)):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _partial(local: Path) -> Path:
    from twisted_frames.files.local import localPartialName

    return Path(localPartialName(str(local)))


def bothGet(
    address: str, root: Path, local: Path, *argv: str, prepare: Callable[[], None] = lambda: None
) -> list[tuple[int, Any, str]]:
    """
    C{frames --server ADDRESS ARGV} through both paths (L{both}), from the
    files of L{_getFiles} and then C{prepare}, for each.
    """

    def setUp() -> None:
        _getFiles(root, local)
        prepare()

    return _getStable(both("--server", address, *argv, prepare=setUp))


GET_CASES: list[tuple[list[str], int, bytes | None, str]] = [
    (["get", "d/big", "{local}"], 0, BIG, "blake3 "),
    (["get", "-q", "d/f", "{local}"], 0, b"hello", "get d/f -> "),
    (["--json", "get", "./d//f", "{local}"], 0, b"hello", '"hash": "blake3"'),
    (["get", "--hash", "sha256", "d/big", "{local}"], 0, BIG, "sha256 "),
    (["get", "nowhere", "{local}"], 1, None, "[not_found]"),
    (["--json", "get", "nowhere", "{local}"], 1, None, "not_found"),
    (["get", "d", "{local}"], 2, None, "d is a directory (use -r)"),
    (["get", "../up", "{local}"], 1, None, "[forbidden_path]"),
]


@pytest.mark.parametrize(("argv", "status", "data", "words"), GET_CASES)
def test_get(
    server: ServerProcess,
    tmp_path: Path,
    argv: list[str],
    status: int,
    data: bytes | None,
    words: str,
) -> None:
    """
    C{frames get} of one file, quiet or not, with C{--json}, with SHA-256
    forced, of a path not there, of a directory, of a forbidden path: the
    same lines and status from both paths, the file byte for byte (or
    nothing, not even an empty partial, on a refusal).
    """
    root, local = Path(server.root), tmp_path / "copy"
    argv = [a.replace("{local}", str(local)) for a in argv]
    for force in ("0", "1"):
        _getFiles(root, local)
        r = frames("--server", server.address, *argv, env={quick.FORCE_TWISTED: force})
        assert r.returncode == status, (force, r.stderr)
        if data is None:
            assert not local.exists() and not _partial(local).exists(), force
        else:
            assert local.read_bytes() == data, force
            assert not _partial(local).exists(), force
    out, err = assertSame(bothGet(server.address, root, local, *argv), status)
    assert words in json.dumps(out) + err


def test_getExisting(server: ServerProcess, tmp_path: Path) -> None:
    """
    An existing target is refused without C{-f} (and left alone), and
    replaced with it, alike on both paths; a local directory receives the
    file under its remote name.
    """
    root, local = Path(server.root), tmp_path / "copy"

    def existing() -> None:
        local.write_bytes(b"old")

    _, err = assertSame(
        bothGet(server.address, root, local, "get", "d/f", str(local), prepare=existing), 1
    )
    assert (
        err
        == f"frames: get: {local}: already exists (use -f/--force to overwrite) [already_exists]\n"
    )
    assert local.read_bytes() == b"old"
    out, _ = assertSame(
        bothGet(server.address, root, local, "get", "-f", "d/f", str(local), prepare=existing), 0
    )
    assert local.read_bytes() == b"hello"
    out, _ = assertSame(
        bothGet(server.address, root, tmp_path / "f", "get", "d/f", str(tmp_path)), 0
    )
    assert out == [
        f"get d/f -> {tmp_path / 'f'}: 5 B in N s (RATE), blake3 {_blake3(b'hello')} verified"
    ]


def _blake3(data: bytes) -> str:
    import blake3

    return blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("have", [1024 * 1024 + 7, len(BIG) + 10])
def test_getResume(server: ServerProcess, tmp_path: Path, have: int) -> None:
    """
    C{get --resume} continues from the partial a download left (its prefix
    hashed, the rest asked for from its end), or starts over when the
    partial is longer than the remote file: the same line on both paths,
    the file byte for byte.
    """
    root, local = Path(server.root), tmp_path / "copy"

    def partial() -> None:
        _partial(local).write_bytes((BIG + b"x" * 10)[:have])

    results = bothGet(
        server.address, root, local, "get", "--resume", "d/big", str(local), prepare=partial
    )
    out, err = assertSame(results, 0)
    assert local.read_bytes() == BIG and not _partial(local).exists()
    if have < len(BIG):
        assert out[0].endswith(f", resumed from byte {have}")
    else:
        assert "resumed" not in out[0]


def test_getFallsBack(server: ServerProcess, tmp_path: Path) -> None:
    """
    C{get -r} and C{get REMOTE -} go through Twisted from the quick path
    too: the same outputs.
    """
    root, local = Path(server.root), tmp_path / "tree"
    out, _ = assertSame(bothGet(server.address, root, local, "get", "-r", "d", str(local)), 0)
    assert out[-1].startswith("get: 2 files, ")
    results = []
    for force in ("0", "1"):
        r = frames("--server", server.address, "get", "d/f", "-", env={quick.FORCE_TWISTED: force})
        results.append((r.returncode, r.stdout, r.stderr))
    assert results[0] == results[1]
    assert results[0][:2] == (0, b"hello")


def test_getDiskError(server: ServerProcess, tmp_path: Path) -> None:
    """
    A write that fails (here C{EFBIG} past a file size limit) stops the
    download with the same line on both paths, the target not there and
    the partial holding what could be written.
    """
    import resource

    root, local = Path(server.root), tmp_path / "copy"
    limit = 1024 * 1024

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    results = []
    for force in ("0", "1"):
        _getFiles(root, local)
        r = subprocess.run(
            [sys.executable, "-m", "twisted_frames", "--server", server.address]
            + ["get", "d/big", str(local)],
            capture_output=True,
            timeout=DEADLINE,
            env=childEnv({quick.FORCE_TWISTED: force}),
            preexec_fn=limited,
        )
        results.append((r.returncode, r.stdout, r.stderr))
        assert not local.exists()
        assert _partial(local).read_bytes() == BIG[:limit]
    assert results[0] == results[1] == (1, b"", b"frames: get: File too large\n")


def test_getTLSLogin(secure: dict[str, str], tmp_path: Path) -> None:
    """
    C{get} over mutual TLS with a login: the same on both paths, and the
    file byte for byte.
    """
    root, local = Path(secure["root"]), tmp_path / "copy"
    login = [*_tls(secure), "--secret-file", secure["secret"]]
    results = []
    for force in ("0", "1"):
        _getFiles(root, local)
        r = frames(*login, "get", "d/big", str(local), env={quick.FORCE_TWISTED: force})
        results.append(
            (r.returncode, _getStable([(0, _stable(r.stdout.decode()), "")])[0][1], r.stderr)
        )
        assert local.read_bytes() == BIG, force
    assert results[0] == results[1]
    assert results[0][0] == 0 and results[0][2] == b""


class _FakeFiles:
    """
    A peer that serves one file C{d/f} of C{data} (SHA-256 only, or no
    C{hashes} in its greeting at all, as before they existed): its
    greeting, C{stat} and C{get}, the last answered by C{answer(c, id)}.
    C{asked} is set once a C{get} came, kept in C{gets}.
    """

    def __init__(
        self,
        data: bytes,
        answer: Callable[[socket.socket, int], None],
        hashes: tuple[str, ...] | None = ("sha256",),
    ) -> None:
        self.data = data
        self.answer = answer
        self.hashes = hashes
        self.asked = threading.Event()
        self.gets: list[dict[str, Any]] = []

    def __call__(self, c: socket.socket) -> None:
        hashes = {} if self.hashes is None else {"hashes": list(self.hashes)}
        c.sendall(_message({**_HELLO, **hashes}))
        while True:
            header, _ = _readMessage(c)
            if header.get("op") == "stat":
                info = {"path": "d/f", "name": "f", "type": "file", "size": len(self.data)}
                info.update({"mtime": 1_700_000_000.0, "mode": 0o644})
                c.sendall(_message({"id": header["id"], "ok": True, **info}))
            elif header.get("op") == "get":
                self.gets.append(header)
                self.asked.set()
                self.answer(c, header["id"])
                return


def _readExactly(c: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = c.recv(n - len(data))
        if not more:
            raise OSError("closed")
        data += more
    return data


def _readMessage(c: socket.socket) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("!I", _readExactly(c, 4))
    header = json.loads(_readExactly(c, n))
    (m,) = struct.unpack("!I", _readExactly(c, 4))
    return header, _readExactly(c, m)


HALF = len(BIG) // 2


def _dataEvent(rid: int, offset: int, length: int) -> bytes:
    header = json.dumps({"id": rid, "event": "data", "offset": offset, "length": length}).encode()
    return struct.pack("!I", len(header)) + header + struct.pack("!I", length)


def _wrongDigest(c: socket.socket, rid: int) -> None:
    c.sendall(_dataEvent(rid, 0, len(BIG)) + BIG)
    final = {"id": rid, "ok": True, "path": "d/f", "size": len(BIG), "offset": 0}
    c.sendall(_message({**final, "sha256": "0" * 64, "mtime": 1_700_000_000.0, "mode": 0o644}))
    _holdUntilClosed(c)


def _rightDigest(c: socket.socket, rid: int) -> None:
    import hashlib

    c.sendall(_dataEvent(rid, 0, len(BIG)) + BIG)
    final = {"id": rid, "ok": True, "path": "d/f", "size": len(BIG), "offset": 0}
    digest = hashlib.sha256(BIG).hexdigest()
    c.sendall(_message({**final, "sha256": digest, "mtime": 1_700_000_000.0, "mode": 0o644}))
    _holdUntilClosed(c)


def test_getFromOldServer(
    peer: Callable[[Callable[[socket.socket], None]], Peer], tmp_path: Path
) -> None:
    """
    A server whose greeting has no C{hashes}: both paths ask for SHA-256
    the first way (no C{hash} field), verify it and print the same line.
    """
    fake = _FakeFiles(BIG, _rightDigest, hashes=None)
    p = peer(fake)
    local = tmp_path / "copy"
    results = []
    for force in ("0", "1"):
        if local.exists():
            local.unlink()
        r = frames(
            "--server", p.address, "get", "d/f", str(local), env={quick.FORCE_TWISTED: force}
        )
        results.append((r.returncode, _getStable([(0, _stable(r.stdout.decode()), "")])[0][1]))
        assert local.read_bytes() == BIG, force
    assert results[0] == results[1]
    assert results[0][1][0].endswith(" verified") and " sha256 " in results[0][1][0]
    assert [sorted(g) for g in fake.gets] == [["id", "offset", "op", "path"]] * 2


def _cutMidBody(c: socket.socket, rid: int) -> None:
    c.sendall(_dataEvent(rid, 0, len(BIG)) + BIG[:HALF])


def _shutsDownMidFile(c: socket.socket, rid: int) -> None:
    c.sendall(_dataEvent(rid, 0, HALF) + BIG[:HALF])
    error = {"code": "shutting_down", "message": "the server is shutting down"}
    c.sendall(_message({"id": rid, "ok": False, "error": error}))
    _holdUntilClosed(c)


def _stallsMidBody(c: socket.socket, rid: int) -> None:
    c.sendall(_dataEvent(rid, 0, len(BIG)) + BIG[:HALF])
    _holdUntilClosed(c)


GET_PEER_CASES = [
    (
        _wrongDigest,
        1,
        "frames: get: d/f: SHA-256 mismatch (got {digest}, server says {zeros}); nothing was"
        " stored [integrity_error]\n",
        None,
    ),
    (
        _cutMidBody,
        3,
        "frames: get: connection to {address} lost: Connection was closed cleanly\n",
        HALF,
    ),
    (
        _shutsDownMidFile,
        1,
        "frames: get: the server is shutting down [shutting_down]; resume with: frames --server"
        " {address} get --resume d/f {local}\n",
        HALF,
    ),
]


@pytest.mark.parametrize(("answer", "status", "line", "kept"), GET_PEER_CASES)
def test_getPeer(
    peer: Callable[[Callable[[socket.socket], None]], Peer],
    tmp_path: Path,
    answer: Callable[[socket.socket, int], None],
    status: int,
    line: str,
    kept: int | None,
) -> None:
    """
    A server whose digest is wrong (the partial is removed), that hangs up
    in the middle of a body, or that shuts down during a download (the
    command that resumes it): the same line and status from both paths,
    the partial kept with what came, or removed.
    """
    import hashlib

    p = peer(_FakeFiles(BIG, answer))
    local = tmp_path / "copy"
    results = []
    for force in ("0", "1"):
        r = frames(
            "--server", p.address, "get", "d/f", str(local), env={quick.FORCE_TWISTED: force}
        )
        results.append((r.returncode, r.stdout, r.stderr.decode()))
        assert not local.exists()
        if kept is None:
            assert not _partial(local).exists()
        else:
            assert _partial(local).read_bytes() == BIG[:kept]
            _partial(local).unlink()
    digest = hashlib.sha256(BIG).hexdigest()
    expected = line.format(digest=digest, zeros="0" * 64, address=p.address, local=local)
    assert results[0] == results[1] == (status, b"", expected)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_getInterrupted(
    peer: Callable[[Callable[[socket.socket], None]], Peer], tmp_path: Path, signum: int
) -> None:
    """
    Interrupted in the middle of a body: 128+N, the partial kept with
    (at most) what came, and the same line with the command that resumes
    the download on both paths.
    """
    fake = _FakeFiles(BIG, _stallsMidBody)
    p = peer(fake)
    local = tmp_path / "copy"

    def asked(cli: subprocess.Popen[bytes]) -> None:
        assert fake.asked.wait(DEADLINE)
        fake.asked.clear()

    argv = ["--server", p.address, "get", "-q", "d/f", str(local)]
    quickResult, twistedResult = _signalled(argv, signum, asked)
    name = signal.Signals(signum).name
    expected = (
        f"frames: get d/f interrupted ({name}); partial {_partial(local)} kept; resume with:"
        f" frames --server {p.address} get --resume -q d/f {local}\n"
    )
    assert quickResult == twistedResult == (128 + signum, b"", expected.encode())
    assert BIG.startswith(_partial(local).read_bytes())
    assert not local.exists()


@contextmanager
def _tlsPair(tmp_path: Path) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """
    A client and a server TLS socket of the standard library's C{ssl},
    connected over a socket pair and past the handshake (TLS 1.3 tickets
    read and dropped); the client is non-blocking, as the quick path's.
    """
    creds = makeCredentials(str(tmp_path))
    serverContext = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serverContext.load_cert_chain(creds.server, creds.serverKey)
    clientContext = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    clientContext.load_verify_locations(creds.ca)
    a, b = socket.socketpair()
    server = serverContext.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    client = clientContext.wrap_socket(
        a, server_hostname="localhost", do_handshake_on_connect=False
    )
    shaker = threading.Thread(target=server.do_handshake)
    shaker.start()
    client.do_handshake()
    shaker.join(DEADLINE)
    server.sendall(b"!")
    assert client.recv(1) == b"!"
    client.setblocking(False)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def _until(read: Callable[[], int]) -> int:
    """
    Call C{read} until it gives anything but 0 (OpenSSL waits for bytes a
    socket pair delivers at once: a few tries at most).
    """
    for _ in range(1000):
        n = read()
        if n:
            return n
        select.select([], [], [], 0.001)
    raise AssertionError("nothing to read")


def test_bulkReaderManyRecords(tmp_path: Path) -> None:
    """
    L{quick.bulkReader} decrypts every record the socket has into the
    buffer in one call, byte-exact; with none, it says 0 (wait); after the
    peer's close it leaves the end to C{recv_into}, which gives 0.
    """
    data = os.urandom(5 * 16384 + 123)
    with _tlsPair(tmp_path) as (client, server):
        reader = quick.bulkReader(client)
        assert reader is not None
        buf = bytearray(len(data) + 1000)
        assert reader(memoryview(buf)) == 0
        server.sendall(data)
        view = memoryview(buf)
        got = 0
        while got < len(data):
            got += _until(functools.partial(reader, view[got:]))
        assert bytes(buf[:got]) == data
        # The server's close_notify, without waiting for the client's.
        server.setblocking(False)
        with pytest.raises(ssl.SSLWantReadError):
            server.unwrap()
        assert _until(lambda: reader(view)) == -1
        assert client.recv_into(buf) == 0


def test_messagesReadAheadNotWaitedFor(tmp_path: Path) -> None:
    """
    Messages whose records OpenSSL has read ahead (L{quick.bulkReader})
    are read by L{quick.Connection.readMessage} without waiting on the
    socket, which has nothing more: C{pending()} does not count them.
    """
    messages = [({"id": n, "ok": True}, b"x" * n) for n in (1, 2, 3)]
    signals = quick.Signals()
    try:
        with _tlsPair(tmp_path) as (client, server):
            connection = quick.Connection(client, signals)
            connection.bulk = quick.bulkReader(client)
            for header, body in messages:
                # A record each.
                server.sendall(wire.encodeMessage(header, body))
            got = [connection.readMessage(quick.time.monotonic() + DEADLINE)]
            # The rest were read ahead with the first: the socket is empty.
            assert select.select([client], [], [], 0)[0] == []
            got += [connection.readMessage(quick.time.monotonic() + 0.5) for _ in range(2)]
            assert got == messages
    finally:
        signals.restore()


# -- frames put ---------------------------------------------------------------------

#: A file sent whole in one message by both paths (the quick path's
#: largest, L{quick.QUICK_PUT_MAX}), the same in every run.
SMALL = bytes(range(251)) * (quick.QUICK_PUT_MAX // 251) + b"e" * (quick.QUICK_PUT_MAX % 251)


def _putFiles(root: Path, local: Path) -> None:
    """
    The server's files of L{_files} and nothing where the cases of
    L{PUT_CASES} upload to; the local files C{local/small} (L{SMALL}),
    C{local/hello} and the directory C{local/dir}.
    """
    _files(root)
    for name in ("small", "hello", "new"):
        for where in (root, root / "d"):
            if (where / name).exists():
                (where / name).unlink()
    if local.exists():
        shutil.rmtree(local)
    (local / "dir").mkdir(parents=True)
    (local / "small").write_bytes(SMALL)
    (local / "hello").write_bytes(b"hello")


def bothPut(
    address: str, root: Path, local: Path, *argv: str, prepare: Callable[[], None] = lambda: None
) -> list[tuple[int, Any, str]]:
    """
    C{frames --server ADDRESS ARGV} through both paths (L{both}), from the
    files of L{_putFiles} and then C{prepare}, for each.
    """

    def setUp() -> None:
        _putFiles(root, local)
        prepare()

    return _getStable(both("--server", address, *argv, prepare=setUp))


PUT_CASES: list[tuple[list[str], int, str | None, bytes | None, str]] = [
    (["put", "{local}/small", "d"], 0, "d/small", SMALL, "blake3 "),
    (["put", "-q", "{local}/hello"], 0, "hello", b"hello", "put {local}/hello -> hello: 5 B"),
    (["put", "{local}/hello", "d/"], 0, "d/hello", b"hello", " -> d/hello: "),
    (["put", "{local}/hello", "./d//new"], 0, "d/new", b"hello", " -> d/new: "),
    (["--json", "put", "{local}/small", "new"], 0, "new", SMALL, '"hash": "blake3"'),
    (["put", "--hash", "sha256", "{local}/hello", "d"], 0, "d/hello", b"hello", "sha256 "),
    (["put", "{local}/nothing", "d"], 1, None, None, "put: {local}/nothing: no such file"),
    (["--json", "put", "{local}/nothing"], 1, None, None, '"code": "not_found"'),
    (["put", "{local}/dir", "d"], 2, None, None, "put: {local}/dir is a directory (use -r)"),
    (["put", "{local}/hello", "../up"], 1, None, None, "[forbidden_path]"),
    (["put", "{local}/hello", "d/f/x"], 1, None, None, "[not_a_directory]"),
]


@pytest.mark.parametrize(("argv", "status", "remote", "data", "words"), PUT_CASES)
def test_put(
    server: ServerProcess,
    tmp_path: Path,
    argv: list[str],
    status: int,
    remote: str | None,
    data: bytes | None,
    words: str,
) -> None:
    """
    C{frames put} of one file of at most L{quick.QUICK_PUT_MAX} bytes: into a
    remote directory (named, or with a trailing slash), under its own name,
    under a new name, quiet, with C{--json}, with SHA-256 forced; of a local
    path not there, of a local directory, to a forbidden path or under a
    file: the same lines and status from both paths, the server's file byte
    for byte.
    """
    root, local = Path(server.root), tmp_path / "local"
    argv = [a.replace("{local}", str(local)) for a in argv]
    for force in ("0", "1"):
        _putFiles(root, local)
        r = frames("--server", server.address, *argv, env={quick.FORCE_TWISTED: force})
        assert r.returncode == status, (force, r.stderr)
        if remote is not None:
            assert (root / remote).read_bytes() == data, force
    out, err = assertSame(bothPut(server.address, root, local, *argv), status)
    assert words.replace("{local}", str(local)) in json.dumps(out) + err


def test_putExisting(server: ServerProcess, tmp_path: Path) -> None:
    """
    An existing remote file is refused without C{-f} (the server's refusal,
    the flag named) and left alone, and replaced with it, alike on both
    paths.
    """
    root, local = Path(server.root), tmp_path / "local"
    argv = ["put", str(local / "small"), "d/f"]
    _, err = assertSame(bothPut(server.address, root, local, *argv), 1)
    assert err == (
        "frames: put: d/f: already exists (use -f/--force to overwrite) [already_exists]\n"
    )
    assert (root / "d" / "f").read_bytes() == b"hello"
    out, _ = assertSame(bothPut(server.address, root, local, "put", "-f", *argv[1:]), 0)
    assert (root / "d" / "f").read_bytes() == SMALL
    assert out == [
        f"put {local / 'small'} -> d/f: N MiB in N s (RATE), blake3 {_blake3(SMALL)} verified"
    ]


def test_putTLSLogin(secure: dict[str, str], tmp_path: Path) -> None:
    """
    C{put} over mutual TLS with a login: the same on both paths, and the
    server's file byte for byte.
    """
    root, local = Path(secure["root"]), tmp_path / "local"
    login = [*_tls(secure), "--secret-file", secure["secret"]]
    results = []
    for force in ("0", "1"):
        _putFiles(root, local)
        r = frames(*login, "put", str(local / "small"), env={quick.FORCE_TWISTED: force})
        results.append(
            (r.returncode, _getStable([(0, _stable(r.stdout.decode()), "")])[0][1], r.stderr)
        )
        assert (root / "small").read_bytes() == SMALL, force
    assert results[0] == results[1]
    assert results[0][0] == 0 and results[0][2] == b""


def _quickPut(argv: list[str]) -> Any:
    """
    What L{quick.main} does with C{frames ARGV}, in this process: C{None}
    for L{quick.Fallback}.
    """
    from twisted_frames.cli.base import UI

    args = buildParser().parse_args(argv)
    assert quick.applies(args)
    return quick.main(args, UI(args.json))


@pytest.mark.parametrize(
    "size", [quick.QUICK_PUT_MAX + 1, 8 * 1024 * 1024 + 1], ids=["over-small", "over-8MiB"]
)
def test_putFallsBack(server: ServerProcess, tmp_path: Path, size: int) -> None:
    """
    A file larger than L{quick.QUICK_PUT_MAX}, C{put -r}, C{put -} and
    C{put --resume} raise L{quick.Fallback} before anything is printed or
    sent, and go through Twisted from the quick path too: the same outputs,
    the server's file byte for byte.
    """
    root, local = Path(server.root), tmp_path / "local"
    _putFiles(root, local)
    data = (BIG * (size // len(BIG) + 1))[:size]
    (local / "big").write_bytes(data)
    for argv in (
        ["put", str(local / "big"), "big"],
        ["put", "-r", str(local), "tree"],
        ["put", "--resume", str(local / "hello"), "x"],
        ["put", "-", "x"],
    ):
        assert _quickPut(["--server", "127.0.0.1:1", *argv]) is None, argv

    def bigFile() -> None:
        (local / "big").write_bytes(data)
        if (root / "big").exists():
            (root / "big").unlink()

    out, _ = assertSame(
        bothPut(server.address, root, local, "put", str(local / "big"), prepare=bigFile), 0
    )
    assert (root / "big").read_bytes() == data
    assert out[0].startswith(f"put {local / 'big'} -> big: ")


def test_putBusy(server: ServerProcess, tmp_path: Path) -> None:
    """
    Another upload to the same name in progress (here held open between two
    of its messages by another connection): the server's C{busy}, the same line on both paths,
    nothing stored.
    """
    root, local = Path(server.root), tmp_path / "local"
    host, port = server.address.rsplit(":", 1)
    holding: list[socket.socket] = []

    def held() -> None:
        # After the files are set up afresh: on the partial file they leave.
        other = socket.create_connection((host, int(port)), timeout=DEADLINE)
        holding.append(other)
        _readMessage(other)
        other.sendall(_message({"op": "put", "id": 1, "path": "d/held", "final": False}, b"abc"))
        reply, _ = _readMessage(other)
        assert reply["have"] == 3, reply

    try:
        _, err = assertSame(
            bothPut(
                server.address, root, local, "put", str(local / "hello"), "d/held", prepare=held
            ),
            1,
        )
    finally:
        for other in holding:
            other.close()
    assert err == "frames: put: upload of d/held already in progress [busy]\n"
    assert not (root / "d" / "held").exists()


class _FakeUploads:
    """
    A peer that greets (offering C{hashes}, or none at all, as before they
    existed), says every C{stat} is not found, and answers a C{put} by
    C{answer(c, header, body)}.  C{puts} keeps each C{put}'s header (without
    its id) and body length; C{asked} is set once one came.
    """

    def __init__(
        self,
        answer: Callable[[socket.socket, dict[str, Any], bytes], None],
        hashes: tuple[str, ...] | None = ("blake3", "sha256"),
    ) -> None:
        self.answer = answer
        self.hashes = hashes
        self.asked = threading.Event()
        self.puts: list[tuple[dict[str, Any], int]] = []

    def __call__(self, c: socket.socket) -> None:
        hashes = {} if self.hashes is None else {"hashes": list(self.hashes)}
        c.sendall(_message({**_HELLO, **hashes}))
        while True:
            header, body = _readMessage(c)
            if header.get("op") == "stat":
                error = {"code": "not_found", "message": f"{header['path']}: not found"}
                c.sendall(_message({"id": header["id"], "ok": False, "error": error}))
            elif header.get("op") == "put":
                self.puts.append(({k: v for k, v in header.items() if k != "id"}, len(body)))
                self.asked.set()
                self.answer(c, header, body)
                return


def _stored(c: socket.socket, header: dict[str, Any], body: bytes) -> None:
    reply = {"id": header["id"], "ok": True, "path": header["path"], "size": len(body)}
    for key in ("sha256", "hash", "digest"):
        if key in header:
            reply[key] = header[key]
    c.sendall(_message(reply))
    _holdUntilClosed(c)


def _failsWith(code: str, message: str) -> Callable[[socket.socket, dict[str, Any], bytes], None]:
    def answer(c: socket.socket, header: dict[str, Any], body: bytes) -> None:
        error = {"code": code, "message": message}
        c.sendall(_message({"id": header["id"], "ok": False, "error": error}))
        _holdUntilClosed(c)

    return answer


def _hangsUp(c: socket.socket, header: dict[str, Any], body: bytes) -> None:
    pass


def _holds(c: socket.socket, header: dict[str, Any], body: bytes) -> None:
    _holdUntilClosed(c)


PUT_PEER_CASES = [
    (_stored, ("blake3", "sha256"), [], 0, "put {local} -> x: 5 B in N s (RATE), blake3 "),
    (_stored, None, [], 0, "put {local} -> x: 5 B in N s (RATE), sha256 "),
    (
        _failsWith("integrity_error", "x: SHA-256 mismatch; nothing was stored"),
        ("sha256",),
        [],
        1,
        "frames: put: x: SHA-256 mismatch; nothing was stored [integrity_error]\n",
    ),
    (
        _failsWith("no_space", "x: no space left on the server"),
        ("blake3",),
        [],
        1,
        "frames: put: x: no space left on the server [no_space]\n",
    ),
    (
        _failsWith("shutting_down", "the server is shutting down"),
        ("blake3",),
        ["-q"],
        1,
        "frames: put: the server is shutting down [shutting_down]; resume with: frames --server"
        " {address} put --resume -q {local} x\n",
    ),
    (_hangsUp, ("blake3",), [], 3, "frames: put: connection to {address} lost: Connection was"),
    (
        _stored,
        ("sha256",),
        ["--hash", "blake3"],
        1,
        "frames: put: the server does not offer hash blake3 (it has sha256) [unsupported_hash]\n",
    ),
]


@pytest.mark.parametrize(("answer", "hashes", "flags", "status", "words"), PUT_PEER_CASES)
def test_putPeer(
    peer: Callable[[Callable[[socket.socket], None]], Peer],
    tmp_path: Path,
    answer: Callable[[socket.socket, dict[str, Any], bytes], None],
    hashes: tuple[str, ...] | None,
    flags: list[str],
    status: int,
    words: str,
) -> None:
    """
    A server that stores the file (offering BLAKE3, or no C{hashes} at all:
    SHA-256 the first way), refuses it as a mismatch, for want of space or
    at its shutdown (the command that resumes it), hangs up, or does not
    offer the hash forced: the same request on the wire, the same lines
    and status from both paths.
    """
    fake = _FakeUploads(answer, hashes)
    p = peer(fake)
    local = tmp_path / "hello"
    local.write_bytes(b"hello")
    results = _getStable(both("--server", p.address, "put", *flags, str(local), "x"))
    out, err = assertSame(results, status)
    assert words.format(address=p.address, local=local) in "\n".join(map(str, out)) + err
    if "--hash" in flags:
        assert fake.puts == []
        return
    assert len(fake.puts) == 2 and fake.puts[0] == fake.puts[1]
    header, length = fake.puts[0]
    assert length == 5
    expected: dict[str, Any] = {"op": "put", "path": "x", "size": 5, "overwrite": False}
    if hashes is None or hashes == ("sha256",):
        expected.update({"offset": 0, "final": True, "sha256": header.get("sha256")})
    else:
        expected.update(
            {"hash": "blake3", "offset": 0, "final": True, "digest": _blake3(b"hello")}
        )
    assert list(header.items()) == list(expected.items())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_putInterrupted(
    peer: Callable[[Callable[[socket.socket], None]], Peer], tmp_path: Path, signum: int
) -> None:
    """
    Interrupted while waiting for the server's answer: 128+N and the same
    line, with the command that resumes the upload (the server keeps what
    arrived), on both paths.
    """
    fake = _FakeUploads(_holds)
    p = peer(fake)
    local = tmp_path / "hello"
    local.write_bytes(b"hello")

    def asked(cli: subprocess.Popen[bytes]) -> None:
        assert fake.asked.wait(DEADLINE)
        fake.asked.clear()

    argv = ["--server", p.address, "put", str(local), "x"]
    quickResult, twistedResult = _signalled(argv, signum, asked)
    name = signal.Signals(signum).name
    expected = (
        f"frames: put {local} interrupted ({name}); resume with:"
        f" frames --server {p.address} put --resume {local} x\n"
    )
    assert quickResult == twistedResult == (128 + signum, b"", expected.encode())
