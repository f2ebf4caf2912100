"""
The how-to guides (C{docs/howto/deploy.md}, C{secure.md} and the systemd unit
C{frameserver.service}) work as written: their commands run, in a temporary
directory, against real processes.

A test machine cannot run everything as printed, so a few words are put in
place, and only those: the system's paths (C{/opt}, C{/var}, C{/run}) by
directories under a temporary one, the user C{frames} by the current user,
C{sudo} by nothing, the fixed ports by ports the kernel picks, C{0.0.0.0} by
loopback, the example host C{files.example.com} by C{localhost}.  Lines that
change the system itself (C{useradd}, C{systemctl}, installing into C{/opt})
are listed here as not run; every other line of every block is run, and a
block the tests do not know is a failure.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from twisted_frames import tap
from twisted_frames.security import isLocalEndpoint

from .serverprocess import (
    ROOT,
    START_TIMEOUT,
    childEnv,
    listeningPort,
    stopDaemon,
    stopLeftoverDaemon,
)

HOWTO = ROOT / "docs" / "howto"
TIMEOUT = 60


def fencedBlocks(path: Path) -> list[tuple[str, str]]:
    """
    The C{(language, text)} of every fenced code block of a Markdown page,
    in order (directives such as C{{literalinclude}} excluded).
    """
    text = path.read_text(encoding="utf-8")
    return [
        (language, body)
        for language, body in re.findall(r"^```(\S+)\n(.*?)^```$", text, flags=re.S | re.M)
        if not language.startswith("{")
    ]


def commandLines(block: str) -> list[str]:
    """
    The commands of a shell block, continuation lines joined.
    """
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def consoleCommands(block: str) -> Iterator[tuple[str, list[str]]]:
    """
    The C{$ COMMAND} lines of a console block, each with the output lines
    printed after it.
    """
    command: str | None = None
    output: list[str] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, output
            command, output = line[2:], []
        else:
            output.append(line)
    if command is not None:
        yield command, output


def normalized(lines: list[str]) -> list[str]:
    """
    Output lines with what differs from run to run (numbers: sizes, times,
    dates; runs of blanks that align them) made equal.
    """
    return [re.sub(r"\s+", " ", re.sub(r"\d+", "0", line)).strip() for line in lines]


def replaceWords(text: str, words: Mapping[str, str]) -> str:
    """
    C{text} with each of C{words} replaced, in one pass (a replacement is
    never replaced again).
    """
    pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.sub(pattern, lambda m: words[m.group()], text)


def installScripts(bin: Path) -> None:
    """
    Put C{twistd} and C{frames} in C{bin}, as C{pip install} puts them in a
    virtual environment's, but running the checkout with this interpreter.
    """
    bin.mkdir(parents=True)
    for name, entry in (
        ("twistd", "from twisted.scripts.twistd import run as main"),
        ("frames", "from twisted_frames.cli import main"),
    ):
        script = bin / name
        script.write_text(
            f"#!{sys.executable}\nimport sys\n{entry}\nsys.argv[0] = {name!r}\nsys.exit(main())\n"
        )
        script.chmod(0o755)


def shell(
    script: str, cwd: Path, env: dict[str, str], timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """
    Run C{script} with C{sh -e}, to completion.
    """
    return subprocess.run(
        ["sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


class Started:
    """
    A long-running command started in the background, and what it has
    printed so far (stdout and stderr together).
    """

    def __init__(self, script: str, cwd: Path, env: dict[str, str], stdin: int | None = None):
        self.process = subprocess.Popen(
            ["sh", "-c", f"exec {script}"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
        self.output = b""

    def waitFor(self, pattern: bytes, timeout: float = START_TIMEOUT) -> re.Match[bytes]:
        """
        Read the output until C{pattern} matches it.

        @raise AssertionError: if the output ends, or C{timeout} seconds
            pass, first (the process is then killed).
        """
        regex = re.compile(pattern)
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            out: IO[bytes] | None = self.process.stdout
            assert out is not None
            while not (m := regex.search(self.output)):
                chunk = out.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    raise AssertionError(
                        f"no {pattern!r} in the output:\n" + self.output.decode(errors="replace")
                    )
                self.output += chunk
            return m
        finally:
            timer.cancel()

    def stop(self) -> str:
        """
        Stop it (C{SIGTERM}, then C{SIGKILL}) and return all it printed.
        """
        if self.process.poll() is None:
            self.process.terminate()
        try:
            rest, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rest, _ = self.process.communicate()
        self.output += rest
        return self.output.decode(errors="replace")


def frameserverArgs(argv: list[str]) -> list[str]:
    """
    The arguments after C{frameserver} in a twistd command line.
    """
    return argv[argv.index("frameserver") + 1 :]


def listens(argv: list[str]) -> list[str]:
    """
    The C{--listen} endpoints of a twistd command line.
    """
    return [argv[i + 1] for i, a in enumerate(argv) if a in ("--listen", "-l")]


class HowToTestCase(SynchronousTestCase):
    """
    A temporary directory standing for the machine: a virtual environment
    under C{opt/frameserver/venv} whose scripts run the checkout.
    """

    def setUp(self) -> None:
        self.machine = Path(self.mktemp()).resolve()
        self.bin = self.machine / "opt" / "frameserver" / "venv" / "bin"
        installScripts(self.bin)
        self.env = childEnv({"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"})

    def assertOptionsAccepted(self, argv: list[str], cwd: Path) -> None:
        """
        C{twistd frameserver} accepts these options as written (binding
        nothing), in C{cwd}: the checks that refuse, for example, listening
        off loopback without C{--users}.
        """
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(cwd)
        try:
            tap.Options().parseOptions(frameserverArgs(argv))
        except SystemExit as e:
            self.fail(f"twistd frameserver refuses {shlex.join(argv)}: {e.code}")

    def assertOnLoopback(self, argv: list[str]) -> None:
        """
        The tests listen on loopback only: refuse to run anything else.
        """
        endpoints = listens(argv)
        self.assertTrue(endpoints, argv)
        for endpoint in endpoints:
            self.assertTrue(isLocalEndpoint(endpoint), f"{endpoint} is not loopback")


# The lines of deploy.md that change the system, and so are not run.
DEPLOY_NOT_RUN = {
    "sudo python3 -m venv /opt/frameserver/venv": "installs into /opt; the checkout is used",
    "sudo /opt/frameserver/venv/bin/pip install .": "installs into /opt; the checkout is used",
    "sudo useradd --system --home-dir /var/lib/frameserver --shell /usr/sbin/nologin frames": (
        "adds a system user; the current user stands for it"
    ),
    "sudo cp docs/howto/frameserver.service /etc/systemd/system/": (
        "writes to /etc; the source is checked to exist"
    ),
    "sudo systemctl daemon-reload": "needs systemd; the unit's ExecStart is run instead",
    "sudo systemctl enable --now frameserver": "needs systemd",
    "systemctl status frameserver": "needs systemd",
    "journalctl -u frameserver -f          # follow the log": "needs the journal",
}


class DeployGuideTests(HowToTestCase):
    """
    C{docs/howto/deploy.md} and C{frameserver.service}.
    """

    unit = (HOWTO / "frameserver.service").read_text(encoding="utf-8")

    def onThisMachine(self, text: str) -> str:
        """
        C{text} with the system's paths, user and fixed port put in place.
        """
        user = f"{os.getuid()}:{os.getgid()}"
        return replaceWords(
            text,
            {
                "sudo ": "",
                "/opt/": f"{self.machine}/opt/",
                "/var/": f"{self.machine}/var/",
                "/run/": f"{self.machine}/run/",
                "frames:frames": user,
                "--uid=frames --gid=frames": f"--uid={os.getuid()} --gid={os.getgid()}",
                "tcp:8007:": "tcp:0:",
                "tcp:9108:": "tcp:0:",
            },
        )

    def block(self, marker: str) -> str:
        """
        The one shell block of the page that contains C{marker}.
        """
        [block] = [b for lang, b in fencedBlocks(HOWTO / "deploy.md") if marker in b]
        return block

    def runLines(self, block: str) -> list[str]:
        """
        The lines of C{block} to run: all but those in L{DEPLOY_NOT_RUN}.
        """
        return [line for line in commandLines(block) if line not in DEPLOY_NOT_RUN]

    def test_everyBlockKnown(self) -> None:
        """
        Every code block of the page is one these tests run (or one of
        those that only change the system), and every line listed as not run
        is still on the page.
        """
        known = ["pip install", "useradd", "systemctl", "jq -c", "LogsDirectory=", "--pidfile="]
        known += ["frames ping", "An error has occurred", "scrape_configs:", "- alert:"]
        for language, block in fencedBlocks(HOWTO / "deploy.md"):
            matches = [k for k in known if k in block]
            self.assertEqual(len(matches), 1, f"an untested {language} block:\n{block}")
        lines = {line for _, b in fencedBlocks(HOWTO / "deploy.md") for line in commandLines(b)}
        self.assertEqual(set(DEPLOY_NOT_RUN) - lines, set())

    def test_install(self) -> None:
        """
        The install block's check, C{twistd frameserver --help}, lists the
        server's options.
        """
        [check] = self.runLines(self.block("pip install"))
        result = shell(self.onThisMachine(check), self.machine, self.env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--listen", result.stdout)

    def test_unitFileCopied(self) -> None:
        """
        The unit file that the systemd block copies is where it says, from
        the top of a clone.
        """
        self.assertEqual(self.runLines(self.block("systemctl")), [])
        [copy] = [line for line in commandLines(self.block("systemctl")) if " cp " in line]
        source = shlex.split(copy)[2]
        self.assertTrue((ROOT / source).is_file(), source)

    def unitSettings(self) -> dict[str, str]:
        """
        The C{KEY=VALUE} settings of the unit, continuation lines joined.
        """
        text = self.unit.replace("\\\n", " ")
        return dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.M))

    def test_unitServesWithJSONLogs(self) -> None:
        """
        The unit's C{ExecStart} is accepted as written and, run as systemd
        would (its C{StateDirectory} created, in its C{WorkingDirectory}),
        serves on loopback; its log on stdout is JSON lines that the page's
        C{jq} filter reads; the page's check pings it.
        """
        settings = self.unitSettings()
        argv = shlex.split(settings["ExecStart"])
        self.assertEqual(argv[0], "/opt/frameserver/venv/bin/twistd")
        self.assertOnLoopback(argv)
        for state in settings["StateDirectory"].split():
            (self.machine / "var" / "lib" / state).mkdir(parents=True)
        workingDirectory = Path(self.onThisMachine(settings["WorkingDirectory"]))
        self.assertTrue(workingDirectory.is_dir(), workingDirectory)
        self.assertOptionsAccepted(argv, workingDirectory)
        server = Started(
            shlex.join(self.onThisMachine(a) for a in argv), workingDirectory, self.env
        )
        try:
            m = server.waitFor(rb'"where": "127\.0\.0\.1:(\d+)"')
            port = int(m.group(1))
            self.checkPing(port)
            m = server.waitFor(rb'"address": "127\.0\.0\.1:(\d+)"')
            self.checkHealth(settings, int(m.group(1)))
        finally:
            log = server.stop()
        events = [json.loads(line) for line in log.splitlines()]
        self.assertTrue(any(e.get("log_namespace") == "twisted_frames.tap" for e in events))
        if shutil.which("jq") is None:
            return
        journal = self.machine / "journal"
        journal.write_text(log)
        [query] = commandLines(self.block("jq -c"))
        query = query.replace(
            "journalctl -u frameserver -o cat", f"cat {shlex.quote(str(journal))}"
        )
        result = shell(query, self.machine, self.env)
        self.assertEqual(result.returncode, 0, result.stderr)
        selected = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertTrue(selected)
        self.assertTrue(all(e["log_namespace"].startswith("twisted_frames") for e in selected))

    def checkHealth(self, settings: dict[str, str], port: int) -> None:
        """
        Run the unit's health check (C{ExecStartPost}) against the metrics
        endpoint on C{port}: it passes.
        """
        if shutil.which("curl") is None:
            return
        check = settings["ExecStartPost"].replace("127.0.0.1:9108", f"127.0.0.1:{port}")
        self.assertEqual(shlex.split(check)[0], "/usr/bin/curl")
        result = shell(check, self.machine, self.env)
        self.assertEqual(result.returncode, 0, result.stderr)

    def checkPing(self, port: int) -> None:
        """
        Run the page's check (C{frames ping}: the client's default server is
        127.0.0.1:8007, here C{port}).
        """
        [check] = commandLines(self.block("frames ping"))
        env = {**self.env, "FRAMES_SERVER": f"127.0.0.1:{port}"}
        result = shell(self.onThisMachine(check), self.machine, env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("pong from "), result.stdout)

    def test_unitVerifies(self) -> None:
        """
        C{systemd-analyze verify} finds nothing wrong in the unit, with the
        page's C{LogsDirectory} lines added (its command and user put in
        place, as nothing is installed here).
        """
        if shutil.which("systemd-analyze") is None:
            raise SkipTest("systemd-analyze is not installed")
        [extra] = [b for lang, b in fencedBlocks(HOWTO / "deploy.md") if lang == "ini"]
        unit = replaceWords(
            self.unit,
            {
                "/opt/frameserver/venv/bin/twistd": str(self.bin / "twistd"),
                "User=frames": f"User={pwd.getpwuid(os.getuid()).pw_name}",
                "Group=frames": f"Group={grp.getgrgid(os.getgid()).gr_name}",
            },
        )
        path = self.machine / "frameserver.service"
        path.write_text(unit + "\n[Service]\n" + extra)
        result = subprocess.run(
            ["systemd-analyze", "verify", str(path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn(path.name, result.stderr)

    def test_classicDaemonStartsAndStops(self) -> None:
        """
        The classic-daemon commands start a daemon that serves on loopback
        as the current user; the page's check pings it; the page's stop
        command stops it, and its pidfile goes.
        """
        lines = self.runLines(self.block("--pidfile="))
        *prepare, start = lines
        argv = shlex.split(start)
        self.assertOnLoopback(argv)
        pidfile = self.machine / "run" / "frameserver" / "frameserver.pid"
        self.addCleanup(stopLeftoverDaemon, pidfile)
        for line in prepare:
            result = shell(self.onThisMachine(line), self.machine, self.env)
            self.assertEqual(result.returncode, 0, (line, result.stderr))
        result = shell(self.onThisMachine(start), self.machine, self.env, timeout=START_TIMEOUT)
        self.assertEqual(result.returncode, 0, result.stderr)
        log = self.machine / "var" / "log" / "frameserver" / "frameserver.log"
        self.checkPing(listeningPort(log.read_text()))
        [stop] = re.findall(r"`(sudo kill [^`]+)`", (HOWTO / "deploy.md").read_text())
        stopDaemon(pidfile, stop=lambda: shell(self.onThisMachine(stop), self.machine, self.env))
        self.assertIn("Server Shut Down.", log.read_text())


# What secure.md's example host and output become on a test machine.
SECURE_WORDS = {
    "files.example.com": "localhost",
    "tcp:8443:interface=0.0.0.0": "tcp:0:interface=127.0.0.1",
}


#: Series for C{promtool test rules}: per alert of the page, what makes
#: it fire (one sample a minute, C{promtool}'s series notation), and the
#: labels and summary it fires with.
ALERT_CASES = {
    "FrameserverDown": (
        'up{job="frameserver", instance="a"}',
        "0x20",
        {"job": "frameserver"},
        "a: the metrics endpoint does not answer",
    ),
    "FrameserverRefusing": (
        'frames_refusals_total{instance="a", kind="cap", reason="max_per_source"}',
        "0+60x30",
        {"kind": "cap"},
        "a refuses 1 connections/s (cap)",
    ),
    "FrameserverLoginFailures": (
        'frames_logins_total{instance="a", result="failed"}',
        "0+30x30",
        {},
        "a: 0.5 failed logins/s",
    ),
    "FrameserverNoSpace": (
        'frames_requests_total{instance="a", op="put", outcome="no_space"}',
        "0x14 1x10",
        {},
        "a: uploads fail for lack of space under --root",
    ),
}


class MonitoringGuideTests(HowToTestCase):
    """
    The monitoring section of C{docs/howto/deploy.md}: its Prometheus
    configuration and alert rules pass C{promtool}, every alert fires on
    the series it is meant for (and not on a quiet server), and they only
    name metrics the server exports.
    """

    def setUp(self) -> None:
        super().setUp()
        blocks = [b for lang, b in fencedBlocks(HOWTO / "deploy.md") if lang == "yaml"]
        [self.config] = [b for b in blocks if "scrape_configs:" in b]
        [self.rules] = [b for b in blocks if "- alert:" in b]

    def promtool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{promtool} in the test's directory.
        """
        if shutil.which("promtool") is None:
            raise SkipTest("promtool is not installed (Debian: apt install prometheus)")
        return subprocess.run(
            ["promtool", *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=self.machine
        )

    def writeRules(self) -> Path:
        rules = self.machine / "frameserver.rules.yml"
        rules.write_text(self.rules)
        return rules

    def test_metricNames(self) -> None:
        """
        Every C{frames_} series the rules use is one the server exports.
        """
        from twisted_frames.metrics import Metrics

        exported = {s.name for m in Metrics(["put"]).registry.collect() for s in m.samples}
        used = set(re.findall(r"\b(frames_\w+)", self.rules))
        self.assertTrue(used)
        self.assertEqual(used - exported, set())

    def test_configChecks(self) -> None:
        """
        C{promtool check config} accepts the scrape job with the rule file.
        """
        rules = self.writeRules()
        config = self.machine / "prometheus.yml"
        config.write_text(self.config.replace("/etc/prometheus/frameserver.rules.yml", str(rules)))
        result = self.promtool("check", "config", str(config))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("4 rules found", result.stdout)

    def test_alertsFire(self) -> None:
        """
        Each alert fires on its own series (after its C{for:}) and none
        fires for a server that refuses nothing, fails no login and has
        room.
        """
        rules = self.writeRules()
        tests = []
        for alert, (series, values, labels, summary) in ALERT_CASES.items():
            others = [
                {"series": s, "values": "0x30" if not s.startswith("up") else "1x30"}
                for name, (s, *_) in ALERT_CASES.items()
                if name != alert
            ]
            expected = [
                {
                    "exp_labels": {"instance": "a", **labels},
                    "exp_annotations": {"summary": summary},
                }
            ]
            tests.append(
                {
                    "interval": "1m",
                    "input_series": [{"series": series, "values": values}, *others],
                    "alert_rule_test": [
                        {"eval_time": "20m", "alertname": name, "exp_alerts": expected}
                        if name == alert
                        else {"eval_time": "20m", "alertname": name, "exp_alerts": []}
                        for name in ALERT_CASES
                    ],
                }
            )
        unitTests = self.machine / "tests.yml"
        # JSON is YAML: promtool reads it as it is.
        unitTests.write_text(json.dumps({"rule_files": [str(rules)], "tests": tests}))
        result = self.promtool("test", "rules", str(unitTests))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class SecureGuideTests(HowToTestCase):
    """
    C{docs/howto/secure.md}, every step in order, in one directory that is
    both the server's host and Alice's.
    """

    def setUp(self) -> None:
        super().setUp()
        for program in ("openssl", "tar", "make"):
            if shutil.which(program) is None:
                raise SkipTest(f"{program} is not installed")
        self.work = self.machine / "home"
        self.work.mkdir()
        self.words = dict(SECURE_WORDS)
        self.exports: list[str] = []

    def test_everyStepAsWritten(self) -> None:
        """
        Certificates, keys, the users and commands files, the directories,
        the server, OpenSSL's check and every client command run as written
        (with L{SECURE_WORDS}) and print what the page shows.
        """
        server: Started | None = None
        try:
            for language, block in fencedBlocks(HOWTO / "secure.md"):
                if language == "console":
                    self.runConsole(block)
                elif language == "toml":
                    name = block.splitlines()[0].removeprefix("# ")
                    (self.work / name).write_text(block)
                elif language == "sh" and "twistd -n frameserver" in block:
                    self.assertIsNone(server)
                    server = self.startServer(block)
                elif language == "sh" and "openssl s_client" in block:
                    self.checkGreeting(block)
                elif language == "sh" and all(
                    line.startswith("export ") for line in commandLines(block)
                ):
                    self.exports += commandLines(block)
                elif language == "sh":
                    result = shell(block, self.work, self.env)
                    self.assertEqual(result.returncode, 0, (block, result.stderr))
                else:
                    self.fail(f"an untested {language} block:\n{block}")
            self.assertIsNotNone(server, "the page never starts the server")
        finally:
            if server is not None:
                server.stop()

    def here(self, text: str) -> str:
        """
        C{text} with the example host and port put in place.
        """
        return replaceWords(text, self.words)

    def startServer(self, block: str) -> Started:
        """
        Start the page's server; its port replaces 8443 from now on.
        """
        argv = shlex.split(block.replace("\\\n", " "))
        self.assertOptionsAccepted(argv, self.work)
        local = shlex.split(self.here(block.replace("\\\n", " ")))
        self.assertOnLoopback(local)
        server = Started(shlex.join(local), self.work, self.env)
        port = int(server.waitFor(rb"frameserver listening on tcp 127\.0\.0\.1:(\d+)").group(1))
        self.words[":8443"] = f":{port}"
        return server

    def checkGreeting(self, block: str) -> None:
        """
        OpenSSL's client, as written, verifies the certificates both ways
        and prints the server's greeting.
        """
        client = Started(
            self.here(block.replace("\\\n", " ")), self.work, self.env, subprocess.PIPE
        )
        try:
            client.waitFor(rb'"protocol":"twisted-frames"')
        finally:
            output = client.stop()
        self.assertIn("Verify return code: 0 (ok)", output)

    def runConsole(self, block: str) -> None:
        """
        Run each C{$} command with the exports so far, and compare what it
        prints with the page: a command the page shows failing must fail.
        """
        hostname = socket.gethostname()
        for command, shown in consoleCommands(block):
            script = "\n".join([*self.exports, command])
            result = shell(self.here(script), self.work, self.env)
            printed = (result.stdout + result.stderr).splitlines()
            expected = [
                self.here(line).replace("pong from files ", f"pong from {hostname} ")
                for line in shown
            ]
            fails = bool(shown) and shown[0].startswith("frames: ")
            self.assertEqual(result.returncode != 0, fails, (command, result.stderr))
            self.assertEqual(normalized(printed), normalized(expected), command)
