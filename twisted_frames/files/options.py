# -*- test-case-name: tests.test_tap -*-
"""
The file service's C{twistd frameserver} options, and the service built
from them (its entry in L{twisted_frames.tap.SERVICES}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import TimerService
from twisted.logger import Logger

from ..bounds import bounded
from ..monitoring import metricsOf
from ..services import Built, ServiceEntry

#: Seconds an interrupted upload is kept by default: a day.
DEFAULT_PARTIAL_TTL = 24 * 3600
#: The longest pause between two sweeps of expired partial uploads.
EXPIRY_INTERVAL = 3600
#: Seconds between two counts of the partial uploads, for C{--metrics}.
PARTIAL_SWEEP_INTERVAL = 60.0

log = Logger(namespace="twisted_frames.files")


class FileOptions:
    """
    The file service's options, as a mix-in for C{usage.Options}; the root
    it serves is the shared C{--root}.
    """

    optParameters = [
        [
            "partial-ttl",
            None,
            DEFAULT_PARTIAL_TTL,
            "Seconds an interrupted upload is kept for resuming before it is deleted.",
            bounded("--partial-ttl", 1, 10 * 365 * 24 * 3600),
        ],
    ]


def buildFiles(config: Any, reactor: Any) -> Built:
    """
    The file service over C{--root}, and the timer that deletes expired
    partial uploads.
    """
    from .service import FileService

    files = FileService(
        os.path.abspath(config["root"]), partialTTL=float(config["partial-ttl"]), clock=reactor
    )
    expiry = TimerService(min(config["partial-ttl"], EXPIRY_INTERVAL), files.expirePartials)
    expiry.clock = reactor
    children = [expiry]
    metrics = metricsOf(config)
    if metrics is not None:
        # Every sweep reports what it found; a failed one reports nothing.
        def sweep() -> Any:
            d = files.countPartials()
            d.addCallbacks(
                lambda found: metrics.partialUploadsFound(*found),
                lambda f: log.failure("counting partial uploads failed", f),
            )
            return d

        counting = TimerService(PARTIAL_SWEEP_INTERVAL, sweep)
        counting.clock = reactor
        children.append(counting)
    return Built(services=[files], children=children)


FILES = ServiceEntry("files", FileOptions, buildFiles)
