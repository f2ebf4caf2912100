"""
The server side: requests dispatched to services by their C{op}.

Services never see framing.  A service is an object with methods marked by
L{operation}; each receives a L{Request} and answers through it.  How the
request body reaches the method is part of the mark:

  - C{body="none"}: no body is allowed (a non-empty one is a violation);
    the method runs once the (empty) body has arrived.
  - C{body="buffer"}: the body, up to C{maxBody} bytes, is gathered and put
    in C{request.body} before the method runs.
  - C{body="stream"}: the method runs as soon as the body's length is known
    (C{request.bodyLength}) and returns the L{BodySink} the body flows into.

A method of the first two kinds may return a dict (the fields of a success
reply), a L{Reply}, C{None} (it replies by itself through the request), or a
Deferred or coroutine of one of those.  Raising L{FramesError} sends an error
reply with its code; any other exception is logged and sent as C{internal}.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from . import wire
from .printable import printable
from .protocol import BodySink, BufferSink, DiscardSink, FrameProtocol, IBodySource, Pipe
from .wire import ErrorCode, FramesError, Limits, ProtocolViolation, RequestId

BodyPolicy = Literal["none", "buffer", "stream"]
_F = TypeVar("_F", bound=Callable[..., Any])

log = Logger(namespace="twisted_frames")
_REQUEST_LOG_FORMAT = (
    "{peer} {user} op={op} id={rid} in={bytesIn} out={bytesOut} time={ms:.1f}ms outcome={outcome}"
)


@dataclass(frozen=True)
class Operation:
    """
    One op a server answers.

    @ivar public: allowed before login (only the greeting's ops: C{ping},
        C{auth}).
    """

    name: str
    handler: Callable[[Request], Any]
    body: BodyPolicy = "none"
    maxBody: int | None = None
    public: bool = False


def operation(
    name: str, body: BodyPolicy = "none", maxBody: int | None = None, public: bool = False
) -> Callable[[_F], _F]:
    """
    Mark a service method as the handler of op C{name}.
    """

    def mark(f: _F) -> _F:
        f.__frames_operation__ = (name, body, maxBody, public)  # type: ignore[attr-defined]
        return f

    return mark


class Service:
    """
    A group of operations.  Subclasses mark methods with L{operation}.
    """

    def operations(self) -> Iterable[Operation]:
        """
        @return: the operations of this service, bound to it.
        """
        for attr in dir(type(self)):
            method = getattr(type(self), attr, None)
            mark = getattr(method, "__frames_operation__", None)
            if mark is not None:
                name, body, maxBody, public = mark
                yield Operation(name, getattr(self, attr), body, maxBody, public)

    def connectionLost(self, connection: ServerProtocol) -> None:
        """
        A connection closed: release what this service holds for it.
        """

    def connectionMade(self, connection: ServerProtocol) -> None:
        """
        A connection opened, before the greeting.  A service may refuse it
        with C{connection.refuse(error)}; then no greeting is sent and later
        services are not told.
        """

    def userLoggedIn(self, connection: ServerProtocol) -> None:
        """
        The connection logged in as C{connection.user}.
        """


@dataclass
class Reply:
    """
    A success reply: extra header fields and a body (bytes, or a source for a
    streamed body).
    """

    fields: dict[str, Any] = field(default_factory=dict)
    body: bytes | IBodySource = b""


class Request:
    """
    One request in flight, and the only way a service talks back.

    @ivar id: the client's request id, repeated in every message for it.
    @ivar header: the whole request header.
    @ivar bodyLength: the request body's length.
    @ivar body: the gathered body (for C{buffer} ops), else C{b""}.
    @ivar finished: whether the final reply has been sent.
    """

    # Slots: one of these is made per request, on the hot path.
    __slots__ = (
        "connection",
        "id",
        "op",
        "header",
        "bodyLength",
        "body",
        "finished",
        "started",
        "bytesOut",
        "outcome",
        "cancelled",
        "_cancelWaiters",
    )

    def __init__(
        self,
        connection: ServerProtocol,
        rid: RequestId,
        op: str,
        header: dict[str, Any],
        bodyLength: int,
    ) -> None:
        self.connection = connection
        self.id = rid
        self.op = op
        self.header = header
        self.bodyLength = bodyLength
        self.body = b""
        self.finished = False
        self.started = time.monotonic()
        self.bytesOut = 0
        self.outcome = ""
        self.cancelled = False
        self._cancelWaiters: list[defer.Deferred[None]] | None = None

    def notifyCancelled(self) -> defer.Deferred[None]:
        """
        @return: a Deferred that fires if the connection is lost before the
            final reply (so that a service can stop work nobody will read).
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self.cancelled:
            d.callback(None)
        elif self._cancelWaiters is None:
            self._cancelWaiters = [d]
        else:
            self._cancelWaiters.append(d)
        return d

    def cancel(self) -> None:
        """
        The connection was lost: later replies are dropped silently.
        """
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        self.outcome = "disconnected"
        waiters, self._cancelWaiters = self._cancelWaiters or [], None
        for d in waiters:
            d.callback(None)

    @property
    def peer(self) -> IAddress | None:
        """
        The peer's address.
        """
        t = self.connection.transport
        return t.getPeer() if t is not None else None

    @property
    def user(self) -> str | None:
        """
        The logged-in user's name, or C{None}.
        """
        return self.connection.user

    def event(self, name: str, fields: dict[str, Any] | None = None, body: bytes = b"") -> None:
        """
        Send an intermediate message (e.g. a chunk of a process's stdout).
        """
        if self.cancelled:
            return
        if self.finished:
            raise RuntimeError(f"request {self.id!r} already finished")
        header = {"id": self.id, "event": name}
        if fields:
            header.update(fields)
        self.bytesOut += len(body)
        self.connection.sendMessage(header, body)

    def eventStream(
        self, name: str, fields: dict[str, Any], source: IBodySource
    ) -> defer.Deferred[None]:
        """
        Send an intermediate message whose body is streamed from C{source}.
        """
        if self.cancelled:
            return defer.fail(ConnectionError("connection lost"))
        if self.finished:
            raise RuntimeError(f"request {self.id!r} already finished")
        header = {"id": self.id, "event": name}
        header.update(fields)
        self.bytesOut += source.length
        return self.connection.sendStreamedMessage(header, source)

    def reply(
        self, fields: dict[str, Any] | None = None, body: bytes | IBodySource = b""
    ) -> defer.Deferred[None]:
        """
        Send the final success reply.

        @return: a Deferred firing when a streamed body has been sent.
        """
        if isinstance(body, (bytes, bytearray, memoryview)):  # noqa: UP038 (a tuple is faster)
            self._replyNow(fields, bytes(body))
            return defer.succeed(None)
        if self.cancelled:
            body.stopProducing()
            return defer.fail(ConnectionError("connection lost"))
        sent = self.connection.sendStreamedMessage(self._successHeader(fields), body)
        self.bytesOut += body.length
        self._finish("ok")
        return sent

    def _replyNow(self, fields: dict[str, Any] | None, body: bytes) -> None:
        """
        L{reply} with a bytes body, without the Deferred: for the server's
        own replies, where nobody waits for it.
        """
        if self.cancelled:
            return
        # Sent before being marked finished: a header that is not JSON-able
        # raises ValueError here, before anything is written, and the request
        # can still be answered with an error.
        self.connection.sendMessage(self._successHeader(fields), body)
        self.bytesOut += len(body)
        self._finish("ok")

    def _successHeader(self, fields: dict[str, Any] | None) -> dict[str, Any]:
        """
        The header of the final success reply, with the op's C{fields}.

        @raise RuntimeError: if the request is already finished.
        """
        if self.finished:
            raise RuntimeError(f"request {self.id!r} already finished")
        header = {"id": self.id, "ok": True}
        if fields:
            header.update(fields)
        return header

    def fail(self, error: FramesError) -> None:
        """
        Send the final error reply.
        """
        if self.cancelled:
            return
        header = {"id": self.id, "ok": False, "error": error.toJSON()}
        self._finish(error.code)
        self.connection.sendMessage(header)

    def _finish(self, outcome: str) -> None:
        if self.finished:
            raise RuntimeError(f"request {self.id!r} already finished")
        self.finished = True
        self.outcome = outcome
        self.connection.requestFinished(self)


class ServerProtocol(FrameProtocol, TimeoutMixin):
    """
    One server connection: greet, then dispatch requests to operations.

    The idle timeout (L{TimeoutMixin}, C{factory.idleTimeout}) closes a
    connection that has received nothing for that long while no request is
    in flight.
    """

    factory: FramesServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.inFlight: dict[RequestId, Request] = {}
        self.user: str | None = None
        self.nonce = secrets.token_hex(16)
        self.requests = 0
        self.connectedAt = time.monotonic()

    @property
    def operations(self) -> dict[str, Operation]:
        return self.factory.operations

    def connectionMade(self) -> None:
        self.setNoDelay()
        self.limits = self.factory.limits
        self.clock = self.factory.clock
        self.frameTimeout = self.factory.frameTimeout
        log.info("connection from {peer}", peer=self.peerName())
        for service in self.factory.services:
            service.connectionMade(self)
            if self._closing:
                return
        self.sendMessage(self.greeting())
        self.setTimeout(self.factory.idleTimeout)  # type: ignore[no-untyped-call]

    def callLater(self, period: float, func: Callable[[], Any]) -> Any:
        """
        L{TimeoutMixin}'s scheduler: the factory's clock, so tests can use a
        C{Clock}.
        """
        return self._clock().callLater(period, func)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()  # type: ignore[no-untyped-call]
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        """
        Idle for C{factory.idleTimeout} seconds: close, unless a request is
        still being worked on (a quiet long-running request is not idle).
        """
        if self.inFlight:
            self.setTimeout(self.factory.idleTimeout)  # type: ignore[no-untyped-call]
            return
        self.refuse(
            FramesError(ErrorCode.TIMEOUT, f"idle for {self.factory.idleTimeout:g} s, closing")
        )

    def refuse(self, error: FramesError) -> None:
        """
        Send one error message (id C{null}, C{closing: true}) and close the
        connection: for limits, deadlines and refused connections.
        """
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        if self._activeSource is None and self.transport is not None:
            refusal = {"id": None, "ok": False, "error": error.toJSON(), "closing": True}
            self._write(wire.encodeMessage(refusal))
        self.loseConnectionSoon()

    def logIn(self, user: str) -> None:
        """
        The connection is now logged in as C{user}: tell the services.
        """
        self.user = user
        for service in self.factory.services:
            service.userLoggedIn(self)

    def greeting(self) -> dict[str, Any]:
        """
        The first message the server sends: who it is and what it expects.
        """
        return {
            "event": "hello",
            "protocol": wire.PROTOCOL_NAME,
            "version": wire.PROTOCOL_VERSION,
            "server": self.factory.serverName,
            "auth": {
                "required": self.factory.authRequired,
                "mechanisms": self.factory.authMechanisms,
            },
            "nonce": self.nonce,
            "limits": self.limits.toJSON(),
            "ops": sorted(self.operations),
        }

    def messageStarted(self, header: dict[str, Any], bodyLength: int) -> BodySink:
        rid, opName = wire.checkRequest(header)
        if rid in self.inFlight:
            raise ProtocolViolation(
                ErrorCode.DUPLICATE_ID, f"request id {rid!r} is already in flight"
            )
        if len(self.inFlight) >= self.factory.maxInFlight:
            raise ProtocolViolation(
                ErrorCode.BUSY,
                f"more than {self.factory.maxInFlight} requests in flight on one connection",
            )
        if (
            self.user is None
            and self.factory.authRequired
            and bodyLength > self.factory.preAuthMaxBody
        ):
            raise ProtocolViolation(
                ErrorCode.BODY_TOO_LARGE,
                f"body of {bodyLength} bytes before login (limit {self.factory.preAuthMaxBody})",
            )
        request = Request(self, rid, opName, header, bodyLength)
        self.requests += 1
        self.inFlight[rid] = request
        op = self.operations.get(opName)
        if op is not None and op.body == "none" and bodyLength:
            raise ProtocolViolation(
                ErrorCode.BODY_NOT_ALLOWED,
                f"op {opName!r} takes no body ({bodyLength} bytes sent)",
            )
        if op is not None and op.body == "buffer":
            limit = min(
                op.maxBody if op.maxBody is not None else self.limits.bufferThreshold,
                self.limits.maxBody,
            )
            if bodyLength > limit:
                raise ProtocolViolation(
                    ErrorCode.BODY_TOO_LARGE,
                    f"op {opName!r} takes a body of at most {limit} bytes ({bodyLength} sent)",
                )
        try:
            if op is None:
                raise FramesError(ErrorCode.UNKNOWN_OP, f"unknown op {opName!r}")
            if not op.public and self.factory.authRequired and self.user is None:
                raise FramesError(ErrorCode.AUTH_REQUIRED, f"op {opName!r} needs a login first")
            if op.body == "stream":
                sink = op.handler(request)
                if not isinstance(sink, BodySink):
                    raise TypeError(f"stream op {opName!r} returned {sink!r}, not a BodySink")
                return sink
        except FramesError as e:
            request.fail(e)
            return DiscardSink()
        except Exception:
            self._internalError(request, Failure())
            return DiscardSink()
        return BufferSink(lambda body: self._run(op, request, body))

    def _run(self, op: Operation, request: Request, body: bytes) -> None:
        request.body = body
        try:
            result = op.handler(request)
        except FramesError as e:
            request.fail(e)
            return
        except Exception:
            self._internalError(request, Failure())
            return
        if inspect.iscoroutine(result):
            result = defer.Deferred.fromCoroutine(result)
        if isinstance(result, defer.Deferred):
            result.addCallbacks(
                lambda r: self._answer(request, r),
                lambda f: self._answerFailure(request, f),
            )
        else:
            self._answer(request, result)

    def _answer(self, request: Request, result: Any) -> None:
        if result is None or request.finished:
            return
        try:
            if isinstance(result, Reply):
                # A failed streamed body is logged and closes the connection
                # (FrameProtocol._sourceDone); nobody else waits for it.
                request.reply(result.fields, result.body).addErrback(lambda _: None)
            elif isinstance(result, dict):
                request._replyNow(result, b"")
            else:
                raise TypeError(f"handler returned {result!r}")
        except Exception:
            self._internalError(request, Failure())

    def _answerFailure(self, request: Request, failure: Failure) -> None:
        if request.finished or self._closing:
            return
        error = failure.value
        if isinstance(error, FramesError):
            request.fail(error)
        else:
            self._internalError(request, failure)

    def _internalError(self, request: Request, failure: Failure) -> None:
        log.failure(
            "internal error in op {op} for {peer}", failure, op=request.op, peer=self.peerName()
        )
        if not request.finished and not self._closing:
            request.fail(FramesError(ErrorCode.INTERNAL, "internal server error (logged)"))

    def requestFinished(self, request: Request) -> None:
        """
        Called by L{Request} when its final reply is sent: log one line.
        """
        self.inFlight.pop(request.id, None)
        self._logRequest(request)

    def _logRequest(self, request: Request) -> None:
        # The one line per request, as the event Logger.info would build
        # (same keys, same observer), made directly: Logger.emit re-validates
        # the level against every LogLevel on each call, which is a large
        # share of a small request's cost.
        now = time.time()
        log.observer(
            {
                "log_logger": log,
                "log_level": LogLevel.info,
                "log_namespace": log.namespace,
                "log_source": None,
                "log_format": _REQUEST_LOG_FORMAT,
                "log_time": now,
                "peer": self.peerName(),
                "user": self.user or "-",
                # Both are the client's text: escaped, so that a newline or
                # an escape sequence in them cannot forge or hide log lines.
                "op": printable(request.op),
                "rid": printable(request.id) if isinstance(request.id, str) else request.id,
                "bytesIn": request.bodyLength,
                "bytesOut": request.bytesOut,
                "ms": (time.monotonic() - request.started) * 1000,
                "outcome": request.outcome,
            }
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        inFlight, self.inFlight = self.inFlight, {}
        for request in inFlight.values():
            request.cancel()
            self._logRequest(request)
        for service in self.factory.services:
            service.connectionLost(self)
        log.info(
            "connection closed {peer}: {requests} requests, in={bytesIn} out={bytesOut} "
            "time={s:.1f}s",
            peer=self.peerName(),
            requests=self.requests,
            bytesIn=self.bytesReceived,
            bytesOut=self.bytesSent,
            s=time.monotonic() - self.connectedAt,
        )


class PingService(Service):
    """
    The health check: C{ping} echoes its body, of any size up to the body
    limit, streamed straight back (so it also exercises the whole path).
    """

    @operation("ping", body="stream", public=True)
    def ping(self, request: Request) -> BodySink:
        threshold = request.connection.limits.bufferThreshold
        if request.bodyLength <= threshold:
            # (Request.reply without its Deferred, which nobody here waits for.)
            return BufferSink(lambda body: request._replyNow(None, body))
        pipe = Pipe(request.bodyLength)
        # A failure here (connection lost mid-echo) is already handled by the
        # connection; nobody else waits for this Deferred.
        request.reply({}, pipe).addErrback(lambda _: None)
        return pipe


class FramesServerFactory(Factory):
    """
    Builds L{ServerProtocol}s sharing the services and limits.

    @ivar operations: op name to L{Operation}, from all services.
    @ivar idleTimeout: seconds without input (and no request in flight)
        before a connection is closed; C{None}: never.
    @ivar frameTimeout: see L{FrameProtocol.frameTimeout}.
    @ivar preAuthMaxBody: largest body accepted before login, when login is
        required.
    @ivar maxInFlight: requests one connection may have in flight at once.
        Each may hold server resources (an open file, a queued reply) until
        it is answered, so a client pipelining without bound, or never
        reading its replies, must not be able to exhaust them for everyone.
    """

    idleTimeout: float | None = None
    frameTimeout: float | None = None
    preAuthMaxBody: int = 64 * 1024
    maxInFlight: int = 256

    protocol: type[ServerProtocol] = ServerProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        services: Iterable[Service] = (),
        limits: Limits | None = None,
        serverName: str = "twisted-frames",
        clock: IReactorTime | None = None,
    ) -> None:
        self.services: list[Service] = [PingService(), *services]
        self.limits = limits or Limits()
        self.serverName = serverName
        self.clock = clock
        self.authRequired = False
        self.authMechanisms: list[str] = []
        self.operations: dict[str, Operation] = {}
        for service in self.services:
            for op in service.operations():
                if op.name in self.operations:
                    raise ValueError(f"two services define op {op.name!r}")
                self.operations[op.name] = op

    def buildProtocol(self, addr: IAddress | None) -> ServerProtocol:  # type: ignore[override]
        # self.protocol, not ServerProtocol: a subclass may set its own.
        p = self.protocol()
        p.factory = self
        return p
