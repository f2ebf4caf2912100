"""
Command service benchmarks, on loopback, with baselines measured in the
same run.

    python bench/bench_commands.py [--quick] [--json FILE]

The server (a C{FramesServerFactory} with the C{CommandService}, allowing
C{true} and C{cat}) runs in a subprocess, so that on a small machine client
and server each get a core; it drops log events below C{warn}.

1. C{run -- true} round trips over one connection: the public client
   library (C{twisted_frames.commands.client.run}) runs C{true} again and
   again for a fixed time.  Baselines, same run, same machine:
     - C{subprocess.run(["true"])} in a loop: the floor (one fork + exec +
       wait, no network, no server);
     - C{reactor.spawnProcess} of C{setsid true} in a loop, in this process:
       the spawning machinery the server uses, without the protocol.
   Also the C{frames run -- true} command line end to end (a new Python
   process per run) against C{frames --version} (the interpreter start-up
   and imports alone).

2. C{cat} throughput, 1 GiB through stdin and back:
     - C{head -c 1GiB /dev/zero | frames run -- cat | wc -c} (the CLI)
       against C{head -c 1GiB /dev/zero | cat | wc -c} (local, the floor);
     - the client library in this process (stdin from an in-memory
       generator, stdout counted), same size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Benchmark the checkout this file is in, not whatever is installed.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.protocol import ProcessProtocol  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure  # noqa: E402

import twisted  # noqa: E402
from twisted_frames.client import connect  # noqa: E402
from twisted_frames.commands.client import run  # noqa: E402
from twisted_frames.commands.process import sessionLauncher  # noqa: E402

GiB = 1024 * 1024 * 1024
CHUNK = 256 * 1024


def serverMain(root: str) -> None:
    """
    The server subprocess: print the port, serve until stdin closes.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Protocol

    from twisted_frames.commands.service import CommandService
    from twisted_frames.commands.spec import CommandLimits, resolveCommand
    from twisted_frames.server import FramesServerFactory

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    service = CommandService(
        reactor,
        root,
        [resolveCommand("true"), resolveCommand("cat")],
        CommandLimits(timeout=600, maxTimeout=600, maxOutput=4 * GiB),
    )
    port = reactor.listenTCP(0, FramesServerFactory([service]), interface="127.0.0.1")  # type: ignore[attr-defined]

    class ExitOnStdinClosed(Protocol):
        def connectionLost(self, reason: Failure | None = None) -> None:
            service.stopService().addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    stdio.StandardIO(ExitOnStdinClosed())
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def startServer(root: str) -> tuple[subprocess.Popen[bytes], int]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def stopServer(server: subprocess.Popen[bytes]) -> None:
    assert server.stdin is not None
    server.stdin.close()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def latencies(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "runs": len(samples),
        "median_ms": statistics.median(samples) * 1000,
        "p90_ms": samples[int(len(samples) * 0.9)] * 1000,
        "runs_per_s": len(samples) / sum(samples),
    }


def subprocessLoop(duration: float) -> dict[str, float]:
    samples = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t = time.perf_counter()
        subprocess.run(["true"], check=True)
        samples.append(time.perf_counter() - t)
    return latencies(samples)


class _Waiter(ProcessProtocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(None)


async def spawnLoop(reactor: Any, duration: float, cwd: str) -> dict[str, float]:
    launcher = sessionLauncher()
    true = shutil.which("true")
    assert true is not None
    samples = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t = time.perf_counter()
        waiter = _Waiter()
        argv = [*launcher, true]
        reactor.spawnProcess(waiter, argv[0], argv, env={"PATH": "/usr/bin:/bin"}, path=cwd)
        await waiter.done
        samples.append(time.perf_counter() - t)
    return latencies(samples)


async def framesLoop(reactor: Any, port: int, duration: float) -> dict[str, float]:
    client = await connect(reactor, f"127.0.0.1:{port}")
    samples = []
    try:
        for _ in range(20):
            await run(client, ["true"])
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            t = time.perf_counter()
            result = await run(client, ["true"])
            samples.append(time.perf_counter() - t)
            assert result.exit == 0
    finally:
        await client.close()
    return latencies(samples)


def cliTimes(port: int, args: list[str], repeats: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "twisted_frames", "--server", f"127.0.0.1:{port}", *args],
            check=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        samples.append(time.perf_counter() - t)
    return {"runs": repeats, "median_ms": statistics.median(samples) * 1000}


def pipeline(size: int, middle: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t = time.perf_counter()
    out = subprocess.run(
        ["sh", "-c", f"head -c {size} /dev/zero | {middle} | wc -c"],
        check=True,
        capture_output=True,
        env=env,
    ).stdout
    elapsed = time.perf_counter() - t
    assert int(out) == size, (out, size)
    return {"bytes": size, "seconds": elapsed, "MiB_per_s": size / elapsed / 2**20}


class _Zeros:
    """
    C{size} bytes of stdin, handed out in chunks, without a file.
    """

    def __init__(self, size: int) -> None:
        self.remaining = size
        self._block = bytes(CHUNK)

    def read1(self, n: int) -> bytes:
        n = min(n, self.remaining, CHUNK)
        self.remaining -= n
        return self._block[:n]


async def libraryCat(reactor: Any, port: int, size: int) -> dict[str, float]:
    client = await connect(reactor, f"127.0.0.1:{port}")
    received = 0

    def count(data: bytes) -> None:
        nonlocal received
        received += len(data)

    try:
        t = time.perf_counter()
        result = await run(client, ["cat"], stdin=_Zeros(size), onStdout=count, reactor=reactor)
        elapsed = time.perf_counter() - t
    finally:
        await client.close()
    assert result.exit == 0 and received == size, (result, received)
    return {"bytes": size, "seconds": elapsed, "MiB_per_s": size / elapsed / 2**20}


async def benchmark(reactor: Any, options: argparse.Namespace) -> dict[str, Any]:
    duration = 2.0 if options.quick else 8.0
    size = (256 * 1024 * 1024) if options.quick else GiB
    root = tempfile.mkdtemp(prefix="bench-commands-")
    server, port = startServer(root)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "twisted": twisted.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "reactor": type(reactor).__name__,
        }
    }
    try:
        print(f"run -- true, sequential, {duration:g} s each", flush=True)
        floor = subprocessLoop(duration)
        print(f"  subprocess.run(['true'])        {fmt(floor)}", flush=True)
        spawn = await spawnLoop(reactor, duration, root)
        print(f"  reactor.spawnProcess(setsid true) {fmt(spawn)}", flush=True)
        frames = await framesLoop(reactor, port, duration)
        print(f"  frames run over 1 connection    {fmt(frames)}", flush=True)
        results["true"] = {"subprocess_run": floor, "spawnProcess": spawn, "frames": frames}
        results["true"]["frames_vs_subprocess"] = frames["runs_per_s"] / floor["runs_per_s"]
        cliRuns = 5 if options.quick else 15
        cliTrue = cliTimes(port, ["run", "--", "true"], cliRuns)
        cliStart = cliTimes(port, ["--version"], cliRuns)
        print(
            f"  CLI frames run -- true: median {cliTrue['median_ms']:.1f} ms per invocation; "
            f"frames --version (start-up alone): {cliStart['median_ms']:.1f} ms",
            flush=True,
        )
        results["true"]["cli"] = {"run_true": cliTrue, "startup": cliStart}

        print(f"cat, {size / 2**20:.0f} MiB through stdin and back", flush=True)
        local = pipeline(size, "cat")
        print(f"  local:   head | cat | wc              {tput(local)}", flush=True)
        cli = pipeline(size, f"{sys.executable} -m twisted_frames -s 127.0.0.1:{port} run -- cat")
        print(f"  remote:  head | frames run -- cat | wc {tput(cli)}", flush=True)
        lib = await libraryCat(reactor, port, size)
        print(f"  library: run(['cat'], stdin=...)     {tput(lib)}", flush=True)
        results["cat"] = {
            "local": local,
            "cli": cli,
            "library": lib,
            "cli_vs_local": cli["MiB_per_s"] / local["MiB_per_s"],
        }
    finally:
        stopServer(server)
        shutil.rmtree(root, ignore_errors=True)
    return results


def fmt(r: dict[str, float]) -> str:
    return (
        f"{r['runs_per_s']:8.1f} runs/s  median {r['median_ms']:.2f} ms  "
        f"p90 {r['p90_ms']:.2f} ms  ({r['runs']} runs)"
    )


def tput(r: dict[str, float]) -> str:
    return f"{r['MiB_per_s']:8.1f} MiB/s  ({r['seconds']:.2f} s)"


def main(argv: list[str] | None = None) -> None:
    """
    Run the benchmarks, print a report, optionally write JSON.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 256 MiB for cat")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--serve", metavar="ROOT", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        serverMain(options.serve)
        return

    async def go(reactor: Any) -> None:
        results = await benchmark(reactor, options)
        if options.json:
            Path(options.json).write_text(json.dumps(results, indent=2) + "\n")

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main()
