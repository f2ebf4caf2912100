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

from twisted.python import usage

from .security import isLocalEndpoint
from .services import Built, ServiceEntry

if TYPE_CHECKING:
    from twisted.application.service import IService

    from .metrics import Metrics
    from .server import FramesServerFactory
    from .workers import Supervisor

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
            "e.g. tcp:9108:interface=127.0.0.1; with --workers N, the main process "
            "serves the sum over its workers. Default: off. 'worker': record "
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
    With C{--metrics}: the L{Metrics} the other services count into, put
    in C{config["metricsRecorder"]} so that the entries built after this
    one find it; C{None} there without.  Its timer and web endpoint need
    the server's factory: see L{monitoringServices}.
    """
    config["metricsRecorder"] = None
    if config["metrics"] is not None:
        from .metrics import Metrics

        config["metricsRecorder"] = Metrics()
    return Built()


def metricsOf(config: Any) -> Metrics | None:
    """
    @return: the L{Metrics} of a server being built, or C{None} (metrics
        off, or built without L{buildMetrics}).
    """
    return config.get("metricsRecorder")  # type: ignore[no-any-return]


def monitoringServices(config: Any, reactor: Any, factory: FramesServerFactory) -> list[IService]:
    """
    The twistd services of C{--metrics} for the server of C{factory}
    (none without it): the web endpoint (unless C{worker}), whose
    C{/healthz} says 503 once the factory shuts down and which stops
    listening once the connections are closed; and the timer exporting
    the counts, which flushes a last time once they are.  The tap makes
    them the first children, so that they are the last stopped.

    @raise SystemExit: if the endpoint string is bad.
    """
    metrics = metricsOf(config)
    if metrics is None:
        return []
    from .metrics import MetricsTimer, MetricsWebService

    metrics.setOperations(factory.operations)
    children: list[IService] = []
    if config["metrics"] != WORKER:
        children.append(
            MetricsWebService(
                _endpoint(config, reactor),
                metrics.registry,
                healthy=lambda: not factory.shuttingDown,
                drained=factory.shutDown,
            )
        )
    children.append(MetricsTimer(metrics, reactor, drained=factory.shutDown))
    return children


def _endpoint(config: Any, reactor: Any) -> Any:
    """
    The endpoint of C{--metrics}.

    @raise SystemExit: if the endpoint string is bad.
    """
    from twisted.internet import endpoints

    try:
        return endpoints.serverFromString(reactor, config["metrics"])
    except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"twistd frameserver: bad --metrics {config['metrics']!r}: {e}") from None


def supervisorMonitoring(config: Any, reactor: Any, supervisor: Supervisor) -> IService | None:
    """
    The web endpoint of C{--metrics} in the main process of C{--workers N}
    (C{None} without C{--metrics}): C{/metrics} is the sum of the workers'
    values in L{Supervisor.metricsDir} (the main process counts nothing
    itself), C{/healthz} says 200 while a worker serves and the supervisor
    is not stopping, and the endpoint stays up, answering 503, until every
    worker has exited.

    @raise SystemExit: if the endpoint string is bad.
    """
    if config["metrics"] is None or config["metrics"] == WORKER:
        return None
    from .metrics import MetricsWebService, multiprocessRegistry

    return MetricsWebService(
        _endpoint(config, reactor),
        multiprocessRegistry(lambda: supervisor.metricsDir),
        healthy=supervisor.serving,
        drained=supervisor.whenStopped,
    )


#: The metrics options' entry in C{tap.SERVICES}: first, so that the
#: services built after it can count into its L{Metrics}.
METRICS = ServiceEntry("metrics", MetricsOptions, buildMetrics, MetricsOptions.metricsPostOptions)
