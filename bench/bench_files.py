"""
Benchmark of the file service on loopback, against a baseline measured in the
same run.

    python bench/bench_files.py [--size-mib 1024] [--rss-size-mib 5120]
                                [--small 1000] [--workdir DIR]

Measures, with the page cache warm:

  - put and get throughput of a file of C{--size-mib} MiB through a real
    C{twistd frameserver} and the client library (SHA-256 verified, written
    to a temp file, fsynced, renamed), against the practical ceiling: raw
    blocking Python sockets in two processes sending the same file with a
    length prefix, SHA-256 on both sides, the receiver writing and fsyncing a
    file;
  - ping round-trip latency on a second connection during the upload;
  - the server's RSS above idle during a put and a get of C{--rss-size-mib};
  - small-file rate: C{--small} files of 4 KiB put then get over one
    connection.

It needs only Twisted and this package (run from a checkout with
C{PYTHONPATH=.}).  Results are printed and written as JSON to
C{bench/results/files.json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

CHUNK = 1024 * 1024
#: Runs twistd from this interpreter (its module has no C{__main__} guard).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def makeFile(path: str, size: int) -> str:
    """
    Write C{size} random bytes to C{path}; return their SHA-256.
    """
    h = hashlib.sha256()
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            # Vary each block cheaply so that nothing dedupes or compresses.
            piece = struct.pack("!Q", i) + block[8 : min(CHUNK, left)]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
            i += 1
    return h.hexdigest()


def warm(path: str) -> None:
    """
    Read a file once so that it is in the page cache.
    """
    with open(path, "rb") as f:
        while f.read(8 * CHUNK):
            pass


# -- baseline: raw blocking sockets ------------------------------------------


def baselineReceiver(port: int, out: str) -> None:
    """
    Accept one connection, read an 8-byte length then the body, hashing it
    and writing it to C{out} (fsynced); print the hex digest.
    """
    srv = socket.create_server(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    (size,) = struct.unpack("!Q", _recvExact(conn, 8))
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = size
    while left:
        n = conn.recv_into(view[: min(CHUNK, left)])
        if not n:
            raise SystemExit("baseline: connection closed early")
        h.update(view[:n])
        os.write(fd, view[:n])
        left -= n
    os.fsync(fd)
    os.close(fd)
    conn.sendall(h.hexdigest().encode())
    conn.close()


def _recvExact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise SystemExit("baseline: connection closed early")
        data += more
    return data


def baseline(path: str, out: str) -> float:
    """
    Send C{path} to a receiver process over loopback; return seconds.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--baseline-receiver", str(port), out],
    )
    for _ in range(200):
        try:
            conn = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            time.sleep(0.01)
    else:
        raise SystemExit("baseline receiver did not start")
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.perf_counter()
    size = os.path.getsize(path)
    h = hashlib.sha256()
    conn.sendall(struct.pack("!Q", size))
    with open(path, "rb", buffering=0) as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            h.update(data)
            conn.sendall(data)
    theirs = _recvExact(conn, 64).decode()
    took = time.perf_counter() - started
    conn.close()
    receiver.wait(timeout=60)
    if theirs != h.hexdigest():
        raise SystemExit("baseline: hash mismatch")
    return took


# -- the real server -----------------------------------------------------------


class Server:
    """
    A C{twistd -n frameserver} subprocess on a free port.
    """

    def __init__(self, root: str, log: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                env.get("PYTHONPATH", ""),
            ]
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "-l",
                log,
                "frameserver",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--udp",
                "0",
                "--root",
                root,
            ],
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                return
            except ConnectionRefusedError:
                time.sleep(0.05)
        raise SystemExit("server did not start")

    def rss(self) -> int:
        """
        The server's resident set size in bytes.
        """
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class RSSSampler(threading.Thread):
    """
    Samples a server's RSS every 20 ms; remembers the peak.
    """

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, self.server.rss())
            time.sleep(0.02)


# -- the client side, on a real reactor in this process ---------------------------


async def measure(reactor: Any, args: argparse.Namespace, work: str, server: Server) -> dict:
    from twisted.internet import task

    from twisted_frames.client import connect
    from twisted_frames.files.client import FileClient

    address = f"127.0.0.1:{server.port}"
    results: dict[str, Any] = {}
    src = os.path.join(work, "src.bin")
    client = await connect(reactor, address)
    files = FileClient(client)
    pinger = await connect(reactor, address)

    # Throughput, with ping latency on another connection during the put.
    rtts: list[float] = []
    stop = [False]

    async def pingLoop() -> None:
        while not stop[0]:
            t = time.perf_counter()
            await pinger.ping(b"x")
            rtts.append((time.perf_counter() - t) * 1000)
            await task.deferLater(reactor, 0.01, lambda: None)

    from twisted.internet.defer import Deferred

    pings = Deferred.fromCoroutine(pingLoop())
    t = time.perf_counter()
    put = await files.putFile(src, "big.bin", overwrite=True)
    results["put_s"] = time.perf_counter() - t
    stop[0] = True
    await pings
    results["ping_during_put_ms"] = {
        "count": len(rtts),
        "median": statistics.median(rtts) if rtts else None,
        "p99": sorted(rtts)[int(len(rtts) * 0.99)] if rtts else None,
        "max": max(rtts) if rtts else None,
    }
    rtts.clear()
    stop[0] = False
    pings = Deferred.fromCoroutine(pingLoop())
    dst = os.path.join(work, "got.bin")
    t = time.perf_counter()
    got = await files.getFile("big.bin", dst, overwrite=True)
    results["get_s"] = time.perf_counter() - t
    stop[0] = True
    await pings
    results["ping_during_get_ms"] = {
        "count": len(rtts),
        "median": statistics.median(rtts) if rtts else None,
        "p99": sorted(rtts)[int(len(rtts) * 0.99)] if rtts else None,
        "max": max(rtts) if rtts else None,
    }
    if put["sha256"] != got["sha256"]:
        raise SystemExit("put/get hash mismatch")
    os.unlink(dst)
    await files.delete("big.bin")

    # Small files over one connection.
    small = os.path.join(work, "small")
    os.makedirs(small, exist_ok=True)
    for i in range(args.small):
        with open(os.path.join(small, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(4096))
    await files.mkdir("small")
    t = time.perf_counter()
    for i in range(args.small):
        await files.putFile(os.path.join(small, f"f{i:05d}"), f"small/f{i:05d}", overwrite=True)
    results["small_put_files_per_s"] = args.small / (time.perf_counter() - t)
    back = os.path.join(work, "smallback")
    os.makedirs(back, exist_ok=True)
    t = time.perf_counter()
    for i in range(args.small):
        await files.getFile(f"small/f{i:05d}", os.path.join(back, f"f{i:05d}"), overwrite=True)
    results["small_get_files_per_s"] = args.small / (time.perf_counter() - t)
    shutil.rmtree(small)
    shutil.rmtree(back)
    for i in range(args.small):
        await files.delete(f"small/f{i:05d}")
    await files.delete("small")

    # Server memory during a large put and get.
    if args.rss_size_mib:
        big = os.path.join(work, "rss.bin")
        makeFile(big, args.rss_size_mib * CHUNK)
        idle = server.rss()
        sampler = RSSSampler(server)
        sampler.start()
        t = time.perf_counter()
        await files.putFile(big, "rss.bin", overwrite=True)
        results["rss_put_s"] = time.perf_counter() - t
        sampler.stopping.set()
        sampler.join()
        results["rss_idle_mib"] = idle / CHUNK
        results["rss_put_peak_above_idle_mib"] = (sampler.peak - idle) / CHUNK
        os.unlink(big)
        idle = server.rss()
        sampler = RSSSampler(server)
        sampler.start()
        t = time.perf_counter()
        await files.getFile("rss.bin", big, overwrite=True)
        results["rss_get_s"] = time.perf_counter() - t
        sampler.stopping.set()
        sampler.join()
        results["rss_get_peak_above_idle_mib"] = (sampler.peak - idle) / CHUNK
        os.unlink(big)
        await files.delete("rss.bin")
    await client.close()
    await pinger.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rss-size-mib", type=int, default=5120, help="0 to skip")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--workdir", default=None, help="default: a temp dir under cwd")
    parser.add_argument("--baseline-receiver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_receiver:
        baselineReceiver(int(args.baseline_receiver[0]), args.baseline_receiver[1])
        return
    work = tempfile.mkdtemp(prefix="bench-files-", dir=args.workdir or os.getcwd())
    try:
        size = args.size_mib * CHUNK
        src = os.path.join(work, "src.bin")
        makeFile(src, size)
        warm(src)
        root = os.path.join(work, "root")
        os.makedirs(root)
        results: dict[str, Any] = {"size_mib": args.size_mib, "small_files": args.small}
        results["baseline_s"] = baseline(src, os.path.join(work, "baseline.out"))
        os.unlink(os.path.join(work, "baseline.out"))
        server = Server(root, os.path.join(work, "server.log"))
        try:
            from twisted.internet import defer, task

            out: dict[str, Any] = {}

            def run(reactor: Any) -> defer.Deferred[None]:
                async def go() -> None:
                    out.update(await measure(reactor, args, work, server))

                return defer.Deferred.fromCoroutine(go())

            try:
                task.react(run)
            except SystemExit as e:
                if e.code:
                    raise
            results.update(out)
        finally:
            server.stop()
        mb = size / 1e6
        results["baseline_MBps"] = mb / results["baseline_s"]
        results["put_MBps"] = mb / results["put_s"]
        results["get_MBps"] = mb / results["get_s"]
        results["put_ratio"] = results["put_MBps"] / results["baseline_MBps"]
        results["get_ratio"] = results["get_MBps"] / results["baseline_MBps"]
        print(json.dumps(results, indent=2))
        outdir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(outdir, exist_ok=True)
        with open(os.path.join(outdir, "files.json"), "w") as f:
            json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
