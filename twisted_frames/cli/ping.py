# -*- test-case-name: tests.cli.test_cli -*-
"""
C{frames ping} and C{frames udp-echo}.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..printable import printable
from .base import EXIT_OK, EXIT_REMOTE, EXIT_TIMEOUT, UI, _nonNegative, _positive, openClient


async def _ping(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    client = await openClient(reactor, args)
    try:
        payload = os.urandom(args.size) if args.size else b""
        greeting = client.greeting
        rtts = []
        for _ in range(args.count):
            started = time.perf_counter()
            echoed = await client.ping(payload).addTimeout(args.timeout, reactor)
            rtts.append((time.perf_counter() - started) * 1000)
            if echoed != payload:
                ui.error(ECHO_DIFFERS)
                return EXIT_REMOTE
        reportPong(ui, greeting, len(payload), rtts)
        return EXIT_OK
    finally:
        await client.close()


def reportPong(ui: UI, greeting: dict[str, Any], size: int, rtts: list[float]) -> None:
    """
    Print the result of C{frames ping}: C{rtts}, the round-trip times in
    milliseconds of echoes of C{size} bytes from the server that greeted
    with C{greeting}.
    """
    best, worst = min(rtts), max(rtts)
    server = printable(str(greeting.get("server")))
    ui.result(
        f"pong from {server} (protocol {greeting.get('protocol')} "
        f"v{greeting.get('version')}): {size} bytes, "
        + (
            f"time={rtts[0]:.2f} ms"
            if len(rtts) == 1
            else f"{len(rtts)} round trips, min/avg/max = {best:.2f}/"
            f"{sum(rtts) / len(rtts):.2f}/{worst:.2f} ms"
        ),
        {
            "ok": True,
            "server": greeting.get("server"),
            "version": greeting.get("version"),
            "bytes": size,
            "count": len(rtts),
            "rtt_ms": rtts,
        },
    )


#: What C{frames ping} says when the echo is not what it sent.
ECHO_DIFFERS = "ping: the echoed body differs from what was sent"


async def _udpEcho(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    from ..client import parseServer
    from ..udp import EchoTimeout, udpEcho

    host, port = parseServer(args.server)
    if args.port is not None:
        port = args.port
    message = args.message.encode("utf-8")
    started = time.perf_counter()
    try:
        reply = await udpEcho(
            reactor, host, port, message, timeout=args.udp_timeout, retries=args.retries
        )
    except EchoTimeout as e:
        ui.error(f"udp-echo: {e}", {"code": "timeout", "message": str(e)})
        return EXIT_TIMEOUT
    elapsed = (time.perf_counter() - started) * 1000
    text = reply.decode("utf-8", "replace")
    ui.result(
        text,
        {"ok": True, "reply": text, "bytes": len(reply), "sent": len(message), "rtt_ms": elapsed},
    )
    return EXIT_OK


def register(sub: Any) -> None:
    """
    Add C{ping} and C{udp-echo} to the C{frames} subcommands C{sub}.
    """
    p = sub.add_parser("ping", help="check the server is alive (echoes a body)")
    p.add_argument("--size", type=_nonNegative, default=0, help="body size in bytes (random)")
    p.add_argument("-c", "--count", type=_positive, default=1, help="round trips to make")
    p.set_defaults(run=_ping)

    u = sub.add_parser("udp-echo", help="send one UDP datagram to the echo service")
    u.add_argument("message", help="text to send (UTF-8)")
    u.add_argument("--port", type=int, default=None, help="UDP port (default: the server's)")
    u.add_argument(
        "--udp-timeout", type=float, default=1.0, help="seconds to wait for each try (default 1)"
    )
    u.add_argument("--retries", type=_nonNegative, default=3, help="re-sends on loss (default 3)")
    u.set_defaults(run=_udpEcho)
