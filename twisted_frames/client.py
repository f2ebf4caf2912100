# -*- test-case-name: tests.test_client -*-
"""
The client library: Deferred-based, usable from C{async}/C{await} code with
C{Deferred.fromCoroutine} / C{ensureDeferred}::

    client = await connect(reactor, "127.0.0.1:8007")
    echoed = await client.ping(b"hello")
    await client.close()

Requests may be pipelined: each gets a fresh id, and replies are matched by id
whatever order they come back in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from . import wire
from .protocol import BodySink, BufferSink, DiscardSink, FrameProtocol, IBodySource
from .tcpclient import TCPAddressEndpoint, TLSClientEndpoint
from .wire import ErrorCode, FramesError, Limits, ProtocolViolation

# Re-exported: they live in wire, which the CLI's quick path shares.
from .wire import NoGreeting as NoGreeting
from .wire import parseServer as parseServer

if TYPE_CHECKING:
    from .auth.keys import ClientSecret

#: Makes the sink for a streamed reply body: C{(header, length) -> BodySink}.
SinkFactory = Callable[[dict[str, Any], int], BodySink]
#: Receives an intermediate message: C{(header, body)}.
EventHandler = Callable[[dict[str, Any], bytes], None]

#: What a client accepts in memory by default: a reply body without a sink
#: factory is gathered, so the server's own body limit is the bound.
CLIENT_LIMITS = Limits(maxBody=wire.MAX_FRAME, bufferThreshold=wire.MAX_FRAME)

#: Seconds to wait for the greeting once connected (see L{wire}).
DEFAULT_GREETING_TIMEOUT = wire.DEFAULT_GREETING_TIMEOUT


@dataclass
class Reply:
    """
    A final success reply.

    @ivar header: its header (C{id}, C{ok} and the op's fields).
    @ivar body: its body, unless it was streamed to a sink (then C{b""}).
    @ivar sink: the sink a streamed body went to, if any.
    """

    header: dict[str, Any]
    body: bytes = b""
    sink: BodySink | None = None


@dataclass(slots=True)
class _Pending:
    op: str
    result: defer.Deferred[Any]
    onEvent: EventHandler | None = None
    replySink: SinkFactory | None = None
    eventSink: SinkFactory | None = None
    #: Fire C{result} with the reply's body rather than the L{Reply}.
    bodyOnly: bool = False


class _FinalSink(BodySink):
    """
    Wraps the caller's sink for a final reply body and resolves the request
    when the body is complete.
    """

    def __init__(self, inner: BodySink, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done = done

    def bodyStarted(self, length: int, producer: Any) -> None:
        self._inner.bodyStarted(length, producer)

    def bodyData(self, data: bytes) -> None:
        self._inner.bodyData(data)

    def bodyFinished(self) -> None:
        self._inner.bodyFinished()
        self._done()

    def bodyFailed(self, reason: Failure) -> None:
        self._inner.bodyFailed(reason)


def _requestHeaderDict(op: str, rid: int, fields: dict[str, Any] | None) -> dict[str, Any]:
    header = {"op": op, "id": rid}
    if fields:
        header.update(fields)
    return header


#: Ops whose request header encoders are kept (see L{_requestHeader}).
_REQUEST_ENCODERS_KEPT = 64
_requestEncoders: dict[str, Callable[[int], bytes]] = {}


def _requestHeader(op: str) -> Callable[[int], bytes]:
    """
    The encoder of C{op}'s request headers without fields
    (L{wire.requestHeaderEncoder}), made once for the first few ops seen.
    """
    encode = _requestEncoders.get(op)
    if encode is None:
        encode = wire.requestHeaderEncoder(op)
        if len(_requestEncoders) < _REQUEST_ENCODERS_KEPT:
            _requestEncoders[op] = encode
    return encode


class ClientProtocol(FrameProtocol):
    """
    The client side of a connection: checks the greeting, numbers requests,
    routes replies and events back to their callers.

    @ivar greeted: fires with the greeting header (or fails on a mismatch).
    """

    limits = CLIENT_LIMITS
    # Replies are read while requests wait to be sent: the server pauses
    # reading requests while its replies wait (see holdsReceivingForSend).
    holdsReceivingForSend = False

    def __init__(self) -> None:
        super().__init__()
        self.greeting: dict[str, Any] | None = None
        self.greeted: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.isClosed = False
        self._closeWaiters: list[defer.Deferred[None]] = []
        self._pending: dict[int, _Pending] = {}
        self._nextId = 1
        #: The id given to the latest request, for ops that refer to an
        #: earlier request (e.g. C{cancel}).
        self.lastRequestId = 0
        self.serverError: FramesError | None = None
        self._greetingTimer: Any = None
        self._firstBytes = b""

    def connectionMade(self) -> None:
        self.setNoDelay()

    def expectGreetingWithin(self, seconds: float, clock: IReactorTime) -> None:
        """
        Fail L{greeted} with L{NoGreeting} and abort the connection if the
        greeting has not come within C{seconds}.
        """
        if not self.greeted.called:
            self._greetingTimer = clock.callLater(seconds, self._noGreeting, seconds, False)

    def _noGreeting(self, seconds: float, tlsRecord: bool) -> None:
        self._cancelGreetingTimer()
        if not self.greeted.called:
            self.greeted.errback(Failure(NoGreeting(seconds, tlsRecord)))
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _cancelGreetingTimer(self) -> None:
        if self._greetingTimer is not None and self._greetingTimer.active():
            self._greetingTimer.cancel()
        self._greetingTimer = None

    def dataReceived(self, data: bytes) -> None:
        if self.greeting is None and len(self._firstBytes) < 2:
            # A greeting starts with a length prefix far below 0x14030000:
            # these two bytes can only start a TLS record (the peer is a TLS
            # server; a plain client sent it nothing it could answer).
            self._firstBytes += data[: 2 - len(self._firstBytes)]
            if wire.startsTLSRecord(self._firstBytes):
                self._noGreeting(0.0, True)
                return
        # Not super(): on Python 3.11 it builds a super object on every read.
        FrameProtocol.dataReceived(self, data)

    def messageStarted(self, header: dict[str, Any], bodyLength: int) -> BodySink:
        if self.greeting is None:
            return self._greetingReceived(header, bodyLength)
        # (Any: an int wherever a pending request is found for it.)
        rid: Any = header.get("id")
        # type(), not isinstance(): "id": true must not match request 1.
        pending = self._pending.get(rid) if type(rid) is int else None
        if pending is None:
            if header.get("ok") is False:
                # The server is closing this connection for a violation.
                self.serverError = FramesError.fromJSON(header.get("error"))
                return DiscardSink()
            raise ProtocolViolation(ErrorCode.BAD_REQUEST, f"reply for unknown request id {rid!r}")
        if "event" in header:
            if pending.eventSink is not None:
                return pending.eventSink(header, bodyLength)
            onEvent = pending.onEvent
            if onEvent is None:
                return DiscardSink()
            return BufferSink(lambda body: onEvent(header, body))
        # The request stays pending until its final body is complete, so that
        # a connection lost mid-body fails it (connectionLost) instead of
        # leaving its Deferred unfired.
        if header.get("ok") is True:
            if pending.replySink is not None and bodyLength:
                inner = pending.replySink(header, bodyLength)
                return _FinalSink(inner, lambda: self._resolve(rid, Reply(header, b"", inner)))
            if pending.bodyOnly:
                return BufferSink(lambda body: self._pending.pop(rid).result.callback(body))
            return BufferSink(lambda body: self._resolve(rid, Reply(header, body)))
        error = FramesError.fromJSON(header.get("error"))
        return BufferSink(lambda body: self._resolve(rid, Failure(error)))

    def _resolve(self, rid: int, result: Reply | bytes | Failure) -> None:
        pending = self._pending.pop(rid)
        if isinstance(result, Failure):
            pending.result.errback(result)
        else:
            pending.result.callback(result)

    def _greetingReceived(self, header: dict[str, Any], bodyLength: int) -> BodySink:
        try:
            wire.checkGreeting(header)
        except ProtocolViolation as error:
            self.greeted.errback(Failure(error))
            raise
        except FramesError as error:
            # Refused instead of greeted (a connection limit): say why.
            self.serverError = error
            self.greeted.errback(Failure(error))
            return DiscardSink()
        self.greeting = header
        self._cancelGreetingTimer()
        self.greeted.callback(header)
        return DiscardSink()

    def violationReply(self, error: Any, requestId: Any) -> dict[str, Any] | None:
        if self.greeting is None and not self.greeted.called:
            # Bytes that cannot start a greeting (another protocol's banner,
            # such as SSH's, read as an over-long frame): say what the peer
            # is not, rather than fail later as a connection closed cleanly.
            self._cancelGreetingTimer()
            self.greeted.errback(
                Failure(
                    ProtocolViolation(
                        ErrorCode.BAD_HEADER,
                        f"the server did not greet as twisted-frames ({error.message})",
                    )
                )
            )
        # A client never sends error replies: it just hangs up.
        return None

    def request(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        body: bytes | IBodySource = b"",
        onEvent: EventHandler | None = None,
        replySink: SinkFactory | None = None,
        eventSink: SinkFactory | None = None,
    ) -> defer.Deferred[Reply]:
        """
        Send one request.

        @param body: bytes, or a source for a streamed body of known length.
        @param onEvent: called with each intermediate message's header and body.
        @param replySink: makes the sink for a non-empty final reply body
            (else it is gathered in memory).
        @param eventSink: makes the sink for each intermediate message's body
            (else it is gathered and passed to C{onEvent}).
        @return: a Deferred firing with the L{Reply}, or failing with
            L{FramesError} for an error reply.
        """
        d: defer.Deferred[Reply] = defer.Deferred()
        self._send(op, fields, body, _Pending(op, d, onEvent, replySink, eventSink))
        return d

    def _send(
        self,
        op: str,
        fields: dict[str, Any] | None,
        body: bytes | IBodySource,
        pending: _Pending,
    ) -> None:
        rid = self._nextId
        self._nextId += 1
        self.lastRequestId = rid
        if self.serverError is not None:
            # The server said why it closes this connection (it is shutting
            # down, ...): a later request fails for that reason too.
            pending.result.errback(Failure(self.serverError))
            return
        if self._closing or self.transport is None:
            pending.result.errback(Failure(ConnectionDone("connection is closed")))
            return
        self._pending[rid] = pending
        if isinstance(body, (bytes, bytearray, memoryview)):  # noqa: UP038 (a tuple is faster)
            if type(body) is not bytes:
                body = bytes(body)
            if not fields and len(body) <= wire.MAX_FRAME:
                # The usual ping: its header's bytes from a prefix made once,
                # to the sender directly (the connection is not closing).
                self._sender.sendEncodedMessage(_requestHeader(op)(rid), body)
                return
            self.sendMessage(_requestHeaderDict(op, rid, fields), body)
        else:
            sent = self.sendStreamedMessage(_requestHeaderDict(op, rid, fields), body)
            sent.addErrback(lambda f: self._requestSendFailed(rid, f))

    def _requestSendFailed(self, rid: int, failure: Failure) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None and not pending.result.called:
            pending.result.errback(failure)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._cancelGreetingTimer()
        if not self.greeted.called:
            self.greeted.errback(reason)
        failure = Failure(self.serverError) if self.serverError is not None else reason
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.result.called:
                p.result.errback(failure)
        self.isClosed = True
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)

    def whenClosed(self) -> defer.Deferred[None]:
        """
        @return: a Deferred firing once the connection is closed.
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self.isClosed:
            d.callback(None)
        else:
            self._closeWaiters.append(d)
        return d


class FramesClient:
    """
    A connected client.  Every method returns a Deferred.

    @ivar greeting: the server's greeting header.
    """

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        assert protocol.greeting is not None
        self.greeting: dict[str, Any] = protocol.greeting

    def request(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        body: bytes | IBodySource = b"",
        onEvent: EventHandler | None = None,
        replySink: SinkFactory | None = None,
        eventSink: SinkFactory | None = None,
    ) -> defer.Deferred[Reply]:
        """
        Send any request: see L{ClientProtocol.request}.
        """
        return self.protocol.request(op, fields, body, onEvent, replySink, eventSink)

    def ping(self, body: bytes | IBodySource = b"") -> defer.Deferred[bytes]:
        """
        Health check: the server echoes C{body}.

        @return: a Deferred firing with the echoed bytes.
        """
        d: defer.Deferred[bytes] = defer.Deferred()
        self.protocol._send("ping", None, body, _Pending("ping", d, None, None, None, True))
        return d

    def close(self) -> defer.Deferred[None]:
        """
        Close the connection.

        @return: a Deferred firing once it is closed.
        """
        d = self.protocol.whenClosed()
        if not self.protocol.isClosed:
            self.protocol.loseConnection()
        return d


def connect(
    reactor: Any,
    server: str | IStreamClientEndpoint = "127.0.0.1:8007",
    timeout: float = 30.0,
    tls: IOpenSSLClientConnectionCreator | None = None,
    secret: ClientSecret | None = None,
    greetingTimeout: float | None = DEFAULT_GREETING_TIMEOUT,
) -> defer.Deferred[FramesClient]:
    """
    Connect and wait for the server's greeting.

    @param server: C{HOST:PORT}, a Twisted client endpoint string (with a
        C{:} after its type, e.g. C{tcp:host=...:port=...}, C{unix:path=...})
        or an endpoint.
    @param timeout: seconds for connecting, greeting and login together.
    @param tls: TLS options (e.g. from C{optionsForClientTLS}, which checks
        the server's host name) to wrap the connection in; C{None} for none.
    @param secret: log in with this secret (and check the server's proof)
        before returning.
    @param greetingTimeout: seconds for the greeting once connected (with
        TLS: for the handshake and the greeting), when shorter than
        C{timeout}; C{None} for no limit but C{timeout}.
    @return: a Deferred firing with a L{FramesClient}; failing with
        L{NoGreeting} if the server does not greet in time or answers
        with TLS.
    """
    if isinstance(server, str):
        endpoint = _endpointFor(reactor, server, timeout)
    else:
        endpoint = server
    if tls is not None:
        endpoint = TLSClientEndpoint(tls, endpoint)
    factory = Factory.forProtocol(ClientProtocol)

    async def go() -> FramesClient:
        protocol = await endpoint.connect(factory)
        assert isinstance(protocol, ClientProtocol)
        if greetingTimeout is not None and greetingTimeout < timeout:
            protocol.expectGreetingWithin(greetingTimeout, reactor)
        await protocol.greeted
        client = FramesClient(protocol)
        if secret is not None:
            from .auth.client import login

            try:
                await login(client, secret)
            except BaseException:
                client.close()
                raise
        return client

    d = defer.Deferred.fromCoroutine(go())
    clock: IReactorTime = reactor
    return d.addTimeout(timeout, clock)


def _endpointFor(reactor: Any, server: str, timeout: float) -> IStreamClientEndpoint:
    # twisted.internet.endpoints is imported only where it is needed (see
    # twisted_frames.tcpclient).
    prefix = server.split(":", 1)[0]
    if prefix in ("tcp", "unix", "ssl", "tls", "tcp6"):
        from twisted.internet.endpoints import clientFromString

        endpoint: IStreamClientEndpoint = clientFromString(reactor, server)
        return endpoint
    host, port = parseServer(server)
    if isIPAddress(host) or isIPv6Address(host):
        return TCPAddressEndpoint(reactor, host, port, timeout=timeout)
    from twisted.internet.endpoints import HostnameEndpoint

    return HostnameEndpoint(reactor, host, port, timeout=timeout)
