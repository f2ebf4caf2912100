"""
Helpers for tests over real loopback TCP.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import task

from twisted_frames.server import FramesServerFactory, ServerProtocol


def recordConnections(factory: FramesServerFactory) -> list[ServerProtocol]:
    """
    Make C{factory} append each server protocol it builds to the returned
    list, so that a test can look at the server side of its connections.
    """
    connections: list[ServerProtocol] = []
    build = factory.buildProtocol

    def record(addr: Any) -> ServerProtocol:
        protocol = build(addr)
        connections.append(protocol)
        return protocol

    factory.buildProtocol = record  # type: ignore[method-assign]
    return connections


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """
    Wait (bounded) on the running reactor until C{condition()} is true,
    checking every 10 ms.

    @raise AssertionError: if it is still false after C{timeout} seconds.
    """
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.01, lambda: None)


def openFilesOf(path: str) -> int:
    """
    How many of this process's descriptors are open on C{path} (Linux:
    read from C{/proc/self/fd}).
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                count += 1
        except OSError:
            continue
    return count
