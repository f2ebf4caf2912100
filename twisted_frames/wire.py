# -*- test-case-name: tests.test_wire -*-
"""
The wire format, as pure functions: no reactor, no sockets.

A frame is a 4-byte unsigned big-endian length followed by that many bytes.  A
message is exactly two frames: a header (a UTF-8 JSON object) and a body (any
bytes, possibly empty).  This module encodes and decodes headers, checks
request headers, and names every error code the protocol can send.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ._speedups.cjson import Codec

#: Name and version announced in the greeting.  A client refuses to talk to a
#: server whose major version it does not know.
PROTOCOL_NAME = "twisted-frames"
PROTOCOL_VERSION = 1
#: Seconds a client waits for the greeting once connected: a server greets
#: at once, so a silent peer is not one (most often a TLS server waiting for
#: a ClientHello that a client without TLS never sends).  Here, not in the
#: client, so that the C{frames} parser can show it without loading Twisted.
DEFAULT_GREETING_TIMEOUT = 5.0

#: The length prefix: unsigned, big-endian, 32 bits, as in C{Int32StringReceiver}.
PREFIX = struct.Struct("!I")
PREFIX_LENGTH = PREFIX.size
#: The largest length a 32-bit prefix can say.  Bigger payloads (files over
#: 4 GiB) travel as several messages with offsets.
MAX_FRAME = 2**32 - 1

#: Header frames are small JSON objects; anything bigger is an attack or a bug,
#: and is refused as soon as its prefix arrives, before a byte is buffered.
DEFAULT_MAX_HEADER = 64 * 1024
#: The largest body a single message may carry by default.  Streamed bodies are
#: never held in memory, so this bounds time and disk, not RAM.
DEFAULT_MAX_BODY = MAX_FRAME
#: Bodies up to this size are gathered in memory and handed over whole; larger
#: ones are streamed to the destination the operation chooses.
DEFAULT_BUFFER_THRESHOLD = 256 * 1024

#: Request ids: a JSON integer in this range, or a short string.
MAX_ID_INT = 2**53 - 1
MAX_ID_STR = 128
MAX_OP_NAME = 64


class ErrorCode(StrEnum):
    """
    Stable, machine-readable error codes.  Clients branch on these, humans
    read the message that travels beside them.  Never renumber or rename one.
    """

    # Protocol violations: one error message, then the connection closes.
    HEADER_TOO_LARGE = "header_too_large"
    BODY_TOO_LARGE = "body_too_large"
    BAD_HEADER = "bad_header"
    BAD_REQUEST = "bad_request"
    BODY_NOT_ALLOWED = "body_not_allowed"
    DUPLICATE_ID = "duplicate_id"
    TIMEOUT = "timeout"
    # Request-level errors: a reply with this code; the connection stays usable.
    UNKNOWN_OP = "unknown_op"
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    NOT_A_DIRECTORY = "not_a_directory"
    IS_A_DIRECTORY = "is_a_directory"
    NOT_EMPTY = "not_empty"
    FORBIDDEN_PATH = "forbidden_path"
    PERMISSION_DENIED = "permission_denied"
    NO_SPACE = "no_space"
    IO_ERROR = "io_error"
    INTEGRITY_ERROR = "integrity_error"
    UNSUPPORTED_HASH = "unsupported_hash"
    COMMAND_NOT_ALLOWED = "command_not_allowed"
    BUSY = "busy"
    CANCELLED = "cancelled"
    SHUTTING_DOWN = "shutting_down"
    AUTH_REQUIRED = "auth_required"
    AUTH_FAILED = "auth_failed"
    INTERNAL = "internal"


#: Codes after which the server closes the connection.
VIOLATIONS = frozenset(
    {
        ErrorCode.HEADER_TOO_LARGE,
        ErrorCode.BODY_TOO_LARGE,
        ErrorCode.BAD_HEADER,
        ErrorCode.BAD_REQUEST,
        ErrorCode.BODY_NOT_ALLOWED,
        ErrorCode.DUPLICATE_ID,
        ErrorCode.TIMEOUT,
    }
)


class FramesError(Exception):
    """
    An error with a stable code, as carried in an error reply.

    @ivar code: one of L{ErrorCode}, or a code this version does not know.
    @ivar message: a one-line explanation for a human.
    @ivar details: extra JSON-able fields (e.g. the path concerned).
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.details = details

    def toJSON(self) -> dict[str, Any]:
        """
        @return: the C{error} member of an error reply header.
        """
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        out.update(self.details)
        return out

    @classmethod
    def fromJSON(cls, error: Any) -> FramesError:
        """
        Rebuild an error from the C{error} member of a reply, tolerating a peer
        that sends something malformed.
        """
        if not isinstance(error, dict):
            return cls(ErrorCode.BAD_HEADER, f"malformed error member: {error!r}")
        code = str(error.get("code", ErrorCode.INTERNAL))
        message = str(error.get("message", ""))
        # Not passed as keywords: a member named "self" would be a TypeError.
        rebuilt = cls(code, message)
        rebuilt.details = {k: v for k, v in error.items() if k not in ("code", "message")}
        return rebuilt


class ProtocolViolation(FramesError):
    """
    The peer broke the framing rules; the connection must be closed after
    telling it why.
    """


class NoGreeting(Exception):
    """
    The peer did not greet within the greeting deadline, or sent a TLS
    record instead of a greeting.

    @ivar seconds: the deadline.
    @ivar tlsRecord: whether the peer sent what looks like a TLS record.
    """

    def __init__(self, seconds: float, tlsRecord: bool = False) -> None:
        what = "a TLS record instead" if tlsRecord else f"nothing within {seconds:g} s"
        super().__init__(f"no greeting ({what})")
        self.seconds = seconds
        self.tlsRecord = tlsRecord


#: The first byte of a TLS record: change_cipher_spec, alert, handshake,
#: application_data; the second is the major version, 3.
TLS_CONTENT_TYPES = frozenset(range(0x14, 0x18))


def startsTLSRecord(head: bytes) -> bool:
    """
    Whether the first two bytes a server sent, C{head}, can only start a
    TLS record: a greeting starts with a length prefix far below
    C{0x14030000}, so the peer is a TLS server (and a client without TLS
    sent it nothing it could answer).
    """
    return len(head) >= 2 and head[0] in TLS_CONTENT_TYPES and head[1] == 3


def checkGreeting(header: dict[str, Any]) -> dict[str, Any]:
    """
    Check the first message a server sends.

    @return: C{header}, a twisted-frames greeting of this protocol version.
    @raise ProtocolViolation: C{bad_header} if it is not a twisted-frames
        greeting, C{version_mismatch} for another major version.
    @raise FramesError: the server's error, if it refused the connection
        instead of greeting (C{"ok": false, "closing": true}: a connection
        limit, a shutdown).
    """
    if header.get("ok") is False and header.get("closing") is True:
        raise FramesError.fromJSON(header.get("error"))
    if header.get("event") != "hello" or header.get("protocol") != PROTOCOL_NAME:
        raise ProtocolViolation(ErrorCode.BAD_HEADER, "the server did not greet as twisted-frames")
    version = header.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolViolation(
            "version_mismatch",
            f"server speaks protocol version {version!r}, this client {PROTOCOL_VERSION}",
        )
    return header


def parseServer(server: str, default_port: int = 8007) -> tuple[str, int]:
    """
    Parse C{HOST:PORT}, C{HOST}, C{[V6]:PORT} or C{:PORT}.

    @raise ValueError: on a malformed address or port.
    """
    host, port = server, str(default_port)
    if server.startswith("["):
        end = server.find("]")
        if end < 0:
            raise ValueError(f"malformed server address {server!r}")
        host, rest = server[1:end], server[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"malformed server address {server!r}")
            port = rest[1:]
    elif server.count(":") == 1:
        host, port = server.split(":")
    if not host:
        host = "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in server address {server!r}")
    return host, int(port)


def encodeHeader(header: dict[str, Any]) -> bytes:
    """
    Serialise a header object as compact UTF-8 JSON.

    @raise ValueError: if C{header} is not a dict or is not JSON-serialisable.
    """
    if not isinstance(header, dict):
        raise ValueError("a header must be a JSON object (dict)")
    try:
        text = _CODEC.encode(header)
    except TypeError as e:
        raise ValueError(f"header is not JSON-serialisable: {e}") from e
    return text.encode("utf-8")


def encodeSuccessHeader(requestId: RequestId) -> bytes:
    """
    C{encodeHeader({"id": requestId, "ok": True})}, the header of a success
    reply with no other fields (a C{ping}'s), made without the encoder for
    an integer id: the same bytes.
    """
    if type(requestId) is int:
        return b'{"id":%d,"ok":true}' % requestId
    return encodeHeader({"id": requestId, "ok": True})


def requestHeaderEncoder(op: str) -> Callable[[int], bytes]:
    """
    A function encoding the header of a request of C{op} with an integer id
    and no other fields: C{encodeHeader({"op": op, "id": rid})}, the same
    bytes, from a prefix encoded once.
    """
    # (A "%" in the op is doubled: the prefix is a format.)
    prefix = encodeHeader({"op": op})[:-1].replace(b"%", b"%%") + b',"id":%d}'

    def encode(rid: int) -> bytes:
        return prefix % rid

    return encode


def decodeHeader(data: bytes) -> dict[str, Any]:
    """
    Parse a header frame.

    @raise ProtocolViolation: C{bad_header} if the bytes are not UTF-8, not
        JSON, not a JSON object, or hold an unpaired surrogate escape.
    """
    if data[-11:] == b',"ok":true}' and data[:6] == b'{"id":':
        # The reply of every success without fields (a ping's), as
        # encodeSuccessHeader makes it: its id read without the parser, in
        # half the time.  Only plain JSON integers of up to 16 digits (ids
        # go up to 2**53 - 1) take this path; anything else is parsed.
        digits = data[6:-11]
        if digits.isdigit() and len(digits) <= 16 and (digits[0] != 48 or len(digits) == 1):
            return {"id": int(digits), "ok": True}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolViolation(ErrorCode.BAD_HEADER, f"header is not valid UTF-8: {e}") from e
    try:
        # The codec's decoder called here rather than through _decode: one
        # Python call fewer on every header (see _speedups.cjson).
        value = _CODEC.decode(text)
    except json.JSONDecodeError as e:
        raise ProtocolViolation(ErrorCode.BAD_HEADER, f"header is not valid JSON: {e}") from e
    except (ValueError, RecursionError) as e:
        # RecursionError: a 64 KiB header of "[[[[..." nests too deep to parse.
        value = _decodeAgain(text, e)
    if type(value) is not dict:
        raise ProtocolViolation(
            ErrorCode.BAD_HEADER, f"header must be a JSON object, not {type(value).__name__}"
        )
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        # A "\ud800" escape without its pair decodes to a lone surrogate: not
        # Unicode, so it could never be echoed back (encodeHeader would fail).
        try:
            encodeHeader(value)
        except ValueError as e:
            raise ProtocolViolation(
                ErrorCode.BAD_HEADER, "header has an unpaired surrogate escape"
            ) from e
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuseConstant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.dumps/json.loads with options build a new encoder or
# decoder on every call, a measurable share of a small request's cost.  The
# codec calls their C halves directly where it can (see _speedups.cjson).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_refuseConstant)
_CODEC = Codec(_ENCODER, _DECODER)


def _decodeAgain(text: str, error: ValueError | RecursionError) -> Any:
    """
    The header C{text} the codec refused with C{error}, other than as
    malformed JSON.

    @raise ProtocolViolation: C{bad_header}, unless C{error} was an integer
        with more digits than C{int()} converts
        (C{sys.get_int_max_str_digits()}, a guard against its quadratic
        cost): then C{text} is parsed again without converting such
        integers (rare, so the usual path keeps the C parser's own fast
        int conversion), and a NaN/Infinity constant is refused again.
    """
    if isinstance(error, ValueError):
        try:
            return _LONG_INT_DECODER.decode(text)
        except (ValueError, RecursionError) as e:
            error = e
    raise ProtocolViolation(ErrorCode.BAD_HEADER, f"header is not valid JSON: {error}") from error


def _parseInteger(literal: str) -> int | float:
    """
    A JSON integer literal as C{int}, or, past the digits C{int()} converts,
    as the C{float} it rounds to (an infinity): a number out of range for
    every field, as C{1e400} already is, instead of a header that cannot be
    parsed.
    """
    try:
        return int(literal)
    except ValueError:
        return float(literal)


_LONG_INT_DECODER = json.JSONDecoder(parse_constant=_refuseConstant, parse_int=_parseInteger)


def encodeFrame(payload: bytes) -> bytes:
    """
    Prefix C{payload} with its length.

    @raise ValueError: if the payload is longer than a 32-bit prefix can say.
    """
    return encodePrefix(len(payload)) + payload


def encodePrefix(length: int) -> bytes:
    """
    The 4-byte big-endian prefix for a frame of C{length} bytes.

    @raise ValueError: if C{length} is negative or over L{MAX_FRAME}.
    """
    if not 0 <= length <= MAX_FRAME:
        raise ValueError(f"frame length {length} out of range 0..{MAX_FRAME}")
    return PREFIX.pack(length)


def encodeMessage(header: dict[str, Any], body: bytes = b"") -> bytes:
    """
    A whole message, both frames, as one byte string.
    """
    h = encodeHeader(header)
    return PREFIX.pack(len(h)) + h + encodePrefix(len(body)) + body


RequestId = int | str


def checkRequestId(value: Any) -> RequestId:
    """
    Check a client-chosen request id: an integer in 0..2**53-1 or a non-empty
    string of at most 128 characters.

    @raise ProtocolViolation: C{bad_request} otherwise.
    """
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) and 0 <= value <= MAX_ID_INT:
        return value
    elif isinstance(value, str) and 0 < len(value) <= MAX_ID_STR:
        return value
    raise ProtocolViolation(
        ErrorCode.BAD_REQUEST,
        "request 'id' must be an integer 0..2**53-1 or a string of 1..128 characters",
    )


class SupportsErrorJSON(Protocol):
    """
    What L{errorHeader} needs of an error: its C{error} member.
    """

    def toJSON(self) -> dict[str, Any]: ...


def errorHeader(
    error: SupportsErrorJSON, requestId: Any = None, closing: bool = False
) -> dict[str, Any]:
    """
    The header of an error reply: the one shape of every error the server
    sends (a request's final error, a violation, a refused connection).

    @param requestId: the request it answers; C{None} (sent as C{null}) for
        an error about the connection, or when the peer's id is not a valid
        one (it cannot be echoed back).
    @param closing: mark it C{"closing": true}, as on the last message
        before the sender closes the connection.
    """
    header: dict[str, Any] = {"id": None, "ok": False, "error": error.toJSON()}
    if requestId is not None:
        try:
            header["id"] = checkRequestId(requestId)
        except ProtocolViolation:
            pass
    if closing:
        header["closing"] = True
    return header


def checkRequest(header: dict[str, Any]) -> tuple[RequestId, str]:
    """
    Check the two fields every request must have.

    @return: C{(id, op)}.
    @raise ProtocolViolation: C{bad_request} if either is missing or malformed.
    """
    rid = header.get("id")
    # type(), not isinstance(): an id of true is not request 1.  An integer
    # id in range (the usual one) needs no further check.
    if type(rid) is not int or not 0 <= rid <= MAX_ID_INT:
        if "id" not in header:
            raise ProtocolViolation(ErrorCode.BAD_REQUEST, "request header has no 'id'")
        rid = checkRequestId(rid)
    op = header.get("op")
    if not isinstance(op, str) or not 0 < len(op) <= MAX_OP_NAME:
        raise ProtocolViolation(
            ErrorCode.BAD_REQUEST, "request header has no 'op' (a string of 1..64 characters)"
        )
    return rid, op


@dataclass(frozen=True)
class Limits:
    """
    The hard limits of one side of a connection.

    @ivar maxHeader: largest header frame accepted, in bytes.
    @ivar maxBody: largest body frame accepted, in bytes.
    @ivar bufferThreshold: bodies up to this size are gathered in memory.
    """

    maxHeader: int = DEFAULT_MAX_HEADER
    maxBody: int = DEFAULT_MAX_BODY
    bufferThreshold: int = DEFAULT_BUFFER_THRESHOLD

    def __post_init__(self) -> None:
        if not 2 <= self.maxHeader <= MAX_FRAME:
            raise ValueError(f"maxHeader must be in 2..{MAX_FRAME}")
        if not 0 <= self.maxBody <= MAX_FRAME:
            raise ValueError(f"maxBody must be in 0..{MAX_FRAME}")
        if self.bufferThreshold < 0:
            raise ValueError("bufferThreshold must not be negative")

    def toJSON(self) -> dict[str, int]:
        """
        @return: the C{limits} member of the greeting.
        """
        return {"header": self.maxHeader, "body": self.maxBody}
