# -*- test-case-name: tests.test_layout -*-
"""
twisted-frames: a length-prefixed "JSON header + body" protocol on Twisted.

Every message is two frames (4-byte big-endian length, then the bytes): a
UTF-8 JSON header, then a body.  See C{docs/protocol.md} for the wire format.

The public names are imported when first used (PEP 562 C{__getattr__}), so
that importing a submodule, such as the C{frames} client's
L{twisted_frames.cli}, does not load the server side.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    """
    Import a public name from the module that defines it, on first use.

    @raise AttributeError: for a name that is not public.
    """
    # One import statement per module (not importlib with a string), so
    # that tests/test_layout.py's import graph still sees these imports.
    module: ModuleType
    if name in ("FramesClient", "Reply", "connect"):
        from . import client as module
    elif name in ("BodySink", "BufferSink", "DiscardSink", "FrameProtocol", "IBodySource"):
        from . import protocol as module  # type: ignore[no-redef]
    elif name in ("FramesServerFactory", "Operation", "Request", "Service", "operation"):
        from . import server as module  # type: ignore[no-redef]
    elif name in ("ErrorCode", "FramesError", "Limits", "ProtocolViolation"):
        from . import wire as module  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    # Cached, so that the next lookup does not come here.
    globals()[name] = value
    return value
