"""
What C{--metrics} costs the hot path: ping round trips on one connection
to a server with metrics on against the same server with metrics off, in
one run.

    python bench/bench_metrics.py [--rounds 15] [--window 1] [--json FILE]
                                  [--baseline DIR]

Two server processes are built exactly as C{twistd frameserver} builds
them (L{twisted_frames.tap.Options} and C{makeService}, listening on
C{tcp:0} on loopback; one with C{--metrics tcp:0:interface=127.0.0.1}), and
run their own reactor; each drops log events below C{warn}, as a
deployment writing its request lines somewhere cheap would (the request
event is still built).  This process is the client: one blocking socket per
server, sequential pings with a 16-byte body, so the client adds as little
as it can to what is measured.

Windows of C{--window} seconds rotate between the servers, in C{--rounds}
rounds (each round starting with the next server), so that load from
elsewhere on the machine falls on all alike.  Per round: the rate
with metrics on over the rate with metrics off; the report gives the
median ratio and its range, and the server CPU time per round trip (from
C{/proc/PID/stat}, less disturbed by other load) for both.  The goal
(issue 13): metrics on costs at most 5% of the round trips, a median ratio
of at least 0.95.  Machine facts and every window go to the JSON file.

On a machine shared with other work the window rates scatter by tens of
percent between two identical servers, so the run also times the hook
itself in this process (L{Metrics.requestFinished}, what metrics add to
each request; the per-connection hooks run once per connection) and gives
it as a share of the server CPU time of a round trip with metrics off: a figure
that other load disturbs much less.

C{--baseline DIR} adds a third server, from another checkout (e.g. C{git
archive main | tar -x -C DIR}), with metrics off (it need not know
C{--metrics}) in the same rotation: the ratio of this checkout with metrics
off to it says what the hooks cost when metrics are off.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Benchmark the checkout this file is in (or, in a baseline server, the one
# it is told), not whatever is installed.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_METRICS_REPO", str(REPO)))

from twisted_frames import wire  # noqa: E402

BODY = b"0123456789abcdef"
GOAL = 0.95


def serverMain(metrics: bool) -> None:
    """
    Run one server (the child process): print its frames port, serve until
    stdin closes.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Protocol
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from twisted_frames import tap

    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    args = ["--root", tempfile.mkdtemp(), "--listen", "tcp:0:interface=127.0.0.1", "--udp", "0"]
    if metrics:
        args += ["--metrics", "tcp:0:interface=127.0.0.1"]
    options = tap.Options()
    options.parseOptions(args)
    top = tap.makeService(options, reactor)
    top.privilegedStartService()
    top.startService()
    listening = [s for s in top if hasattr(s, "_waitingForPort")]

    def started(port: Any) -> None:
        sys.stdout.write(f"{port.getHost().port}\n")
        sys.stdout.flush()

    listening[-1]._waitingForPort.addCallback(started)

    class Quit(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()  # type: ignore[attr-defined]

    stdio.StandardIO(Quit())
    reactor.run()  # type: ignore[attr-defined]


class Server:
    """
    A server child process and a connection to it.
    """

    def __init__(self, metrics: bool, name: str, repo: Path = REPO) -> None:
        env = dict(os.environ, PYTHONPATH=str(repo), BENCH_METRICS_REPO=str(repo))
        self.metrics = metrics
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", "on" if metrics else "off"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("bench_metrics: a server did not start")
        self.sock = socket.create_connection(("127.0.0.1", int(line)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.recv(self.readLength())  # the greeting's header
        self.recv(self.readLength())  # and its (empty) body
        self.rid = 0

    def recv(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise SystemExit("bench_metrics: a server closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def readLength(self) -> int:
        (length,) = wire.PREFIX.unpack(self.recv(4))
        return int(length)

    def cpu(self) -> float:
        """
        @return: the CPU seconds the server process has used.
        """
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def window(self, seconds: float) -> dict[str, float]:
        """
        Ping sequentially for C{seconds}.

        @return: round trips, their rate, and server CPU per round trip.
        """
        sock = self.sock
        count = 0
        cpu = self.cpu()
        start = time.perf_counter()
        end = start + seconds
        while True:
            self.rid += 1
            sock.sendall(wire.encodeMessage({"op": "ping", "id": self.rid}, BODY))
            header = self.recv(self.readLength())
            body = self.recv(self.readLength())
            if body != BODY or b'"ok":true' not in header.replace(b" ", b""):
                raise SystemExit(f"bench_metrics: bad reply {header!r}")
            count += 1
            if count % 64 == 0 and time.perf_counter() >= end:
                break
        took = time.perf_counter() - start
        used = self.cpu() - cpu
        return {"roundTrips": count, "rate": count / took, "cpuPerRoundTrip": used / count}

    def close(self) -> None:
        self.sock.close()
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def machine() -> dict[str, Any]:
    """
    What the figures were measured on.
    """
    from importlib.metadata import version

    import prometheus_client  # noqa: F401 (its version, from the installed metadata)

    import twisted

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "prometheus_client": version("prometheus-client"),
        "cpus": os.cpu_count(),
        "cpu": model,
        "loadavg": os.getloadavg(),
    }


def spread(values: list[float]) -> dict[str, float]:
    """
    @return: the median and range of C{values}.
    """
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def benchmark(rounds: int, window: float, baseline: Path | None) -> dict[str, Any]:
    """
    Rotate windows between the servers and summarise.
    """
    servers = [Server(False, "off"), Server(True, "on")]
    if baseline is not None:
        servers.append(Server(False, "baseline", baseline))
    try:
        for server in servers:
            server.window(min(window, 1.0))  # warm-up
        windows = []
        for n in range(rounds):
            # Each round starts with the next server, so none is always first.
            order = servers[n % len(servers) :] + servers[: n % len(servers)]
            windows.append({s.name: s.window(window) for s in order})
    finally:
        for server in servers:
            server.close()
    names = [s.name for s in servers]

    def ratios(a: str, b: str, key: str) -> dict[str, float]:
        return spread([w[a][key] / w[b][key] for w in windows])

    results: dict[str, Any] = {
        "windows": windows,
        "ratio": ratios("on", "off", "rate"),
        "cpuRatio": ratios("on", "off", "cpuPerRoundTrip"),
        "rate": {n: statistics.median(w[n]["rate"] for w in windows) for n in names},
        "cpuPerRoundTripMicroseconds": {
            n: statistics.median(w[n]["cpuPerRoundTrip"] for w in windows) * 1e6 for n in names
        },
    }
    if baseline is not None:
        results["offVsBaseline"] = ratios("off", "baseline", "rate")
        results["offVsBaselineCpu"] = ratios("off", "baseline", "cpuPerRoundTrip")
    return results


def hookCost(count: int = 200_000) -> float:
    """
    @return: the seconds one L{Metrics.requestFinished} call takes, best
        of 5 runs of C{count} calls (the export it leads to runs once a
        second, not per request).
    """
    from twisted_frames.metrics import Metrics

    metrics = Metrics(["ping"])
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(count):
            metrics.requestFinished("ping", "ok", 0.00005, 16, 16)
        best = min(best, (time.process_time() - start) / count)
        metrics.flush()
    return best


def main(argv: list[str] | None = None) -> None:
    """
    Run the benchmark (or, with C{--serve}, be one of its servers).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="rounds of windows (default 15)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout to compare metrics off with"
    )
    parser.add_argument("--serve", choices=["on", "off"], help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        serverMain(options.serve == "on")
        return
    facts = machine()
    results = benchmark(options.rounds, options.window, options.baseline)
    results["hookSeconds"] = hook = hookCost()
    results["hookShare"] = share = hook / (results["cpuPerRoundTripMicroseconds"]["off"] / 1e6)
    ratio = results["ratio"]
    print(
        f"machine: {facts['cpus']} CPUs, {facts['cpu'] or facts['platform']}, "
        f"Python {facts['python']}, Twisted {facts['twisted']}, "
        f"prometheus_client {facts['prometheus_client']}, load {facts['loadavg'][0]:.2f}"
    )
    print(
        f"ping, 1 connection, 16-byte body, {options.rounds} rounds of {options.window:g} s "
        "windows, rotating"
    )
    for side in results["rate"]:
        print(
            f"  {'metrics ' + side if side != 'baseline' else 'baseline':11}: "
            f"{results['rate'][side]:9.0f} round trips/s (median), "
            f"server CPU {results['cpuPerRoundTripMicroseconds'][side]:.1f} us/round trip"
        )
    cpu = results["cpuRatio"]
    print(
        f"  on/off rate ratio: median {ratio['median']:.3f} "
        f"(range {ratio['min']:.3f}-{ratio['max']:.3f}); "
        f"server CPU ratio: median {cpu['median']:.3f} ({cpu['min']:.3f}-{cpu['max']:.3f})"
    )
    verdict = "meets" if ratio["median"] >= GOAL else "MISSES"
    print(f"  goal: ratio >= {GOAL}: {verdict}")
    print(
        f"  the per-request hook: {hook * 1e6:.2f} us, {share:.1%} of the server CPU of a "
        "round trip with metrics off"
    )
    if "offVsBaseline" in results:
        base, baseCpu = results["offVsBaseline"], results["offVsBaselineCpu"]
        print(
            f"  off/baseline rate ratio: median {base['median']:.3f} "
            f"(range {base['min']:.3f}-{base['max']:.3f}); server CPU ratio: median "
            f"{baseCpu['median']:.3f} ({baseCpu['min']:.3f}-{baseCpu['max']:.3f})"
        )
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"machine": facts, "goal": GOAL, **results}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
