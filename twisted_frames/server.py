# -*- test-case-name: tests.test_server -*-
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
reply), a L{ServerReply}, C{None} (it replies by itself through the request), or a
Deferred or coroutine of one of those.  Raising L{FramesError} sends an error
reply with its code; any other exception is logged and sent as C{internal}.

A handler is named after its op with an C{op} prefix (C{opPing} handles
C{ping}, C{opList} handles C{list}), the way Twisted names C{opt_} methods:
it says at a glance which methods are ops, and keeps op names such as
C{list} from shadowing builtins in the class.  The mark, not the name, is
what routes requests.

An op declares its request fields with the types of
L{twisted_frames.fields} (C{fields=} on L{operation}); the dispatcher checks
them, in order, before the handler runs, and puts the checked values in
C{request.fields}.  Every error header, a request's or a closing one, is
made by L{twisted_frames.wire.errorHeader}.

Why this module is long (about 930 lines): L{Request} and
L{ServerProtocol} are one unit, each calling back into the other on every
reply (C{requestFinished}, C{sendMessage}, cancellation, shutdown), and the
factory owns the shutdown they both take part in.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from . import wire
from ._speedups.logevent import logInfo
from .fields import Field, checkFields
from .printable import printable
from .protocol import (
    BodySink,
    BufferSink,
    DiscardSink,
    FrameProtocol,
    FramesErrorLike,
    IBodySource,
    Pipe,
    clockOrReactor,
)
from .wire import ErrorCode, FramesError, Limits, ProtocolViolation, RequestId

if TYPE_CHECKING:
    from .metrics import Metrics

BodyPolicy = Literal["none", "buffer", "stream"]
#: The refusal reasons (see L{ServerProtocol.refusal}) of the protocol
#: violations not named by their error code: the frame deadline, and too
#: many requests in flight.
_VIOLATION_REFUSALS: dict[str, str] = {
    ErrorCode.TIMEOUT: "frame_timeout",
    ErrorCode.BUSY: "max_in_flight",
}
_F = TypeVar("_F", bound=Callable[..., Any])

log = Logger(namespace="twisted_frames")
#: The message of every C{shutting_down} error (see docs/protocol.md).
SHUTTING_DOWN_MESSAGE = "the server is shutting down"
#: Lines logged per reactor iteration for the requests of a closed
#: connection (see L{ServerProtocol._logClosed}).
LOST_LOG_BATCH = 64


def shuttingDownError() -> FramesError:
    """
    @return: the error of a request the server will not (finish to) serve
        because it is stopping.
    """
    return FramesError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)


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
    fields: Mapping[str, Field] = field(default_factory=dict)
    lateFields: bool = False


def operation(
    name: str,
    body: BodyPolicy = "none",
    maxBody: int | None = None,
    public: bool = False,
    fields: Mapping[str, Field] | None = None,
    lateFields: bool = False,
) -> Callable[[_F], _F]:
    """
    Mark a service method as the handler of op C{name}.

    @param fields: the request fields the op takes (see
        L{twisted_frames.fields}): checked in order before the handler
        runs, which finds the checked values in C{request.fields}.
    @param lateFields: the handler checks C{fields} itself, with
        L{checkFields}, when it chooses (C{auth} does so only after its
        failure delay, so that a malformed attempt waits and counts like a
        wrong one); the dispatcher does not.
    """

    def mark(f: _F) -> _F:
        f.__frames_operation__ = (  # type: ignore[attr-defined]
            name,
            body,
            maxBody,
            public,
            dict(fields or {}),
            lateFields,
        )
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
        declared = self._declaredFields()
        for attr in dir(type(self)):
            method = getattr(type(self), attr, None)
            mark = getattr(method, "__frames_operation__", None)
            if mark is not None:
                name, body, maxBody, public, fields, lateFields = mark
                fields = fields or declared.get(name, {})
                yield Operation(
                    name, getattr(self, attr), body, maxBody, public, fields, lateFields
                )

    @classmethod
    def _declaredFields(cls) -> dict[str, dict[str, Field]]:
        """
        @return: op name to the fields declared for it, nearest class
            first: a subclass overriding a handler (re-marking its op
            without fields) keeps the fields its base declared, as an AMP
            responder keeps its C{Command}'s arguments.
        """
        declared: dict[str, dict[str, Field]] = {}
        for klass in cls.__mro__:
            for value in vars(klass).values():
                mark = getattr(value, "__frames_operation__", None)
                if mark is not None and mark[4]:
                    declared.setdefault(mark[0], mark[4])
        return declared

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

    def greetingFields(self, connection: ServerProtocol) -> Mapping[str, Any]:
        """
        @return: fields this service adds to the connection's greeting (the
            file service announces its C{hashes}); none by default.
        """
        return {}


@dataclass
class ServerReply:
    """
    A success reply, as an op handler returns it: extra header fields and a
    body (bytes, or a source for a streamed body).  (What a client receives
    is a L{twisted_frames.client.Reply}.)
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
    @ivar fields: the op's declared fields, checked (see L{operation}).
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
        "fields",
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
        self.fields: dict[str, Any] = {}
        self.finished = False
        self.started = time.monotonic()
        self.bytesOut = 0
        self.outcome = ""
        self.cancelled = False
        self._cancelWaiters: list[defer.Deferred[None]] | None = None

    def notifyCancelled(self) -> defer.Deferred[None]:
        """
        @return: a Deferred that fires if the connection is lost before the
            final reply, or the server answered on the service's behalf
            (L{abandon}), so that a service can stop work nobody will read.
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
        self.outcome = "disconnected"
        self._dropLaterReplies()

    def abandon(self, error: FramesError) -> None:
        """
        The server gives up on the request (its shutdown grace is over):
        send C{error} as its final reply, then treat it as cancelled, so
        that its service stops working for it (L{notifyCancelled} fires)
        and a later reply from it is dropped silently.
        """
        if self.cancelled or self.finished:
            return
        self.fail(error)
        self._dropLaterReplies()

    def _dropLaterReplies(self) -> None:
        self.cancelled = True
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
            self._replyNow(bytes(body), fields)
            return defer.succeed(None)
        if self.cancelled:
            body.stopProducing()
            return defer.fail(ConnectionError("connection lost"))
        sent = self.connection.sendStreamedMessage(self._successHeader(fields), body)
        self.bytesOut += body.length
        self._finish("ok")
        return sent

    def _replyNow(self, body: bytes, fields: dict[str, Any] | None = None) -> None:
        """
        L{reply} with a bytes body, without the Deferred: for the server's
        own replies, where nobody waits for it.  (The body first: without
        fields this is what a L{BufferSink} of the echo calls.)
        """
        if self.cancelled:
            return
        if fields or len(body) > wire.MAX_FRAME:
            # Sent before being marked finished: a header that is not JSON-able
            # raises ValueError here, before anything is written, and the
            # request can still be answered with an error.
            self.connection.sendMessage(self._successHeader(fields), body)
        else:
            # No fields (a ping's reply): the header's bytes made directly,
            # and the request finished here (as _finish does: it is known
            # not to be finished yet).
            if self.finished:
                raise RuntimeError(f"request {self.id!r} already finished")
            self.connection._sendEncodedMessage(wire.encodeSuccessHeader(self.id), body)
            self.bytesOut += len(body)
            self.finished = True
            self.outcome = "ok"
            self.connection.requestFinished(self)
            return
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

    def fail(self, error: FramesError, closing: bool = False) -> None:
        """
        Send the final error reply.

        @param closing: mark it C{"closing": true} (beside C{error}, as on
            every message after which the server closes the connection);
            the caller then closes it.
        """
        if self.cancelled:
            return
        header = wire.errorHeader(error, self.id, closing)
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
    in flight, or while the requests in flight only wait for the peer to
    read what they sent (it took none of it since the last idle check).

    @ivar shuttingDown: whether the server is stopping (see
        L{beginShutdown}).
    """

    factory: FramesServerFactory
    shuttingDown = False
    #: The request whose streamed body is being received, with its sink.
    _receiving: tuple[Request, BodySink] | None = None
    _shutdownCheck: Any = None
    #: Why the server closed the connection (a L{refusal} reason), if it did.
    refusedFor: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.inFlight: dict[RequestId, Request] = {}
        self.user: str | None = None
        self.nonce = secrets.token_hex(16)
        self.requests = 0
        self.connectedAt = time.monotonic()
        self._idleMark: tuple[int, int] | None = None

    @property
    def operations(self) -> dict[str, Operation]:
        return self.factory.operations

    def connectionMade(self) -> None:
        self.setNoDelay()
        self.limits = self.factory.limits
        self.clock = self.factory.clock
        self.frameTimeout = self.factory.frameTimeout
        self.factory.connections.add(self)
        self.writeTimeout = self.factory.writeTimeout
        self.messagesPerTurn = self.factory.messagesPerTurn
        if self.factory.metrics is not None:
            self.factory.metrics.connectionOpened()
        log.info("connection from {peer}", peer=self.peerName())
        if self.factory.shuttingDown:
            # Accepted just before the listening port closed.
            self.refuse(shuttingDownError())
            return
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
        # Not super(): on Python 3.11 it builds a super object on every read.
        FrameProtocol.dataReceived(self, data)
        if self.shuttingDown:
            # The end of a body read and dropped may leave nothing to wait for.
            self._closeIfDone()

    def receivedDirect(self, count: int) -> None:
        """
        Bytes of a body received off the reactor keep the connection from
        being idle, as bytes read here do.
        """
        self.resetTimeout()  # type: ignore[no-untyped-call]

    # -- shutdown --------------------------------------------------------------

    def beginShutdown(self) -> None:
        """
        The server is stopping.  From now on a new request is answered
        C{shutting_down}; an upload being received is cut short with
        C{shutting_down} (its partial file is kept for resuming, see
        L{BodySink.stopsAtShutdown}); every other request in flight may
        finish.  The connection closes, with a C{shutting_down} error
        message (id C{null}, C{closing: true}), as soon as every request has
        had its final reply and no message is half received; or when the
        factory's grace period ends (L{endShutdown}).
        """
        if self.shuttingDown or self._closing:
            return
        self.shuttingDown = True
        receiving = self._receiving
        if receiving is not None and receiving[1] is self._sink:
            request, sink = receiving
            if sink.stopsAtShutdown and not request.finished:
                self.abandonBody(Failure(shuttingDownError()))
                if not request.finished:
                    request.fail(shuttingDownError())
        self._closeIfDone()

    def endShutdown(self) -> None:
        """
        The grace period is over: answer every request still in flight
        C{shutting_down} (queued behind a streamed body in progress, which is
        cut if it does not end in time), and close.
        """
        self.shuttingDown = True
        for request in list(self.inFlight.values()):
            request.abandon(shuttingDownError())
        self.refuse(shuttingDownError())

    def _closeIfDone(self) -> None:
        if self._closing or self.inFlight or not self.betweenMessages():
            return
        self.refuse(shuttingDownError())

    def _closeSoonIfDone(self) -> None:
        """
        L{_closeIfDone}, on the next turn of the reactor: a request is marked
        finished just before its final reply is written, which must not find
        the connection closed.
        """
        if self._shutdownCheck is None or not self._shutdownCheck.active():
            self._shutdownCheck = self._clock().callLater(0, self._closeIfDone)

    def timeoutConnection(self) -> None:
        """
        Idle for C{factory.idleTimeout} seconds: close, unless a request is
        still being worked on (a quiet long-running request is not idle).
        Requests whose output the peer leaves unread do not count as work:
        once the peer has taken none of it over a whole idle period, the
        connection is idle.
        """
        if self.inFlight:
            mark, self._idleMark = self._idleMark, self.outputProgress()
            if (
                mark is None
                or not self.outputWaiting()
                or self.outputProgressed(mark, self._idleMark)
            ):
                self.setTimeout(self.factory.idleTimeout)  # type: ignore[no-untyped-call]
                return
        self.refuse(
            FramesError(ErrorCode.TIMEOUT, f"idle for {self.factory.idleTimeout:g} s, closing"),
            "idle_timeout",
        )

    def refuse(self, error: FramesError, reason: str | None = None) -> None:
        """
        Send one error message (id C{null}, C{closing: true}) and close the
        connection: for limits, deadlines and refused connections.

        @param reason: why, for the metrics (see L{refusal}); by default
            the error's code.
        """
        if self._closing:
            return
        self.refusal(reason or error.code)
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        self.closeWith(wire.errorHeader(error, closing=True))

    def refusal(self, reason: str) -> None:
        """
        The server closes this connection for C{reason}: one of the reasons
        of L{twisted_frames.metrics.REFUSALS} (counted there, when metrics
        are on).  The first reason given is the one that counts.
        """
        if self.refusedFor is not None:
            return
        self.refusedFor = reason
        if self.factory.metrics is not None:
            self.factory.metrics.refused(reason)

    def protocolViolation(self, error: FramesErrorLike, header: dict[str, Any] | None) -> None:
        if not self._closing:
            self.refusal(_VIOLATION_REFUSALS.get(error.code, error.code))
        super().protocolViolation(error, header)

    def writeTimedOut(self) -> None:
        self.refusal("write_timeout")
        super().writeTimedOut()

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
        hello: dict[str, Any] = {
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
        for service in self.factory.services:
            for name, value in service.greetingFields(self).items():
                # A service adds fields; it never changes the base ones.
                hello.setdefault(name, value)
        return hello

    def messageStarted(self, header: dict[str, Any], bodyLength: int) -> BodySink:
        # Every request passes here: the checks are in the order their
        # errors take precedence, with the connection's and the factory's
        # state read once.
        rid, opName = wire.checkRequest(header)
        inFlight = self.inFlight
        factory = self.factory
        if rid in inFlight:
            raise ProtocolViolation(
                ErrorCode.DUPLICATE_ID, f"request id {rid!r} is already in flight"
            )
        if len(inFlight) >= factory.maxInFlight:
            raise ProtocolViolation(
                ErrorCode.BUSY,
                f"more than {factory.maxInFlight} requests in flight on one connection",
            )
        loginNeeded = factory.authRequired and self.user is None
        if loginNeeded and bodyLength > factory.preAuthMaxBody:
            raise ProtocolViolation(
                ErrorCode.BODY_TOO_LARGE,
                f"body of {bodyLength} bytes before login (limit {factory.preAuthMaxBody})",
            )
        request = Request(self, rid, opName, header, bodyLength)
        self.requests += 1
        inFlight[rid] = request
        if self.shuttingDown:
            # Answered, not run; a body is read and dropped, so that the
            # connection stays in step until it closes.
            request.fail(shuttingDownError())
            return DiscardSink()
        op = factory.operations.get(opName)
        if op is None:
            request.fail(FramesError(ErrorCode.UNKNOWN_OP, f"unknown op {opName!r}"))
            return DiscardSink()
        policy = op.body
        if policy == "none":
            if bodyLength:
                raise ProtocolViolation(
                    ErrorCode.BODY_NOT_ALLOWED,
                    f"op {opName!r} takes no body ({bodyLength} bytes sent)",
                )
        elif policy == "buffer":
            limit = min(
                op.maxBody if op.maxBody is not None else self.limits.bufferThreshold,
                self.limits.maxBody,
            )
            if bodyLength > limit:
                raise ProtocolViolation(
                    ErrorCode.BODY_TOO_LARGE,
                    f"op {opName!r} takes a body of at most {limit} bytes ({bodyLength} sent)",
                )
        if loginNeeded and not op.public:
            request.fail(
                FramesError(ErrorCode.AUTH_REQUIRED, f"op {opName!r} needs a login first")
            )
            return DiscardSink()
        if policy != "stream":
            return BufferSink(lambda body: self._run(op, request, body))
        try:
            if op.fields and not op.lateFields:
                request.fields = checkFields(op.fields, header)
            sink = op.handler(request)
            if not isinstance(sink, BodySink):
                raise TypeError(f"stream op {opName!r} returned {sink!r}, not a BodySink")
        except FramesError as e:
            request.fail(e)
            return DiscardSink()
        except Exception:
            self._internalError(request, Failure())
            return DiscardSink()
        self._receiving = (request, sink)
        return sink

    def _run(self, op: Operation, request: Request, body: bytes) -> None:
        request.body = body
        try:
            if op.fields and not op.lateFields:
                request.fields = checkFields(op.fields, request.header)
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
            if isinstance(result, ServerReply):
                # A failed streamed body is logged and closes the connection
                # (FrameProtocol._sourceDone); nobody else waits for it.
                request.reply(result.fields, result.body).addErrback(lambda _: None)
            elif isinstance(result, dict):
                request._replyNow(b"", result)
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
        if self.shuttingDown and not self.inFlight:
            self._closeSoonIfDone()

    def _logRequest(self, request: Request) -> None:
        # The one line per request, through logInfo (an event built by hand,
        # see _speedups.logevent).  The text is made here, with the fields
        # kept for JSON logs: a text observer formatting this nine-field
        # format itself takes most of the cost, and a connection closing
        # with hundreds of requests in flight logs a line for each at once.
        peer = self._peerName or self.peerName()
        user = self.user or "-"
        # Both are the client's text: escaped, so that a newline or an
        # escape sequence in them cannot forge or hide log lines.
        op = printable(request.op)
        rid = request.id
        if type(rid) is str:
            rid = printable(rid)
        seconds = time.monotonic() - request.started
        bytesIn, bytesOut, outcome = request.bodyLength, request.bytesOut, request.outcome
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.requestFinished(request.op, outcome, seconds, bytesIn, bytesOut)
        ms = seconds * 1000
        logInfo(
            log,
            f"{peer} {user} op={op} id={rid} in={bytesIn} out={bytesOut} time={ms:.1f}ms "
            f"outcome={outcome}",
            {
                "peer": peer,
                "user": user,
                "op": op,
                "rid": rid,
                "bytesIn": bytesIn,
                "bytesOut": bytesOut,
                "ms": ms,
                "outcome": outcome,
            },
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        if self._shutdownCheck is not None and self._shutdownCheck.active():
            self._shutdownCheck.cancel()
        self._receiving = None
        inFlight, self.inFlight = self.inFlight, {}
        for request in inFlight.values():
            request.cancel()
        for service in self.factory.services:
            service.connectionLost(self)
        self.factory.connectionClosed(self)
        if self.factory.metrics is not None:
            self.factory.metrics.connectionClosed(self.refusedFor)
        closed = {
            "peer": self.peerName(),
            "requests": self.requests,
            "bytesIn": self.bytesReceived,
            "bytesOut": self.bytesSent,
            "s": time.monotonic() - self.connectedAt,
        }
        self._logClosed(list(inFlight.values()), closed)

    def _logClosed(self, requests: list[Request], closed: dict[str, Any]) -> None:
        """
        Log the requests that were in flight, then the connection's last
        line: L{LOST_LOG_BATCH} requests per reactor iteration, since
        hundreds closing at once (a client pipelining requests it never
        read) would otherwise hold up every other client while they are
        logged.
        """
        for request in requests[:LOST_LOG_BATCH]:
            self._logRequest(request)
        if len(requests) > LOST_LOG_BATCH:
            self._clock().callLater(0, self._logClosed, requests[LOST_LOG_BATCH:], closed)
            return
        log.info(
            "connection closed {peer}: {requests} requests, in={bytesIn} out={bytesOut} "
            "time={s:.1f}s",
            **closed,
        )


class PingService(Service):
    """
    The health check: C{ping} echoes its body, of any size up to the body
    limit, streamed straight back (so it also exercises the whole path).
    """

    @operation("ping", body="stream", public=True)
    def opPing(self, request: Request) -> BodySink:
        threshold = request.connection.limits.bufferThreshold
        if request.bodyLength <= threshold:
            # (Request.reply without its Deferred, which nobody here waits for.)
            return BufferSink(request._replyNow)
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
    @ivar writeTimeout: see L{FrameProtocol.writeTimeout}.
    @ivar messagesPerTurn: see L{FrameProtocol.messagesPerTurn}.
    @ivar preAuthMaxBody: largest body accepted before login, when login is
        required.
    @ivar maxInFlight: requests one connection may have in flight at once.
        Each may hold server resources (an open file, a queued reply) until
        it is answered, so a client pipelining without bound, or never
        reading its replies, must not be able to exhaust them for everyone.
    @ivar shutdownGrace: seconds L{shutDown} lets requests in flight finish
        before it answers the rest C{shutting_down} and closes.
    @ivar shutdownFlush: seconds after the grace period for those last
        replies to drain before the connections left are aborted (a peer
        that does not read must not hold the shutdown).
    @ivar connections: the open connections.
    @ivar shuttingDown: whether L{shutDown} was called.
    @ivar metrics: what counts requests, connections and refusals
        (C{--metrics}), or C{None}.
    """

    metrics: Metrics | None = None

    idleTimeout: float | None = None
    frameTimeout: float | None = None
    writeTimeout: float | None = None
    messagesPerTurn: int | None = None
    preAuthMaxBody: int = 64 * 1024
    maxInFlight: int = 256
    shutdownGrace: float = 10.0
    shutdownFlush: float = 1.0

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
        self.connections: set[ServerProtocol] = set()
        self.shuttingDown = False
        self._drainWaiters: list[defer.Deferred[None]] = []
        self._shutdownTimer: IDelayedCall | None = None
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

    def reactorClock(self) -> IReactorTime:
        """
        @return: the clock the factory's timers use: C{clock}, or the
            global reactor.
        """
        return clockOrReactor(self.clock)

    def shutDown(self) -> defer.Deferred[None]:
        """
        Close every connection gracefully (L{ServerProtocol.beginShutdown}):
        within L{shutdownGrace} seconds each request in flight gets its
        final reply or a C{shutting_down} error, and the connection closes
        once that has been written; L{shutdownFlush} seconds later whatever
        is left is aborted.  Stop listening first: this does not refuse new
        connections by itself.

        @return: a Deferred firing once every connection is closed.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._drainWaiters.append(d)
        if not self.shuttingDown:
            self.shuttingDown = True
            if self.connections:
                log.info(
                    "shutting down: {n} connections, grace {grace:g} s",
                    n=len(self.connections),
                    grace=self.shutdownGrace,
                )
                self._shutdownTimer = self.reactorClock().callLater(
                    self.shutdownGrace, self._graceExpired
                )
                for connection in list(self.connections):
                    connection.beginShutdown()
        self._maybeDrained()
        return d

    def _graceExpired(self) -> None:
        left = list(self.connections)
        log.warn(
            "shutdown grace of {grace:g} s is over: closing {n} connections",
            grace=self.shutdownGrace,
            n=len(left),
        )
        for connection in left:
            connection.endShutdown()
        self._shutdownTimer = self.reactorClock().callLater(self.shutdownFlush, self._abortAll)

    def _abortAll(self) -> None:
        self._shutdownTimer = None
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abortConnection()

    def connectionClosed(self, connection: ServerProtocol) -> None:
        """
        Called by a connection once it is closed.
        """
        self.connections.discard(connection)
        self._maybeDrained()

    def _maybeDrained(self) -> None:
        if not self.shuttingDown or self.connections:
            return
        timer, self._shutdownTimer = self._shutdownTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiters, self._drainWaiters = self._drainWaiters, []
        for d in waiters:
            d.callback(None)
