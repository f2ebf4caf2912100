"""
TLS throughput and login cost of twisted-frames, against Python's own C{ssl}
sockets moving the same bytes in the same run.

    PYTHONPATH=. python bench/bench_tls.py [--total-mib 1024] [--chunk-mib 64]

Throughput: the client sends C{--total-mib} MiB as C{ping} requests of
C{--chunk-mib} MiB each to a C{twistd frameserver} (mutual TLS, logged in),
which streams every body straight back, so the bytes cross TLS both ways.
The baseline is a plain Python C{ssl} echo server (a thread per connection:
C{recv} into a buffer, C{sendall} it back) and a C{ssl} client with one thread
sending and one receiving, over the same certificates, also in a separate
process.  Both report MiB/s of payload in each direction.

Login: the mean time per connection of connect + greeting, with and without
the HMAC login, over TCP and over TLS, against the same kind of server.

Only public tools: Python, Twisted, pyOpenSSL, cryptography.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MiB = 1024 * 1024
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def rawServer(cert: str, key: str) -> None:
    """
    The baseline: a Python ssl echo server; prints its port, serves until
    killed.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)

    def serve(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                n = tls.recv_into(buf)
                if not n:
                    return
                tls.sendall(view[:n])

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def rawClient(port: int, ca: str, total: int, chunk: int) -> tuple[float, str]:
    """
    Send C{total} bytes in C{chunk}-sized writes from one thread while
    another reads the echo back.

    @return: seconds taken and the negotiated cipher.
    """
    ctx = ssl.create_default_context(cafile=ca)
    payload = os.urandom(chunk)
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            started = time.perf_counter()

            def send() -> None:
                for _ in range(total // chunk):
                    tls.sendall(payload)

            sender = threading.Thread(target=send)
            sender.start()
            buf = bytearray(1 << 20)
            got = 0
            while got < total:
                n = tls.recv_into(buf)
                if not n:
                    raise RuntimeError("echo server closed early")
                got += n
            sender.join()
            elapsed = time.perf_counter() - started
            cipher = f"{tls.version()} {tls.cipher()[0]}"
    return elapsed, cipher


def startFrameServer(work: str, certs: dict[str, str], users: str, tls: bool) -> tuple[Any, int]:
    """
    Start C{twistd -n frameserver} on a free loopback port.
    """
    log = os.path.join(work, f"server-{'tls' if tls else 'tcp'}.log")
    os.makedirs(os.path.join(work, "srv"), exist_ok=True)
    argv = [
        *TWISTD,
        "-n",
        "--pidfile=",
        "--logfile",
        log,
        "frameserver",
        "--root",
        os.path.join(work, "srv"),
        "--udp",
        "0",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--users",
        users,
        "--max-per-source",
        "0",
        "--max-unauthenticated-per-source",
        "0",
    ]
    if tls:
        argv += ["--tls-cert", certs["server"], "--tls-key", certs["server-key"]]
        argv += ["--tls-ca", certs["ca"]]
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(argv, env=env, cwd=work)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if os.path.exists(log):
            with open(log) as f:
                m = re.search(r"starting on (\d+)", f.read())
            if m:
                return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError(f"frameserver did not start; see {log}")


def framesRun(
    args: argparse.Namespace, certs: dict[str, str], secretFile: str, ports: dict[str, int]
) -> dict[str, Any]:
    """
    The twisted-frames measurements, in one reactor run.
    """
    from twisted.internet import defer
    from twisted.python.failure import Failure

    from twisted_frames.auth.keys import loadSecretFile
    from twisted_frames.client import connect
    from twisted_frames.tls import clientOptions

    secret = loadSecretFile(secretFile)
    results: dict[str, Any] = {}

    def tlsOptions() -> Any:
        return clientOptions("localhost", certs["ca"], certs["client"], certs["client-key"])

    async def main(reactor: Any) -> None:
        total, chunk = args.total_mib * MiB, args.chunk_mib * MiB
        payload = os.urandom(chunk)
        for name, port, tls in (("tls", ports["tls"], True), ("tcp", ports["tcp"], False)):
            client = await connect(
                reactor,
                f"127.0.0.1:{port}",
                tls=tlsOptions() if tls else None,
                secret=secret,
                timeout=60,
            )
            started = time.perf_counter()
            for _ in range(total // chunk):
                echoed = await client.ping(payload)
                if len(echoed) != chunk:
                    raise RuntimeError("short echo")
            results[f"frames_{name}_s"] = time.perf_counter() - started
            await client.close()
        for name, tls, login in (
            ("tcp_nologin", False, False),
            ("tcp_login", False, True),
            ("tls_nologin", True, False),
            ("tls_login", True, True),
        ):
            port = ports["tls" if tls else "tcp"]
            times = []
            for _ in range(args.logins):
                started = time.perf_counter()
                client = await connect(
                    reactor,
                    f"127.0.0.1:{port}",
                    tls=tlsOptions() if tls else None,
                    secret=secret if login else None,
                    timeout=30,
                )
                times.append(time.perf_counter() - started)
                await client.close()
            times.sort()
            results[f"connect_{name}_ms"] = {
                "mean": 1000 * sum(times) / len(times),
                "median": 1000 * times[len(times) // 2],
            }

    from twisted.internet import reactor

    outcome: list[Any] = []
    d = defer.ensureDeferred(main(reactor))
    d.addBoth(outcome.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if outcome and isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=1024, help="payload each way (MiB)")
    parser.add_argument("--chunk-mib", type=int, default=64, help="ping body size (MiB)")
    parser.add_argument("--logins", type=int, default=200, help="connections per login case")
    parser.add_argument("--raw-server", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_server:
        rawServer(*args.raw_server)
        return

    from twisted_frames.auth.keys import addUser, newSecret, writePrivate
    from twisted_frames.certs import writeQuickStart

    work = tempfile.mkdtemp(prefix="bench-tls-")
    certs = writeQuickStart(os.path.join(work, "certs"), ["localhost", "127.0.0.1"])
    secret = newSecret("bench")
    users = os.path.join(work, "users")
    addUser(users, secret.record())
    secretFile = os.path.join(work, "bench.secret")
    writePrivate(secretFile, secret.toText())
    total, chunk = args.total_mib * MiB, args.chunk_mib * MiB

    raw = subprocess.Popen(
        [sys.executable, __file__, "--raw-server", certs["server"], certs["server-key"]],
        stdout=subprocess.PIPE,
        text=True,
    )
    servers = []
    try:
        assert raw.stdout is not None
        rawPort = int(raw.stdout.readline())
        rawSeconds, cipher = rawClient(rawPort, certs["ca"], total, chunk)
        tlsServer, tlsPort = startFrameServer(work, certs, users, tls=True)
        servers.append(tlsServer)
        tcpServer, tcpPort = startFrameServer(work, certs, users, tls=False)
        servers.append(tcpServer)
        frames = framesRun(args, certs, secretFile, {"tls": tlsPort, "tcp": tcpPort})
    finally:
        raw.kill()
        for s in servers:
            s.terminate()
            s.wait(15)

    def rate(seconds: float) -> float:
        return total / MiB / seconds

    report = {
        "payload_each_way_mib": args.total_mib,
        "chunk_mib": args.chunk_mib,
        "baseline_cipher": cipher,
        "raw_ssl_mib_s": rate(rawSeconds),
        "frames_tls_mib_s": rate(frames["frames_tls_s"]),
        "frames_tcp_mib_s": rate(frames["frames_tcp_s"]),
        "tls_ratio_vs_raw_ssl": rawSeconds / frames["frames_tls_s"],
        **{k: v for k, v in frames.items() if k.startswith("connect_")},
    }
    print(f"payload {args.total_mib} MiB each way, {args.chunk_mib} MiB per message")
    print(f"raw Python ssl echo ({cipher}): {report['raw_ssl_mib_s']:8.1f} MiB/s each way")
    print(
        f"twisted-frames ping over TLS:      {report['frames_tls_mib_s']:8.1f} MiB/s each way "
        f"({report['tls_ratio_vs_raw_ssl']:.2f}x raw ssl)"
    )
    print(f"twisted-frames ping over TCP:      {report['frames_tcp_mib_s']:8.1f} MiB/s each way")
    for name in ("tcp_nologin", "tcp_login", "tls_nologin", "tls_login"):
        v = frames[f"connect_{name}_ms"]
        print(
            f"connect+greeting {name:12s}: mean {v['mean']:6.2f} ms, median {v['median']:6.2f} ms"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
