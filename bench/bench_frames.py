"""
Foundation benchmarks for twisted-frames, on loopback, with baselines
measured in the same run.

    python bench/bench_frames.py [--quick] [--cases receive,ping,tls] [--json FILE]

1. Receive throughput.  A sender process writes a pre-built byte stream with
   C{sendall} as fast as it can to a server listening on 127.0.0.1 (port 0) in
   this process.  Every receiver gets the I{identical} stream of
   twisted-frames messages (header frame + body frame):

     - C{FrameProtocol}, streaming each body to a counting L{BodySink} (the
       real streaming path, nothing buffered);
     - stock C{Int32StringReceiver} (C{MAX_LENGTH} raised), which sees the
       same stream as two frames per message;
     - a raw C{Protocol} that only counts bytes: the floor set by the reactor
       and the socket.

   The time is measured in the receiving process, from the first byte
   delivered to the last frame (or byte) delivered.  Two streams: one 64 MiB
   body, and 64 MiB as 1024 bodies of 64 KiB.

2. Ping round trips per second.  Each server runs in its own subprocess (so
   that, on a two-core machine, client and server each get a core); the
   clients run in this process and do sequential round trips with a 16-byte
   body, on 1 connection and on 50 concurrent connections.  Windows of a fixed
   length (after a short warm-up) alternate between the two systems, so that
   load from elsewhere falls on both alike; the CPU time both processes spent
   per round trip is reported beside the rates (in all, and the client's and
   the server's shares), as it is less disturbed by such load.
   twisted-frames: C{FramesServerFactory} and the public client library
   (C{connect}, C{FramesClient.ping}).  Baseline: a bare
   C{Int32StringReceiver} echo server, and an C{Int32StringReceiver} client
   that sends the next string from C{stringReceived}.  The windows go
   frames, bare, frames, bare, ... (5 of each by default); the ratio of each
   frames window to the bare window right after it is one sample, and the
   median of those samples, with their range, is the figure reported.

3. Ping over TLS, on 1 connection: the same alternating windows, with both
   servers behind Twisted's TLS (C{listenSSL}, C{TLSMemoryBIOProtocol}) and
   both clients through C{wrapClientTLS}, with the same mutual-TLS options
   (TLS 1.2 or newer, client certificate required) from the same
   certificates, made for the run by the project's own cert tooling
   (L{twisted_frames.certs}) in a temporary directory.

Every run prints the machine it ran on (CPU model, cores, load average at the
start and the end, Python, Twisted, OpenSSL and pyOpenSSL versions) and, with
C{--json}, writes it with every figure.

Both processes drop log events below C{warn}: the frames server still emits
its one info event per request (that cost is measured), but where the lines
would be written to is a deployment choice, not a protocol cost.  Helper
processes exit when this process closes their stdin, and are killed if they
do not.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Benchmark the checkout this file is in, not whatever is installed.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS  # noqa: E402
from twisted.internet.error import ProcessDone, ProcessTerminated  # noqa: E402
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import Int32StringReceiver, LineReceiver  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

import twisted  # noqa: E402
from twisted_frames import wire  # noqa: E402
from twisted_frames.client import connect  # noqa: E402
from twisted_frames.protocol import BodySink, FrameProtocol  # noqa: E402
from twisted_frames.server import FramesServerFactory  # noqa: E402

MiB = 1024 * 1024
#: Total stream size for the receive cases, and the body size of the "many"
#: stream: 64 MiB = 1024 x 64 KiB.
STREAM_BYTES = 64 * MiB
SMALL_BODY = 64 * 1024
#: The stock receiver on one 64 MiB frame takes seconds (quadratic): give up
#: after this long and report a lower bound rather than run for ever.
STOCK_SINGLE_TIMEOUT = 60.0
#: The whole benchmark gives up after this long (subprocesses are still
#: stopped: the pending steps are cancelled and their clean-ups run).
OVERALL_TIMEOUT = 240.0
CASE_TIMEOUT = 30.0
PING_BODY = b"0123456789abcdef"
PING_CONNECTIONS = (1, 50)
TLS_CONNECTIONS = (1,)
GOAL_SINGLE_VS_STOCK = 100.0
GOAL_SINGLE_VS_MANY = 2.0
GOAL_PING_VS_BARE = 0.8
CASES = ("receive", "ping", "tls")


def streamHeaders(kind: str) -> list[tuple[bytes, int]]:
    """
    The (encoded header, body length) of every message of a receive stream.
    """
    if kind == "single":
        return [(wire.encodeHeader({"id": 1, "op": "put"}), STREAM_BYTES)]
    count = STREAM_BYTES // SMALL_BODY
    return [(wire.encodeHeader({"id": i, "op": "put"}), SMALL_BODY) for i in range(1, count + 1)]


def streamLength(kind: str) -> int:
    return sum(2 * wire.PREFIX_LENGTH + len(h) + n for h, n in streamHeaders(kind))


def buildStream(kind: str) -> bytes:
    parts = []
    for h, n in streamHeaders(kind):
        parts += [wire.PREFIX.pack(len(h)), h, wire.PREFIX.pack(n), b"x" * n]
    return b"".join(parts)


# -- child processes -----------------------------------------------------------


def senderMain() -> None:
    """
    The sender: for each C{PORT KIND} line on stdin, connect to 127.0.0.1:PORT
    and C{sendall} the pre-built stream, then report on stdout.
    """
    streams: dict[str, bytes] = {}
    print("ready", flush=True)
    for line in sys.stdin:
        port, kind = line.split()
        if kind not in streams:
            streams[kind] = buildStream(kind)
        data = streams[kind]
        try:
            with socket.create_connection(("127.0.0.1", int(port))) as s:
                s.sendall(data)
            print(f"sent {len(data)}", flush=True)
        except OSError as e:
            print(f"error {e}", flush=True)


class BareEcho(Int32StringReceiver):
    """
    The baseline server: every string straight back.
    """

    def stringReceived(self, string: bytes) -> None:
        self.sendString(string)


class _ServerControl(LineReceiver):
    """
    The server's stdin: C{cpu} asks for the CPU time it has used so far;
    end of file stops it.
    """

    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"cpu":
            self.sendLine(f"{time.process_time():.6f}".encode())

    def connectionLost(self, reason: Failure | None = None) -> None:
        from twisted.internet import reactor

        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]


def serverMain(kind: str, certs: str | None) -> None:
    """
    A ping server on 127.0.0.1, port 0 (over TLS with the certificates in
    C{certs}, if given): print the port, then answer C{cpu} queries on stdin
    until it closes.
    """
    from twisted.internet import reactor, stdio

    quietLogging()
    factory: Factory
    if kind == "frames":
        factory = FramesServerFactory()
    else:
        factory = Factory.forProtocol(BareEcho)
        factory.noisy = False
    if certs is None:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    else:
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, factory, serverTLS(certs), interface="127.0.0.1"
        )
    print(port.getHost().port, flush=True)
    stdio.StandardIO(_ServerControl())
    reactor.run()  # type: ignore[attr-defined]


def makeCertificates() -> str:
    """
    A private CA, a server certificate for 127.0.0.1 and a client
    certificate, in a new temporary directory (removed by the caller).
    """
    from twisted_frames.certs import writeQuickStart

    directory = tempfile.mkdtemp(prefix="bench-frames-certs-")
    writeQuickStart(os.path.join(directory, "tls"), ["127.0.0.1"])
    return os.path.join(directory, "tls")


def serverTLS(certs: str) -> Any:
    """
    The server's TLS options, as the frameserver builds them for mutual TLS.
    """
    from twisted_frames.tls import serverOptions

    return serverOptions(
        os.path.join(certs, "server.pem"),
        os.path.join(certs, "server.key"),
        os.path.join(certs, "ca.pem"),
    )


def clientTLS(certs: str) -> Any:
    """
    The client's TLS options: the server checked against the CA and its
    address, the client certificate presented.
    """
    from twisted_frames.tls import clientOptions

    return clientOptions(
        "127.0.0.1",
        os.path.join(certs, "ca.pem"),
        os.path.join(certs, "client.pem"),
        os.path.join(certs, "client.key"),
    )


def quietLogging() -> None:
    """
    Send log events of level warn and above to stderr; drop the rest.
    """
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class Child(ProcessProtocol):
    """
    A child process spoken to in lines over stdin/stdout.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._buffer = b""
        self._lines: deque[str] = deque()
        self._waiters: deque[defer.Deferred[str]] = deque()
        self.ended: defer.Deferred[None] = defer.Deferred()

    @classmethod
    def spawn(cls, reactor: Any, name: str, *args: str) -> Child:
        child = cls(name)
        argv = [sys.executable, str(Path(__file__).resolve()), *args]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        reactor.spawnProcess(child, sys.executable, argv, env=env, childFDs={0: "w", 1: "r", 2: 2})
        return child

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode()
            if self._waiters:
                self._waiters.popleft().callback(line)
            else:
                self._lines.append(line)

    def processEnded(self, reason: Failure) -> None:
        waiters, self._waiters = self._waiters, deque()
        for d in waiters:
            d.errback(RuntimeError(f"{self.name} exited: {reason.value}"))
        self.ended.callback(None)

    def nextLine(self, reactor: Any, timeout: float) -> defer.Deferred[str]:
        if self._lines:
            return defer.succeed(self._lines.popleft())
        if self.ended.called:
            return defer.fail(RuntimeError(f"{self.name} has exited"))
        d: defer.Deferred[str] = defer.Deferred()
        self._waiters.append(d)
        return d.addTimeout(timeout, reactor)

    def send(self, line: str) -> None:
        assert self.transport is not None
        self.transport.write(line.encode() + b"\n")

    async def stop(self, reactor: Any) -> None:
        """
        Close its stdin (it exits by itself), then kill it if it has not.
        """
        if self.ended.called:
            return
        assert self.transport is not None
        self.transport.closeStdin()
        for signal, wait in (("TERM", 3.0), ("KILL", 3.0)):
            done = task.deferLater(reactor, wait, lambda: None)
            await defer.DeferredList([self.ended, done], fireOnOneCallback=True)
            if self.ended.called:
                return
            try:
                self.transport.signalProcess(signal)
            except (ProcessDone, ProcessTerminated, OSError):
                return


# -- receive throughput ----------------------------------------------------------


class ReceiveRun:
    """
    Timing and counts for one receive case.
    """

    def __init__(self, reactor: Any, messages: int, streamBytes: int) -> None:
        self.reactor = reactor
        self.messages = messages
        self.streamBytes = streamBytes
        self.done: defer.Deferred[float] = defer.Deferred()
        self.first: float | None = None
        self.delivered = 0
        self.frames = 0
        self.received = 0
        self.protocol: Protocol | None = None

    def firstByte(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def finish(self) -> None:
        if not self.done.called:
            assert self.first is not None
            self.done.callback(time.perf_counter() - self.first)


class CountingSink(BodySink):
    """
    Counts body bytes; nothing is kept.
    """

    def __init__(self, run: ReceiveRun) -> None:
        self.run = run

    def bodyData(self, data: bytes) -> None:
        self.run.delivered += len(data)

    def bodyFinished(self) -> None:
        run = self.run
        run.frames += 1
        if run.frames == run.messages:
            run.finish()


class _TimedReceiver(Protocol):
    """
    Mixed in before a receiver's class: tells its L{ReceiveRun} about the
    connection and the first byte, then lets the receiver parse.
    """

    run: ReceiveRun

    def connectionMade(self) -> None:
        self.run.protocol = self

    def dataReceived(self, data: bytes) -> None:
        self.run.firstByte()
        super().dataReceived(data)


class FramesReceiver(_TimedReceiver, FrameProtocol):
    """
    C{FrameProtocol} streaming every body to a L{CountingSink}.
    """

    def messageStarted(self, header: dict[str, Any], bodyLength: int) -> BodySink:
        return CountingSink(self.run)


class StockReceiver(_TimedReceiver, Int32StringReceiver):
    """
    Stock C{Int32StringReceiver}: each header and each body is a frame.
    """

    MAX_LENGTH = wire.MAX_FRAME

    def stringReceived(self, string: bytes) -> None:
        run = self.run
        run.frames += 1
        if run.frames % 2 == 0:
            run.delivered += len(string)
        if run.frames == 2 * run.messages:
            run.finish()


class RawReceiver(_TimedReceiver):
    """
    Counts bytes, parses nothing: the reactor and socket floor.
    """

    def dataReceived(self, data: bytes) -> None:
        run = self.run
        run.firstByte()
        run.received += len(data)
        if run.received == run.streamBytes:
            run.finish()


RECEIVERS: dict[str, type[Protocol]] = {
    "frames": FramesReceiver,
    "stock": StockReceiver,
    "raw": RawReceiver,
}


async def receiveOnce(
    reactor: Any, sender: Child, receiver: str, kind: str, timeout: float
) -> dict[str, Any]:
    """
    One receive case: listen, have the sender send, time the delivery.
    """
    headers = streamHeaders(kind)
    run = ReceiveRun(reactor, len(headers), streamLength(kind))
    cls = RECEIVERS[receiver]
    factory = Factory.forProtocol(type(cls.__name__, (cls,), {"run": run}))
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    gc.collect()
    try:
        sender.send(f"{port.getHost().port} {kind}")
        try:
            seconds = await run.done.addTimeout(timeout, reactor)
            finished = True
        except defer.TimeoutError:
            seconds = timeout
            finished = False
        if run.protocol is not None and run.protocol.transport is not None:
            run.protocol.transport.abortConnection()
        reply = await sender.nextLine(reactor, 30.0)
        if finished and not reply.startswith("sent"):
            raise RuntimeError(f"sender: {reply}")
        # The raw receiver counts the stream's bytes; the others, body bytes.
        expected = run.streamBytes if receiver == "raw" else sum(n for _, n in headers)
        got = run.received if receiver == "raw" else run.delivered
        if finished and got != expected:
            raise RuntimeError(f"{receiver}/{kind}: got {got} bytes, not {expected}")
    finally:
        await port.stopListening()
    return {"seconds": seconds, "finished": finished}


def summarise(runs: list[dict[str, Any]], streamBytes: int) -> dict[str, Any]:
    times = [r["seconds"] for r in runs]
    best, median = min(times), statistics.median(times)
    return {
        "runs": times,
        "finished": all(r["finished"] for r in runs),
        "best_s": best,
        "median_s": median,
        "stream_bytes": streamBytes,
        "median_MiB_per_s": streamBytes / MiB / median,
    }


async def receiveBenchmarks(reactor: Any, repeats: int) -> dict[str, Any]:
    sender = Child.spawn(reactor, "sender", "--role", "send")
    try:
        await sender.nextLine(reactor, 30.0)
        cases = [
            ("frames", "single"),
            ("frames", "many"),
            ("stock", "many"),
            ("raw", "single"),
            ("raw", "many"),
        ]
        runs: dict[str, list[dict[str, Any]]] = {f"{r}/{k}": [] for r, k in cases}
        # One untimed pass builds the sender's streams and warms everything up.
        for receiver, kind in cases[:2]:
            await receiveOnce(reactor, sender, receiver, kind, CASE_TIMEOUT)
        # Interleaved, so that noise from other load spreads over every case.
        for _ in range(repeats):
            for receiver, kind in cases:
                runs[f"{receiver}/{kind}"].append(
                    await receiveOnce(reactor, sender, receiver, kind, CASE_TIMEOUT)
                )
        print("  stock Int32StringReceiver on one 64 MiB frame (quadratic, runs once) ...")
        runs["stock/single"] = [
            await receiveOnce(reactor, sender, "stock", "single", STOCK_SINGLE_TIMEOUT)
        ]
    finally:
        await sender.stop(reactor)
    return {key: summarise(r, streamLength(key.split("/")[1])) for key, r in runs.items()}


# -- ping round trips -------------------------------------------------------------


class Meter:
    """
    Counts completed round trips across all connections of one case.
    """

    def __init__(self) -> None:
        self.count = 0
        self.running = True
        self.errors: list[str] = []

    def failed(self, failure: Failure) -> None:
        if self.running:
            self.errors.append(str(failure.value))


def loopFrames(client: Any, meter: Meter) -> None:
    """
    Sequential pings on one twisted-frames connection, through the public
    client library.
    """

    def again(echoed: bytes) -> None:
        if echoed != PING_BODY:
            meter.errors.append("wrong echo")
        meter.count += 1
        if meter.running:
            client.ping(PING_BODY).addCallbacks(again, meter.failed)

    client.ping(PING_BODY).addCallbacks(again, meter.failed)


class BareClient(Int32StringReceiver):
    """
    Sequential round trips, the least code possible: the next string is sent
    from C{stringReceived}.
    """

    meter: Meter

    def start(self) -> None:
        self.sendString(PING_BODY)

    def stringReceived(self, string: bytes) -> None:
        meter = self.meter
        if string != PING_BODY:
            meter.errors.append("wrong echo")
        meter.count += 1
        if meter.running:
            self.sendString(PING_BODY)


async def pingWindow(
    reactor: Any,
    system: str,
    server: Child,
    port: int,
    connections: int,
    warmup: float,
    duration: float,
    tls: Any = None,
) -> dict[str, Any]:
    """
    Open C{connections} (over TLS with the client options C{tls}, if given),
    run sequential round trips on each, and count those completed during
    C{duration} seconds after C{warmup}; also the CPU time both processes
    spent meanwhile.
    """
    meter = Meter()
    closers: list[Callable[[], Any]] = []
    try:
        if system == "frames":
            clients = await defer.gatherResults(
                [connect(reactor, f"127.0.0.1:{port}", tls=tls) for _ in range(connections)]
            )
            for client in clients:
                closers.append(client.close)
                loopFrames(client, meter)
        else:
            factory = Factory.forProtocol(type("Bare", (BareClient,), {"meter": meter}))
            factory.noisy = False
            endpoint = HostnameEndpoint(reactor, "127.0.0.1", port)
            if tls is not None:
                endpoint = wrapClientTLS(tls, endpoint)
            protocols = await defer.gatherResults(
                [endpoint.connect(factory) for _ in range(connections)]
            )
            for p in protocols:
                closers.append(p.transport.loseConnection)
                p.start()
        await task.deferLater(reactor, warmup, lambda: None)
        server.send("cpu")
        serverCpu0 = float(await server.nextLine(reactor, 10.0))
        c0, t0, cpu0 = meter.count, time.perf_counter(), time.process_time()
        await task.deferLater(reactor, duration, lambda: None)
        c1, t1, cpu1 = meter.count, time.perf_counter(), time.process_time()
        server.send("cpu")
        serverCpu1 = float(await server.nextLine(reactor, 10.0))
    finally:
        meter.running = False
        for close in closers:
            close()
        await task.deferLater(reactor, 0.1, lambda: None)
    if meter.errors:
        raise RuntimeError(f"{system} x{connections}: {meter.errors[:3]}")
    return {
        "round_trips": c1 - c0,
        "seconds": t1 - t0,
        "client_cpu_s": cpu1 - cpu0,
        "server_cpu_s": serverCpu1 - serverCpu0,
    }


def summarisePing(windows: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    trips = sum(w["round_trips"] for w in windows)
    seconds = sum(w["seconds"] for w in windows)
    client = sum(w["client_cpu_s"] for w in windows)
    server = sum(w["server_cpu_s"] for w in windows)
    return {
        "connections": connections,
        "windows": windows,
        "round_trips": trips,
        "seconds": seconds,
        "per_s": trips / seconds,
        "window_per_s": [w["round_trips"] / w["seconds"] for w in windows],
        "client_cpu_us_per_rt": 1e6 * client / trips,
        "server_cpu_us_per_rt": 1e6 * server / trips,
        "cpu_us_per_rt": 1e6 * (client + server) / trips,
    }


def pairRatios(frames: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    """
    The ratio of each frames window to the bare window after it, their
    median (the reported figure) and range, and the same for CPU per trip.
    """
    ratios = [
        ratio(f, b) for f, b in zip(frames["window_per_s"], bare["window_per_s"], strict=True)
    ]
    cpu = [
        ratio(
            1e6 * (b["client_cpu_s"] + b["server_cpu_s"]) / max(b["round_trips"], 1),
            1e6 * (f["client_cpu_s"] + f["server_cpu_s"]) / max(f["round_trips"], 1),
        )
        for f, b in zip(frames["windows"], bare["windows"], strict=True)
    ]
    return {
        "window_ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "total_ratio": ratio(frames["per_s"], bare["per_s"]),
        "cpu_ratios": cpu,
        "median_cpu_ratio": statistics.median(cpu),
    }


async def alternate(
    reactor: Any,
    servers: dict[str, Child],
    ports: dict[str, int],
    connections: int,
    rounds: int,
    warmup: float,
    window: float,
    tls: Any = None,
) -> dict[str, Any]:
    """
    C{rounds} pairs of windows, frames then bare, so that load from
    elsewhere on the machine falls on both alike.
    """
    windows: dict[str, list[dict[str, Any]]] = {"frames": [], "bare": []}
    for _ in range(rounds):
        for system in ("frames", "bare"):
            windows[system].append(
                await pingWindow(
                    reactor,
                    system,
                    servers[system],
                    ports[system],
                    connections,
                    warmup,
                    window,
                    tls,
                )
            )
    out = {system: summarisePing(w, connections) for system, w in windows.items()}
    out["pairs"] = pairRatios(out["frames"], out["bare"])
    return out


async def pingBenchmarks(
    reactor: Any,
    rounds: int,
    warmup: float,
    window: float,
    counts: tuple[int, ...],
    certs: str | None = None,
) -> dict[str, Any]:
    """
    For each connection count in C{counts}, L{alternate} windows of
    twisted-frames and of the bare echo (both over TLS with the
    certificates in C{certs}, if given).

    @return: C{frames/N} and C{bare/N} summaries and C{pairs/N}, the
        per-window ratios.
    """
    extra = [] if certs is None else ["--certs", certs]
    servers = {
        "frames": Child.spawn(reactor, "frames server", "--role", "serve-frames", *extra),
        "bare": Child.spawn(reactor, "bare echo server", "--role", "serve-bare", *extra),
    }
    tls = clientTLS(certs) if certs is not None else None
    results: dict[str, Any] = {}
    try:
        ports = {name: int(await s.nextLine(reactor, 30.0)) for name, s in servers.items()}
        for connections in counts:
            out = await alternate(
                reactor, servers, ports, connections, rounds, warmup, window, tls
            )
            for key, value in out.items():
                results[f"{key}/{connections}"] = value
    finally:
        for s in servers.values():
            await s.stop(reactor)
    return results


# -- report ----------------------------------------------------------------------------


def cpuModel() -> str:
    """
    The CPU's model name, from C{/proc/cpuinfo} where there is one.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadAverage() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine(reactor: Any) -> dict[str, Any]:
    """
    What the figures were measured on.
    """
    import cryptography
    import OpenSSL
    from OpenSSL import SSL

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpuModel(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "twisted": twisted.__version__,
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "python_ssl_openssl": ssl.OPENSSL_VERSION,
        "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "reactor": type(reactor).__name__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": loadAverage(),
    }


def printMachine(facts: dict[str, Any]) -> None:
    def load(key: str) -> str:
        return " ".join(f"{x:.2f}" for x in facts.get(key) or [])

    print(f"twisted-frames benchmarks  {facts['date']}")
    print(
        f"  CPU: {facts['cpu_model']}  cores: {facts['cpu_count']} "
        f"(usable {facts['cpus_usable']})  load avg at start: {load('loadavg_at_start')}"
        + (f", at end: {load('loadavg_at_end')}" if "loadavg_at_end" in facts else "")
    )
    print(
        f"  Python {facts['python']} ({facts['implementation']})  Twisted {facts['twisted']}  "
        f"{facts['reactor']}"
    )
    print(
        f"  {facts['openssl']} (pyOpenSSL {facts['pyopenssl']}, cryptography "
        f"{facts['cryptography']}; Python ssl: {facts['python_ssl_openssl']})"
    )
    print(f"  {facts['platform']}")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def reportReceive(recv: dict[str, Any]) -> dict[str, Any]:
    print()
    print("Receive: 64 MiB on loopback, first byte to last frame delivered")
    print("(every receiver gets the same stream of header+body messages;")
    print(" the stock receiver sees it as two frames per message)")
    stockSingle = recv["stock/single"]["median_s"]
    stockMany = recv["stock/many"]["median_s"]
    head = (
        f"  {'receiver':<34}{'stream':<22}{'best s':>9}{'median s':>10}"
        f"{'MiB/s':>9}{'stock/this':>12}"
    )
    print(head)
    labels = {
        "frames": "FrameProtocol (streamed to sink)",
        "stock": "stock Int32StringReceiver",
        "raw": "raw Protocol (count bytes only)",
    }
    streams = {"single": "1 x 64 MiB body", "many": "1024 x 64 KiB bodies"}
    for key in (
        "frames/single",
        "frames/many",
        "stock/single",
        "stock/many",
        "raw/single",
        "raw/many",
    ):
        r = recv[key]
        receiver, kind = key.split("/")
        stock = stockSingle if kind == "single" else stockMany
        times = f"{r['best_s']:>9.4f}{r['median_s']:>10.4f}"
        if not r["finished"]:
            times = f"{'>' + format(r['best_s'], '.1f'):>9}{'(timeout)':>10}"
        print(
            f"  {labels[receiver]:<34}{streams[kind]:<22}{times}"
            f"{r['median_MiB_per_s']:>9.0f}{ratio(stock, r['median_s']):>11.1f}x"
        )
    runsNote = len(recv["frames/many"]["runs"])
    print(f"  (best/median of {runsNote} runs; the stock single frame runs once)")
    singleVsStock = ratio(stockSingle, recv["frames/single"]["median_s"])
    singleVsMany = ratio(recv["frames/single"]["median_s"], recv["frames/many"]["median_s"])
    return {
        "single_64MiB_vs_stock": {
            "value": singleVsStock,
            "goal": f">= {GOAL_SINGLE_VS_STOCK:g}",
            "met": singleVsStock >= GOAL_SINGLE_VS_STOCK,
            "lower_bound": not recv["stock/single"]["finished"],
            "text": "FrameProtocol one 64 MiB body vs stock on it (x faster)",
        },
        "single_64MiB_vs_many_64KiB": {
            "value": singleVsMany,
            "goal": f"<= {GOAL_SINGLE_VS_MANY:g}",
            "met": singleVsMany <= GOAL_SINGLE_VS_MANY,
            "text": "FrameProtocol one 64 MiB body vs 1024 x 64 KiB (x the time)",
        },
    }


def reportPing(ping: dict[str, Any], title: str, counts: tuple[int, ...]) -> None:
    print()
    windows = len(ping[f"bare/{counts[0]}"]["windows"])
    print(
        f"{title}: sequential round trips, {len(PING_BODY)} B body, server in a subprocess; "
        f"{windows} alternating window pair(s), frames then bare"
    )
    print(
        f"  {'connections':<13}{'bare echo /s':>13}{'frames /s':>11}{'median ratio':>14}"
        f"{'range':>13}  {'per-window ratios':<32}{'CPU us/rt bare':>15}{'frames':>8}"
        f"{'bare c+s':>14}{'frames c+s':>14}"
    )
    for n in counts:
        bare, frames, pairs = ping[f"bare/{n}"], ping[f"frames/{n}"], ping[f"pairs/{n}"]
        spread = " ".join(f"{r:.2f}" for r in pairs["window_ratios"])
        span = f"{pairs['min_ratio']:.2f}-{pairs['max_ratio']:.2f}"
        print(
            f"  {n:<13}{bare['per_s']:>13.0f}{frames['per_s']:>11.0f}"
            f"{pairs['median_ratio']:>13.2f}x{span:>13}  {spread:<32}"
            f"{bare['cpu_us_per_rt']:>15.1f}{frames['cpu_us_per_rt']:>8.1f}"
            f"{cpuSplit(bare):>14}{cpuSplit(frames):>14}"
        )
    print("  (ratio: frames rate / bare rate, per window pair; CPU us/rt: client + server")
    print("   process CPU time per round trip, over all windows; c+s: the client's and the")
    print("   server's shares: on 50 connections both processes are busy, and the busier one")
    print("   limits the rate)")


def cpuSplit(summary: dict[str, Any]) -> str:
    """
    The client's and the server's CPU time per round trip, as C{"c+s"}.
    """
    return f"{summary['client_cpu_us_per_rt']:.1f}+{summary['server_cpu_us_per_rt']:.1f}"


def pingGoals(ping: dict[str, Any], counts: tuple[int, ...], label: str) -> dict[str, Any]:
    goals = {}
    for n in counts:
        pairs = ping[f"pairs/{n}"]
        value = pairs["median_ratio"]
        goals[f"{label}_{n}_connection{'s' if n > 1 else ''}_vs_bare"] = {
            "value": value,
            "range": [pairs["min_ratio"], pairs["max_ratio"]],
            "goal": f">= {GOAL_PING_VS_BARE:g}",
            "met": value >= GOAL_PING_VS_BARE,
            "text": f"{label.replace('_', ' ')}, {n} connection(s), vs bare (x the rate, median)",
        }
    return goals


def reportGoals(goals: dict[str, Any]) -> None:
    print()
    print("Goals")
    for g in goals.values():
        extra = f"  range {g['range'][0]:.2f}-{g['range'][1]:.2f}" if "range" in g else ""
        print(
            f"  {g['text']:<62}{g['value']:8.2f}  (goal {g['goal']}){extra}  "
            f"{'MET' if g['met'] else 'NOT MET'}"
        )


async def benchmark(reactor: Any, options: argparse.Namespace) -> None:
    quietLogging()
    cases = options.cases
    repeats = 3 if options.quick else 5
    rounds = 1 if options.quick else options.windows
    warmup, window = 0.2, options.window
    facts = machine(reactor)
    printMachine(facts)
    recv: dict[str, Any] = {}
    ping: dict[str, Any] = {}
    tlsPing: dict[str, Any] = {}
    if "receive" in cases:
        print(f"receive benchmarks ({repeats} runs each) ...")
        recv = await receiveBenchmarks(reactor, repeats)
    if "ping" in cases:
        print(f"ping ({rounds} x {window:g} s per system, after {warmup:g} s warm-ups) ...")
        ping = await pingBenchmarks(reactor, rounds, warmup, window, PING_CONNECTIONS)
    if "tls" in cases:
        print(f"ping over TLS ({rounds} x {window:g} s per system) ...")
        certs = makeCertificates()
        try:
            tlsPing = await pingBenchmarks(reactor, rounds, warmup, window, TLS_CONNECTIONS, certs)
        finally:
            shutil.rmtree(os.path.dirname(certs), ignore_errors=True)
    facts["loadavg_at_end"] = loadAverage()
    print()
    printMachine(facts)
    goals: dict[str, Any] = {}
    if recv:
        goals.update(reportReceive(recv))
    if ping:
        reportPing(ping, "Ping", PING_CONNECTIONS)
        goals.update(pingGoals(ping, PING_CONNECTIONS, "ping"))
    if tlsPing:
        reportPing(tlsPing, "Ping over TLS (mutual, Twisted TLS both sides)", TLS_CONNECTIONS)
        goals.update(pingGoals(tlsPing, TLS_CONNECTIONS, "tls_ping"))
    reportGoals(goals)
    if options.json:
        out = {
            "machine": facts,
            "options": {
                "quick": options.quick,
                "cases": sorted(cases),
                "receive_repeats": repeats,
                "ping_rounds": rounds,
                "ping_window_s": window,
                "ping_warmup_s": warmup,
                "ping_body_bytes": len(PING_BODY),
            },
            "receive": recv,
            "ping": ping,
            "tls_ping": tlsPing,
            "goals": goals,
        }
        Path(options.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {options.json}")


def parseCases(text: str) -> set[str]:
    cases = {c.strip() for c in text.split(",") if c.strip()}
    unknown = cases - set(CASES)
    if unknown or not cases:
        raise argparse.ArgumentTypeError(
            f"cases are a comma-separated list of {', '.join(CASES)}; not {text!r}"
        )
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats; 1 ping window pair per case"
    )
    parser.add_argument(
        "--cases",
        type=parseCases,
        default=set(CASES),
        metavar="LIST",
        help=f"which benchmarks to run, comma-separated (default: {','.join(CASES)})",
    )
    parser.add_argument(
        "--windows", type=int, default=5, metavar="N", help="ping window pairs (default: 5)"
    )
    parser.add_argument(
        "--window", type=float, default=1.0, metavar="S", help="seconds per ping window"
    )
    parser.add_argument("--json", metavar="FILE", help="also write all figures to FILE")
    parser.add_argument(
        "--role",
        choices=["send", "serve-frames", "serve-bare"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.windows < 1 or options.window <= 0:
        parser.error("--windows must be at least 1 and --window positive")
    if options.role == "send":
        senderMain()
    elif options.role is not None:
        serverMain(options.role.removeprefix("serve-"), options.certs)
    else:
        task.react(
            lambda reactor: defer.Deferred.fromCoroutine(benchmark(reactor, options)).addTimeout(
                OVERALL_TIMEOUT, reactor
            )
        )


if __name__ == "__main__":
    main()
