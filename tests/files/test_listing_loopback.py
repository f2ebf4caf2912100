"""
A large directory listed over real loopback TCP, with the real reactor and
real worker threads (pytest + pytest-twisted): the reactor thread keeps
turning while the listing is built.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest_twisted

from twisted_frames.client import connect
from twisted_frames.files.service import FileService
from twisted_frames.server import FramesServerFactory

#: Entries in the listed directory: enough that encoding them in one call
#: takes tens of milliseconds, few enough to create in well under a second.
ENTRIES = 30_000
#: Listings measured; the smallest of their longest stalls is compared, so
#: one stall from elsewhere (a garbage collection, the scheduler) cannot
#: decide the test.
LISTINGS = 3


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


#: Seconds between the reactor turns L{TickGaps} asks for: short against
#: the stalls it looks for, long enough that the reactor thread, waiting in
#: C{epoll} meanwhile, leaves the GIL to the worker thread.
TICK = 0.001


class TickGaps:
    """
    The longest time between two turns of the reactor loop, measured by a
    C{callLater} that re-schedules itself.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.longest = 0.0
        self._last = time.perf_counter()
        self._call = reactor.callLater(TICK, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        self._call = self.reactor.callLater(TICK, self._tick)

    def stop(self) -> float:
        """
        Stop measuring.

        @return: the longest gap, in seconds.
        """
        self._call.cancel()
        return self.longest


@pytest_twisted.ensureDeferred
async def test_listingDoesNotStallReactor(tmp_path: Any) -> None:
    """
    While a directory of L{ENTRIES} entries is listed, the reactor thread
    never waits for half as long as encoding that listing in one call
    takes: the scan, the sort and the encoding run in a worker thread, in
    batches that let the reactor thread take the GIL.  (Encoding on the
    reactor thread, or in one call from a worker thread, which holds the
    GIL as long, stalls it about that long on every listing.)
    """
    root = tmp_path / "root"
    big = root / "big"
    big.mkdir(parents=True)
    for i in range(ENTRIES):
        os.close(os.open(big / f"entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    service = FileService(str(root))
    # What one encoder call over this listing costs on this machine, now.
    entries, _ = service.root.listDir(["big"], "big")
    started = time.perf_counter()
    json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    oneCall = time.perf_counter() - started
    del entries

    port = _reactor().listenTCP(0, FramesServerFactory([service]), interface="127.0.0.1")
    client = await connect(_reactor(), f"127.0.0.1:{port.getHost().port}")
    try:
        stalls = []
        for _ in range(LISTINGS):
            gaps = TickGaps(_reactor())
            reply = await client.request("list", {"path": "big"})
            stalls.append(gaps.stop())
            assert reply.header["count"] == ENTRIES
        assert min(stalls) < oneCall / 2, (
            f"reactor stalled {min(stalls) * 1000:.0f} ms or more on every listing "
            f"(stalls {[round(s * 1000) for s in stalls]} ms; one encoder call "
            f"{oneCall * 1000:.0f} ms)"
        )
    finally:
        await client.close()
        await port.stopListening()
