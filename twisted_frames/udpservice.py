# -*- test-case-name: tests.test_tap -*-
"""
The UDP echo of C{twistd frameserver}: its options, and the twistd service
that listens (its entry in L{twisted_frames.tap.SERVICES}).  The echo
itself, server and client, is L{twisted_frames.udp}.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.logger import Logger

from .bounds import bounded
from .monitoring import metricsOf
from .services import Built, ServiceEntry

DEFAULT_UDP = 8007

# The namespace of the lines twistd frameserver logs at start-up.
log = Logger(namespace="twisted_frames.tap")


class UDPOptions:
    """
    The UDP echo's options, as a mix-in for C{usage.Options}.
    """

    optFlags = [
        ["udp-upper", None, "UDP echo replies in upper case, like the classic example."],
    ]

    optParameters = [
        ["udp", "u", DEFAULT_UDP, "UDP echo port (0 disables).", bounded("--udp", 0, 65535)],
        ["udp-interface", None, "127.0.0.1", "Address the UDP echo binds to."],
        [
            "udp-max",
            None,
            8192,
            "Largest UDP datagram echoed; bigger ones are dropped and counted.",
            bounded("--udp-max", 1, 65507),
        ],
        [
            "udp-rate",
            None,
            50,
            "UDP datagrams per second allowed per source address.",
            bounded("--udp-rate", 1, 1_000_000),
        ],
    ]


def buildUDP(config: Any, reactor: Any) -> Built:
    """
    The UDP echo port, unless C{--udp 0}: no frames service, one twistd
    child.
    """
    if not config["udp"]:
        return Built()
    echo = _UDPService(
        reactor,
        config["udp"],
        config["udp-interface"],
        upper=config["udp-upper"],
        maxDatagram=config["udp-max"],
        rate=float(config["udp-rate"]),
        metrics=metricsOf(config),
    )
    # A worker of --workers serves on its main process's socket.
    echo.adopted = config.get("udp-adopted")
    return Built(children=[echo])


UDP = ServiceEntry("udp", UDPOptions, buildUDP)


class _UDPService(service.Service):
    """
    The UDP echo port, as a service.
    """

    def __init__(self, reactor: Any, port: int, interface: str, **kwargs: Any) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.kwargs = kwargs
        self.listening: Any = None
        #: C{(descriptor, family)} of a socket to serve on instead of
        #: binding one.
        self.adopted: tuple[int, int] | None = None

    def privilegedStartService(self) -> None:
        from .udp import listenEcho

        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.adopted is not None:
            from .udp import EchoProtocol
            from .workers import adoptDatagram

            proto = EchoProtocol(**self.kwargs)
            self.listening = adoptDatagram(self.reactor, *self.adopted, proto, proto.readSize)
        else:
            self.listening = listenEcho(self.reactor, self.port, self.interface, **self.kwargs)
        address = self.listening.getHost()
        log.info("udp echo listening on {host}:{port}", host=address.host, port=address.port)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.listening is None:
            self.privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        listening, self.listening = self.listening, None
        if listening is not None:
            return listening.stopListening()
        return None
