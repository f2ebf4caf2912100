# -*- test-case-name: tests.cli.test_quick -*-
"""
The quick path of the C{frames} CLI: C{ping}, C{run}, C{ls}, C{stat}, C{rm},
C{mkdir}, C{get} of one file and C{put} of one small file over one blocking
socket, without Twisted.

A command that makes one connection and a few requests spends most of its
wall time importing Twisted's reactor, Deferreds and (with TLS) pyOpenSSL
and cryptography before it sends a byte.  This module does the same work
with the standard library alone: C{socket} and C{select}, C{ssl} for TLS
(with the channel binding that login needs, see L{tlsExporter}), the login
halves of L{twisted_frames.auth.client}, the frame and header codec, limits
and greeting checks of L{twisted_frames.wire}, and the output and failure
wording of the Twisted path's own modules (L{twisted_frames.cli.ping},
L{twisted_frames.cli.commands}, L{twisted_frames.cli.failures},
L{twisted_frames.cli.base.Interruption}, the report functions of
L{twisted_frames.cli.files}), so that the two paths print the same things
and exit with the same statuses.

C{frames get} of one file to a local path downloads as
L{twisted_frames.files.client.FileClient.getFile} does, with the same
pieces (L{twisted_frames.files.local}, L{twisted_frames.files.blocking}):
C{stat} first, the hidden partial file, the hash the greeting offers (or
C{--hash}), C{--resume} from the partial, the digest checked against the
final reply, fsync and rename.  Each C{data} event's body is received into
one of two buffers of L{BODY_BUFFER} while a writer thread hashes and writes
the other (L{FileWriter}); over TLS, OpenSSL reads ahead and every ready
record is decrypted into the buffer in one call (L{bulkReader}).  C{get -r}
and C{get REMOTE -} (stdout) raise L{Fallback}.

C{frames put} of one local regular file of at most L{QUICK_PUT_MAX} bytes
(C{SMALL_FILE}, 1 MiB: the files L{twisted_frames.files.client.FileClient.putFile}
sends in one message) uploads as C{putFile} does: REMOTE resolved by
L{twisted_frames.cli.files.intoRemoteDir} (with the C{stat} it needs), the
hash the greeting offers (or C{--hash}), one C{put} with the whole body,
C{final} and the digest, the same report.  A larger file (decided from an
C{os.stat} before connecting), C{put -r}, C{put -} (stdin) and
C{put --resume} raise L{Fallback}: larger uploads stream segments, over TLS
from a thread of their own on the Twisted side.

L{applies} says when it is used: a verb of L{VERBS}, a C{--server} of the
form C{HOST:PORT} (an endpoint string such as C{tcp:...}, C{unix:...} or
C{ssl:...} goes to Twisted), and C{FRAMES_TWISTED} unset (or C{0}).  Where
it meets something it cannot do the same way before it has printed or
asked for anything (a TLS file the standard library cannot read, no way to
compute the channel binding, a C{get} of a tree or to stdout, a C{put} of
a tree, of stdin or of a larger file), it raises
L{Fallback} and
L{twisted_frames.cli.main.main} runs the command through Twisted instead.

Signals: SIGINT and SIGTERM raise L{Interrupted} in the main thread, which
aborts the connection and reports as L{Interruption} does (130 or 143;
for a download, with the partial kept and the command that resumes it;
for an upload, with the command that resumes it).
While C{frames run} has a command running, SIGINT instead asks the server
to signal it (C{SIGINT}, then C{SIGKILL}; a third hangs up), as
L{twisted_frames.cli.commands.runRemote} does: the handler only records the
signal, and C{signal.set_wakeup_fd} wakes the loop's C{select}.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from .._speedups.decrypt import decryptReady
from ..auth.client import checkServerProof, loginFields
from ..auth.hmac import BINDING_NONE, BINDING_TLS, EXPORTER_LABEL
from ..commands.result import CommandResult, StdinWindow
from ..files.blocking import (
    SMALL_FILE,
    chooseHash,
    closeQuietly,
    hashFields,
    hashPrefix,
    newHash,
    readExact,
    withDigest,
    writeAll,
)
from ..files.local import (
    LocalError,
    checkDataEvent,
    checkReceived,
    commitLocal,
    downloadResult,
    localPartialName,
    mismatchDiscarded,
    openPartial,
    openRegular,
    partialTooLong,
    refuseExisting,
    unlinkQuietly,
    verifyDownload,
)
from ..wire import ErrorCode, FramesError, NoGreeting, ProtocolViolation
from . import commands, files, keys, ping
from .base import EXIT_OK, EXIT_REMOTE, EXIT_USAGE, UI, Interruption, interruptionOf
from .failures import CannotConnect, Lost, NoAnswer, reportFailure
from .progress import TransferBar

if TYPE_CHECKING:
    import ssl

    from ..auth.secretfile import ClientSecret

#: The environment variable that forces the Twisted path (any value but
#: empty or C{0}): for troubleshooting, and for tests that compare the
#: two paths.
FORCE_TWISTED = "FRAMES_TWISTED"


#: Bytes asked of the socket per read.
READ_SIZE = 256 * 1024

#: The reasons the Twisted path gives for a connection closed cleanly (with
#: TLS: after a close_notify) and for one lost otherwise (reset, ...;
#: with TLS: any end without close_notify, the handshake's included), in
#: its words.
_DONE = "Connection was closed cleanly"
_LOST = "Connection to the other side was lost in a non-clean fashion"
_TLS_LOST = "Connection lost"


class Fallback(Exception):
    """
    The quick path cannot do this command as the Twisted path would: run
    it through Twisted (nothing has been printed or requested yet).
    """


class Interrupted(BaseException):
    """
    SIGINT or SIGTERM arrived (a C{BaseException}, as C{KeyboardInterrupt}
    is, so that no C{except Exception} swallows it).

    @ivar signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Signals:
    """
    SIGINT and SIGTERM while a quick command runs: they raise
    L{Interrupted}, except those in L{recorded}, which are kept in
    L{received} for the command's loop, woken through L{wakeFD}.

    @ivar raising: whether a signal raises at all (off once the command
        has its answer: a late signal changes nothing, as on the Twisted
        path).
    """

    def __init__(self) -> None:
        self.raising = True
        self.recorded: set[int] = set()
        self.received: list[int] = []
        self._wakeRead, self.wakeWrite = os.pipe()
        os.set_blocking(self._wakeRead, False)
        os.set_blocking(self.wakeWrite, False)
        self.wakeFD = self._wakeRead
        self._previous: dict[int, Any] = {}
        self._previousWake = -1
        self._lock = threading.Lock()
        self._closed = False

    def install(self) -> None:
        """
        Handle SIGINT and SIGTERM, and wake L{wakeFD} on each.
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handler)
        self._previousWake = signal.set_wakeup_fd(self.wakeWrite, warn_on_full_buffer=False)

    def restore(self) -> None:
        """
        Put back the handlers there were before L{install}, and close the
        wake-up pipe.
        """
        if self._previous:
            signal.set_wakeup_fd(self._previousWake)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        with self._lock:
            self._closed = True
            os.close(self._wakeRead)
            os.close(self.wakeWrite)

    def _handler(self, signum: int, frame: Any) -> None:
        if signum in self.recorded:
            self.received.append(signum)
        elif self.raising:
            self.raising = False
            raise Interrupted(signum)

    def wake(self) -> None:
        """
        Wake the loop (from another thread), unless L{restore} closed the
        pipe (its descriptor may since name another file).
        """
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self.wakeWrite, b"\0")
            except BlockingIOError:
                pass

    def drain(self) -> None:
        """
        Empty the wake-up pipe.
        """
        try:
            while os.read(self._wakeRead, 4096):
                pass
        except BlockingIOError:
            pass


def applies(args: argparse.Namespace) -> bool:
    """
    Whether the quick path runs this command: a verb of L{VERBS}, a
    C{--server} of the form C{HOST:PORT} (C{HOST}, C{[V6]:PORT}, ...) rather
    than an endpoint string, and C{FRAMES_TWISTED} unset, empty or C{0}.
    """
    if os.environ.get(FORCE_TWISTED, "") not in ("", "0"):
        return False
    if threading.current_thread() is not threading.main_thread():
        # Signal handlers can only be set in the main thread.
        return False
    if args.command not in VERBS:
        return False
    prefix = args.server.split(":", 1)[0]
    return prefix not in ("tcp", "tcp6", "unix", "ssl", "tls")


def main(args: argparse.Namespace, ui: UI) -> int | None:
    """
    Run the command C{args} through the quick path.

    @return: its exit status, or C{None} if it must run through Twisted
        instead (L{Fallback}).
    """
    # What the command does, for the line an interruption prints (a
    # download says what it keeps with files._during, as on the Twisted
    # path).
    args.interruption = Interruption(None, args, ui)
    signals = Signals()
    signals.install()
    try:
        try:
            return VERBS[args.command](args, ui, signals)
        except Fallback:
            return None
        except Interrupted as e:
            return _reportInterruption(args, ui, e.signum)
        except Exception as e:
            signals.raising = False
            return reportFailure(e, args, ui)
    except Interrupted as e:
        # A signal while the failure was being reported.
        return _reportInterruption(args, ui, e.signum)
    finally:
        signals.restore()


def _reportInterruption(args: argparse.Namespace, ui: UI, signum: int) -> int:
    """
    Say what was interrupted, as L{Interruption} does, and return 128 + N.
    """
    interruption = interruptionOf(args) or Interruption(None, args, ui)
    interruption.signal = signum
    return interruption.report()


class Connection:
    """
    One connection to a server, with blocking semantics over a non-blocking
    socket: every wait is a C{select} that L{Signals} can wake.

    @ivar greeting: the server's greeting header.
    @ivar serverError: the error the server said it closes the connection
        for (a message with no request's id), if any.
    """

    def __init__(self, sock: socket.socket, signals: Signals) -> None:
        self.sock = sock
        self.signals = signals
        self.greeting: dict[str, Any] = {}
        self.serverError: FramesError | None = None
        self._buffer = bytearray()
        self._nextId = 1
        self._eof = False
        self._tls = hasattr(sock, "pending")
        #: Decrypts many records at once into a body's buffer, when set up
        #: for a download over TLS (L{bulkReader}).
        self.bulk: Callable[[memoryview], int] | None = None
        self.onWake: Callable[[], None] = lambda: None

    # -- sending --------------------------------------------------------------------

    def request(self, op: str, fields: dict[str, Any] | None = None, body: bytes = b"") -> int:
        """
        Send a request.

        @return: its id.
        """
        rid = self._nextId
        self._nextId += 1
        if fields:
            header = wire.encodeHeader({"op": op, "id": rid, **fields})
        else:
            header = wire.requestHeaderEncoder(op)(rid)
        data = wire.encodeFrame(header) + wire.encodePrefix(len(body))
        # One write for a small message; a large body is not copied.
        if len(body) < 65536:
            self._sendAll(data + body)
        else:
            self._sendAll(data)
            self._sendAll(body)
        return rid

    def _sendAll(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                if not _wouldBlock(e):
                    raise self._lost(e) from None
                sent = 0
            view = view[sent:]
            if view:
                # Read while the socket cannot take more, so that a server
                # whose replies wait for us never waits for us to read.
                readable, writable, _ = select.select([self.sock], [self.sock], [])
                if readable:
                    self._receive()

    # -- receiving ------------------------------------------------------------------

    def _receive(self) -> None:
        """
        Read what the socket has into the buffer.
        """
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if _wouldBlock(e):
                return
            raise self._lost(e) from None
        if not data:
            self._eof = True
        self._buffer += data

    def _lost(self, error: OSError) -> Exception:
        if self._tls:
            return _tlsLost(error)
        return Lost(_LOST)

    def _fill(
        self, wanted: int, deadline: float | None, onTimeout: Callable[[], Exception]
    ) -> None:
        """
        Read until the buffer holds C{wanted} bytes.

        @raise Exception: C{onTimeout()} at C{deadline}; L{Lost} (or the
            server's closing error) at the end of the stream.
        """
        while len(self._buffer) < wanted:
            if self._eof:
                if self.serverError is not None:
                    raise self.serverError
                raise Lost(_DONE)
            if self._tls and (self.bulk is not None or self.sock.pending()):  # type: ignore[attr-defined]
                # OpenSSL holds decrypted bytes, or may hold whole records
                # already read (with read ahead, see L{bulkReader}, which
                # C{pending()} does not count): ask it before waiting on
                # the socket.
                before = len(self._buffer)
                self._receive()
                if self._eof or len(self._buffer) > before:
                    continue
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise onTimeout()
            waitFor: list[Any] = [self.sock, self.signals.wakeFD]
            readable, _, _ = select.select(waitFor, [], [], timeout)
            if self.signals.wakeFD in readable:
                self.signals.drain()
                self.onWake()
            if self.sock in readable:
                self._receive()

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def readHeader(
        self,
        deadline: float | None,
        onTimeout: Callable[[], Exception] = NoAnswer,
        greeting: bool = False,
    ) -> tuple[dict[str, Any], int]:
        """
        Read the header frame of a message, with the limits of the Twisted
        client (L{twisted_frames.client.CLIENT_LIMITS}), and its body's
        length prefix.

        @return: the header and the length of the body that follows.
        @param greeting: it is the first one: two bytes that start a TLS
            record mean a TLS server (L{NoGreeting}), and a frame that
            cannot start a greeting means the peer is no twisted-frames
            server.
        """
        if greeting and not self._tls:
            self._fill(2, deadline, onTimeout)
            if wire.startsTLSRecord(bytes(self._buffer[:2])):
                raise NoGreeting(0.0, True)
        self._fill(wire.PREFIX_LENGTH, deadline, onTimeout)
        (length,) = wire.PREFIX.unpack(self._buffer[: wire.PREFIX_LENGTH])
        try:
            if length > wire.DEFAULT_MAX_HEADER:
                raise ProtocolViolation(
                    ErrorCode.HEADER_TOO_LARGE,
                    f"header frame of {length} bytes is over the limit of "
                    f"{wire.DEFAULT_MAX_HEADER}",
                )
            self._fill(wire.PREFIX_LENGTH + length, deadline, onTimeout)
            self._take(wire.PREFIX_LENGTH)
            header = wire.decodeHeader(self._take(length))
        except ProtocolViolation as e:
            if greeting:
                raise ProtocolViolation(
                    ErrorCode.BAD_HEADER,
                    f"the server did not greet as twisted-frames ({e.message})",
                ) from None
            raise
        self._fill(wire.PREFIX_LENGTH, deadline, onTimeout)
        (bodyLength,) = wire.PREFIX.unpack(self._take(wire.PREFIX_LENGTH))
        return header, bodyLength

    def readMessage(
        self,
        deadline: float | None,
        onTimeout: Callable[[], Exception] = NoAnswer,
        greeting: bool = False,
    ) -> tuple[dict[str, Any], bytes]:
        """
        Read one message (a header frame and a body frame), with the
        limits of the Twisted client (L{twisted_frames.client.CLIENT_LIMITS}).

        @param greeting: see L{readHeader}.
        """
        header, bodyLength = self.readHeader(deadline, onTimeout, greeting)
        self._fill(bodyLength, deadline, onTimeout)
        return header, self._take(bodyLength)

    def receiveBody(self, length: int, sink: BodyPieces) -> None:
        """
        Receive a body of C{length} bytes (after L{readHeader}) into the
        buffers C{sink} lends: it gets each piece as a buffer fills (what was
        read along with the header first), with no copy of what comes
        after.  No deadline, as on the Twisted path.

        @raise Exception: as L{_fill} does at the end of the stream, or
            what C{sink} raises.
        """
        if self._buffer:
            head = self._take(min(len(self._buffer), length))
            length -= len(head)
            sink.piece(memoryview(head), None)
        while length:
            buffer = sink.buffer()
            view = memoryview(buffer)
            want = min(len(view), length)
            filled = 0
            try:
                while filled < want:
                    filled += self._receiveInto(view[filled:want])
            except BaseException:
                # Lost, closed or interrupted: keep what came.
                sink.piece(view[:filled], buffer)
                raise
            sink.piece(view[:want], buffer)
            length -= want

    def _receiveInto(self, view: memoryview) -> int:
        """
        Read what the socket has into C{view}, or wait until it has some.

        @return: how many bytes were read (0 after a wait).
        @raise Exception: as L{_fill} does at the end of the stream.
        """
        # The bulk reader: > 0 decrypted, 0 must wait, -1 left to recv_into.
        got = -1 if self.bulk is None else self.bulk(view)
        if got > 0:
            return got
        if got < 0:
            try:
                got = self.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                got = -1
            except OSError as e:
                if not _wouldBlock(e):
                    raise self._lost(e) from None
                got = -1
            if got > 0:
                return got
        else:
            got = -1
        if got == 0:
            self._eof = True
            if self.serverError is not None:
                raise self.serverError
            raise Lost(_DONE)
        waitFor: list[Any] = [self.sock, self.signals.wakeFD]
        readable, _, _ = select.select(waitFor, [], [])
        if self.signals.wakeFD in readable:
            self.signals.drain()
            self.onWake()
        return 0

    def reply(self, rid: int, deadline: float | None) -> tuple[dict[str, Any], bytes]:
        """
        Wait for the final reply to request C{rid}.

        @raise FramesError: for an error reply.
        """
        while True:
            header, body = self.readMessage(deadline)
            if self._isFinal(header, rid):
                return header, body

    def _isFinal(self, header: dict[str, Any], rid: int) -> bool:
        """
        Whether C{header} is request C{rid}'s final reply (after noting a
        closing error for no request).

        @raise FramesError: if it is an error reply to C{rid}.
        @raise Lost: if it answers a request never made.
        """
        got = header.get("id")
        if type(got) is not int or not 0 < got < self._nextId:
            if header.get("ok") is False:
                # The server is closing this connection for a violation.
                self.serverError = FramesError.fromJSON(header.get("error"))
                return False
            # The Twisted client hangs up on a reply it cannot match.
            raise Lost(_DONE)
        if got != rid or "event" in header:
            return False
        if header.get("ok") is True:
            return True
        raise FramesError.fromJSON(header.get("error"))

    # -- closing --------------------------------------------------------------------

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        # Aborted on a failure, as the Twisted path's Interruption aborts.
        if kind is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """
        Close the connection cleanly (with TLS, after a close_notify).
        """
        if self._tls:
            try:
                self.sock.unwrap()  # type: ignore[attr-defined]
            except (OSError, ValueError):
                pass
        self.sock.close()

    def abort(self) -> None:
        """
        Drop the connection at once.
        """
        self.sock.close()


def _tlsLost(error: OSError) -> Exception:
    """
    What a failed read or write of a TLS connection means: a TLS error the
    peer sent (for L{keys.explainTLSFailure}), or the connection lost.
    """
    stdlib = sys.modules.get("ssl")
    if stdlib is None or not isinstance(error, stdlib.SSLError):
        return Lost(_TLS_LOST)
    if isinstance(error, stdlib.SSLEOFError):
        return Lost(_TLS_LOST)
    kept: Exception = error
    return kept


def _wouldBlock(error: OSError) -> bool:
    stdlib = sys.modules.get("ssl")
    return stdlib is not None and isinstance(
        error, (stdlib.SSLWantReadError, stdlib.SSLWantWriteError)
    )


def connect(args: argparse.Namespace, signals: Signals) -> Connection:
    """
    Connect to C{args.server} as L{twisted_frames.cli.base.openClient}
    does: TLS and login as the security flags say, all within
    C{--timeout}, the TLS handshake and greeting within
    C{--greeting-timeout} of the TCP connection.

    @raise Fallback: if the standard library cannot do the TLS the flags
        ask for as the Twisted path would.
    """
    secret = keys.clientSecret(args)
    useTLS = bool(args.tls or args.ca or args.cert)
    context = _tlsContext(args) if useTLS else None
    host, port = wire.parseServer(args.server)
    deadline = time.monotonic() + args.timeout
    sock = _connectTCP(host, port, deadline)
    greetingTimeout: float | None = args.greeting_timeout or None
    greetingDeadline = deadline
    if greetingTimeout is not None and greetingTimeout < args.timeout:
        greetingDeadline = min(deadline, time.monotonic() + greetingTimeout)

    def timedOut() -> Exception:
        if greetingDeadline < deadline:
            assert greetingTimeout is not None
            return NoGreeting(greetingTimeout)
        return NoAnswer()

    try:
        try:
            if context is not None:
                sock = _handshake(context, sock, host, greetingDeadline, timedOut)
            sock.setblocking(False)
            connection = Connection(sock, signals)
            header, _ = connection.readMessage(greetingDeadline, timedOut, greeting=True)
            connection.greeting = wire.checkGreeting(header)
            if secret is not None:
                _login(connection, secret, deadline)
        except OSError as e:
            if _nameMismatch(e):
                # Twisted's check passes a certificate without
                # subjectAltName, which Python's refuses: let it decide.
                raise Fallback() from None
            explained = keys.explainTLSFailure(e, args.server)
            if explained is None:
                raise
            raise explained from None
        except FramesError as e:
            raise keys.explainLoginFailure(e, secret.user) if secret else e from None
    except BaseException:
        sock.close()
        raise
    return connection


def _nameMismatch(error: OSError) -> bool:
    """
    Whether C{error} is the standard library's TLS refusing the server's
    certificate for not naming the host.
    """
    stdlib = sys.modules.get("ssl")
    return (
        stdlib is not None
        and isinstance(error, stdlib.SSLCertVerificationError)
        and error.verify_code in keys.NAME_MISMATCH
    )


def _connectTCP(host: str, port: int, deadline: float) -> socket.socket:
    """
    A TCP connection to the first of C{host}'s addresses that answers.

    @raise CannotConnect: if none does, or the name does not resolve.
    @raise NoAnswer: at C{deadline}.
    """
    try:
        addresses = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror:
        # The words of Twisted's HostnameEndpoint.
        raise CannotConnect(f"DNS lookup failed: no results for hostname lookup: {host}") from None
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise NoAnswer() from None
        except OSError as e:
            sock.close()
            error = e
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert error is not None
    raise CannotConnect(error.strerror or str(error))


def _tlsContext(args: argparse.Namespace) -> ssl.SSLContext:
    """
    The client's TLS context, meaning what L{twisted_frames.tls.clientOptions}
    means: TLS 1.2 or newer, the server's certificate checked against
    C{--ca} (or the system's trust store) and its host name, C{--cert} and
    C{--key} presented if the server asks.  The server picks the cipher
    (AES-128-GCM first, see L{twisted_frames.tls.TLS13_SUITES}).

    @raise Fallback: if a file cannot be used: the Twisted path says why in
        its words.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if args.ca:
            context.load_verify_locations(cafile=args.ca)
        else:
            context.load_default_certs()
        if args.cert:
            context.load_cert_chain(args.cert, args.key or None)
    except (OSError, ValueError):
        raise Fallback() from None
    return context


def _handshake(
    context: ssl.SSLContext,
    sock: socket.socket,
    host: str,
    deadline: float,
    timedOut: Callable[[], Exception],
) -> socket.socket:
    """
    Wrap C{sock} in TLS and shake hands by C{deadline}.
    """
    # Not suppress_ragged_eofs: an end without close_notify is a lost
    # connection, as the Twisted path says, not a clean close.
    tls = context.wrap_socket(
        sock, server_hostname=host, do_handshake_on_connect=False, suppress_ragged_eofs=False
    )
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timedOut()
    tls.settimeout(remaining)
    try:
        tls.do_handshake()
    except TimeoutError:
        raise timedOut() from None
    except OSError as e:
        raise _tlsLost(e) from None
    return tls


def _login(connection: Connection, secret: ClientSecret, deadline: float) -> None:
    """
    Log in with C{secret} and check the server's proof
    (L{twisted_frames.auth.client}'s halves).
    """
    if connection._tls:
        bindingType, binding = BINDING_TLS, tlsExporter(connection.sock)
    else:
        bindingType, binding = BINDING_NONE, b""
    fields, expected = loginFields(connection.greeting, secret, bindingType, binding)
    header, _ = connection.reply(connection.request("auth", fields), deadline)
    checkServerProof(header, expected, secret)


#: The CPython versions (first, last) whose C{PySSLSocket} starts with the
#: object header, the socket's weak reference, then the C{SSL *}
#: (C{Modules/_ssl.c}); L{tlsExporter} falls back outside them.
KNOWN_SSL_LAYOUT = ((3, 11), (3, 14))


def _sslPointer(sock: socket.socket) -> tuple[Any, int]:
    """
    OpenSSL's C{SSL *} of a TLS socket of the standard library's C{ssl},
    and OpenSSL itself as C{ctypes} finds it through the C{_ssl} module that
    is linked against it: the field after the object header and one
    pointer in CPython's C{PySSLSocket}, checked (C{SSL_get_fd} must give
    the socket's descriptor) before it is given out.

    @raise Fallback: outside the CPython versions whose C{PySSLSocket} is
        known (L{KNOWN_SSL_LAYOUT}), or if the pointer cannot be found or
        checked.
    """
    import _ssl
    import ctypes

    sslobj = getattr(sock, "_sslobj", None)
    if (
        sys.implementation.name != "cpython"
        or not KNOWN_SSL_LAYOUT[0] <= sys.version_info[:2] <= KNOWN_SSL_LAYOUT[1]
        or sslobj is None
    ):
        # Outside the versions whose PySSLSocket is known, even the check
        # below would read a pointer of unknown meaning.
        raise Fallback()
    try:
        library = ctypes.CDLL(_ssl.__file__)
        getFD = library.SSL_get_fd
    except (OSError, AttributeError):
        raise Fallback() from None
    getFD.argtypes = [ctypes.c_void_p]
    getFD.restype = ctypes.c_int
    offset = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(sslobj) + offset).value
    if not pointer or getFD(pointer) != sock.fileno():
        raise Fallback()
    return library, pointer


def tlsExporter(sock: socket.socket) -> bytes:
    """
    The RFC 9266 channel binding of a TLS connection of the standard
    library's C{ssl}: 32 bytes of its keying material exporter under
    L{EXPORTER_LABEL}, as pyOpenSSL's C{export_keying_material} gives the
    Twisted path and the server.

    Python 3.11's C{ssl} has no call for it, so it is OpenSSL's own
    C{SSL_export_keying_material} on the connection's C{SSL *}
    (L{_sslPointer}).

    @raise Fallback: if the pointer cannot be found or checked, or the
        exporter fails: the Twisted path logs in instead.
    """
    import ctypes

    library, pointer = _sslPointer(sock)
    try:
        export = library.SSL_export_keying_material
    except AttributeError:
        raise Fallback() from None
    export.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_int,
    ]
    export.restype = ctypes.c_int
    out = ctypes.create_string_buffer(32)
    if export(pointer, out, 32, EXPORTER_LABEL, len(EXPORTER_LABEL), None, 0, 0) != 1:
        raise Fallback()
    return out.raw


#: The ciphertext OpenSSL reads from the socket at a time during a
#: download's body, with read ahead on (L{bulkReader}): many records.
READ_AHEAD = 256 * 1024


#: OpenSSL's C{SSL_ERROR_WANT_READ}.
_SSL_ERROR_WANT_READ = 2


def bulkReader(sock: socket.socket) -> Callable[[memoryview], int] | None:
    """
    Set a TLS socket of the standard library's C{ssl} up for a download's
    body, and return a reader that decrypts into a buffer every whole
    record OpenSSL can get without waiting, in one call.

    Without this, OpenSSL reads each record's 5-byte header and then its
    body, two system calls per 16 KiB, and C{recv_into} gives one record
    per call through several Python frames.  Here OpenSSL reads ahead (as
    much ciphertext as the socket has, up to L{READ_AHEAD}, per C{read()}),
    and the reader calls C{SSL_read} on the connection's C{SSL *}
    (L{_sslPointer}) into the caller's buffer until it is full or OpenSSL
    would wait, with the GIL released around each call (so the download's
    writer thread runs meanwhile).  Records read ahead wait in OpenSSL,
    which L{Connection._fill} asks before waiting on the socket.

    The reader returns how many bytes it decrypted (> 0), 0 if OpenSSL
    needs more from the socket first, or -1 for anything else, for which
    the caller asks C{recv_into}, which reads the same state and raises (or
    returns 0 for the peer's close) as the standard library does.

    @return: the reader, or C{None} where L{_sslPointer} cannot find the
        connection or this OpenSSL lacks the calls (the body is then read
        with C{recv_into}).
    """
    import ctypes

    try:
        library, pointer = _sslPointer(sock)
        setReadAhead = library.SSL_set_read_ahead
        setBufferLength = library.SSL_set_default_read_buffer_len
        read = library.SSL_read
        getError = library.SSL_get_error
    except (Fallback, AttributeError):
        return None
    setReadAhead.argtypes = [ctypes.c_void_p, ctypes.c_int]
    setReadAhead.restype = None
    setBufferLength.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    setBufferLength.restype = None
    read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    read.restype = ctypes.c_int
    getError.argtypes = [ctypes.c_void_p, ctypes.c_int]
    getError.restype = ctypes.c_int
    setBufferLength(pointer, READ_AHEAD)
    setReadAhead(pointer, 1)
    char = ctypes.c_char
    addressOf = ctypes.addressof

    def reader(view: memoryview) -> int:
        size = len(view)
        target = (char * size).from_buffer(view)
        try:
            return decryptReady(
                read, getError, _SSL_ERROR_WANT_READ, pointer, addressOf(target), size
            )
        finally:
            del target

    return reader


# -- the verbs ------------------------------------------------------------------------


def _ping(args: argparse.Namespace, ui: UI, signals: Signals) -> int:
    """
    C{frames ping}, as L{twisted_frames.cli.ping} does it.
    """
    with connect(args, signals) as connection:
        payload = os.urandom(args.size) if args.size else b""
        rtts = []
        for _ in range(args.count):
            started = time.perf_counter()
            rid = connection.request("ping", None, payload)
            _, echoed = connection.reply(rid, time.monotonic() + args.timeout)
            rtts.append((time.perf_counter() - started) * 1000)
            if echoed != payload:
                signals.raising = False
                ui.error(ping.ECHO_DIFFERS)
                return EXIT_REMOTE
        signals.raising = False
        ping.reportPong(ui, connection.greeting, len(payload), rtts)
        return EXIT_OK


class _StdinReader(StdinWindow):
    """
    Stdin for C{frames run} on the quick path: each chunk the reading
    thread gets (L{StdinWindow}) waits in L{chunks} for the command's
    loop, which it wakes.
    """

    def __init__(self, fd: int, signals: Signals) -> None:
        super().__init__(lambda n: os.read(fd, n))
        self._signals = signals
        self.chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def deliver(self, data: bytes) -> None:
        self.chunks.put(data)
        self._signals.wake()


def _run(args: argparse.Namespace, ui: UI, signals: Signals) -> int:
    """
    C{frames run}, as L{twisted_frames.cli.commands.runRemote} does it.
    """
    argv = commands._commandArgv(args)
    if args.runTimeout is not None and not args.runTimeout > 0:
        ui.error("run: --timeout must be a positive number of seconds")
        return EXIT_USAGE
    with connect(args, signals) as connection:
        return _runOn(connection, argv, args, ui, signals)


def _runOn(
    connection: Connection, argv: list[str], args: argparse.Namespace, ui: UI, signals: Signals
) -> int:
    interrupts = 0
    brokenPipe = False
    cancels: list[str] = []

    def stdoutBroken() -> None:
        nonlocal brokenPipe
        if not brokenPipe:
            brokenPipe = True
            commands._silenceStdout()
            cancels.append("SIGTERM")

    out = commands._Output(commands._binary(sys.stdout), ui.json, stdoutBroken)
    err = commands._Output(commands._binary(sys.stderr), ui.json, lambda: None)
    stdin: int | None = None
    if not args.noStdin and sys.stdin is not None and not commands._isTerminal(sys.stdin):
        stdin = sys.stdin.fileno()
    fields: dict[str, Any] = {"argv": argv}
    if args.runTimeout is not None:
        fields["timeout"] = args.runTimeout
    if args.cwd is not None:
        fields["cwd"] = args.cwd
    if args.maxOutput is not None:
        fields["maxOutput"] = args.maxOutput
    if stdin is not None:
        fields["stdin"] = "stream"
    # From here Ctrl-C is the remote command's, as on the Twisted path.
    signals.recorded.add(signal.SIGINT)
    rid = connection.request("run", fields)
    reader = _StdinReader(stdin, signals) if stdin is not None else None
    stdinIds: set[int] = set()
    if reader is not None:
        reader.start()

    def serve() -> None:
        # Signals first: a cancel goes out before more stdin.
        nonlocal interrupts
        while signals.received:
            signals.received.pop(0)
            interrupts += 1
            if interrupts <= 2:
                cancels.append("SIGINT" if interrupts == 1 else "SIGKILL")
            else:
                raise _HungUp()
        while cancels:
            connection.request("cancel", {"run": rid, "signal": cancels.pop(0)})
        while reader is not None and not reader.chunks.empty():
            data = reader.chunks.get()
            if not reader.stopped:
                stdinIds.add(connection.request("stdin", {"run": rid, "eof": not data}, data))

    connection.onWake = serve
    try:
        while True:
            serve()
            header, body = connection.readMessage(None)
            got = header.get("id")
            if type(got) is int and got in stdinIds:
                stdinIds.discard(got)
                assert reader is not None
                reader.acknowledged(bool(header.get("closed")) or header.get("ok") is not True)
                continue
            if got == rid and "event" in header:
                event = header.get("event")
                if event == "stdout":
                    out.write(body)
                elif event == "stderr":
                    err.write(body)
                continue
            if connection._isFinal(header, rid):
                break
    except _HungUp:
        connection.abort()
        signals.raising = False
        ui.error("run: interrupted; hung up (the server kills the command)")
        return commands.EXIT_INTERRUPTED
    finally:
        signals.recorded.discard(signal.SIGINT)
        if reader is not None:
            reader.stop()
    signals.raising = False
    return commands.report(ui, argv, CommandResult.fromHeader(header), out, err, brokenPipe)


class _HungUp(Exception):
    """
    A third Ctrl-C during C{frames run}: hang up.
    """


def _ls(args: argparse.Namespace, ui: UI, signals: Signals) -> int:
    """
    C{frames ls}, as L{twisted_frames.cli.files} does it.
    """
    with connect(args, signals) as connection:
        rid = connection.request("list", {"path": files._remote(args.path)})
        _, body = connection.reply(rid, time.monotonic() + args.timeout)
        signals.raising = False
        files.reportListing(ui, json.loads(body.decode("utf-8")))
        return EXIT_OK


def _stat(args: argparse.Namespace, ui: UI, signals: Signals) -> int:
    """
    C{frames stat}, as L{twisted_frames.cli.files} does it.
    """
    with connect(args, signals) as connection:
        rid = connection.request("stat", {"path": files._remote(args.path)})
        header, _ = connection.reply(rid, time.monotonic() + args.timeout)
        signals.raising = False
        files.reportStat(ui, header)
        return EXIT_OK


def _eachPath(
    op: str,
    request: Callable[[str], tuple[str, dict[str, Any]]],
    describe: Callable[[dict[str, Any]], str],
) -> Callable[[argparse.Namespace, UI, Signals], int]:
    """
    C{frames rm} or C{frames mkdir}: one request per path, each result or
    error reported as L{twisted_frames.cli.files} reports it.

    @param request: the op and fields of the request for a path.
    """

    def verb(args: argparse.Namespace, ui: UI, signals: Signals) -> int:
        code = EXIT_OK
        with connect(args, signals) as connection:
            for path in args.paths:
                try:
                    if connection.serverError is not None:
                        # The server said why it closes: every later path
                        # fails for that reason too, as on the Twisted path.
                        raise connection.serverError
                    rid = connection.request(*request(files._remote(path)))
                    done, _ = connection.reply(rid, time.monotonic() + args.timeout)
                except FramesError as e:
                    files.reportPathFailed(ui, op, e)
                    code = EXIT_REMOTE
                    continue
                files.reportPathDone(ui, done, describe)
            return code

    return verb


#: The buffer a download's body is received into, reused for every piece:
#: each fill is hashed and written in one go.
BODY_BUFFER = 2 * 1024 * 1024


class BodyPieces:
    """
    Where L{Connection.receiveBody} puts a body: the buffers it lends, and
    what it does with each filled piece.  This one drops them, into one
    reused buffer.
    """

    def __init__(self) -> None:
        self._scratch = bytearray(BODY_BUFFER)

    def buffer(self) -> bytearray:
        """
        @return: a buffer to receive the next piece into.
        """
        return self._scratch

    def piece(self, view: memoryview, buffer: bytearray | None) -> None:
        """
        A piece received into C{buffer} (C{None}: bytes read with the
        header); the buffer may not be written to until L{buffer} gives it
        again.
        """


class FileWriter(BodyPieces):
    """
    The pieces of a download hashed and written to its file by a thread of
    their own, while the next piece is received into another buffer: two
    buffers of L{BODY_BUFFER} go back and forth.  A hash or write error
    stops the writing (the file holds what was written before it) and is
    raised on the main thread by the next L{buffer} or L{finish}.
    Progress is reported on the main thread, as pieces arrive.
    """

    def __init__(self, fd: int, hasher: Any, progress: Callable[[int], None]) -> None:
        self._fd = fd
        self._hasher = hasher
        self._progress = progress
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(2):
            self._free.put(bytearray(BODY_BUFFER))
        self._pieces: queue.SimpleQueue[tuple[memoryview, bytearray | None] | None] = (
            queue.SimpleQueue()
        )
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._write, name="frames get writer", daemon=True
        )
        self._thread.start()

    def buffer(self) -> bytearray:
        buffer = self._free.get()
        if self.error is not None:
            self._free.put(buffer)
            raise self.error
        return buffer

    def piece(self, view: memoryview, buffer: bytearray | None) -> None:
        if len(view):
            self._progress(len(view))
        self._pieces.put((view, buffer))

    def _write(self) -> None:
        while True:
            item = self._pieces.get()
            if item is None:
                return
            view, buffer = item
            try:
                if self.error is None and len(view):
                    self._hasher.update(view)
                    writeAll(self._fd, view)
            except BaseException as e:
                self.error = e
            finally:
                del view
                if buffer is not None:
                    self._free.put(buffer)

    def finish(self, raising: bool = True) -> None:
        """
        Wait until every piece is written (at once if already done); raise
        the write error, if any and C{raising}.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            self._pieces.put(None)
            thread.join()
        if raising and self.error is not None:
            raise self.error


def _get(args: argparse.Namespace, ui: UI, signals: Signals) -> int:
    """
    C{frames get} of one remote file to a local path, as
    L{twisted_frames.cli.files} does it; C{-r} and C{-} (stdout) run
    through Twisted.
    """
    if args.recursive:
        raise Fallback()
    remote, base, local = files.getTarget(args)
    if local == "-":
        raise Fallback()
    files._during(args, f"get {remote}", ["get", remote, local], localPartialName(local))
    with connect(args, signals) as connection:
        # The put/get arguments that resume the transfer under way, for the
        # server's shutdown (as in the Twisted path's).
        resumable: list[str] | None = None
        bar: TransferBar | None = None
        started = time.monotonic()
        try:
            rid = connection.request("stat", {"path": remote})
            info, _ = connection.reply(rid, time.monotonic() + args.timeout)
            if info.get("type") == "directory":
                signals.raising = False
                return files.reportIsADirectory(ui, remote)
            resumable = ["get", remote, local]
            bar = TransferBar(args, int(info.get("size", 0)), base)
            result = _getFile(connection, remote, local, args, bar)
            bar.close()
            signals.raising = False
            return files._reportFile(ui, "get", remote, local, result, started, {})
        except LocalError as e:
            signals.raising = False
            return files.reportLocalError(ui, "get", e)
        except FramesError as e:
            if resumable is not None and e.code == ErrorCode.SHUTTING_DOWN:
                signals.raising = False
                return files._shuttingDown(ui, args, e, resumable)
            raise
        finally:
            if bar is not None:
                bar.close()


def _getFile(
    connection: Connection,
    remote: str,
    local: str,
    args: argparse.Namespace,
    progress: Callable[[int], None],
) -> dict[str, Any]:
    """
    Download C{remote} to C{local} through its hidden partial file, verified
    and renamed into place, as L{twisted_frames.files.client.FileClient.getFile}
    does (the same pieces of L{twisted_frames.files.local}).
    """
    name = chooseHash(connection.greeting, args.hash)
    refuseExisting(local, args.force)
    part = localPartialName(local)
    fd, offset = openPartial(part, args.resume)
    try:
        hasher = newHash(name)
        if offset:
            hashPrefix(fd, offset, hasher)
            progress(offset)
        try:
            header = _download(connection, remote, fd, offset, hasher, progress, name)
        except FramesError as e:
            if not partialTooLong(e, offset):
                raise
            # The partial is longer than the remote file: start over.
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            hasher = newHash(name)
            progress(-offset)
            offset = 0
            header = _download(connection, remote, fd, 0, hasher, progress, name)
        try:
            digest = verifyDownload(remote, name, hasher, header)
        except LocalError as e:
            unlinkQuietly(part)
            raise mismatchDiscarded(e) from None
        commitLocal(fd, part, local, args.force)
        fd = -1
    except FramesError:
        # As on the Twisted path: no empty partial left after a refusal.
        if fd >= 0 and os.fstat(fd).st_size == 0:
            unlinkQuietly(part)
        raise
    finally:
        if fd >= 0:
            closeQuietly(fd)
    return downloadResult(header, name, digest, local, offset)


def _download(
    connection: Connection,
    remote: str,
    fd: int,
    offset: int,
    hasher: Any,
    progress: Callable[[int], None],
    name: str,
) -> dict[str, Any]:
    """
    Ask for C{remote} from C{offset} and write its C{data} events to C{fd}
    at its position, hashing them.

    @return: the final reply's header.
    """
    if connection._tls and connection.bulk is None:
        connection.bulk = bulkReader(connection.sock)
    rid = connection.request("get", {"path": remote, "offset": offset, **hashFields(name)})
    position = offset
    writer = FileWriter(fd, hasher, progress)
    discard = BodyPieces()
    try:
        while True:
            header, length = connection.readHeader(None)
            if header.get("id") == rid and "event" in header:
                checkDataEvent(header, position)
                position += length
                connection.receiveBody(length, writer)
                continue
            connection.receiveBody(length, discard)
            if connection._isFinal(header, rid):
                writer.finish()
                checkReceived(remote, position, header)
                return header
    finally:
        # What was received is in the file before anything is said of it
        # (a partial kept for resume holds all of it); a write error is
        # raised unless something else already is.
        writer.finish(raising=sys.exc_info()[0] is None)


#: The largest file C{frames put} sends on the quick path: one message
#: with the whole body (as L{twisted_frames.files.client.FileClient.putFile}
#: sends files up to C{SMALL_FILE}); larger files go through Twisted,
#: whose uploads stream segments (with TLS, from a thread of their own).
QUICK_PUT_MAX = SMALL_FILE


def _put(args: argparse.Namespace, ui: UI, signals: Signals) -> int:
    """
    C{frames put} of one local regular file of at most L{QUICK_PUT_MAX}
    bytes, as L{twisted_frames.cli.files} does it; C{-r}, C{-} (stdin),
    C{--resume} and larger files run through Twisted.
    """
    local = args.local
    if local == "-" or args.recursive or args.resume:
        raise Fallback()
    refused = files.checkPutSource(ui, args)
    if refused is not None:
        return refused
    try:
        info = os.stat(local)
    except OSError:
        raise Fallback() from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > QUICK_PUT_MAX:
        raise Fallback()
    given = [] if args.remote is None else [args.remote]
    files._during(args, f"put {local}", ["put", local, *given])
    with connect(args, signals) as connection:
        # As in _get.
        resumable: list[str] | None = None
        bar: TransferBar | None = None
        started = time.monotonic()
        try:
            base, remote = files.putTarget(args)
            if args.remote is not None:
                remote = _intoRemoteDir(connection, args, remote, base)
            resumable = ["put", local, remote]
            files._during(args, f"put {local}", resumable)
            bar = TransferBar(args, info.st_size, remote)
            result = _putFile(connection, local, remote, args, bar)
            bar.close()
            signals.raising = False
            return files._reportFile(
                ui, "put", local, result["path"], result, started, {"local": local}
            )
        except LocalError as e:
            signals.raising = False
            return files.reportLocalError(ui, "put", e)
        except FramesError as e:
            if resumable is not None and e.code == ErrorCode.SHUTTING_DOWN:
                signals.raising = False
                return files._shuttingDown(ui, args, e, resumable)
            raise files._flagHint(e) from None
        finally:
            if bar is not None:
                bar.close()


def _intoRemoteDir(
    connection: Connection, args: argparse.Namespace, remote: str, base: str
) -> str:
    """
    The remote path of C{put LOCAL REMOTE}, as
    L{twisted_frames.cli.files.intoRemoteDir} resolves it (with the
    C{stat} it needs).
    """
    info: dict[str, Any] | None = None
    if files.needsRemoteStat(args.remote, remote):
        rid = connection.request("stat", {"path": remote})
        try:
            info, _ = connection.reply(rid, time.monotonic() + args.timeout)
        except FramesError:
            info = None
    return files.intoRemoteDir(args.remote, remote, base, info)


def _putFile(
    connection: Connection,
    local: str,
    remote: str,
    args: argparse.Namespace,
    progress: Callable[[int], None],
) -> dict[str, Any]:
    """
    Upload C{local} to C{remote} in one message, its whole body with
    C{final} and the digest, as
    L{twisted_frames.files.client.FileClient.putFile} uploads a file of at
    most C{SMALL_FILE} bytes.

    @raise Fallback: if the file grew past L{QUICK_PUT_MAX} since it was
        looked at (only the C{stat} of REMOTE may have been sent).
    """
    name = chooseHash(connection.greeting, args.hash)
    fd = openRegular(local)
    try:
        size = os.fstat(fd).st_size
        if size > QUICK_PUT_MAX:
            raise Fallback()
        hasher = newHash(name)
        data = readExact(fd, 0, size)
        hasher.update(data)
    finally:
        os.close(fd)
    fields: dict[str, Any] = {"path": remote, "size": size, "overwrite": args.force}
    fields.update(hashFields(name))
    rid = connection.request(
        "put",
        {**fields, "offset": 0, "final": True, **hashFields(name, hasher.hexdigest())},
        data,
    )
    header, _ = connection.reply(rid, None)
    progress(size)
    result = withDigest(header, name, hasher.hexdigest())
    result["resumed_from"] = 0
    return result


#: The verbs the quick path runs, by name.
VERBS: dict[str, Callable[[argparse.Namespace, UI, Signals], int]] = {
    "ping": _ping,
    "run": _run,
    "ls": _ls,
    "stat": _stat,
    "get": _get,
    "put": _put,
    "rm": _eachPath("rm", lambda path: ("delete", {"path": path}), files._removed),
    "mkdir": _eachPath(
        "mkdir", lambda path: ("mkdir", {"path": path, "parents": True}), files.describeMkdir
    ),
}
