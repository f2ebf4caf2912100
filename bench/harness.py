"""
What C{bench_files.py} and C{bench_vs_ssh.py} share: the machine facts every
result carries, a C{twistd frameserver} of this checkout in a subprocess on a
free loopback port, certificates and a user made with the project's own
tooling, and test files of random bytes.

Everything runs from this checkout: the repository root goes first on
C{PYTHONPATH} of every subprocess, whatever copy of the package is installed.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import re
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHUNK = 1024 * 1024
MiB = CHUNK

#: Runs twistd from this interpreter (its module has no C{__main__} guard).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
#: The line a server logs once it listens (the port is picked by the kernel).
_LISTENING = re.compile(r"frameserver listening on tcp 127\.0\.0\.1:(\d+)")
#: The C{frames} console script, from this interpreter and checkout.
FRAMES = [sys.executable, "-m", "twisted_frames"]

# The benchmarks measure this checkout, in this process too.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def checkoutEnv() -> dict[str, str]:
    """
    The environment for subprocesses: this checkout first on C{PYTHONPATH},
    and none of the C{FRAMES_*} settings of whoever runs the benchmark.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMES_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, env.get("PYTHONPATH", "")] if p)
    return env


def freePort() -> int:
    """
    A loopback TCP port nobody listens on right now (the kernel's pick).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def waitForPort(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 30) -> None:
    """
    Wait until something accepts connections on C{port}; fail with C{what}
    if C{proc} exits first or C{timeout} seconds pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:g} s")


# -- test files ---------------------------------------------------------------


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


def fileDigest(path: str) -> str:
    """
    A BLAKE3 digest of a file, on all cores: how the benchmarks check a copy
    against its source after the timing, quicker than SHA-256.
    """
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


def removeIfThere(path: str) -> None:
    """
    Remove a file if it exists, so that every transfer writes fresh pages.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- machine facts ------------------------------------------------------------


def _firstLine(cmd: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (done.stdout or done.stderr).strip().splitlines()
    return out[0] if out else None


def _cpuModel() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memTotalGiB() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return None


def _rate(fn: Any, nbytes: int, seconds: float = 0.3) -> float:
    """
    GB/s of C{fn()} processing C{nbytes} per call: the best of calls for
    about C{seconds}.
    """
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() > deadline:
            return nbytes / best / 1e9


def primitiveSpeeds() -> dict[str, float]:
    """
    One core's speed (GB/s, best of a few calls) at the work every transfer
    does: SHA-256 and BLAKE3 (one thread) of 64 MiB in 1 MiB chunks, and
    AES-128-GCM encryption of 1 MiB chunks (the cipher both TLS and ssh use
    here).
    """
    data = os.urandom(CHUNK)
    view = memoryview(data)
    n = 64

    def sha() -> None:
        h = hashlib.sha256()
        for _ in range(n):
            h.update(view)

    speeds = {"sha256_GBps": _rate(sha, n * CHUNK)}
    try:
        import blake3

        def b3() -> None:
            h = blake3.blake3()
            for _ in range(n):
                h.update(view)

        speeds["blake3_1thread_GBps"] = _rate(b3, n * CHUNK)
    except ImportError:
        pass
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aes = AESGCM(AESGCM.generate_key(bit_length=128))
        nonce = os.urandom(12)

        def gcm() -> None:
            for _ in range(16):
                aes.encrypt(nonce, data, None)

        speeds["aes128gcm_GBps"] = _rate(gcm, 16 * CHUNK)
    except ImportError:
        pass
    return speeds


def machine(reactorName: str | None = None) -> dict[str, Any]:
    """
    The facts a figure from this machine needs to be read: when, what
    hardware, what software, how loaded, how fast its primitives are.
    """
    import twisted

    facts: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "twisted": twisted.__version__,
        "openssl_python": ssl.OPENSSL_VERSION,
        "platform": platform.platform(),
        "cpu_model": _cpuModel(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_GiB": _memTotalGiB(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if reactorName:
        facts["reactor"] = reactorName
    facts.update(primitiveSpeeds())
    return facts


def printMachine(title: str, facts: dict[str, Any]) -> None:
    """
    Print the machine facts as a short header.
    """
    load = " ".join(f"{x:.2f}" for x in facts.get("loadavg_at_start") or [])
    print(
        f"{title}  {facts['date']}  Python {facts['python']}  Twisted {facts['twisted']}"
        f"{'  ' + facts['reactor'] if facts.get('reactor') else ''}"
    )
    print(
        f"{facts['platform']}  {facts['cpu_model']}  CPUs: {facts['cpu_count']} "
        f"(usable {facts['cpus_usable']})  RAM {facts['mem_total_GiB']:.1f} GiB  "
        f"load avg at start: {load}"
    )
    if facts.get("openssh"):
        print(f"{facts['openssh']}; Python ssl: {facts['openssl_python']}")
    speeds = [
        f"{label} {facts[key]:.2f} GB/s"
        for key, label in [
            ("sha256_GBps", "SHA-256"),
            ("blake3_1thread_GBps", "BLAKE3 (1 thread)"),
            ("aes128gcm_GBps", "AES-128-GCM"),
        ]
        if key in facts
    ]
    print("one core: " + ", ".join(speeds))


#: Counters of the kernel's that tell a stall of the machine's from one of
#: the code's: (file, table, field, key in the results).
_TCP_COUNTERS = [
    ("/proc/net/snmp", "Tcp", "RetransSegs", "tcp_retransmits"),
    ("/proc/net/netstat", "TcpExt", "TCPTimeouts", "tcp_timeouts"),
    ("/proc/net/netstat", "TcpExt", "TCPLossProbes", "tcp_loss_probes"),
]


def _tables(path: str) -> dict[str, dict[str, int]]:
    """
    A C{/proc/net/snmp}-style file: its header/value line pairs by table.
    """
    tables: dict[str, dict[str, int]] = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        table, _, header = names.partition(":")
        fields = dict(zip(header.split(), values.partition(":")[2].split(), strict=False))
        tables[table] = {k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()}
    return tables


def kernelCounters() -> dict[str, float]:
    """
    The machine's steal time so far (seconds the hypervisor ran something
    else while this machine's CPUs had work: C{/proc/stat}) and the
    loopback-relevant TCP counters (retransmitted segments, retransmission
    timeouts, tail-loss probes); empty where C{/proc} lacks them.
    Subtract two readings (L{counterDelta}) for what happened in between.
    """
    out: dict[str, float] = {}
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        if cpu[0] == "cpu" and len(cpu) > 8:
            out["steal_s"] = int(cpu[8]) / os.sysconf("SC_CLK_TCK")
        files = {path: _tables(path) for path in {c[0] for c in _TCP_COUNTERS}}
    except (OSError, ValueError, IndexError):
        return out
    for path, table, field, key in _TCP_COUNTERS:
        value = files[path].get(table, {}).get(field)
        if value is not None:
            out[key] = value
    return out


def counterDelta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """
    What L{kernelCounters} counted between two readings.
    """
    return {k: after[k] - before[k] for k in after if k in before}


def pageCost(directory: str, size: int = 256 * 1024 * 1024) -> dict[str, float]:
    """
    How fast this machine writes a new file in C{directory} (every page
    newly allocated) and rewrites it in place (the same pages), in GB/s:
    on a VM whose freed memory goes back to the host, a new page can cost
    many times a rewritten one, and every receiver here writes new pages.
    """
    path = os.path.join(directory, ".page-cost")
    chunk = os.urandom(CHUNK)
    rates = {}
    try:
        for key, flags in (
            ("new_pages_GBps", os.O_CREAT | os.O_TRUNC),
            ("rewrite_GBps", 0),
        ):
            fd = os.open(path, os.O_WRONLY | flags, 0o600)
            try:
                t = time.perf_counter()
                for _ in range(size // CHUNK):
                    os.write(fd, chunk)
                rates[key] = size / (time.perf_counter() - t) / 1e9
            finally:
                os.close(fd)
    finally:
        removeIfThere(path)
    return rates


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """
    Best (smallest), median and largest of some timings, and all of them.
    """
    return {
        "best": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "runs": list(samples),
    }


# -- the real server ----------------------------------------------------------


class FrameServer:
    """
    A C{twistd -n frameserver} subprocess of this checkout on a free
    loopback port, with C{options} added to its command line.
    """

    def __init__(self, root: str, log: str, options: Sequence[str] = ()) -> None:
        self.log = log
        self.argv = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "-l",
            log,
            "frameserver",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--udp",
            "0",
            "--root",
            root,
            *options,
        ]
        self.proc = subprocess.Popen(self.argv, env=checkoutEnv())
        try:
            self.port = self._listeningPort()
        except BaseException:
            self.stop()
            raise

    def _listeningPort(self, timeout: float = 30) -> int:
        """
        The port the kernel gave the server, from its log line.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.log) as f:
                    found = _LISTENING.search(f.read())
            except FileNotFoundError:
                found = None
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"twistd frameserver exited with status {self.proc.returncode}; see {self.log}"
                )
            time.sleep(0.05)
        raise SystemExit(f"twistd frameserver did not listen within {timeout:g} s")

    @property
    def address(self) -> str:
        """
        C{HOST:PORT} to connect to.
        """
        return f"127.0.0.1:{self.port}"

    def rss(self) -> int:
        """
        The server's resident set size in bytes.
        """
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpuSeconds(self) -> float:
        """
        The server's CPU time so far (user + system, all its threads), from
        C{/proc/PID/stat}.
        """
        return sum(self.cpuTimes())

    def cpuTimes(self) -> tuple[float, float]:
        """
        The server's CPU time so far, all its threads: user, system.
        """
        with open(f"/proc/{self.proc.pid}/stat") as f:
            # The fields after the command's name, which is in parentheses.
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> None:
        """
        Stop the server (SIGTERM, then SIGKILL after 30 s) and wait for it.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Credentials:
    """
    A private CA with a server and a client certificate (C{frames
    make-certs}) and a user C{bench} with its secret (C{frames keygen}),
    made in C{directory} by the project's own commands.
    """

    user = "bench"

    def __init__(self, directory: str) -> None:
        pki = os.path.join(directory, "pki")
        env = checkoutEnv()
        subprocess.run([*FRAMES, "make-certs", pki], check=True, env=env, capture_output=True)
        self.ca = os.path.join(pki, "ca.pem")
        self.serverCert = os.path.join(pki, "server.pem")
        self.serverKey = os.path.join(pki, "server.key")
        self.clientCert = os.path.join(pki, "client.pem")
        self.clientKey = os.path.join(pki, "client.key")
        self.users = os.path.join(directory, "users")
        self.secret = os.path.join(directory, "bench.secret")
        subprocess.run(
            [*FRAMES, "keygen", self.user, "--users", self.users, "-o", self.secret],
            check=True,
            env=env,
            capture_output=True,
        )

    def serverOptions(self, login: bool = True) -> list[str]:
        """
        The C{twistd frameserver} options for mutual TLS (and, with
        C{login}, the users file).
        """
        options = ["--tls-cert", self.serverCert, "--tls-key", self.serverKey]
        options += ["--tls-ca", self.ca]
        if login:
            options += ["--users", self.users]
        return options

    def clientOptions(self, login: bool = True) -> list[str]:
        """
        The C{frames} options for mutual TLS (and, with C{login}, logging in).
        """
        options = ["--ca", self.ca, "--cert", self.clientCert, "--key", self.clientKey]
        if login:
            options += ["--user", self.user, "--secret-file", self.secret]
        return options
