# -*- test-case-name: tests.test_speedups -*-
"""
Header encoding and parsing through the C halves of CPython's C{json}
module, called directly: C{JSONEncoder.encode} and C{JSONDecoder.decode}
are two Python calls each around them, a quarter of a small header's whole
encoding or parsing time.  Same options, same output.

Relies on C{json.encoder.c_make_encoder} (and its argument order) and on
C{JSONDecoder.scan_once}; without them, or with the speed paths disabled
(L{twisted_frames._speedups.setEnabled}), the public methods are used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import onChange


class Codec:
    """
    Encode and decode with one encoder and one decoder, through their C
    functions when possible.

    @ivar encode: C{value -> str}, as C{encoder.encode}.
    @ivar decode: C{text -> value}, as C{decoder.decode}.
    @ivar fast: whether the C functions are in use.
    """

    encode: Callable[[Any], str]
    decode: Callable[[str], Any]
    fast: bool

    def __init__(self, encoder: json.JSONEncoder, decoder: json.JSONDecoder) -> None:
        self._encoder = encoder
        self._decoder = decoder
        # Circular-reference markers, as JSONEncoder keeps them (a cycle is
        # a ValueError, not a recursion as deep as the recursion limit
        # allows); shared by all calls (headers are encoded on the reactor
        # thread), so emptied after a failed one, which may leave some.
        self._markers: dict[int, Any] = {}
        self._chunks = _cEncoder(encoder, self._markers)
        self._scan: Callable[[str, int], tuple[Any, int]] | None = getattr(
            decoder, "scan_once", None
        )
        onChange(self._select)

    def _select(self, enabled: bool) -> None:
        self.fast = enabled and self._chunks is not None and self._scan is not None
        if self.fast:
            self.encode = self._encodeFast
            self.decode = self._decodeFast
        else:
            self.encode = self._encoder.encode
            self.decode = self._decoder.decode

    def _encodeFast(self, value: Any) -> str:
        assert self._chunks is not None
        try:
            return "".join(self._chunks(value, 0))
        except BaseException:
            self._markers.clear()
            raise

    def _decodeFast(self, text: str) -> Any:
        assert self._scan is not None
        try:
            value, end = self._scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            # Leading or trailing whitespace, trailing data, or not a value
            # at all: the full parser accepts the first and explains the rest.
            return self._decoder.decode(text)
        return value


def _cEncoder(
    encoder: json.JSONEncoder, markers: dict[int, Any]
) -> Callable[[Any, int], Any] | None:
    """
    The C encoder for C{encoder}'s options (compact separators, no key
    sorting, no indent), or C{None} where there is none or the options
    are ones it is not built for here.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or encoder.indent is not None or encoder.sort_keys:
        return None
    if encoder.ensure_ascii:
        return None
    try:
        return make(  # type: ignore[no-any-return]
            markers,
            encoder.default,
            json.encoder.encode_basestring,
            None,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
    except TypeError:
        # Its signature changed: use the public encoder.
        return None
