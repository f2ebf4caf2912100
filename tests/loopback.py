"""
Helpers for tests over real loopback TCP.
"""

from __future__ import annotations

from typing import Any

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
