"""
Hostile clients against a real C{twistd frameserver}, and what a bystander
client sees meanwhile.

    python bench/abuse.py [--json FILE] [--write-timeout S] [--quick]

Starts the server of this checkout on a loopback port the kernel picks, with
its own temporary root, and runs three attacks one after the other:

  1. stalled readers: C{--stall-connections} connections (default 85, from
     three source addresses 127.0.0.2-4) each pipeline C{--stall-gets} C{get}
     requests for a 16 MiB file with a 4 KiB receive buffer, and never read;
     measured until the server has closed all of them (or
     C{--stall-wait} seconds);
  2. a 100,000-entry directory listed C{--list-rounds} times in a row by one
     client;
  3. a burst of garbage: C{--garbage-connections} connections (from
     127.0.0.5-9) sending random bytes, random frames, oversized length
     prefixes and headers that are not JSON.

Throughout, a bystander from 127.0.0.1 pings every 20 ms on one connection
(and connects afresh every 25th time); during the first attack it also
downloads the 16 MiB file.  Printed per attack: the peak of the server's open
descriptors (C{/proc/PID/fd}) and RSS, the bystander's ping p50/p99/max,
and the attack's own figures.  Every loop is bounded and the server is
stopped at the end.  Linux only (C{/proc}, 127.0.0.0/8 source addresses).

It needs only the Python standard library, Twisted and this package (it
starts twistd from the checkout it lives in).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import select
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
#: Runs twistd from this interpreter (its module has no C{__main__} guard).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
PREFIX = struct.Struct("!I")
MiB = 1024 * 1024
BIG_SIZE = 16 * MiB
LISTING_ENTRIES = 100_000
BYSTANDER = "127.0.0.1"
STALL_SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
GARBAGE_SOURCES = ["127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"]
#: No single network wait of the bystander may take longer than this.
IO_TIMEOUT = 30.0


# -- a minimal synchronous client (stdlib only) ---------------------------------


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """
    One message: a length-prefixed JSON header frame, then the body frame.
    """
    h = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(h)) + h + PREFIX.pack(len(body)) + body


class Client:
    """
    A blocking client speaking just enough of the protocol for the bench:
    read the greeting, send a request, read messages until its final reply.
    """

    def __init__(self, port: int, source: str = BYSTANDER, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.nextId = 1
        self.greeting, _ = self.readMessage()

    def _exact(self, n: int) -> bytes:
        parts = []
        while n:
            data = self.sock.recv(min(n, MiB))
            if not data:
                raise ConnectionError("server closed the connection")
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def readMessage(self) -> tuple[dict[str, Any], bytes]:
        (n,) = PREFIX.unpack(self._exact(4))
        header = json.loads(self._exact(n))
        (n,) = PREFIX.unpack(self._exact(4))
        return header, self._exact(n)

    def request(
        self, op: str, fields: dict[str, Any] | None = None, body: bytes = b"", sink: Any = None
    ) -> tuple[dict[str, Any], bytes]:
        """
        Send one request; return its final reply.  Event bodies go to
        C{sink(header, body)}.
        """
        rid = self.nextId
        self.nextId += 1
        self.sock.sendall(frame({"op": op, "id": rid, **(fields or {})}, body))
        while True:
            header, data = self.readMessage()
            if header.get("id") != rid:
                raise RuntimeError(f"unexpected message {header!r}")
            if "ok" in header:
                if not header["ok"]:
                    raise RuntimeError(f"{op} failed: {header['error']}")
                return header, data
            if sink is not None:
                sink(header, data)

    def close(self) -> None:
        self.sock.close()


# -- the server ---------------------------------------------------------------------


class Server:
    """
    C{twistd -n frameserver} of this checkout on 127.0.0.1, port 0.
    """

    def __init__(self, root: str, logPath: str, extra: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.logPath = logPath
        self.args = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "frameserver",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--udp",
            "0",
            "--root",
            root,
            *extra,
        ]
        self.log = open(logPath, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=root
        )
        self.port = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            m = re.search(r"frameserver listening on tcp [\d.]+:(\d+)", Path(logPath).read_text())
            if m:
                self.port = int(m.group(1))
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit("the server did not start:\n" + Path(logPath).read_text())

    def descriptors(self) -> int:
        """
        The server's open descriptors now.
        """
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return 0

    def rss(self) -> int:
        """
        The server's resident set size in bytes.
        """
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def openFileLimit(self) -> str:
        """
        The server's RLIMIT_NOFILE, soft and hard, as C{/proc} shows it.
        """
        try:
            with open(f"/proc/{self.proc.pid}/limits") as f:
                for line in f:
                    if line.startswith("Max open files"):
                        soft, hard = line.split()[3:5]
                        return f"{soft}/{hard}"
        except OSError:
            pass
        return "?"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Sampler(threading.Thread):
    """
    Samples the server's descriptors and RSS every 10 ms; keeps the peaks.
    """

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peakFds = 0
        self.peakRss = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peakFds = max(self.peakFds, self.server.descriptors())
            self.peakRss = max(self.peakRss, self.server.rss())
            self.stopping.wait(0.01)

    def finish(self) -> dict[str, Any]:
        self.stopping.set()
        self.join()
        return {"peak_descriptors": self.peakFds, "peak_rss_mib": round(self.peakRss / MiB, 1)}


class Bystander(threading.Thread):
    """
    Pings every 20 ms from 127.0.0.1 on one connection, and every 25th
    time on a fresh one; records round trips (ms) and failures.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.rtts: list[float] = []
        self.worst = (0.0, 0.0)
        self.connects: list[float] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        self.started = time.perf_counter()
        client: Client | None = None
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                if client is None:
                    client = Client(self.port)
                if n % 25 == 0:
                    t = time.perf_counter()
                    fresh = Client(self.port)
                    fresh.request("ping", body=b"x")
                    fresh.close()
                    self.connects.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                client.request("ping", body=b"x")
                rtt = (time.perf_counter() - t) * 1000
                self.rtts.append(rtt)
                if rtt > self.worst[0]:
                    self.worst = (rtt, t - self.started)
            except (OSError, RuntimeError, ValueError) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                if client is not None:
                    client.close()
                client = None
            self.stopping.wait(0.02)
        if client is not None:
            client.close()

    def finish(self) -> dict[str, Any]:
        self.stopping.set()
        self.join()
        return {
            "ping_ms": summary(self.rtts),
            "worst_ping_at_s": round(self.worst[1], 2),
            "connect_ping_ms": summary(self.connects),
            "ping_failures": len(self.failures),
            "first_failure": self.failures[0] if self.failures else None,
        }


def summary(values: list[float]) -> dict[str, Any]:
    """
    Count, p50, p99 and max of C{values} (milliseconds).
    """
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max": round(ordered[-1], 2),
    }


def watched(server: Server, work: Any) -> dict[str, Any]:
    """
    Run C{work()} with the sampler and the bystander; merge their figures
    into what it returns.
    """
    sampler = Sampler(server)
    bystander = Bystander(server.port)
    sampler.start()
    bystander.start()
    try:
        results: dict[str, Any] = work()
    finally:
        seen = bystander.finish()
        peaks = sampler.finish()
    results.update(peaks)
    results.update(seen)
    return results


# -- the attacks ------------------------------------------------------------------


def stalledReaders(server: Server, args: argparse.Namespace, bigSha: str) -> dict[str, Any]:
    """
    Connections that pipeline gets and never read; wait until the server
    has closed them (a hang-up or reset seen by poll, without reading).
    """
    socks: list[socket.socket] = []
    sentAt: dict[int, float] = {}
    requests = b"".join(
        frame({"op": "get", "id": i, "path": "big.bin"}) for i in range(1, args.stall_gets + 1)
    )
    refused = 0
    for i in range(args.stall_connections):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((STALL_SOURCES[i % len(STALL_SOURCES)], 0))
        s.settimeout(IO_TIMEOUT)
        try:
            s.connect(("127.0.0.1", server.port))
            s.sendall(requests)
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
        sentAt[s.fileno()] = time.monotonic()
    started = time.monotonic()
    # A normal download on another connection while the attack holds.
    download: dict[str, Any] = {}
    time.sleep(1.0)
    try:
        t = time.perf_counter()
        c = Client(server.port)
        h = hashlib.sha256()
        c.request("get", {"path": "big.bin"}, sink=lambda _, body: h.update(body))
        c.close()
        download = {"seconds": round(time.perf_counter() - t, 3), "ok": h.hexdigest() == bigSha}
    except (OSError, RuntimeError, ValueError) as e:
        download = {"error": f"{type(e).__name__}: {e}"}
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    closedAfter: list[float] = []
    open_ = {s.fileno() for s in socks}
    deadline = started + args.stall_wait
    while open_ and time.monotonic() < deadline:
        for fd, events in poller.poll(100):
            if fd in open_ and events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                open_.discard(fd)
                poller.unregister(fd)
                closedAfter.append(time.monotonic() - sentAt[fd])
    for s in socks:
        s.close()
    return {
        "connections": len(socks),
        "refused": refused,
        "gets_per_connection": args.stall_gets,
        "closed_by_server": len(closedAfter),
        "still_open_after_wait": len(open_),
        "wait_s": args.stall_wait,
        "closed_after_s": {
            "min": round(min(closedAfter), 2) if closedAfter else None,
            "median": round(statistics.median(closedAfter), 2) if closedAfter else None,
            "max": round(max(closedAfter), 2) if closedAfter else None,
        },
        "bystander_download_16MiB": download,
    }


def largeListing(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """
    One client lists the 100,000-entry directory several times in a row.
    """
    c = Client(server.port, timeout=120)
    times = []
    count = None
    for _ in range(args.list_rounds):
        t = time.perf_counter()
        reply, _body = c.request("list", {"path": "many"})
        times.append(time.perf_counter() - t)
        count = reply.get("count")
    c.close()
    return {
        "entries": count,
        "rounds": args.list_rounds,
        "list_s": {"min": round(min(times), 3), "max": round(max(times), 3)},
    }


def garbageBurst(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """
    Connections sending random bytes, random frames, oversized length
    prefixes and non-JSON headers, in rounds of 25 at once; each round waits
    (bounded) for the server to close what it refuses.
    """
    rng = random.Random(10)
    kinds = ["random", "frames", "huge-prefix", "not-json", "not-object"]
    closed = 0
    sent = 0
    stillOpen = 0
    refused = 0
    n = 0
    while n < args.garbage_connections:
        batch = []
        for _ in range(min(25, args.garbage_connections - n)):
            kind = kinds[n % len(kinds)]
            source = GARBAGE_SOURCES[n % len(GARBAGE_SOURCES)]
            n += 1
            if kind == "random":
                data = rng.randbytes(rng.randint(1, 64 * 1024))
            elif kind == "frames":
                data = b"".join(
                    PREFIX.pack(k) + rng.randbytes(k)
                    for k in (rng.randint(0, 2000) for _ in range(20))
                )
            elif kind == "huge-prefix":
                data = PREFIX.pack(rng.randint(1 << 20, (1 << 32) - 1)) + rng.randbytes(100)
            elif kind == "not-json":
                junk = b"{" + rng.randbytes(200)
                data = PREFIX.pack(len(junk)) + junk + PREFIX.pack(0)
            else:
                data = PREFIX.pack(2) + b"[]" + PREFIX.pack(0)
            s = socket.socket()
            s.bind((source, 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", server.port))
                s.sendall(data)
                sent += len(data)
            except OSError:
                refused += 1
                s.close()
                continue
            batch.append(s)
        deadline = time.monotonic() + 15
        for s in batch:
            try:
                while time.monotonic() < deadline:
                    s.settimeout(max(0.01, deadline - time.monotonic()))
                    if not s.recv(65536):
                        closed += 1
                        break
                else:
                    stillOpen += 1
            except TimeoutError:
                stillOpen += 1
            except OSError:
                closed += 1
            s.close()
    return {
        "connections": n,
        "bytes_sent": sent,
        "refused_at_connect": refused,
        "closed_by_server": closed,
        "still_open_after_15s": stillOpen,
    }


# -- report -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import twisted

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def printPhase(name: str, r: dict[str, Any]) -> None:
    ping = r["ping_ms"]
    fresh = r["connect_ping_ms"]
    print(f"\n{name}")
    print(f"  server: peak descriptors {r['peak_descriptors']}, peak RSS {r['peak_rss_mib']} MiB")
    print(
        f"  bystander ping (ms): p50 {ping['p50']}  p99 {ping['p99']}  max {ping['max']}  "
        f"({ping['count']} pings, {r['ping_failures']} failed; worst at "
        f"+{r['worst_ping_at_s']} s)"
    )
    print(
        f"  bystander connect+ping (ms): p50 {fresh['p50']}  max {fresh['max']}  "
        f"({fresh['count']})"
    )
    if r["first_failure"]:
        print(f"  first bystander failure: {r['first_failure']}")
    for key, value in r.items():
        if key in {
            "ping_ms",
            "connect_ping_ms",
            "ping_failures",
            "worst_ping_at_s",
            "first_failure",
            "peak_descriptors",
            "peak_rss_mib",
        }:
            continue
        print(f"  {key}: {value}")


def prepareRoot(root: str) -> str:
    """
    The 16 MiB file and the 100,000-entry directory; returns the file's
    SHA-256.
    """
    data = os.urandom(BIG_SIZE)
    Path(root, "big.bin").write_bytes(data)
    many = Path(root, "many")
    many.mkdir()
    for i in range(LISTING_ENTRIES):
        os.close(os.open(many / f"entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument(
        "--write-timeout",
        type=float,
        default=None,
        help="pass --write-timeout S to the server (default: the server's default)",
    )
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="OPT",
        help="another twistd frameserver option (repeatable): --server-option=--idle-timeout=5",
    )
    parser.add_argument("--stall-connections", type=int, default=85)
    parser.add_argument("--stall-gets", type=int, default=255, help="gets per stalled connection")
    parser.add_argument(
        "--stall-wait", type=float, default=100.0, help="most seconds to wait for the closes"
    )
    parser.add_argument("--list-rounds", type=int, default=5)
    parser.add_argument("--garbage-connections", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter waits")
    args = parser.parse_args(argv)
    if args.quick:
        args.list_rounds = 2
        args.garbage_connections = 100
    extra = list(args.server_option)
    if args.write_timeout is not None:
        extra.append(f"--write-timeout={args.write_timeout:g}")
    facts = machine()
    work = tempfile.mkdtemp(prefix="frames-abuse-")
    try:
        root = os.path.join(work, "root")
        os.mkdir(root)
        print(f"preparing {root}: a 16 MiB file and a {LISTING_ENTRIES}-entry directory ...")
        bigSha = prepareRoot(root)
        server = Server(root, os.path.join(work, "server.log"), extra)
        results: dict[str, Any] = {"machine": facts, "server_args": server.args[3:]}
        try:
            facts["server_rlimit_nofile"] = server.openFileLimit()
            results["idle"] = {"descriptors": server.descriptors(), "rss_mib": server.rss() / MiB}
            print("stalled readers ...")
            results["stalled_readers"] = watched(
                server, lambda: stalledReaders(server, args, bigSha)
            )
            print("large listing ...")
            results["large_listing"] = watched(server, lambda: largeListing(server, args))
            print("garbage burst ...")
            results["garbage"] = watched(server, lambda: garbageBurst(server, args))
            results["alive_at_end"] = server.proc.poll() is None
        finally:
            server.stop()
        log = Path(server.logPath).read_text(errors="replace")
        results["server_log"] = {
            "lines": log.count("\n"),
            "tracebacks": log.count("Traceback"),
            "too_many_open_files": log.count("Too many open files"),
            "write_timeouts": log.count("write timeout:"),
            "protocol_violations": log.count("protocol violation from"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\ntwisted-frames abuse bench  {facts['date']}  Python {facts['python']}  "
        f"Twisted {facts['twisted']}"
    )
    print(
        f"{facts['platform']}  CPUs: {facts['cpu_count']} (usable {facts['cpus_usable']})  "
        f"load avg at start: {' '.join(str(x) for x in facts['loadavg_at_start'])}  "
        f"server RLIMIT_NOFILE {facts['server_rlimit_nofile']}"
    )
    print(f"server: twistd {' '.join(results['server_args'])}")
    idle = results["idle"]
    print(f"idle server: {idle['descriptors']} descriptors, RSS {idle['rss_mib']:.1f} MiB")
    printPhase(
        f"1. stalled readers ({args.stall_connections} connections from "
        f"{len(STALL_SOURCES)} addresses, {args.stall_gets} pipelined gets each, never read)",
        results["stalled_readers"],
    )
    printPhase(
        f"2. {LISTING_ENTRIES}-entry directory listed {args.list_rounds} times",
        results["large_listing"],
    )
    printPhase(f"3. garbage from {args.garbage_connections} connections", results["garbage"])
    print(f"\nserver alive at the end: {results['alive_at_end']}")
    print(f"server log: {results['server_log']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
