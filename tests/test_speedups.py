"""
Tests for L{twisted_frames._speedups}: each speed path falls back to the
public API when disabled, and the core of the suite (the wire, protocol,
server and client test cases) passes with every fallback forced.
"""

from __future__ import annotations

import json
import socket
import struct
import tempfile
import unittest
from collections.abc import Iterator
from typing import Any, cast

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests import test_client, test_protocol, test_server, test_wire
from twisted_frames import _speedups, wire
from twisted_frames._speedups import cjson, logevent
from twisted_frames._speedups import tcp as fasttcp
from twisted_frames._speedups import tls as fasttls
from twisted_frames.protocol import FrameProtocol


def force(case: SynchronousTestCase, flag: bool) -> None:
    """
    Enable or disable the speed paths for the rest of test C{case}.
    """
    case.addCleanup(_speedups.setEnabled, _speedups.enabled())
    _speedups.setEnabled(flag)


class FallbacksForced(SynchronousTestCase):
    """
    A test case that runs with every speed path disabled.
    """

    def setUp(self) -> None:
        force(self, False)
        self.assertFalse(wire._CODEC.fast)
        super().setUp()


class CountingEncoder(json.JSONEncoder):
    """
    An encoder that counts calls of its public C{encode}.
    """

    calls = 0

    def encode(self, o: Any) -> str:
        self.calls += 1
        return super().encode(o)


class CountingDecoder(json.JSONDecoder):
    """
    A decoder that counts calls of its public C{decode}.
    """

    calls = 0

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().decode(s, *args, **kwargs)


def codec() -> tuple[cjson.Codec, CountingEncoder, CountingDecoder]:
    """
    A codec with wire's options over counting encoder and decoder.
    """
    encoder = CountingEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    decoder = CountingDecoder()
    return cjson.Codec(encoder, decoder), encoder, decoder


class CodecTests(SynchronousTestCase):
    """
    L{cjson.Codec} uses the C functions, or the public methods.
    """

    def test_fast(self) -> None:
        """
        With the speed paths enabled the C functions are used, with the
        public methods' output.
        """
        force(self, True)
        c, encoder, decoder = codec()
        self.assertTrue(c.fast)
        self.assertTrue(wire._CODEC.fast)
        value = {"a": [1, "é", None], "b": {"c": 2.5}}
        self.assertEqual(
            c.encode(value), json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        )
        self.assertEqual(c.decode('{"a":[1,"\\u00e9"]}'), {"a": [1, "é"]})
        self.assertEqual((encoder.calls, decoder.calls), (0, 0))

    def test_fallback(self) -> None:
        """
        Disabled, the codec calls the encoder's and decoder's public
        methods, wire's codec among them; enabled again, it stops.
        """
        c, encoder, decoder = codec()
        force(self, False)
        self.assertFalse(c.fast)
        self.assertFalse(wire._CODEC.fast)
        self.assertEqual(c.encode({"a": 1}), '{"a":1}')
        self.assertEqual(c.decode('{"a":1}'), {"a": 1})
        self.assertEqual((encoder.calls, decoder.calls), (1, 1))
        _speedups.setEnabled(True)
        c.encode({"a": 1})
        self.assertEqual(encoder.calls, 1)

    def test_decodeWhitespace(self) -> None:
        """
        The fast decoder hands text the scanner does not take whole to the
        full parser, which accepts surrounding whitespace and explains
        trailing data.
        """
        c, _, decoder = codec()
        self.assertEqual(c.decode(' {"a":1} '), {"a": 1})
        self.assertEqual(decoder.calls, 1)
        self.assertRaises(json.JSONDecodeError, c.decode, '{"a":1}x')


def connection() -> tuple[tcp.Connection, socket.socket]:
    """
    A real C{tcp.Connection} over one end of a socket pair, with a
    L{MemoryReactor}: nothing runs, sends go to the kernel at once.
    """
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    proto = FrameProtocol()
    conn = tcp.Connection(ours, proto, cast(Any, MemoryReactor()))
    conn.connected = 1
    return conn, theirs


class TCPTests(SynchronousTestCase):
    """
    The direct send, the buffered count and the startTLS hook on a real
    TCP connection, and their fallbacks.
    """

    def setUp(self) -> None:
        self.conn, self.peer = connection()
        self.addCleanup(self.conn.socket.close)
        self.addCleanup(self.peer.close)

    def test_direct(self) -> None:
        """
        Enabled, the protocol sends gathered writes straight to the socket
        and counts what the transport buffers.
        """
        force(self, True)
        proto = FrameProtocol()
        proto.makeConnection(self.conn)
        self.assertTrue(proto._sender.directSend)
        self.assertTrue(proto._sender.gathering)
        proto._sender.gathered = []
        proto.sendMessage({"id": 1})
        proto._sender.sendGathered()
        self.assertEqual(self.conn.dataBuffer, b"")
        self.assertEqual(self.peer.recv(100), wire.encodeMessage({"id": 1}))
        self.conn.write(b"x" * 10)
        self.assertEqual(fasttcp.unsent(self.conn), 10)

    def test_fallback(self) -> None:
        """
        Disabled, writes go through C{transport.write} (into its buffer, for
        the reactor to send) and nothing is gathered (C{startTLS} is left
        alone).  The buffered count, which the write deadline needs, is
        still read where the transport has it.
        """
        force(self, False)
        startTLS = self.conn.startTLS
        proto = FrameProtocol()
        proto.makeConnection(self.conn)
        self.assertFalse(proto._sender.directSend)
        self.assertFalse(proto._sender.gathering)
        self.assertEqual(self.conn.startTLS, startTLS)
        proto.dataReceived(b"")
        self.assertIsNone(proto._sender.gathered)
        proto.sendMessage({"id": 1})
        self.assertEqual(
            bytes(self.conn.dataBuffer) + b"".join(self.conn._tempDataBuffer),
            wire.encodeMessage({"id": 1}),
        )
        self.assertEqual(fasttcp.unsent(self.conn), len(wire.encodeMessage({"id": 1})))
        self.assertEqual(fasttcp.unsent(object()), 0)

    def test_directSendsOnTheSocket(self) -> None:
        """
        On a plain TCP connection the direct send is one C{socket.send}, not
        a call of the transport's C{writeSomeData}.
        """
        force(self, True)
        calls: list[bytes] = []
        self.conn.writeSomeData = calls.append  # type: ignore[assignment,method-assign]
        self.assertEqual(fasttcp.sendDirect(self.conn, b"x" * 10), b"")
        self.assertEqual(calls, [])
        self.assertEqual(self.peer.recv(100), b"x" * 10)

    def test_directSocketFull(self) -> None:
        """
        A socket that takes nothing now leaves all of the data for the
        transport, and the connection as it was.
        """
        force(self, True)
        self.conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while True:
            try:
                self.conn.socket.send(b"x" * 65536)
            except BlockingIOError:
                break
        doRead = self.conn.doRead
        self.assertEqual(fasttcp.sendDirect(self.conn, b"y" * 10), b"y" * 10)
        self.assertEqual(self.conn.doRead, doRead)

    def test_directOverSendLimit(self) -> None:
        """
        More than the transport's C{SEND_LIMIT} goes through its own
        C{writeSomeData}, which sends at most that much.
        """
        force(self, True)
        self.conn.SEND_LIMIT = 4
        self.assertEqual(fasttcp.sendDirect(self.conn, b"abcdefgh"), b"efgh")
        self.assertEqual(self.peer.recv(100), b"abcd")

    def test_directOwnWriteSomeData(self) -> None:
        """
        A connection whose class has a C{writeSomeData} of its own (as a
        UNIX socket's does) sends through it.
        """
        force(self, True)
        calls: list[bytes] = []

        class Own(tcp.Connection):
            def writeSomeData(self, data: bytes) -> int:
                calls.append(bytes(data))
                return super().writeSomeData(data)  # type: ignore[return-value]

        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        conn = Own(ours, FrameProtocol(), cast(Any, MemoryReactor()))
        conn.connected = 1
        self.assertTrue(fasttcp.canSendDirect(conn))
        self.assertEqual(fasttcp.sendDirect(conn, b"x" * 10), b"")
        self.assertEqual(calls, [b"x" * 10])
        self.assertEqual(theirs.recv(100), b"x" * 10)

    def test_resetSeenByDirectSendIsLost(self) -> None:
        """
        A reset that a send around the transport meets is reported once by
        the socket: the transport's next read then reports the connection
        lost (as its own send or read would have), not a clean end of the
        stream.
        """
        force(self, True)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.peer.close()
        self.assertEqual(fasttcp.sendDirect(self.conn, b"x" * 10), b"x" * 10)
        self.assertIsInstance(self.conn.doRead(), ConnectionLost)
        self.assertIsInstance(self.conn.doWrite(), ConnectionLost)

    def test_resetSeenBySendFileIsLost(self) -> None:
        """
        The same for a file sent with C{os.sendfile} (L{fasttcp.sendFile}).
        """
        force(self, True)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.peer.close()
        with tempfile.TemporaryFile() as f:
            f.write(b"x" * 10)
            f.flush()
            self.assertIsNone(fasttcp.sendFile(self.conn, f.fileno(), 0, 10))
        self.assertIsInstance(self.conn.doRead(), ConnectionLost)

    def test_startTLSSendsGatheredFirst(self) -> None:
        """
        Enabled, C{startTLS} first sends what was gathered.
        """
        force(self, True)
        calls: list[bytes] = []
        proto = FrameProtocol()

        class Transport:
            def write(self, data: bytes) -> None:
                calls.append(data)

            def startTLS(self, *args: Any) -> None:
                calls.append(b"startTLS")

        transport = Transport()
        proto.makeConnection(transport)
        proto._sender.gathered = []
        proto.sendMessage({"id": 1})
        transport.startTLS()
        self.assertEqual(calls, [wire.encodeMessage({"id": 1}), b"startTLS"])


class TLSTests(SynchronousTestCase):
    """
    Under Twisted's TLS layer, over a real TCP connection: what is gathered
    goes to the TLS layer at once (not a reactor iteration later), and its
    records go straight to the socket; and the fallbacks.
    """

    def setUp(self) -> None:
        self.conn, self.peer = connection()
        self.addCleanup(self.conn.socket.close)
        self.addCleanup(self.peer.close)
        self.clock = Clock()

    def tlsProtocol(self) -> tuple[TLSMemoryBIOProtocol, FrameProtocol]:
        """
        A client-side TLS layer (its ClientHello is the first record it
        sends) over the TCP connection, with a L{FrameProtocol} in it.
        """
        factory = TLSMemoryBIOFactory(
            CertificateOptions(),
            True,
            Factory.forProtocol(FrameProtocol),
            clock=self.clock,
        )
        tls = factory.buildProtocol(None)
        assert tls is not None
        tls.makeConnection(self.conn)
        proto = tls.wrappedProtocol
        assert isinstance(proto, FrameProtocol)
        return tls, proto

    def test_direct(self) -> None:
        """
        Enabled, the ClientHello is sent with a C{send()} of its own (the
        TCP transport buffers nothing), and a gathered message is handed to
        the TLS layer at once: it holds it until its handshake is done,
        and no delayed call is scheduled for it.
        """
        force(self, True)
        tls, proto = self.tlsProtocol()
        self.assertEqual(fasttcp.unsent(self.conn), 0)
        hello = self.peer.recv(65536)
        self.assertEqual(hello[:2], b"\x16\x03")
        proto._sender.gathered = []
        proto.sendMessage({"id": 1})
        proto._sender.sendGathered()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(b"".join(tls._appSendBuffer), wire.encodeMessage({"id": 1}))
        self.assertTrue(proto._sender.tlsUnbuffered)

    def test_fallback(self) -> None:
        """
        Disabled, the TLS layer is left as it is: its records go into the
        TCP transport's buffer, and writes wait in its own buffer for a
        delayed call.
        """
        force(self, False)
        tls, proto = self.tlsProtocol()
        self.assertFalse(proto._sender.tlsUnbuffered)
        self.assertGreater(fasttcp.unsent(self.conn), 0)
        proto.dataReceived(b"")
        proto.sendMessage({"id": 1})
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(tls._appSendBuffer, [])

    def test_notBuffering(self) -> None:
        """
        A transport that is not Twisted's buffering TLS layer is written to
        as it is; a TLS layer over something other than a TCP connection
        keeps its own way of sending records.
        """
        force(self, True)
        self.assertFalse(fasttls.canWriteUnbuffered(self.conn))
        tls = TLSMemoryBIOProtocol(
            TLSMemoryBIOFactory(CertificateOptions(), True, Factory()), FrameProtocol()
        )
        self.assertFalse(fasttls.sendRecordsDirect(tls))

    def test_afterConnectionLost(self) -> None:
        """
        Once the connection is lost (the TLS layer's buffer replaced), a
        write is the TLS layer's own, which drops it.
        """
        force(self, True)
        tls, proto = self.tlsProtocol()
        tls.connectionLost(Failure(ConnectionDone()))
        fasttls.writeUnbuffered(tls, b"x")
        self.assertEqual(tls._appSendBuffer, [])


class LogEventTests(SynchronousTestCase):
    """
    L{logevent.logInfo} builds the event C{Logger.info} builds.
    """

    def events(self) -> Iterator[dict[str, Any]]:
        """
        Log one line with the speed path enabled, then disabled.
        """
        events: list[dict[str, Any]] = []
        logger = Logger(namespace="ns", observer=cast(ILogObserver, events.append))
        for flag in (True, False):
            force(self, flag)
            logevent.logInfo(logger, "the text", {"peer": "p", "ms": 1.5})
            yield events.pop()

    def test_sameEvent(self) -> None:
        """
        Both ways give the same keys and values (but the time).
        """
        fast, public = self.events()
        self.assertTrue(logevent._known)
        self.assertEqual(set(fast), set(public))
        for event in fast, public:
            del event["log_time"]
        self.assertEqual(fast, public)
        self.assertEqual(fast["log_text"], "the text")
        self.assertEqual(fast["peer"], "p")


def _forced(*modules: Any) -> dict[str, type]:
    """
    Every test case class of C{modules} again, with the fallbacks forced.
    """
    classes: dict[str, type] = {}
    for module in modules:
        for name, cls in sorted(vars(module).items()):
            if (
                isinstance(cls, type)
                and issubclass(cls, SynchronousTestCase)
                and cls.__module__ == module.__name__
                and any(attr.startswith("test") for attr in dir(cls))
            ):
                forced = f"{name}WithFallbacks"
                namespace: dict[str, Any] = {"__module__": __name__}
                for attr in dir(cls):
                    if attr.startswith("test") and hasattr(getattr(cls, attr), "hypothesis"):
                        # Hypothesis refuses to run one @given method from two
                        # classes (HealthCheck.differing_executors).
                        namespace[attr] = unittest.skip("a Hypothesis test, run unforced only")(
                            getattr(cls, attr)
                        )
                classes[forced] = type(forced, (FallbacksForced, cls), namespace)
    return classes


_FORCED = _forced(test_wire, test_protocol, test_server, test_client)
globals().update(_FORCED)


class CoverageTests(SynchronousTestCase):
    """
    The forced run covers the core.
    """

    def test_coreIsCovered(self) -> None:
        """
        Each core test module gives test cases to the forced run.
        """
        for module in test_wire, test_protocol, test_server, test_client:
            self.assertTrue(
                any(cls.__mro__[2].__module__ == module.__name__ for cls in _FORCED.values()),
                module.__name__,
            )
