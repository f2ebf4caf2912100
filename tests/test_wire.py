"""
Tests for L{twisted_frames.wire}: the pure encoding of headers, frames,
request checks, limits and errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import wire
from twisted_frames.wire import ErrorCode, FramesError, Limits, ProtocolViolation

#: Any JSON scalar that survives a round trip unchanged (NaN never equals itself
#: and is refused by the encoder anyway).
jsonScalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
jsonValues = st.recursive(
    jsonScalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
#: Header objects: text keys, any JSON value.
headers = st.dictionaries(st.text(), jsonValues, max_size=8)

#: Few examples and no example database: these run on every commit, in < 10 s
#: with the rest of the suite, and must not write into the checkout.
fast = settings(max_examples=30, deadline=None, database=None)


class HeaderRoundTripTests(SynchronousTestCase):
    """
    L{wire.encodeHeader} and L{wire.decodeHeader} are inverses.
    """

    @fast
    @given(headers)
    def test_roundTrip(self, header: dict[str, Any]) -> None:
        """
        Any JSON object with text keys decodes to what was encoded.
        """
        self.assertEqual(wire.decodeHeader(wire.encodeHeader(header)), header)

    @fast
    @given(headers)
    def test_encodedIsUTF8JSON(self, header: dict[str, Any]) -> None:
        """
        The encoding is compact JSON in UTF-8, parseable by any JSON reader.
        """
        data = wire.encodeHeader(header)
        self.assertEqual(json.loads(data.decode("utf-8")), header)

    def test_compact(self) -> None:
        """
        Headers are encoded without insignificant whitespace.
        """
        self.assertEqual(wire.encodeHeader({"op": "ping", "id": 1}), b'{"op":"ping","id":1}')

    def test_nonASCIIAsUTF8(self) -> None:
        """
        Non-ASCII text is sent as UTF-8, not as C{\\u} escapes.
        """
        self.assertEqual(wire.encodeHeader({"p": "é"}), '{"p":"é"}'.encode())

    def test_encodeRefusesNonDict(self) -> None:
        """
        Only a dict can be a header: anything else is a C{ValueError}.
        """
        for value in ([], "x", 1, None):
            self.assertRaises(ValueError, wire.encodeHeader, value)

    def test_encodeRefusesNaN(self) -> None:
        """
        NaN and infinities are not JSON: encoding them is a C{ValueError}.
        """
        for value in (float("nan"), float("inf"), float("-inf")):
            self.assertRaises(ValueError, wire.encodeHeader, {"x": value})

    def test_encodeRefusesUnserialisable(self) -> None:
        """
        A value JSON cannot represent is a C{ValueError}, as documented (not
        the C{TypeError} C{json.dumps} raises).
        """
        self.assertRaises(ValueError, wire.encodeHeader, {"x": object()})
        self.assertRaises(ValueError, wire.encodeHeader, {"x": b"bytes"})

    def test_encodeRefusesCycle(self) -> None:
        """
        A header that contains itself is a C{ValueError}, found as a cycle
        rather than by recursing as deep as the recursion limit allows.
        """
        header: dict[str, Any] = {}
        header["self"] = header
        error = self.assertRaises(ValueError, wire.encodeHeader, header)
        self.assertIn("Circular reference", str(error))

    def test_encodeAfterFailure(self) -> None:
        """
        A header that failed to encode can be encoded once fixed: the failure
        leaves nothing behind that would make it look circular.
        """
        header: dict[str, Any] = {"inner": {"a": [1]}, "z": object()}
        self.assertRaises(ValueError, wire.encodeHeader, header)
        header["z"] = 1
        self.assertEqual(wire.encodeHeader(header), b'{"inner":{"a":[1]},"z":1}')

    @fast
    @given(headers)
    def test_sameAsStdlib(self, header: dict[str, Any]) -> None:
        """
        The encoder called directly gives exactly what C{json.dumps} with
        the same options gives.
        """
        expected = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        self.assertEqual(wire.encodeHeader(header), expected.encode("utf-8"))

    @fast
    @given(headers, st.binary(max_size=64))
    def test_encodeMessage(self, header: dict[str, Any], body: bytes) -> None:
        """
        A message is a header frame then a body frame, each prefixed with its
        big-endian 32-bit length.
        """
        data = wire.encodeMessage(header, body)
        (hlen,) = wire.PREFIX.unpack_from(data, 0)
        headerBytes = data[4 : 4 + hlen]
        (blen,) = wire.PREFIX.unpack_from(data, 4 + hlen)
        self.assertEqual(wire.decodeHeader(headerBytes), header)
        self.assertEqual(blen, len(body))
        self.assertEqual(data[8 + hlen :], body)


class FixedShapeEncoderTests(SynchronousTestCase):
    """
    The encoders of the hot paths' fixed header shapes give the bytes
    L{wire.encodeHeader} gives.
    """

    IDS: list[Any] = [0, 1, 77, wire.MAX_ID_INT, "a", 'q"uote\\', "\u00e9\u4e2d\U0001f600", "%d"]

    def test_successHeader(self) -> None:
        """
        C{encodeSuccessHeader(rid)} is C{{"id": rid, "ok": true}}, encoded.
        """
        for rid in self.IDS:
            self.assertEqual(
                wire.encodeSuccessHeader(rid), wire.encodeHeader({"id": rid, "ok": True})
            )

    def test_requestHeader(self) -> None:
        """
        C{requestHeaderEncoder(op)(rid)} is C{{"op": op, "id": rid}}, encoded,
        whatever the op holds (quotes, escapes, non-ASCII, a C{%}).
        """
        for op in ["ping", "get", 'o"p', "a\\b", "\u00e9t\u00e9", "100%", "%s%d"]:
            encode = wire.requestHeaderEncoder(op)
            for rid in [0, 1, 123456, wire.MAX_ID_INT]:
                self.assertEqual(encode(rid), wire.encodeHeader({"op": op, "id": rid}))

    @given(st.text(min_size=1, max_size=64), st.integers(0, wire.MAX_ID_INT))
    def test_requestHeaderAnyOp(self, op: str, rid: int) -> None:
        """
        The same for any op name and id.
        """
        try:
            expected = wire.encodeHeader({"op": op, "id": rid})
        except ValueError:
            # A lone surrogate is not UTF-8: neither way encodes it.
            self.assertRaises(ValueError, wire.requestHeaderEncoder, op)
            return
        self.assertEqual(wire.requestHeaderEncoder(op)(rid), expected)


class SuccessHeaderShortcutTests(SynchronousTestCase):
    """
    L{wire.decodeHeader} reads the id of a success reply without fields,
    C{{"id":N,"ok":true}} as L{wire.encodeSuccessHeader} makes it, without
    the JSON parser; every other header, however alike, is parsed.
    """

    def countParses(self) -> list[str]:
        """
        Count the texts handed to the JSON codec for the rest of the test.
        """
        texts: list[str] = []
        decode = wire._CODEC.decode

        def counting(text: str) -> Any:
            texts.append(text)
            return decode(text)

        self.patch(wire._CODEC, "decode", counting)
        return texts

    def reference(self, data: bytes) -> Any:
        """
        What the JSON parser makes of C{data}, or C{None} if it refuses it.
        """
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            return None

    def test_shortcut(self) -> None:
        """
        A success reply with a plain integer id decodes to the same dict
        as through the parser, and the parser is not called.
        """
        texts = self.countParses()
        for rid in [0, 1, 9, 10, 77, 123456, 10**15, wire.MAX_ID_INT, 9999999999999999]:
            data = wire.encodeSuccessHeader(rid)
            decoded = wire.decodeHeader(data)
            self.assertEqual(decoded, {"id": rid, "ok": True})
            self.assertEqual(list(decoded), ["id", "ok"])
            self.assertIs(type(decoded["id"]), int)
            self.assertEqual(decoded, self.reference(data))
        self.assertEqual(texts, [])

    def test_lookalikes(self) -> None:
        """
        Ids that are not plain JSON integers of at most 16 digits go through
        the parser, which accepts or refuses them as it always has.
        """
        texts = self.countParses()
        accepted = [
            b'{"id":-1,"ok":true}',
            b'{"id":1.5,"ok":true}',
            b'{"id":1e3,"ok":true}',
            b'{"id":12345678901234567,"ok":true}',
            b'{"id": 1,"ok":true}',
            b'{"id":"1","ok":true}',
            b'{"id":null,"ok":true}',
            b'{"id":1,"x":2,"ok":true}',
        ]
        for data in accepted:
            self.assertEqual(wire.decodeHeader(data), self.reference(data))
        refused = [
            b'{"id":01,"ok":true}',
            b'{"id":00,"ok":true}',
            b'{"id":+1,"ok":true}',
            b'{"id":,"ok":true}',
            b'{"id":1_0,"ok":true}',
            '{"id":\u0661,"ok":true}'.encode(),
            '{"id":١,"ok":true}'.encode(),
            b'{"id":"ok":true}',
        ]
        for data in refused:
            error = self.assertRaises(ProtocolViolation, wire.decodeHeader, data)
            self.assertEqual(error.code, ErrorCode.BAD_HEADER)
        self.assertEqual(len(texts), len(accepted) + len(refused))

    @given(st.text(alphabet="0123456789-+.e_ \u0661", max_size=20))
    def test_anyId(self, digits: str) -> None:
        """
        For any text where the id goes, L{wire.decodeHeader} gives what the
        JSON parser gives, or refuses what it refuses.
        """
        data = b'{"id":' + digits.encode() + b',"ok":true}'
        expected = self.reference(data)
        if expected is None:
            self.assertRaises(ProtocolViolation, wire.decodeHeader, data)
        else:
            self.assertEqual(wire.decodeHeader(data), expected)


class DecodeErrorTests(SynchronousTestCase):
    """
    Bytes that are not a JSON object in UTF-8 are a C{bad_header} violation.
    """

    def assertBadHeader(self, data: bytes) -> ProtocolViolation:
        error = self.assertRaises(ProtocolViolation, wire.decodeHeader, data)
        self.assertEqual(error.code, ErrorCode.BAD_HEADER)
        self.assertIsInstance(error, FramesError)
        return error

    def test_invalidUTF8(self) -> None:
        """
        A header that is not valid UTF-8 is C{bad_header}.
        """
        self.assertBadHeader(b'{"a":"\xff"}')
        # An overlong encoding of "/" is not UTF-8 either.
        self.assertBadHeader(b'{"a":"\xc0\xaf"}')

    def test_invalidJSON(self) -> None:
        """
        Truncated or malformed JSON is C{bad_header}.
        """
        for data in (b"{", b'{"a":}', b"{'a':1}", b'{"a":1,}', b"{} {}", b"", b" "):
            self.assertBadHeader(data)

    def test_surroundingWhitespace(self) -> None:
        """
        JSON allows whitespace around the value: it is accepted, as the
        standard parser does; anything else after the object is refused.
        """
        self.assertEqual(wire.decodeHeader(b' \t{"a":1}\r\n '), {"a": 1})
        self.assertEqual(wire.decodeHeader(b'{"a":1} '), {"a": 1})
        self.assertBadHeader(b'{"a":1} x')
        self.assertBadHeader(b'{"a":1}{"b":2}')

    def test_constantsRefused(self) -> None:
        """
        Python's C{json} accepts C{NaN}, C{Infinity} and C{-Infinity}; they
        are not JSON, so they are C{bad_header}.
        """
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            self.assertBadHeader(b'{"x":' + constant + b"}")

    def test_topLevelNotObject(self) -> None:
        """
        A header must be a JSON object: an array, number, string, boolean or
        null at the top level is C{bad_header}.
        """
        for data in (b"[]", b'[{"op":"ping"}]', b"1", b"1.5", b'"x"', b"true", b"null"):
            error = self.assertBadHeader(data)
            self.assertIn("object", error.message)

    def test_deepNesting(self) -> None:
        """
        A header nested too deeply for the parser's recursion (a 64 KiB
        C{[[[[...}) is C{bad_header}, not a C{RecursionError}.
        """
        self.assertBadHeader(b"[" * 65536)
        self.assertBadHeader(b'{"a":' + b"[" * 60000 + b"]" * 60000 + b"}")

    def test_loneSurrogate(self) -> None:
        """
        A C{\\ud800} escape without its pair is not Unicode (it could never
        be encoded back to UTF-8), so it is C{bad_header}; a proper pair is
        fine.
        """
        self.assertBadHeader(b'{"id":"\\ud800"}')
        self.assertBadHeader(b'{"\\uDC00":1}')
        self.assertEqual(wire.decodeHeader(b'{"a":"\\ud83d\\ude00"}'), {"a": "\U0001f600"})
        self.assertEqual(wire.decodeHeader(b'{"a":"\\\\ud800"}'), {"a": "\\ud800"})

    def test_integersTooLongForInt(self) -> None:
        """
        An integer literal with more digits than Python's C{int()} converts
        (4,300) is not a malformed header: it reads as the float it rounds
        to, an infinity (as C{1e400} does), which every integer field
        refuses as out of range; shorter integers stay exact.
        """
        self.assertEqual(wire.decodeHeader(b'{"id":' + b"7" * 5000 + b"}"), {"id": math.inf})
        self.assertEqual(
            wire.decodeHeader(b' {"a":[-' + b"1" * 4301 + b',3],"b":"x"} '),
            {"a": [-math.inf, 3], "b": "x"},
        )
        self.assertEqual(
            wire.decodeHeader(b'{"id":' + b"9" * 4300 + b"}"), {"id": int("9" * 4300)}
        )
        self.assertBadHeader(b'{"id":' + b"1" * 5000 + b",NaN}")
        self.assertBadHeader(b'{"id":' + b"1" * 5000)

    @fast
    @given(st.binary(max_size=64))
    def test_anyBytes(self, data: bytes) -> None:
        """
        Whatever the bytes, decoding gives a dict or C{bad_header}, never
        another exception.
        """
        try:
            value = wire.decodeHeader(data)
        except ProtocolViolation as e:
            self.assertEqual(e.code, ErrorCode.BAD_HEADER)
        else:
            self.assertIsInstance(value, dict)


class CheckRequestTests(SynchronousTestCase):
    """
    L{wire.checkRequestId} and L{wire.checkRequest} accept exactly the ids and
    ops the protocol allows, and refuse the rest with C{bad_request}.
    """

    def assertBadRequest(self, f: Any, *args: Any) -> None:
        error = self.assertRaises(ProtocolViolation, f, *args)
        self.assertEqual(error.code, ErrorCode.BAD_REQUEST)

    def test_validIds(self) -> None:
        """
        Integers 0..2**53-1 and strings of 1..128 characters are ids.
        """
        for value in (0, 1, wire.MAX_ID_INT, "a", "x" * 128, "é" * 128):
            self.assertEqual(wire.checkRequestId(value), value)

    @fast
    @given(st.integers(0, wire.MAX_ID_INT) | st.text(min_size=1, max_size=128))
    def test_validIdsProperty(self, value: int | str) -> None:
        """
        Every id in the allowed ranges is accepted unchanged.
        """
        self.assertEqual(wire.checkRequestId(value), value)

    def test_boolRefused(self) -> None:
        """
        C{true} and C{false} are not ids, although C{bool} is an C{int}.
        """
        self.assertBadRequest(wire.checkRequestId, True)
        self.assertBadRequest(wire.checkRequestId, False)

    def test_intOutOfRange(self) -> None:
        """
        Negative integers and integers over 2**53-1 are refused.
        """
        for value in (-1, -(2**60), wire.MAX_ID_INT + 1, 2**64):
            self.assertBadRequest(wire.checkRequestId, value)

    def test_badStrings(self) -> None:
        """
        The empty string and strings of 129 characters or more are refused.
        """
        self.assertBadRequest(wire.checkRequestId, "")
        self.assertBadRequest(wire.checkRequestId, "x" * 129)

    def test_otherTypes(self) -> None:
        """
        Floats, null, arrays and objects are not ids.
        """
        for value in (1.0, None, [], [1], {}, {"id": 1}):
            self.assertBadRequest(wire.checkRequestId, value)

    def test_checkRequest(self) -> None:
        """
        A request header with a valid id and op gives C{(id, op)}.
        """
        self.assertEqual(wire.checkRequest({"op": "ping", "id": 3}), (3, "ping"))
        self.assertEqual(wire.checkRequest({"op": "o" * 64, "id": "a"}), ("a", "o" * 64))

    def test_missingId(self) -> None:
        """
        A request without an id is C{bad_request}.
        """
        self.assertBadRequest(wire.checkRequest, {"op": "ping"})

    def test_badIdInRequest(self) -> None:
        """
        A request with a malformed id is C{bad_request}.
        """
        self.assertBadRequest(wire.checkRequest, {"op": "ping", "id": True})
        self.assertBadRequest(wire.checkRequest, {"op": "ping", "id": None})

    def test_missingOp(self) -> None:
        """
        A request without an op is C{bad_request}.
        """
        self.assertBadRequest(wire.checkRequest, {"id": 1})

    def test_opNotString(self) -> None:
        """
        An op that is not a string of 1..64 characters is C{bad_request}.
        """
        for op in (1, None, ["ping"], {"op": "ping"}, True, "", "o" * 65):
            self.assertBadRequest(wire.checkRequest, {"op": op, "id": 1})


class PrefixTests(SynchronousTestCase):
    """
    L{wire.encodePrefix} and L{wire.encodeFrame} encode lengths as 4
    big-endian bytes, and refuse lengths a 32-bit prefix cannot say.
    """

    def test_bounds(self) -> None:
        """
        0 and 2**32-1 are the smallest and largest lengths.
        """
        self.assertEqual(wire.encodePrefix(0), b"\x00\x00\x00\x00")
        self.assertEqual(wire.encodePrefix(wire.MAX_FRAME), b"\xff\xff\xff\xff")
        self.assertEqual(wire.encodePrefix(0x01020304), b"\x01\x02\x03\x04")

    def test_outOfRange(self) -> None:
        """
        A negative length, or one over 2**32-1, is a C{ValueError}.
        """
        self.assertRaises(ValueError, wire.encodePrefix, -1)
        self.assertRaises(ValueError, wire.encodePrefix, wire.MAX_FRAME + 1)
        self.assertRaises(ValueError, wire.encodePrefix, 2**64)

    @fast
    @given(st.integers(0, wire.MAX_FRAME))
    def test_roundTrip(self, length: int) -> None:
        """
        Every length in range unpacks to itself with the C{!I} format.
        """
        self.assertEqual(wire.PREFIX.unpack(wire.encodePrefix(length)), (length,))

    @fast
    @given(st.binary(max_size=300))
    def test_encodeFrame(self, payload: bytes) -> None:
        """
        A frame is the payload's prefix followed by the payload.
        """
        self.assertEqual(wire.encodeFrame(payload), wire.encodePrefix(len(payload)) + payload)


class LimitsTests(SynchronousTestCase):
    """
    L{Limits} checks its values and describes itself in the greeting.
    """

    def test_defaults(self) -> None:
        """
        The defaults are a 64 KiB header, a 4 GiB - 1 body and a 256 KiB
        in-memory threshold.
        """
        limits = Limits()
        self.assertEqual(limits.maxHeader, 64 * 1024)
        self.assertEqual(limits.maxBody, wire.MAX_FRAME)
        self.assertEqual(limits.bufferThreshold, 256 * 1024)

    def test_toJSON(self) -> None:
        """
        The greeting's C{limits} member gives the header and body limits.
        """
        self.assertEqual(Limits(maxHeader=100, maxBody=200).toJSON(), {"header": 100, "body": 200})

    def test_extremesAccepted(self) -> None:
        """
        The smallest useful header limit (C{{}} is 2 bytes), an empty-body
        limit, and the 32-bit maxima are valid.
        """
        Limits(maxHeader=2, maxBody=0, bufferThreshold=0)
        Limits(maxHeader=wire.MAX_FRAME, maxBody=wire.MAX_FRAME)

    def test_invalid(self) -> None:
        """
        Limits a 32-bit prefix cannot say, a header limit too small for
        C{{}}, or a negative threshold are a C{ValueError}.
        """
        for kwargs in (
            {"maxHeader": 1},
            {"maxHeader": wire.MAX_FRAME + 1},
            {"maxBody": -1},
            {"maxBody": wire.MAX_FRAME + 1},
            {"bufferThreshold": -1},
        ):
            self.assertRaises(ValueError, Limits, **kwargs)

    def test_frozen(self) -> None:
        """
        Limits are shared by every connection of a factory, so they cannot be
        changed in place.
        """
        limits = Limits()
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, limits, "maxBody", 1)


class FramesErrorTests(SynchronousTestCase):
    """
    L{FramesError} travels as the C{error} member of a reply.
    """

    def test_toJSON(self) -> None:
        """
        The error member has the code, the message and any details.
        """
        error = FramesError(ErrorCode.NOT_FOUND, "no such file", path="a/b")
        self.assertEqual(
            error.toJSON(), {"code": "not_found", "message": "no such file", "path": "a/b"}
        )
        self.assertEqual(str(error), "not_found: no such file")
        self.assertIs(type(error.code), str)

    @fast
    @given(
        st.text(min_size=1),
        st.text(),
        st.dictionaries(
            st.text().filter(lambda k: k not in ("code", "message")), jsonValues, max_size=4
        ),
    )
    def test_roundTrip(self, code: str, message: str, details: dict[str, Any]) -> None:
        """
        C{fromJSON(toJSON())} restores the code, message and details, whatever
        the detail names (even C{self}).
        """
        error = FramesError(code, message)
        error.details = details
        member = json.loads(wire.encodeHeader({"error": error.toJSON()}))["error"]
        rebuilt = FramesError.fromJSON(member)
        self.assertEqual(
            (rebuilt.code, rebuilt.message, rebuilt.details), (code, message, details)
        )

    def test_detailNamedSelf(self) -> None:
        """
        A peer's error member with a field called C{self} is tolerated (it is
        not passed as a keyword argument).
        """
        error = FramesError.fromJSON({"code": "x", "message": "m", "self": 1, "cls": 2})
        self.assertEqual(error.details, {"self": 1, "cls": 2})

    def test_malformedMember(self) -> None:
        """
        An error member that is not an object becomes a C{bad_header} error
        describing it, rather than an exception.
        """
        for member in (None, "oops", 3, ["code"]):
            error = FramesError.fromJSON(member)
            self.assertEqual(error.code, ErrorCode.BAD_HEADER)
            self.assertIn(repr(member), error.message)

    def test_missingFields(self) -> None:
        """
        A missing code is C{internal}, a missing message is empty, and
        non-string ones are made strings.
        """
        error = FramesError.fromJSON({})
        self.assertEqual((error.code, error.message, error.details), ("internal", "", {}))
        error = FramesError.fromJSON({"code": 5, "message": None})
        self.assertEqual((error.code, error.message), ("5", "None"))

    def test_unknownCodeKept(self) -> None:
        """
        A code this version does not know is kept as it was sent.
        """
        self.assertEqual(FramesError.fromJSON({"code": "future_code"}).code, "future_code")

    def test_violationsAreClosingCodes(self) -> None:
        """
        The codes that close the connection are exactly the protocol
        violations; request-level codes such as C{unknown_op} are not among
        them.
        """
        self.assertEqual(
            {str(code) for code in wire.VIOLATIONS},
            {
                "header_too_large",
                "body_too_large",
                "bad_header",
                "bad_request",
                "body_not_allowed",
                "duplicate_id",
                "timeout",
            },
        )
        self.assertNotIn(ErrorCode.UNKNOWN_OP, wire.VIOLATIONS)
        self.assertTrue(issubclass(ProtocolViolation, FramesError))


class ErrorHeaderTests(SynchronousTestCase):
    """
    L{wire.errorHeader} is the one shape of an error reply.
    """

    def test_requestError(self) -> None:
        """
        A request's error names its id, in the order C{id}, C{ok}, C{error}.
        """
        error = FramesError(ErrorCode.NOT_FOUND, "no such file", path="a")
        self.assertEqual(
            wire.encodeHeader(wire.errorHeader(error, 7)),
            b'{"id":7,"ok":false,"error":{"code":"not_found","message":"no such file",'
            b'"path":"a"}}',
        )

    def test_closing(self) -> None:
        """
        C{closing=True} adds C{"closing": true} last; no id is sent as C{null}.
        """
        error = FramesError(ErrorCode.TIMEOUT, "idle")
        self.assertEqual(
            wire.encodeHeader(wire.errorHeader(error, closing=True)),
            b'{"id":null,"ok":false,"error":{"code":"timeout","message":"idle"},"closing":true}',
        )

    @fast
    @given(jsonValues)
    def test_invalidIdNotEchoed(self, rid: Any) -> None:
        """
        An id that is not a valid request id (a peer's broken header) is sent
        as C{null}; a valid one is echoed unchanged.
        """
        try:
            expected = wire.checkRequestId(rid)
        except ProtocolViolation:
            expected = None
        header = wire.errorHeader(FramesError(ErrorCode.BAD_REQUEST, "x"), rid)
        self.assertEqual(header["id"], expected)
