"""
C{twistd frameserver --workers 2} against C{--workers 1}, in one run, on
loopback.

    python bench/bench_workers.py [--quick] [--rounds N] [--size BYTES] [--json FILE]

Two real servers of this checkout run side by side on one root (on
C{/dev/shm} where there is one): one with C{--workers 1} (a single process,
as without the option), one with C{--workers 2}.  Each logs to a file, as a
deployed server does (every request is a log line; with workers, each line
goes through the main process).  The measurements alternate between the two
servers, round after round, so that load from elsewhere on the machine falls
on both alike; the medians and ranges of the rounds are reported, with the
ratio of the medians.

1. Ping on 50 connections: 50 connections each doing sequential round trips
   (a C{ping} with an empty body), driven by one Twisted client in this
   process, for a window of C{--window} seconds.
2. Four concurrent 1 GiB transfers: four C{get}s of the same 1 GiB file at
   once, each on its own connection, read by a thread with a blocking socket
   that discards the bytes; the time until all four have their final reply,
   and the total bytes per second.

The client side runs on the same machine, so on a machine with few cores it
competes with the workers for them: the figures are what one machine serving
itself gets, not a server's ceiling.  Machine facts and every round are
printed and, with C{--json}, written as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import defer, protocol, reactor, task  # noqa: E402

import twisted  # noqa: E402

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
START_TIMEOUT = 120.0


def machineFacts() -> dict[str, Any]:
    """
    What the figures depend on.
    """
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
    }


class Server:
    """
    A real C{twistd frameserver} with C{--workers N}, logging to a file.
    """

    def __init__(self, workers: int, root: Path, logs: Path) -> None:
        self.workers = workers
        self.log = logs / f"workers{workers}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={self.log}"]
            + ["frameserver", "--listen", "tcp:0:interface=127.0.0.1", "--root", str(root)]
            + ["--udp", "0", "--max-per-source", "0", "--workers", str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.port = int(self.waitFor(r"frameserver listening on tcp [\d.]+:(\d+)").group(1))
        if workers > 1:
            for index in range(1, workers + 1):
                self.waitFor(rf"worker {index} ready")

    def waitFor(self, pattern: str) -> re.Match[str]:
        """
        Wait until the log has a line matching C{pattern}: checked every
        50 ms, for at most L{START_TIMEOUT} seconds.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the --workers {self.workers} server exited")
            if self.log.exists() and (m := re.search(pattern, self.log.read_text())):
                return m
            time.sleep(0.05)
        raise SystemExit(f"no {pattern!r} in {self.log} within {START_TIMEOUT} s")

    def stop(self) -> None:
        """
        C{SIGTERM}, and wait.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """
    One message: the header frame and the body frame.
    """
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("!I", len(encoded)) + encoded + struct.pack("!I", len(body)) + body


class Pinger(protocol.Protocol):
    """
    Reads the greeting, then pings in a loop, one round trip at a time,
    counting replies while L{counting} is set.
    """

    def __init__(self, bench: PingBench) -> None:
        self.bench = bench
        self.buffer = b""
        self.frames = 0
        self.id = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            (n,) = struct.unpack_from("!I", self.buffer)
            if len(self.buffer) < 4 + n:
                return
            self.buffer = self.buffer[4 + n :]
            self.frames += 1
            # Two frames a message: the greeting first, then each reply.
            if self.frames % 2 == 0:
                if self.frames > 2:
                    self.bench.replies += 1
                self.id += 1
                self.transport.write(frame({"op": "ping", "id": self.id}))  # type: ignore[union-attr]


class PingBench:
    """
    50 connections pinging one server.
    """

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self.connections = connections
        self.replies = 0
        self.clients: list[Pinger] = []

    @defer.inlineCallbacks
    def run(self, window: float) -> Any:
        creator = protocol.ClientCreator(reactor, lambda: Pinger(self))
        for _ in range(self.connections):
            client = yield creator.connectTCP("127.0.0.1", self.port)
            self.clients.append(client)
        # Warm up, then count for the window.
        yield task.deferLater(reactor, 0.5, lambda: None)
        before, cpu = self.replies, time.process_time()
        started = time.perf_counter()
        yield task.deferLater(reactor, window, lambda: None)
        elapsed = time.perf_counter() - started
        count = self.replies - before
        clientCPU = time.process_time() - cpu
        for client in self.clients:
            client.transport.loseConnection()  # type: ignore[union-attr]
        return {"rate": count / elapsed, "clientCPUPerRT": clientCPU / max(count, 1)}


def getAll(port: int, path: str, size: int, concurrent: int) -> dict[str, float]:
    """
    C{concurrent} simultaneous C{get}s of C{path}, each read by a thread and
    discarded.

    @return: the seconds until every one had its final reply, and the total
        bytes per second.
    """
    errors: list[str] = []
    ready = threading.Barrier(concurrent + 1)

    def one() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            reader = s.makefile("rb", buffering=0)
            buffer = bytearray(4 << 20)
            view = memoryview(buffer)

            def readExactly(n: int) -> bytes:
                out = bytearray()
                while len(out) < n:
                    chunk = reader.read(n - len(out))
                    if not chunk:
                        raise EOFError
                    out += chunk
                return bytes(out)

            def skip(n: int) -> None:
                while n:
                    got = s.recv_into(view[: min(n, len(buffer))])
                    if not got:
                        raise EOFError
                    n -= got

            def message() -> dict[str, Any]:
                (n,) = struct.unpack("!I", readExactly(4))
                header: dict[str, Any] = json.loads(readExactly(n))
                (m,) = struct.unpack("!I", readExactly(4))
                skip(m)
                return header

            message()  # the greeting
            ready.wait()
            s.sendall(frame({"op": "get", "id": 1, "path": path, "offset": 0}))
            received = 0
            while True:
                header = message()
                if header.get("event") == "data":
                    received += header["length"]
                elif "ok" in header:
                    if not header["ok"] or received != size:
                        errors.append(f"{header} after {received} bytes")
                    return

    threads = [threading.Thread(target=one) for _ in range(concurrent)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"a transfer failed: {errors[0]}")
    return {"seconds": elapsed, "bytesPerSecond": concurrent * size / elapsed}


def summary(values: list[float]) -> dict[str, float]:
    """
    Median and range.
    """
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def makeFile(path: Path, size: int) -> None:
    """
    A file of C{size} bytes (a random 1 MiB block, repeated).
    """
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 256 MiB, 2 s windows")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per test (default 5)")
    parser.add_argument("--size", type=int, default=None, help="bytes per transfer (1 GiB)")
    parser.add_argument("--window", type=float, default=None, help="ping window, s (default 3)")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    size = args.size or ((256 << 20) if args.quick else (1 << 30))
    window = args.window or (2.0 if args.quick else 3.0)
    facts = machineFacts()
    print(json.dumps(facts, indent=2))
    base = Path(
        tempfile.mkdtemp(
            prefix="bench-workers-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
    )
    results: dict[str, Any] = {"machine": facts, "rounds": rounds, "size": size, "window": window}
    servers: dict[int, Server] = {}
    try:
        root = base / "srv"
        root.mkdir()
        makeFile(root / "big.bin", size)
        for workers in (1, 2):
            servers[workers] = Server(workers, root, base)
        ping: dict[int, list[float]] = {1: [], 2: []}
        transfers: dict[int, list[float]] = {1: [], 2: []}

        @defer.inlineCallbacks
        def pings() -> Any:
            for r in range(rounds):
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    result = yield PingBench(servers[workers].port, 50).run(window)
                    ping[workers].append(result["rate"])
                    print(f"ping 50 conns, --workers {workers}: {result['rate']:,.0f} rt/s")

        def stop(result: Any) -> Any:
            reactor.stop()  # type: ignore[attr-defined]
            return result

        failures: list[Any] = []
        pings().addErrback(failures.append).addBoth(stop)
        reactor.run()  # type: ignore[attr-defined]
        if failures:
            failures[0].raiseException()
        for r in range(rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                result = getAll(servers[workers].port, "big.bin", size, 4)
                transfers[workers].append(result["bytesPerSecond"])
                print(
                    f"4 x {size >> 20} MiB get, --workers {workers}: {result['seconds']:.2f} s, "
                    f"{result['bytesPerSecond'] / (1 << 20):,.0f} MiB/s"
                )
        for name, data in (("ping50", ping), ("get4x", transfers)):
            results[name] = {
                f"workers{w}": {"rounds": data[w], **summary(data[w])} for w in (1, 2)
            }
            ratio = statistics.median(data[2]) / statistics.median(data[1])
            results[name]["ratio"] = ratio
            print(f"{name}: --workers 2 / --workers 1 = {ratio:.2f} (medians of {rounds} rounds)")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
