# -*- test-case-name: tests.test_metrics -*-
"""
The C{--metrics} options of C{twistd frameserver} (its entry in
L{twisted_frames.tap.SERVICES}), and the pieces built from them.

Nothing here imports C{prometheus_client}: L{twisted_frames.metrics} is
imported only when C{--metrics} is given, so a server without it neither
loads the library nor counts anything (every hook sees C{None}).

Like the main listener (L{twisted_frames.security}), the metrics endpoint
refuses to listen anywhere but loopback or a UNIX socket unless given
C{--metrics-insecure}: the metrics tell whoever reads them how busy the
server is, who fails to log in and how often, and C{/metrics} has no login.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.application.internet import TimerService
from twisted.python import usage

from .security import isLocalEndpoint
from .services import Built, ServiceEntry

if TYPE_CHECKING:
    from .metrics import Metrics, MetricsWebService
    from .server import FramesServerFactory

INSECURE_FLAG = "metrics-insecure"
#: The C{--metrics} value of a worker whose supervisor serves the metrics.
WORKER = "worker"


class MetricsOptions:
    """
    The metrics options, as a mix-in for C{usage.Options}.
    """

    optFlags = [
        [
            INSECURE_FLAG,
            None,
            "Allow --metrics on a non-loopback interface: anyone who can reach it "
            "can read the metrics (there is no login on /metrics).",
        ],
    ]

    optParameters = [
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics (/metrics) and a health check (/healthz: 200 "
            "while serving, 503 while shutting down) over HTTP on this endpoint, "
            "e.g. tcp:9108:interface=127.0.0.1. Default: off. 'worker': record "
            "metrics into $PROMETHEUS_MULTIPROC_DIR and serve none (for the "
            "workers of a supervisor that serves them).",
        ],
    ]

    def metricsPostOptions(self) -> None:
        """
        Check C{--metrics}.

        @raise usage.UsageError: on a non-loopback endpoint without
            C{--metrics-insecure}, or C{worker} without
            C{PROMETHEUS_MULTIPROC_DIR}.
        """
        checkMetricsOptions(self)


def checkMetricsOptions(config: Any) -> None:
    """
    The check of L{MetricsOptions} (see L{MetricsOptions.metricsPostOptions}).
    """
    endpoint = config["metrics"]
    if endpoint is None:
        return
    if endpoint == WORKER:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            raise usage.UsageError(
                "--metrics worker needs PROMETHEUS_MULTIPROC_DIR in the environment "
                "(set by the supervisor that serves the metrics)"
            )
        return
    if not isLocalEndpoint(endpoint) and not config[INSECURE_FLAG]:
        raise usage.UsageError(
            f"refusing to serve metrics on {endpoint}: it is not loopback, so anyone "
            "who can reach it could read them. Listen on 127.0.0.1 (e.g. "
            f"tcp:9108:interface=127.0.0.1), or pass --{INSECURE_FLAG} if you really "
            "mean it"
        )


def buildMetrics(config: Any, reactor: Any) -> Built:
    """
    With C{--metrics}: the L{Metrics} the other services count into (put in
    C{config["metricsRecorder"]}, so that the entries built after this one
    find it) and the timer sampling the process figures.  Without:
    C{config["metricsRecorder"]} is C{None} and nothing is built.
    """
    config["metricsRecorder"] = None
    if config["metrics"] is None:
        return Built()
    from .metrics import PROCESS_SAMPLE_INTERVAL, Metrics

    metrics = config["metricsRecorder"] = Metrics()
    sampler = TimerService(PROCESS_SAMPLE_INTERVAL, metrics.sampleProcess)
    sampler.clock = reactor
    return Built(children=[sampler])


def metricsOf(config: Any) -> Metrics | None:
    """
    @return: the L{Metrics} of a server being built, or C{None} (metrics
        off, or built without L{buildMetrics}).
    """
    return config.get("metricsRecorder")  # type: ignore[no-any-return]


def webService(
    config: Any, reactor: Any, factory: FramesServerFactory
) -> MetricsWebService | None:
    """
    The web endpoint of C{--metrics} for the server of C{factory}, or
    C{None} without one: C{/healthz} says 503 once the factory shuts down,
    and the endpoint stops listening once its connections are closed.

    @raise SystemExit: if the endpoint string is bad.
    """
    metrics = metricsOf(config)
    if metrics is None:
        return None
    metrics.setOperations(factory.operations)
    if config["metrics"] == WORKER:
        return None
    from twisted.internet import endpoints

    from .metrics import MetricsWebService

    try:
        endpoint = endpoints.serverFromString(reactor, config["metrics"])
    except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"twistd frameserver: bad --metrics {config['metrics']!r}: {e}") from None
    return MetricsWebService(
        endpoint,
        metrics.registry,
        healthy=lambda: not factory.shuttingDown,
        drained=factory.shutDown,
    )


#: The metrics options' entry in C{tap.SERVICES}: first, so that the
#: services built after it can count into its L{Metrics}.
METRICS = ServiceEntry("metrics", MetricsOptions, buildMetrics, MetricsOptions.metricsPostOptions)
