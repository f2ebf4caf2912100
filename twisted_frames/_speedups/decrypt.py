# -*- test-case-name: tests.test_tlsrecv -*-
"""
Cleartext decrypted by OpenSSL straight into a caller's buffer, as many
records as are ready in one call, for the threaded TLS receive
(L{twisted_frames._speedups.recv.TLSReceive}).

pyOpenSSL's C{Connection.recv_into} decrypts one TLS record (at most
16 KiB) per call into a temporary buffer it allocates, copies that into the
caller's, then checks the result in Python: about 65,000 calls, allocations
and copies per GiB, each a few microseconds of Python on the receiving
core.  L{recordReader} calls OpenSSL's C{SSL_read} through the same cffi
binding pyOpenSSL uses, into the caller's buffer, in a loop until the
buffer is full or OpenSSL has no whole record left; anything but data or
"needs more ciphertext" is left to C{recv_into}, which reads the same
state again and raises pyOpenSSL's own exception for it.

It relies on pyOpenSSL's private C{_lib}, C{_ffi} and C{Connection._ssl};
where any is missing (or the speed paths are off) L{recordReader} gives
C{None} and the receive uses C{recv_into} as before.  cffi releases the GIL
around each C{SSL_read}.

The loop itself (L{decryptReady}) imports nothing of Twisted or
pyOpenSSL: the CLI's quick path runs it too, on the standard library's
C{ssl} through C{ctypes}.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from . import enabled

#: A reader: decrypt up to C{count} bytes into the start of the buffer;
#: return how many (> 0), 0 if OpenSSL needs more ciphertext first, or -1
#: for anything else (the caller asks C{recv_into}, which raises it).
RecordReader = Callable[[memoryview, int], int]

#: The OpenSSL functions and constants the reader uses.
_NEEDS = ("SSL_read", "SSL_get_error", "SSL_ERROR_WANT_READ")


def recordReader(connection: Any) -> RecordReader | None:
    """
    @param connection: a pyOpenSSL C{Connection} (with memory BIOs).
    @return: a L{RecordReader} for it, or C{None} if pyOpenSSL's private
        binding is not as this expects or the speed paths are disabled.
    """
    module = sys.modules.get("OpenSSL.SSL")
    lib: Any = getattr(module, "_lib", None)
    ffi: Any = getattr(module, "_ffi", None)
    ssl = getattr(connection, "_ssl", None)
    if (
        not enabled()
        or ssl is None
        or not all(hasattr(lib, name) for name in _NEEDS)
        or not callable(getattr(ffi, "from_buffer", None))
        or not isinstance(connection, getattr(module, "Connection", ()))
    ):
        return None
    read = lib.SSL_read
    getError = lib.SSL_get_error
    wantRead = lib.SSL_ERROR_WANT_READ
    fromBuffer = ffi.from_buffer

    def reader(view: memoryview, count: int) -> int:
        with fromBuffer(view, require_writable=True) as out:
            return decryptReady(read, getError, wantRead, ssl, out, count)

    return reader


def decryptReady(
    read: Callable[[Any, Any, int], int],
    getError: Callable[[Any, int], int],
    wantRead: int,
    ssl: Any,
    start: Any,
    count: int,
) -> int:
    """
    Call OpenSSL's C{SSL_read} on C{ssl} into the buffer at C{start} until
    C{count} bytes are there or it gives nothing more: the loop of
    L{recordReader} (cffi) and of the CLI's quick path
    (L{twisted_frames.cli.quick.bulkReader}, ctypes), which differ only in
    how they reach OpenSSL.

    @param start: the buffer's address, as the binding takes it (a cffi
        C{char *}, or a C{ctypes} address): C{start + n} is C{n} bytes on.
    @return: bytes decrypted (> 0), 0 if OpenSSL needs more ciphertext
        first (C{SSL_get_error} says C{wantRead}), -1 for anything else.
    """
    done = 0
    result = 0
    while done < count:
        result = read(ssl, start + done, count - done)
        if result <= 0:
            break
        done += result
    if done:
        return done
    return 0 if getError(ssl, result) == wantRead else -1
