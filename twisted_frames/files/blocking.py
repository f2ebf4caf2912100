# -*- test-case-name: tests.files.test_hashes -*-
"""
The blocking pieces of file transfers, without Twisted: the transfer
hashes and their negotiation, exact reads and writes of a descriptor, the
names of the server's partial uploads, and remote paths joined.  The store (server and Twisted
client, L{twisted_frames.files.store}), the file client
(L{twisted_frames.files.client}) and the CLI's quick path
(L{twisted_frames.cli.quick}) share them from here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import blake3

from ..wire import ErrorCode, FramesError

#: Bytes read from disk per worker-thread job when sending: big enough that
#: the per-job overhead is noise, small enough to keep memory flat.
READ_CHUNK = 1024 * 1024

#: Files up to this size are read whole and sent in one message (one round
#: trip); larger ones are streamed in segments followed by a commit message.
SMALL_FILE = 1024 * 1024

#: Names starting with this are the server's own partial uploads: never
#: listed, never addressable by a client.
PARTIAL_PREFIX = ".frames-partial-"


def writeAll(fd: int, data: bytes | memoryview) -> None:
    """
    Write all of C{data} to C{fd}, looping over short writes.
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class ShortRead(FramesError):
    """
    The file shrank while it was being sent.
    """


def readExact(fd: int, offset: int, n: int) -> bytes:
    """
    Read exactly C{n} bytes at C{offset}.

    @raise ShortRead: if the file ends first.
    """
    data = os.pread(fd, n, offset)
    if len(data) < n:
        parts = [data]
        got = len(data)
        while got < n:
            more = os.pread(fd, n - got, offset + got)
            if not more:
                raise ShortRead(ErrorCode.IO_ERROR, "the file shrank while being read")
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


def hashPrefix(fd: int, length: int, hasher: Any, chunk: int = 4 * READ_CHUNK) -> None:
    """
    Feed the first C{length} bytes of C{fd} to C{hasher} (blocking: run it
    in a worker thread).
    """
    pos = 0
    while pos < length:
        n = min(chunk, length - pos)
        hasher.update(readExact(fd, pos, n))
        pos += n


#: The hashes a transfer may be verified with, by their name on the wire,
#: fastest first: the order a client prefers them in, and the greeting's
#: C{hashes}.  BLAKE3 runs about three times as fast as SHA-256 on one core
#: here; its own threads (C{max_threads}) buy nothing on 1 MiB chunks with
#: both ends of a transfer sharing two cores, so it hashes on the calling
#: (worker) thread only.  Every digest is the hash's standard 32-byte output.
HASHES: dict[str, Callable[[], Any]] = {
    "blake3": blake3.blake3,
    "sha256": hashlib.sha256,
}
#: The hash of a request (or a server) that names none: the only one of the
#: protocol as first published, carried in the C{sha256} field.
DEFAULT_HASH = "sha256"
#: How messages for people name each hash.
HASH_TITLES = {"blake3": "BLAKE3", "sha256": "SHA-256"}


def newHash(name: str = DEFAULT_HASH) -> Any:
    """
    @param name: a key of L{HASHES}.
    @return: a fresh hash object of that kind (C{update}, C{hexdigest},
        and C{name}, its name on the wire).
    @raise KeyError: for a name not in L{HASHES}.
    """
    return HASHES[name]()


def chooseHash(greeting: dict[str, Any], forced: str | None = None) -> str:
    """
    The transfer hash to use with a server: C{forced} if given, else the
    first of L{HASHES} (fastest first) that the greeting's C{hashes} lists.
    A greeting without C{hashes} (a server of before the negotiation)
    offers SHA-256 only.

    @raise ValueError: if C{forced} is not a hash this client has.
    @raise FramesError: C{unsupported_hash} if the server does not offer
        C{forced}.
    """
    offered = greeting.get("hashes")
    if not isinstance(offered, list):
        offered = [DEFAULT_HASH]
    if forced is not None:
        checkKnown(forced)
        if forced not in offered:
            names = ", ".join(str(n) for n in offered)
            raise FramesError(
                ErrorCode.UNSUPPORTED_HASH,
                f"the server does not offer hash {forced} (it has {names})",
                hash=forced,
                hashes=offered,
            )
        return forced
    for name in HASHES:
        if name in offered:
            return name
    # A server offering only hashes this client does not know still
    # verifies SHA-256, the protocol's first hash, without being asked.
    return DEFAULT_HASH


def checkKnown(name: str) -> None:
    """
    @raise ValueError: if C{name} is not a hash this client has.
    """
    if name not in HASHES:
        raise ValueError(f"unknown hash {name!r} (this client has {', '.join(HASHES)})")


def hashFields(name: str, digest: str | None = None) -> dict[str, str]:
    """
    The request fields naming a transfer's hash (and carrying its digest):
    SHA-256 in the first protocol's way (C{sha256} only), so that servers
    of before the negotiation understand it; any other by C{hash} and
    C{digest}.
    """
    if name == DEFAULT_HASH:
        return {} if digest is None else {"sha256": digest}
    if digest is None:
        return {"hash": name}
    return {"hash": name, "digest": digest}


def withDigest(header: dict[str, Any], name: str, digest: str) -> dict[str, Any]:
    """
    A transfer's result: the server's final reply, with C{hash} and
    C{digest} whichever way the server sent them.
    """
    return {**header, "hash": name, "digest": digest}


def joinRemote(*parts: str) -> str:
    """
    Join remote path parts with C{/}, ignoring empty ones.
    """
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def closeQuietly(fd: int | None) -> None:
    """
    Close C{fd}, ignoring errors (used on error paths only).
    """
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
