"""
The file service on loopback, against the practical ceiling measured in the
same run.

    python bench/bench_files.py [--quick] [--size-mib 1024] [--rounds 3]
                                [--rss-size-mib 5120] [--small 1000]
                                [--workdir /dev/shm] [--json FILE]

Starts two C{twistd frameserver}s of this checkout (plain TCP; mutual TLS with
a users file, certificates by C{frames make-certs}, the user by C{frames
keygen}) and stops them at the end.  With the page cache warm, it measures,
alternating round by round:

  - C{raw tcp+sha}: the baseline of issue 12.  Two processes with blocking
    sockets: the sender reads the file in 1 MiB chunks, hashes each with
    SHA-256 and C{sendall}s it after an 8-byte length; the receiver
    C{recv_into}s a reused 1 MiB buffer, hashes, writes, C{fsync}s the file
    and sends its hex digest back, which the sender checks;
  - C{raw ssl+sha}: the same inside Python's C{ssl} (mutual TLS with the same
    certificates, the handshake done before the clock starts);
  - put and get of the same C{--size-mib} file through the client library
    (verified by the protocol, written to a temp file, fsynced, renamed),
    over plain TCP and over mutual TLS with login; every copy is checked
    against the source's SHA-256 afterwards, outside the timing;
  - the same get into C{/dev/null} (C{FileClient.getStream}, still
    verified): the protocol, the network and the hashes without the
    receiving file system;
  - during each of those transfers, a bystander process pings the same
    server every 10 ms on its own connection; its round trips are reported.
    A bystander pings the idle server of the same transport during each
    baseline transfer too: what the machine's load alone does to a ping.
    For every transfer it also reads the kernel's steal time (what the
    hypervisor took from this machine's CPUs) and TCP retransmission
    timeouts, which tell a stall of the machine's from one of the code's.

Among the machine facts: how fast the work directory takes a new file
(every page newly allocated) and a rewrite in place; on a VM that returns
freed memory to its host, new pages can cost several times more, and
every receiver here writes new pages.

Then the server's RSS above idle during a put and a get of
C{--rss-size-mib} (sampled every 20 ms), and a small-file rate: C{--small}
files of 4 KiB put then get over one connection.

It prints the machine facts, the figures and the ratios against the goals of
issue 12 and, with C{--json}, writes them all.  A full run took 4.5 to 6
minutes on this 2-core machine while other work loaded it (load average 4 to
7); C{--quick} is 256 MiB, 1 round and 1 GiB for the RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import harness
from harness import CHUNK, MiB

#: Goals of issue 12 this benchmark measures: (key, text, target, at least?).
GOALS: list[tuple[str, str, float, bool]] = [
    ("put_vs_raw_tcp", "put over TCP >= 1.5x raw tcp+sha", 1.5, True),
    ("get_vs_raw_tcp", "get over TCP >= 1.5x raw tcp+sha", 1.5, True),
    ("rss_put_above_idle_mib", "server RSS during the big put < idle + 64 MiB", 64, False),
    ("rss_get_above_idle_mib", "server RSS during the big get < idle + 64 MiB", 64, False),
    ("bystander_p99_ms", "bystander ping p99 during a transfer < 20 ms", 20, False),
]
#: The transfers of one round, rotated from round to round.
KINDS = [
    "raw_tcp",
    "put_tcp",
    "get_tcp",
    "null_tcp",
    "raw_tls",
    "put_tls",
    "get_tls",
    "null_tls",
]


# -- the baseline: raw blocking sockets ---------------------------------------


def _tlsContexts(creds: dict[str, str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """
    Python C{ssl} contexts for a mutual-TLS pair with the run's certificates:
    (server, client), defaults otherwise.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(creds["serverCert"], creds["serverKey"])
    server.load_verify_locations(creds["ca"])
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(creds["ca"])
    client.load_cert_chain(creds["clientCert"], creds["clientKey"])
    return server, client


def baselineReceiver(out: str, creds: dict[str, str] | None) -> None:
    """
    Listen on a free loopback port and print it; accept one connection (in
    C{ssl} with C{creds}), read an 8-byte length then the body into a reused
    1 MiB buffer, hashing it and writing it to C{out}, fsync, send back the
    hex digest.
    """
    srv = socket.create_server(("127.0.0.1", 0))
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if creds is not None:
        conn = _tlsContexts(creds)[0].wrap_socket(conn, server_side=True)
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


def baseline(path: str, out: str, creds: dict[str, str] | None) -> tuple[float, str | None]:
    """
    Send C{path} to a receiver process over loopback (in C{ssl} with
    C{creds}); check its digest; return the seconds from the first byte
    sent to the digest received, and the TLS cipher suite (or C{None}).
    """
    argv = [sys.executable, __file__, "--role", "receiver", out]
    if creds is not None:
        argv.append(json.dumps(creds))
    receiver = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if creds is not None:
            conn = _tlsContexts(creds)[1].wrap_socket(conn, server_hostname="localhost")
        cipher = conn.cipher()[0] if isinstance(conn, ssl.SSLSocket) else None
        size = os.path.getsize(path)
        h = hashlib.sha256()
        started = time.perf_counter()
        conn.sendall(struct.pack("!Q", size))
        with open(path, "rb", buffering=0) as f:
            while data := f.read(CHUNK):
                h.update(data)
                conn.sendall(data)
        theirs = _recvExact(conn, 64).decode()
        took = time.perf_counter() - started
        conn.close()
        if receiver.wait(timeout=60):
            raise SystemExit("baseline receiver failed")
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    if theirs != h.hexdigest():
        raise SystemExit("baseline: hash mismatch")
    return took, cipher


# -- the bystander ------------------------------------------------------------


def bystanderMain(address: str, creds: dict[str, str] | None) -> None:
    """
    Connect (over mutual TLS with login with C{creds}), print C{ready}, ping
    with a 1-byte body every 10 ms until stdin closes, then print the round
    trips in ms as a JSON list.
    """
    from twisted.internet import defer, task, threads

    from twisted_frames.client import connect

    def run(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            client = await connect(reactor, address, **clientSecurity(address, creds))
            rtts: list[float] = []
            done = threads.deferToThread(sys.stdin.read)
            print("ready", flush=True)
            while not done.called:
                t = time.perf_counter()
                await client.ping(b"x")
                rtts.append((time.perf_counter() - t) * 1000)
                await task.deferLater(reactor, 0.01, lambda: None)
            print(json.dumps(rtts), flush=True)
            await client.close()

        return defer.Deferred.fromCoroutine(go())

    task.react(run)


def clientSecurity(address: str, creds: dict[str, str] | None) -> dict[str, Any]:
    """
    The C{tls} and C{secret} arguments of C{connect()}: none without
    C{creds}, else mutual TLS and a login, as the CLI makes them.
    """
    if creds is None:
        return {}
    from twisted_frames.cli.keys import clientSecurity as fromFlags

    flags = argparse.Namespace(
        server=address,
        tls=True,
        ca=creds["ca"],
        cert=creds["clientCert"],
        key=creds["clientKey"],
        user=harness.Credentials.user,
        secret_file=creds["secret"],
    )
    return fromFlags(flags)


class Bystander:
    """
    A bystander process pinging a server while a transfer runs.
    """

    def __init__(self, address: str, creds: dict[str, str] | None) -> None:
        argv = [sys.executable, __file__, "--role", "bystander", address]
        if creds is not None:
            argv.append(json.dumps(creds))
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=harness.checkoutEnv(),
        )

    def ready(self) -> None:
        """
        Block until the bystander is connected and pinging.
        """
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("bystander did not start")

    def finish(self) -> list[float]:
        """
        Stop the bystander; return its round trips in ms.
        """
        out, _ = self.proc.communicate(timeout=60)
        if self.proc.returncode:
            raise SystemExit(f"bystander failed with status {self.proc.returncode}")
        rtts: list[float] = json.loads(out)
        return rtts


def latencies(rtts: Sequence[float]) -> dict[str, Any]:
    """
    Count, median, p99 and max of round trips in ms.
    """
    if not rtts:
        return {"count": 0, "median": None, "p99": None, "max": None}
    ordered = sorted(rtts)
    return {
        "count": len(ordered),
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


# -- the server's memory ------------------------------------------------------


class RSSSampler(threading.Thread):
    """
    Samples a server's RSS every 20 ms; remembers the peak.
    """

    def __init__(self, server: harness.FrameServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, self.server.rss())
            time.sleep(0.02)


# -- the measurements, on a real reactor in this process ----------------------


class Run:
    """
    The files, servers and credentials of one run.
    """

    def __init__(self, work: str, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.size = args.size_mib * MiB
        self.src = os.path.join(work, "src.bin")
        harness.makeFile(self.src, self.size)
        self.srcDigest = harness.fileDigest(self.src)
        self.root = os.path.join(work, "root")
        os.makedirs(self.root)
        # What the gets read: the same bytes, in the servers' root.
        shutil.copyfile(self.src, os.path.join(self.root, "src.bin"))
        c = harness.Credentials(os.path.join(work, "creds"))
        self.creds = {
            "ca": c.ca,
            "serverCert": c.serverCert,
            "serverKey": c.serverKey,
            "clientCert": c.clientCert,
            "clientKey": c.clientKey,
            "secret": c.secret,
        }
        self.serverOptions = c.serverOptions()
        self.plain: harness.FrameServer | None = None
        self.tls: harness.FrameServer | None = None
        #: The cipher suite Python's C{ssl} chose for the baseline.
        self.baselineCipher: str | None = None

    def start(self) -> None:
        """
        Start both servers.
        """
        self.plain = harness.FrameServer(self.root, os.path.join(self.work, "plain.log"))
        self.tls = harness.FrameServer(
            self.root, os.path.join(self.work, "tls.log"), self.serverOptions
        )

    def stop(self) -> None:
        """
        Stop the servers that started.
        """
        for server in (self.plain, self.tls):
            if server is not None:
                server.stop()

    def check(self, path: str, what: str) -> None:
        """
        Fail unless C{path} holds the source's bytes; then remove it.
        """
        if harness.fileDigest(path) != self.srcDigest:
            raise SystemExit(f"{what}: the copy differs from the source")
        os.unlink(path)


async def transfer(
    reactor: Any,
    run: Run,
    kind: str,
    files: Any,
    pings: dict[str, list],
    cpu: dict[str, list[tuple[float, float, float, float]]],
    kernel: dict[str, list[dict[str, float]]],
) -> float:
    """
    One transfer of the big file (C{kind} as in L{KINDS}); return seconds.
    A bystander pings the server of the same transport meanwhile, into
    C{pings[kind]} (during a baseline transfer too, which does not go
    through that server: what the machine's load alone does to it); the
    kernel's counters (steal time, TCP retransmissions) go to
    C{kernel[kind]}.  A frames transfer adds to C{cpu[kind]} the CPU
    seconds this process (the client) and the server spent on it: client
    user, client system, server user, server system.
    """
    from twisted.internet import threads

    tls = kind.endswith("tls")
    server = run.tls if tls else run.plain
    assert server is not None
    bystander = Bystander(server.address, run.creds if tls else None)
    await threads.deferToThread(bystander.ready)
    counters = harness.kernelCounters()
    if kind.startswith("raw"):
        out = os.path.join(run.work, "raw.out")
        took, cipher = await threads.deferToThread(
            baseline, run.src, out, run.creds if tls else None
        )
        kernel[kind].append(harness.counterDelta(counters, harness.kernelCounters()))
        pings[kind].extend(await threads.deferToThread(bystander.finish))
        if cipher:
            run.baselineCipher = cipher
        run.check(out, kind)
        return took
    serverCPU, clientCPU = server.cpuTimes(), _ownCPU()
    t = time.perf_counter()
    written: str | None
    if kind.startswith("put"):
        await files.putFile(run.src, "put.bin", overwrite=True)
        took = time.perf_counter() - t
        written = os.path.join(run.root, "put.bin")
    elif kind.startswith("null"):
        # The same download into /dev/null: the protocol, the network and
        # the hash without the receiving file system (verified all the same).
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            await files.getStream("src.bin", fd)
        finally:
            os.close(fd)
        took = time.perf_counter() - t
        written = None
    else:
        written = os.path.join(run.work, "got.bin")
        await files.getFile("src.bin", written, overwrite=True)
        took = time.perf_counter() - t
    clientNow, serverNow = _ownCPU(), server.cpuTimes()
    cpu[kind].append(
        (
            clientNow[0] - clientCPU[0],
            clientNow[1] - clientCPU[1],
            serverNow[0] - serverCPU[0],
            serverNow[1] - serverCPU[1],
        )
    )
    kernel[kind].append(harness.counterDelta(counters, harness.kernelCounters()))
    pings[kind].extend(await threads.deferToThread(bystander.finish))
    if written is not None:
        run.check(written, kind)
    return took


def _ownCPU() -> tuple[float, float]:
    """
    This process's CPU time so far (all its threads): user, system.
    """
    t = os.times()
    return t.user, t.system


async def smallFiles(files: Any, work: str, count: int) -> dict[str, float]:
    """
    Files per second putting then getting C{count} files of 4 KiB.
    """
    small = os.path.join(work, "small")
    back = os.path.join(work, "smallback")
    os.makedirs(small)
    os.makedirs(back)
    for i in range(count):
        with open(os.path.join(small, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(4096))
    await files.mkdir("small")
    t = time.perf_counter()
    for i in range(count):
        await files.putFile(os.path.join(small, f"f{i:05d}"), f"small/f{i:05d}", overwrite=True)
    put = count / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(count):
        await files.getFile(f"small/f{i:05d}", os.path.join(back, f"f{i:05d}"), overwrite=True)
    get = count / (time.perf_counter() - t)
    shutil.rmtree(small)
    shutil.rmtree(back)
    for i in range(count):
        await files.delete(f"small/f{i:05d}")
    await files.delete("small")
    return {"small_put_files_per_s": put, "small_get_files_per_s": get}


async def serverMemory(files: Any, run: Run, size: int) -> dict[str, float]:
    """
    The plain server's RSS: idle, and its peak above idle during a put and a
    get of C{size} bytes.
    """
    from twisted.internet import threads

    server = run.plain
    assert server is not None
    big = os.path.join(run.work, "rss.bin")
    await threads.deferToThread(harness.makeFile, big, size)
    results: dict[str, float] = {}
    for op in ("put", "get"):
        idle = server.rss()
        sampler = RSSSampler(server)
        sampler.start()
        t = time.perf_counter()
        if op == "put":
            await files.putFile(big, "rss.bin", overwrite=True)
            # Room in tmpfs for the download.
            os.unlink(big)
        else:
            await files.getFile("rss.bin", big, overwrite=True)
        results[f"rss_{op}_s"] = time.perf_counter() - t
        sampler.stopping.set()
        sampler.join()
        results[f"rss_{op}_idle_mib"] = idle / MiB
        results[f"rss_{op}_above_idle_mib"] = (sampler.peak - idle) / MiB
    os.unlink(big)
    await files.delete("rss.bin")
    return results


async def measure(reactor: Any, run: Run) -> dict[str, Any]:
    """
    Every figure of the run.
    """
    from twisted_frames.client import connect
    from twisted_frames.files.client import FileClient

    assert run.plain is not None and run.tls is not None
    args = run.args
    plain = await connect(reactor, run.plain.address)
    tls = await connect(reactor, run.tls.address, **clientSecurity(run.tls.address, run.creds))
    clients = {"tcp": FileClient(plain), "tls": FileClient(tls)}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    pings: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu: dict[str, list[tuple[float, float, float, float]]] = {kind: [] for kind in KINDS}
    kernel: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for r in range(args.rounds):
        for kind in KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]:
            files = clients[kind.rsplit("_", 1)[1]]
            times[kind].append(await transfer(reactor, run, kind, files, pings, cpu, kernel))
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    results: dict[str, Any] = {"transfers": {}, "raw_ssl_cipher": run.baselineCipher}
    mb = run.size / 1e6
    for kind in KINDS:
        s = harness.summary(times[kind])
        s["best_MBps"] = mb / s["best"]
        s["median_MBps"] = mb / s["median"]
        s["bystander_ms"] = latencies(pings[kind])
        s["kernel_per_round"] = kernel[kind]
        s["kernel"] = {key: sum(k.get(key, 0) for k in kernel[kind]) for key in kernel[kind][0]}
        if not kind.startswith("raw"):
            gib = run.size / 2**30
            s["cpu_s_per_GiB"] = {
                "client": statistics.median(c[0] + c[1] for c in cpu[kind]) / gib,
                "server": statistics.median(c[2] + c[3] for c in cpu[kind]) / gib,
                "client_kernel": statistics.median(c[1] for c in cpu[kind]) / gib,
                "server_kernel": statistics.median(c[3] for c in cpu[kind]) / gib,
            }
        results["transfers"][kind] = s
    if args.small:
        results.update(await smallFiles(clients["tcp"], run.work, args.small))
    if args.rss_size_mib:
        results.update(await serverMemory(clients["tcp"], run, args.rss_size_mib * MiB))
    await plain.close()
    await tls.close()
    return results


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """
    The ratios the goals are about: throughput against the baseline of the
    same transport (best of the rounds, and medians), the worst bystander
    p99, the server's memory.
    """
    t = results["transfers"]
    out: dict[str, float] = {}
    for transport in ("tcp", "tls"):
        raw = t[f"raw_{transport}"]
        for op in ("put", "get"):
            mine = t[f"{op}_{transport}"]
            out[f"{op}_vs_raw_{transport}"] = mine["best_MBps"] / raw["best_MBps"]
            out[f"{op}_vs_raw_{transport}_median"] = mine["median_MBps"] / raw["median_MBps"]
    for raw in (False, True):
        p99s = [
            s["bystander_ms"]["p99"]
            for kind, s in t.items()
            if kind.startswith("raw") == raw and s.get("bystander_ms", {}).get("p99")
        ]
        if p99s:
            out["bystander_p99_raw_ms" if raw else "bystander_p99_ms"] = max(p99s)
    for op in ("put", "get"):
        if f"rss_{op}_above_idle_mib" in results:
            out[f"rss_{op}_above_idle_mib"] = results[f"rss_{op}_above_idle_mib"]
    return out


LABELS = {
    "raw_tcp": "raw tcp+sha (blocking sockets)",
    "put_tcp": "frames put, plain TCP",
    "get_tcp": "frames get, plain TCP",
    "null_tcp": "  the same get into /dev/null",
    "raw_tls": "raw ssl+sha (Python ssl)",
    "put_tls": "frames put, mutual TLS + login",
    "get_tls": "frames get, mutual TLS + login",
    "null_tls": "  the same get into /dev/null",
}


def report(results: dict[str, Any]) -> None:
    """
    Print the figures, the ratios and the goals; add the goals to
    C{results}.
    """
    harness.printMachine("twisted-frames file service", results["machine"])
    o = results["options"]
    print()
    print(
        f"{o['size_mib']} MiB, files on {o['workdir']}, loopback, page cache warm; "
        f"{o['rounds']} rounds, alternating; bystander pings every 10 ms"
    )
    m = results["machine"]
    if "new_pages_GBps" in m:
        print(
            f"writing {o['workdir']}: a new file {m['new_pages_GBps']:.2f} GB/s, "
            f"rewriting it in place {m['rewrite_GBps']:.2f} GB/s (every receiver writes new pages)"
        )
    print(
        f"{'':34} {'best MB/s':>10} {'median MB/s':>12} {'range s':>13}"
        f" {'bystander p50/p99/max ms':>26} {'CPU s/GiB client+server':>24}"
        f" {'(kernel)':>12} {'steal s':>8} {'RTOs':>5}"
    )
    for kind, s in results["transfers"].items():
        b = s.get("bystander_ms")
        pings = f"{b['median']:.1f} / {b['p99']:.1f} / {b['max']:.1f}" if b and b["count"] else ""
        c = s.get("cpu_s_per_GiB")
        used = f"{c['client']:.2f} + {c['server']:.2f}" if c else ""
        inKernel = f"({c['client_kernel']:.2f} + {c['server_kernel']:.2f})" if c else ""
        k = s.get("kernel", {})
        steal = f"{k['steal_s']:.2f}" if "steal_s" in k else ""
        rtos = f"{k['tcp_timeouts']:.0f}" if "tcp_timeouts" in k else ""
        print(
            f"{LABELS[kind]:34} {s['best_MBps']:10.0f} {s['median_MBps']:12.0f} "
            f"{s['best']:6.2f}-{s['max']:<6.2f} {pings:>26} {used:>24} {inKernel:>12}"
            f" {steal:>8} {rtos:>5}"
        )
    print(
        "(CPU: medians of the rounds, in brackets the part spent in the kernel; the client "
        "is this process, the bystander apart; "
        "during a raw transfer the bystander pings the idle frames server of the same "
        "transport; steal s: time the hypervisor took from this machine's CPUs, RTOs: TCP "
        "retransmission timeouts on the machine, both summed over the rounds)"
    )
    r = results["ratios"]
    print()
    for transport, raw in (("tcp", "raw tcp+sha"), ("tls", "raw ssl+sha")):
        if transport == "tls":
            print(f"raw ssl+sha cipher suite: {results.get('raw_ssl_cipher')}")
        print(
            f"frames / {raw}: put {r[f'put_vs_raw_{transport}']:.2f}x "
            f"(medians {r[f'put_vs_raw_{transport}_median']:.2f}x), "
            f"get {r[f'get_vs_raw_{transport}']:.2f}x "
            f"(medians {r[f'get_vs_raw_{transport}_median']:.2f}x)"
        )
    if "bystander_p99_raw_ms" in r:
        print(
            f"bystander p99, worst transfer: {r['bystander_p99_ms']:.1f} ms during frames "
            f"transfers, {r['bystander_p99_raw_ms']:.1f} ms during the baselines'"
        )
    if "small_put_files_per_s" in results:
        print(
            f"small files ({o['small']} x 4 KiB, one connection): "
            f"{results['small_put_files_per_s']:.0f} put/s, "
            f"{results['small_get_files_per_s']:.0f} get/s"
        )
    if "rss_put_above_idle_mib" in results:
        print(
            f"server RSS, {o['rss_size_mib']} MiB: idle {results['rss_put_idle_mib']:.1f} MiB; "
            f"peak above idle +{results['rss_put_above_idle_mib']:.1f} MiB during the put "
            f"({results['rss_put_s']:.1f} s), +{results['rss_get_above_idle_mib']:.1f} MiB "
            f"during the get ({results['rss_get_s']:.1f} s)"
        )
    print("Goals (issue 12; throughput: best of the rounds):")
    results["goals"] = {}
    for key, text, target, atLeast in GOALS:
        if key not in r:
            continue
        met = r[key] >= target if atLeast else r[key] < target
        unit = "x" if atLeast else (" MiB" if "rss" in key else " ms")
        print(f"  {text:50} {r[key]:7.2f}{unit:4}  {'met' if met else 'NOT met'}")
        results["goals"][key] = {"goal": text, "target": target, "value": r[key], "met": met}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--quick", action="store_true", help="256 MiB, 1 round, RSS of 1 GiB")
    parser.add_argument("--size-mib", type=int, default=None, help="default 1024")
    parser.add_argument("--rounds", type=int, default=None, help="default 3")
    parser.add_argument("--rss-size-mib", type=int, default=None, help="default 5120; 0 skips")
    parser.add_argument("--small", type=int, default=None, help="default 1000; 0 skips")
    parser.add_argument(
        "--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None, help="tmpfs"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        role, *rest = args.role
        creds = json.loads(rest[1]) if len(rest) > 1 else None
        if role == "receiver":
            baselineReceiver(rest[0], creds)
        else:
            bystanderMain(rest[0], creds)
        return
    quick = {"size_mib": 256, "rounds": 1, "rss_size_mib": 1024, "small": 200}
    full = {"size_mib": 1024, "rounds": 3, "rss_size_mib": 5120, "small": 1000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.size_mib < 1 or args.rounds < 1:
        parser.error("--size-mib and --rounds must be at least 1")

    from twisted.internet import defer, task

    facts = harness.machine()
    if args.workdir:
        facts.update(harness.pageCost(args.workdir))
    results: dict[str, Any] = {
        "machine": facts,
        "options": {
            k: getattr(args, k)
            for k in ("size_mib", "rounds", "rss_size_mib", "small", "workdir", "quick")
        },
    }
    work = tempfile.mkdtemp(prefix="bench-files-", dir=args.workdir)
    run: Run | None = None
    try:
        run = Run(work, args)
        run.start()
        out: dict[str, Any] = {}

        def go(reactor: Any) -> defer.Deferred[None]:
            facts["reactor"] = type(reactor).__name__

            async def body() -> None:
                out.update(await measure(reactor, run))

            return defer.Deferred.fromCoroutine(body())

        try:
            task.react(go)
        except SystemExit as e:
            if e.code:
                raise
        results.update(out)
    finally:
        if run is not None:
            run.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["ratios"] = ratios(results)
    facts["loadavg_at_end"] = list(os.getloadavg())
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
