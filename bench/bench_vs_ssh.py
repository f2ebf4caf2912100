"""
twisted-frames against OpenSSH, in one run on this machine.

    python bench/bench_vs_ssh.py [--quick] [--size-mib 1024] [--rounds 2]
                                 [--cli-runs 10] [--workdir /dev/shm] [--json FILE]

The benchmark starts, and stops at the end:

  - a throwaway C{sshd} (C{/usr/sbin/sshd -D -e}, in the foreground): its own
    C{sshd_config}, ed25519 host key and C{authorized_keys} in a temp dir, on a
    free loopback port, key login for the current user only, cipher
    C{aes128-gcm@openssh.com} only, C{internal-sftp};
  - a C{twistd frameserver} of this checkout over mutual TLS with a users
    file (certificates by C{frames make-certs}, the user by C{frames
    keygen}), allowing the command C{true};
  - a second one over plain TCP, no login, allowing C{true}.

It then measures, alternating the tools round by round:

  - transfers of a C{--size-mib} file of random bytes on tmpfs: C{frames put}
    / C{frames get} (the CLI over mutual TLS with login, end-to-end verified by
    the protocol) against C{sftp} put / get and C{scp} both ways with
    aes128-gcm; every copy is checked against the source's BLAKE3 digest afterwards,
    outside the timing.  Whole-process wall time, so start-up and the key
    exchange or TLS handshake and login are in every figure, as a user sees it;
  - whole-process wall time of C{ssh host true} (a full key exchange and
    login), C{frames ping} and C{frames run -- true} over plain TCP, and both
    with mutual TLS and login; C{python -c pass} as the floor; and the
    copy of a 4 KiB file, C{frames get} (mutual TLS and login; also through
    Twisted) and C{frames put} against C{scp} both ways.

It prints the machine facts, the figures and the ratios against the goals of
issue 12, and with C{--json} writes them all.  Where C{sshd} is not installed
it says so, with how to install it, and exits 0 without measuring.  A full
run took 3.5 to 6 minutes on this 2-core machine while other work loaded it
(load average 4 to 10).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import harness
from harness import FRAMES, MiB, checkoutEnv

SSHD = "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
#: The small file whose copy is timed with the command lines.
SMALL_FILE = 4096
INSTALL_HINT = "apt-get install openssh-server openssh-client"
#: The privilege-separation directory Debian's sshd chroots into.
PRIVSEP_DIR = "/run/sshd"

#: Goals of issue 12 this benchmark measures: (key, text, ratio, at least?).
GOALS: list[tuple[str, str, float, bool]] = [
    ("put_vs_sftp", "frames put >= 1.5x sftp put (mutual TLS)", 1.5, True),
    ("get_vs_sftp", "frames get >= 1.5x sftp get (mutual TLS)", 1.5, True),
    ("ping_vs_ssh", "frames ping wall time <= 0.5x ssh host true", 0.5, False),
    ("run_vs_ssh", "frames run -- true wall time <= 0.5x ssh host true", 0.5, False),
    ("ping_tls_login_vs_ssh", "frames ping, TLS + login, <= 0.7x ssh host true", 0.7, False),
    ("run_tls_login_vs_ssh", "frames run -- true, TLS + login, <= 0.7x ssh host true", 0.7, False),
]


def missingTools() -> list[str]:
    """
    The OpenSSH programs this benchmark needs and cannot find.
    """
    missing = [] if os.access(SSHD, os.X_OK) else [SSHD]
    return missing + [t for t in ("ssh", "sftp", "scp", "ssh-keygen") if not shutil.which(t)]


class ThrowawaySSHD:
    """
    An C{sshd} of its own: config, host key, client key and authorized_keys
    in C{directory}, on a free loopback port, in the foreground.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700)
        self.user = getpass.getuser()
        self.madePrivsep = False
        hostKey = os.path.join(directory, "host_ed25519")
        self.clientKey = os.path.join(directory, "client_ed25519")
        for key in (hostKey, self.clientKey):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key],
                check=True,
            )
        self.authorizedKeys = os.path.join(directory, "authorized_keys")
        shutil.copyfile(self.clientKey + ".pub", self.authorizedKeys)
        os.chmod(self.authorizedKeys, 0o600)
        with open(hostKey + ".pub") as f:
            self.hostPublic = " ".join(f.read().split()[:2])
        self.knownHosts = os.path.join(directory, "known_hosts")
        self.config = os.path.join(directory, "sshd_config")
        self.log = os.path.join(directory, "sshd.log")
        if os.geteuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
            # Debian's sshd refuses to start without it; the packaged service
            # makes it at boot, and none runs here.
            os.makedirs(PRIVSEP_DIR, mode=0o755)
            self.madePrivsep = True
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        for _ in range(5):
            if self._start(harness.freePort(), hostKey):
                return
        self.stop()
        raise SystemExit(f"sshd did not start; its log ({self.log}):\n{self._logText()}")

    def _logText(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def _start(self, port: int, hostKey: str) -> bool:
        with open(self.config, "w") as f:
            f.write(
                f"ListenAddress 127.0.0.1:{port}\n"
                f"HostKey {hostKey}\n"
                f"AuthorizedKeysFile {self.authorizedKeys}\n"
                f"AllowUsers {self.user}\n"
                "PidFile none\n"
                # The temp dir's parents (/dev/shm, /tmp) are world-writable,
                # which StrictModes would refuse for authorized_keys.
                "StrictModes no\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\n"
                "UsePAM no\n"
                "UseDNS no\n"
                "PrintMotd no\n"
                "PrintLastLog no\n"
                "Compression no\n"
                f"Ciphers {CIPHER}\n"
                "Subsystem sftp internal-sftp\n"
                "LogLevel ERROR\n"
            )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self.config], stdout=log, stderr=log
            )
        try:
            harness.waitForPort(port, self.proc, "sshd", timeout=10)
        except SystemExit:
            self.stop()
            return False
        self.port = port
        with open(self.knownHosts, "w") as f:
            f.write(f"[127.0.0.1]:{port} {self.hostPublic}\n")
        return True

    def options(self) -> list[str]:
        """
        Options for C{ssh}/C{sftp}/C{scp}: no user config, this host key
        only, this identity only, never a prompt, the fastest cipher.
        """
        return [
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={self.knownHosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"Ciphers={CIPHER}",
            "-o",
            "Compression=no",
            "-i",
            self.clientKey,
        ]

    def ssh(self, *command: str) -> list[str]:
        """
        The C{ssh} command line running C{command} on this server.
        """
        return ["ssh", *self.options(), "-p", str(self.port), f"{self.user}@127.0.0.1", *command]

    def sftp(self, batch: str) -> list[str]:
        """
        The C{sftp} command line running the C{batch} file.
        """
        return ["sftp", *self.options(), "-q", "-P", str(self.port), "-b", batch, self.target]

    def scp(self, source: str, destination: str) -> list[str]:
        """
        The C{scp} command line; a path starting with C{:} is remote.
        """

        def side(path: str) -> str:
            return f"{self.target}:{path[1:]}" if path.startswith(":") else path

        return [
            "scp",
            *self.options(),
            "-q",
            "-P",
            str(self.port),
            side(source),
            side(destination),
        ]

    @property
    def target(self) -> str:
        """
        C{user@127.0.0.1}.
        """
        return f"{self.user}@127.0.0.1"

    def stop(self) -> None:
        """
        Stop the server and remove the privilege-separation dir if it was
        made for it.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.madePrivsep:
            try:
                os.rmdir(PRIVSEP_DIR)
            except OSError:
                pass
            self.madePrivsep = False


def childCPU() -> float:
    """
    User + system CPU seconds of every child this process has waited for.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: Client-side CPU seconds of the last L{timed} command.
lastCPU = [0.0]


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """
    Run a command to completion; return its wall time and its output, and
    leave its CPU time (user + system, the command and its children, so not
    a server's) in L{lastCPU}.  Fail, with its output, if it fails.
    """
    cpu = childCPU()
    t = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env)
    took = time.perf_counter() - t
    lastCPU[0] = childCPU() - cpu
    if done.returncode:
        raise SystemExit(
            f"{' '.join(argv)} failed with status {done.returncode}:\n"
            f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
        )
    return took, done.stdout.decode(errors="replace")


class Bench:
    """
    The servers, the files and the command lines of one run.
    """

    def __init__(self, work: str, args: argparse.Namespace) -> None:
        self.work = work
        self.size = args.size_mib * MiB
        self.env = checkoutEnv()
        self.src = os.path.join(work, "src.bin")
        harness.makeFile(self.src, self.size)
        self.srcDigest = harness.fileDigest(self.src)
        self.root = os.path.join(work, "frames-root")
        os.makedirs(self.root)
        # The file the gets read: the same bytes, inside the frames root.
        shutil.copyfile(self.src, os.path.join(self.root, "src.bin"))
        # A small file, for the wall time of copying one (start-up bound).
        self.small = os.path.join(work, "small.bin")
        harness.makeFile(self.small, SMALL_FILE)
        shutil.copyfile(self.small, os.path.join(self.root, "small.bin"))
        self.creds = harness.Credentials(os.path.join(work, "creds"))
        self.sshd: ThrowawaySSHD | None = None
        self.tls: harness.FrameServer | None = None
        self.plain: harness.FrameServer | None = None
        with open(os.path.join(work, "sftp-put"), "w") as f:
            f.write(f"put {self.src} {os.path.join(work, 'sftp-put.bin')}\n")
        with open(os.path.join(work, "sftp-get"), "w") as f:
            f.write(f"get {self.src} {os.path.join(work, 'sftp-got.bin')}\n")

    def start(self) -> None:
        """
        Start the servers (L{stop} stops those that started).
        """
        work = self.work
        self.sshd = ThrowawaySSHD(os.path.join(work, "sshd"))
        allow = ["--allow-command", "true"]
        self.tls = harness.FrameServer(
            self.root,
            os.path.join(work, "tls-server.log"),
            self.creds.serverOptions() + allow,
        )
        self.plain = harness.FrameServer(self.root, os.path.join(work, "plain-server.log"), allow)

    def stop(self) -> None:
        """
        Stop every server this run started.
        """
        for server in (self.plain, self.tls, self.sshd):
            if server is not None:
                server.stop()

    def frames(self, tls: bool, *argv: str) -> list[str]:
        """
        A C{frames} command line against one of the two servers.
        """
        server = self.tls if tls else self.plain
        assert server is not None
        security = self.creds.clientOptions() if tls else []
        return [*FRAMES, "--server", server.address, *security, *argv]

    # -- transfers --------------------------------------------------------------

    def transfers(self) -> dict[str, tuple[Callable[[], list[str]], str]]:
        """
        Per transfer: its command line and the file it writes (removed before
        each run, so every run writes fresh pages, and checked after).
        """
        sshd = self.sshd
        assert sshd is not None
        w = self.work
        return {
            "frames_put": (
                lambda: self.frames(True, "put", "-f", "-q", self.src, "put.bin"),
                os.path.join(self.root, "put.bin"),
            ),
            "frames_get": (
                lambda: self.frames(
                    True, "get", "-f", "-q", "src.bin", os.path.join(w, "got.bin")
                ),
                os.path.join(w, "got.bin"),
            ),
            "sftp_put": (
                lambda: sshd.sftp(os.path.join(w, "sftp-put")),
                os.path.join(w, "sftp-put.bin"),
            ),
            "sftp_get": (
                lambda: sshd.sftp(os.path.join(w, "sftp-get")),
                os.path.join(w, "sftp-got.bin"),
            ),
            "scp_put": (
                lambda: sshd.scp(self.src, ":" + os.path.join(w, "scp-put.bin")),
                os.path.join(w, "scp-put.bin"),
            ),
            "scp_get": (
                lambda: sshd.scp(":" + self.src, os.path.join(w, "scp-got.bin")),
                os.path.join(w, "scp-got.bin"),
            ),
        }

    def transferRound(
        self, order: Sequence[str], out: dict[str, list[float]], cpu: dict[str, list[float]]
    ) -> None:
        """
        Each transfer once, in C{order}; check every copy.
        """
        table = self.transfers()
        for name in order:
            argv, written = table[name]
            harness.removeIfThere(written)
            took, output = timed(argv(), self.env)
            if name.startswith("frames") and "verified" not in output:
                raise SystemExit(f"{name}: the CLI did not report a verified copy:\n{output}")
            if harness.fileDigest(written) != self.srcDigest:
                raise SystemExit(f"{name}: the copy differs from the source")
            harness.removeIfThere(written)
            out[name].append(took)
            cpu[name].append(lastCPU[0])

    # -- command lines ----------------------------------------------------------

    def commandLines(self) -> dict[str, list[str]]:
        """
        The command lines whose whole-process wall time is measured.
        """
        assert self.sshd is not None
        return {
            "python_pass": [sys.executable, "-c", "pass"],
            "ssh_true": self.sshd.ssh("true"),
            "frames_ping": self.frames(False, "ping"),
            "frames_run_true": self.frames(False, "run", "--", "true"),
            "frames_ping_tls_login": self.frames(True, "ping"),
            "frames_run_true_tls_login": self.frames(True, "run", "--", "true"),
            # The same commands through Twisted (what an endpoint string or a
            # transfer verb uses), for comparison: env(1) adds about 1 ms.
            "frames_ping_twisted": ["env", "FRAMES_TWISTED=1", *self.frames(False, "ping")],
            "frames_ping_tls_login_twisted": [
                "env",
                "FRAMES_TWISTED=1",
                *self.frames(True, "ping"),
            ],
            # Copying a small file: frames over mutual TLS with login (the
            # quick path, and through Twisted) against scp.
            "frames_get_small_tls_login": self.frames(
                True, "get", "-f", "-q", "small.bin", os.path.join(self.work, "small-got.bin")
            ),
            "frames_get_small_tls_login_twisted": [
                "env",
                "FRAMES_TWISTED=1",
                *self.frames(
                    True, "get", "-f", "-q", "small.bin", os.path.join(self.work, "small-tw.bin")
                ),
            ],
            "scp_get_small": self.sshd.scp(
                ":" + self.small, os.path.join(self.work, "small-scp.bin")
            ),
            "frames_put_small_tls_login": self.frames(
                True, "put", "-f", "-q", self.small, "small-put.bin"
            ),
            "scp_put_small": self.sshd.scp(
                self.small, ":" + os.path.join(self.work, "small-scp-put.bin")
            ),
        }


def rotate(names: Sequence[str], by: int) -> list[str]:
    """
    C{names} rotated left by C{by}, so that no tool always goes first.
    """
    by %= len(names)
    return [*names[by:], *names[:by]]


def measure(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """
    All the figures of one run.
    """
    lines = bench.commandLines()
    # Once each, unmeasured: page cache and the sshd's first fork.
    for argv in lines.values():
        timed(argv, bench.env)
    walls: dict[str, list[float]] = {name: [] for name in lines}
    cliCPU: dict[str, list[float]] = {name: [] for name in lines}
    for r in range(args.cli_runs):
        for name in rotate(list(lines), r):
            walls[name].append(timed(lines[name], bench.env)[0])
            cliCPU[name].append(lastCPU[0])
    print("  command lines done", flush=True)
    moves: dict[str, list[float]] = {name: [] for name in bench.transfers()}
    moveCPU: dict[str, list[float]] = {name: [] for name in bench.transfers()}
    puts = ["frames_put", "sftp_put", "scp_put"]
    gets = ["frames_get", "sftp_get", "scp_get"]
    for r in range(args.rounds):
        bench.transferRound(rotate(puts, r) + rotate(gets, r), moves, moveCPU)
        print(f"  transfer round {r + 1}/{args.rounds} done", flush=True)
    mb = bench.size / 1e6
    transfers = {}
    for name, times in moves.items():
        s = harness.summary(times)
        s["best_MBps"] = mb / s["best"]
        s["median_MBps"] = mb / s["median"]
        s["client_cpu_s"] = harness.summary(moveCPU[name])
        transfers[name] = s
    cli = {name: harness.summary(times) for name, times in walls.items()}
    for name, s in cli.items():
        s["client_cpu_s"] = harness.summary(cliCPU[name])
    ratios = {
        "put_vs_sftp": transfers["frames_put"]["best_MBps"] / transfers["sftp_put"]["best_MBps"],
        "get_vs_sftp": transfers["frames_get"]["best_MBps"] / transfers["sftp_get"]["best_MBps"],
        "put_vs_scp": transfers["frames_put"]["best_MBps"] / transfers["scp_put"]["best_MBps"],
        "get_vs_scp": transfers["frames_get"]["best_MBps"] / transfers["scp_get"]["best_MBps"],
        "put_vs_sftp_median": transfers["frames_put"]["median_MBps"]
        / transfers["sftp_put"]["median_MBps"],
        "get_vs_sftp_median": transfers["frames_get"]["median_MBps"]
        / transfers["sftp_get"]["median_MBps"],
    }
    ssh = cli["ssh_true"]["median"]
    for key, name in (
        ("ping_vs_ssh", "frames_ping"),
        ("run_vs_ssh", "frames_run_true"),
        ("ping_tls_login_vs_ssh", "frames_ping_tls_login"),
        ("run_tls_login_vs_ssh", "frames_run_true_tls_login"),
    ):
        ratios[key] = cli[name]["median"] / ssh
    return {"transfers": transfers, "cli": cli, "ratios": ratios}


LABELS = {
    "frames_put": "frames put (mutual TLS + login)",
    "sftp_put": f"sftp put ({CIPHER})",
    "scp_put": "scp put",
    "frames_get": "frames get (mutual TLS + login)",
    "sftp_get": f"sftp get ({CIPHER})",
    "scp_get": "scp get",
    "python_pass": "python -c pass (floor)",
    "ssh_true": "ssh host true",
    "frames_ping": "frames ping",
    "frames_run_true": "frames run -- true",
    "frames_ping_tls_login": "frames ping (TLS + login)",
    "frames_run_true_tls_login": "frames run -- true (TLS + login)",
    "frames_ping_twisted": "frames ping, FRAMES_TWISTED=1",
    "frames_ping_tls_login_twisted": "frames ping (TLS + login), FRAMES_TWISTED=1",
    "frames_get_small_tls_login": "frames get 4 KiB (TLS + login)",
    "frames_get_small_tls_login_twisted": "frames get 4 KiB (TLS + login), FRAMES_TWISTED=1",
    "scp_get_small": "scp get 4 KiB",
    "frames_put_small_tls_login": "frames put 4 KiB (TLS + login)",
    "scp_put_small": "scp put 4 KiB",
}


def report(results: dict[str, Any]) -> None:
    """
    Print the figures, the ratios and the goals.
    """
    facts = results["machine"]
    harness.printMachine("twisted-frames vs OpenSSH", facts)
    o = results["options"]
    print()
    print(
        f"Transfers of {o['size_mib']} MiB, files on {o['workdir']}, loopback; whole-process "
        f"wall time, {o['rounds']} rounds"
    )
    print(
        f"{'':36} {'best MB/s':>10} {'median MB/s':>12} {'best s':>8} {'max s':>8}"
        f" {'client CPU s':>13}"
    )
    for name, s in results["transfers"].items():
        print(
            f"{LABELS[name]:36} {s['best_MBps']:10.0f} {s['median_MBps']:12.0f} "
            f"{s['best']:8.2f} {s['max']:8.2f} {s['client_cpu_s']['median']:13.2f}"
        )
    print()
    print(f"Command-line wall time, {o['cli_runs']} runs each, alternating")
    print(f"{'':50} {'median ms':>10} {'best ms':>8} {'max ms':>8} {'client CPU ms':>14}")
    for name, s in results["cli"].items():
        print(
            f"{LABELS[name]:50} {s['median'] * 1e3:10.0f} {s['best'] * 1e3:8.0f} "
            f"{s['max'] * 1e3:8.0f} {s['client_cpu_s']['median'] * 1e3:14.0f}"
        )
    print("(client CPU: user + system time of the command's own processes, medians)")
    print()
    r = results["ratios"]
    print(
        f"frames / scp (best): put {r['put_vs_scp']:.2f}x, get {r['get_vs_scp']:.2f}x; "
        f"frames / sftp (medians): put {r['put_vs_sftp_median']:.2f}x, "
        f"get {r['get_vs_sftp_median']:.2f}x"
    )
    print("Goals (issue 12; transfers: best of the rounds; wall times: medians):")
    for key, text, target, atLeast in GOALS:
        met = r[key] >= target if atLeast else r[key] <= target
        print(f"  {text:56} {r[key]:5.2f}x  {'met' if met else 'NOT met'}")
    results["goals"] = {
        key: {
            "goal": text,
            "target": target,
            "ratio": r[key],
            "met": r[key] >= target if atLeast else r[key] <= target,
        }
        for key, text, target, atLeast in GOALS
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--quick", action="store_true", help="256 MiB, 1 round, 3 CLI runs")
    parser.add_argument("--size-mib", type=int, default=None, help="file size (default 1024)")
    parser.add_argument("--rounds", type=int, default=None, help="transfer rounds (default 2)")
    parser.add_argument("--cli-runs", type=int, default=None, help="wall-time runs (default 10)")
    parser.add_argument("--workdir", default="/dev/shm", help="where the files go (tmpfs)")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    args = parser.parse_args(argv)
    quick = {"size_mib": 256, "rounds": 1, "cli_runs": 3}
    full = {"size_mib": 1024, "rounds": 2, "cli_runs": 10}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.size_mib < 1 or args.rounds < 1 or args.cli_runs < 1:
        parser.error("--size-mib, --rounds and --cli-runs must be at least 1")

    missing = missingTools()
    if missing:
        print(
            f"bench_vs_ssh: skipped: OpenSSH is not installed here (missing: "
            f"{', '.join(missing)}).\nInstall it with: {INSTALL_HINT}"
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"skipped": f"missing {', '.join(missing)}"}, f, indent=2)
        return 0

    facts = harness.machine()
    facts["openssh"] = harness._firstLine(["ssh", "-V"])
    results: dict[str, Any] = {
        "machine": facts,
        "options": {
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "cli_runs": args.cli_runs,
            "workdir": args.workdir,
            "cipher": CIPHER,
            "quick": args.quick,
        },
    }
    work = tempfile.mkdtemp(prefix="bench-vs-ssh-", dir=args.workdir)
    bench: Bench | None = None
    try:
        bench = Bench(work, args)
        bench.start()
        results.update(measure(bench, args))
    finally:
        if bench is not None:
            bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
