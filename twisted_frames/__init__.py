# -*- test-case-name: tests.test_layout -*-
"""
twisted-frames: a length-prefixed "JSON header + body" protocol on Twisted.

Every message is two frames (4-byte big-endian length, then the bytes): a
UTF-8 JSON header, then a body.  See C{docs/protocol.md} for the wire format.
"""

from .client import FramesClient, Reply, connect
from .protocol import BodySink, BufferSink, DiscardSink, FrameProtocol, IBodySource
from .server import FramesServerFactory, Operation, Request, Service, operation
from .wire import ErrorCode, FramesError, Limits, ProtocolViolation

__version__ = "0.1.0"

__all__ = [
    "BodySink",
    "BufferSink",
    "DiscardSink",
    "ErrorCode",
    "FrameProtocol",
    "FramesClient",
    "FramesError",
    "FramesServerFactory",
    "IBodySource",
    "Limits",
    "Operation",
    "ProtocolViolation",
    "Reply",
    "Request",
    "Service",
    "connect",
    "operation",
]
