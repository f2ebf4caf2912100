"""
Tests for L{twisted_frames.tap}, the C{twistd frameserver} plugin, and the
real server started by C{twistd}.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import tap, wire
from twisted_frames.auth.keys import newSecret
from twisted_frames.server import FramesServerFactory

from .serverprocess import (
    START_TIMEOUT,
    ServerProcess,
    frames,
    listeningPort,
    stopDaemon,
    stopLeftoverDaemon,
    twistd,
    waitUntil,
)


def existingRoot(case: SynchronousTestCase) -> str:
    """
    A new empty directory for C{--root}, which must exist.
    """
    root = case.mktemp()
    os.makedirs(root)
    return root


class OptionsTests(SynchronousTestCase):
    """
    Parsing C{twistd frameserver} options.
    """

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """
        With no options the server listens on loopback port 8007 with an
        explicit backlog, runs UDP echo on 8007, and uses the default limits.
        """
        options = self.parse()
        self.assertEqual(options["listen"], ["tcp:8007:interface=127.0.0.1:backlog=128"])
        self.assertEqual(options["udp"], 8007)
        self.assertEqual(options["limits"], wire.Limits())
        self.assertTrue(options["name"])

    def test_listenRepeatable(self) -> None:
        """
        C{--listen} may be given several times; TCP endpoints get the
        C{--backlog}, other kinds are left as they are.
        """
        options = self.parse(
            "--listen", "tcp:9000:interface=127.0.0.1", "-l", "unix:/tmp/x.sock", "--backlog", "7"
        )
        self.assertEqual(
            options["listen"], ["tcp:9000:interface=127.0.0.1:backlog=7", "unix:/tmp/x.sock"]
        )

    def test_explicitBacklogKept(self) -> None:
        """
        An endpoint string that sets its own backlog keeps it.
        """
        options = self.parse("--listen", "tcp:9000:backlog=3:interface=127.0.0.1")
        self.assertEqual(options["listen"], ["tcp:9000:backlog=3:interface=127.0.0.1"])

    def test_maxInFlight(self) -> None:
        """
        C{--max-in-flight} reaches the factory; the default is 256.
        """
        self.assertEqual(self.parse()["max-in-flight"], 256)
        options = self.parse("--max-in-flight", "7", "--root", existingRoot(self))
        service = tap.makeService(options, UDPMemoryReactor())
        self.assertEqual(service.factory.maxInFlight, 7)

    def test_noOpGathersItsBody(self) -> None:
        """
        Every op the full server answers (ping, login, files, commands)
        streams its request body: none uses the C{buffer} body policy, so
        the wire spec has no in-memory body limit to state.  An op that
        starts to must have its limit added to C{docs/protocol.md}.
        """
        users = self.mktemp()
        with open(users, "w", encoding="utf-8") as f:
            f.write(newSecret("alice").record().toLine() + "\n")
        os.chmod(users, 0o600)
        options = self.parse(
            "--root", existingRoot(self), "--users", users, "--allow-command", "true"
        )
        operations = tap.makeService(options, UDPMemoryReactor()).factory.operations
        self.assertTrue({"ping", "auth", "put", "get", "run", "stdin"} <= set(operations))
        self.assertEqual(
            {name: op.body for name, op in operations.items() if op.body == "buffer"}, {}
        )

    def test_limits(self) -> None:
        """
        C{--max-header} and C{--max-body} set the limits.
        """
        options = self.parse("--max-header", "1024", "--max-body", "5")
        self.assertEqual(options["limits"].maxHeader, 1024)
        self.assertEqual(options["limits"].maxBody, 5)

    def test_badValueIsOneLine(self) -> None:
        """
        A bad value is a one-line C{SystemExit} naming the option, not
        twistd's whole usage text or a traceback.
        """
        for args in (["--max-header", "1"], ["--udp", "70000"], ["--backlog", "x"], ["--nope"]):
            with self.assertRaises(SystemExit) as e:
                self.parse(*args)
            message = str(e.exception.code)
            self.assertNotIn("\n", message)
            self.assertTrue(message.startswith("twistd frameserver: "), message)


class ServiceRegistryTests(SynchronousTestCase):
    """
    L{tap.Options} and L{tap.makeService} are built from L{tap.SERVICES},
    naming no service themselves.
    """

    def test_optionsCombineTheMixins(self) -> None:
        """
        L{tap.Options} has every entry's mix-in, and the same options as
        L{tap.optionsFor} of the registry.
        """
        for entry in tap.SERVICES:
            self.assertTrue(issubclass(tap.Options, entry.options), entry.name)
        self.assertEqual(tap.Options.services, tap.SERVICES)
        self.assertEqual(
            sorted(tap.optionsFor(tap.SERVICES)().longOpt), sorted(tap.Options().longOpt)
        )

    def test_withoutAService(self) -> None:
        """
        A server built without the commands entry has neither its options
        nor its op, and the other services are unchanged.
        """
        entries = tuple(e for e in tap.SERVICES if e.name != "commands")
        options = tap.optionsFor(entries)()
        self.assertNotIn("max-procs=", options.longOpt)
        options.parseOptions(["--root", existingRoot(self), "--udp", "0"])
        with self.assertRaises(SystemExit):
            tap.optionsFor(entries)().parseOptions(["--allow-command", "sh"])
        top = tap.makeService(options, MemoryReactorClock())
        names = set(top.factory.operations)
        self.assertIn("list", names)
        self.assertNotIn("run", names)


class UDPMemoryReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that also records C{listenUDP} calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpServers: list[tuple[int, object, str, int]] = []

    def listenUDP(
        self, port: int, protocol: object, interface: str = "", maxPacketSize: int = 8192
    ) -> object:
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        return _FakeUDPPort(port, interface)


class _FakeUDPPort:
    def __init__(self, port: int, interface: str) -> None:
        self.port = port
        self.interface = interface
        self.stopped = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface, self.port)

    def stopListening(self) -> None:
        self.stopped = True


class BusyReactor(UDPMemoryReactor):
    """
    A reactor on which every TCP port is in use.
    """

    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(
            interface, port, OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        )


class MakeServiceTests(SynchronousTestCase):
    """
    L{tap.makeService} with a L{MemoryReactorClock}.
    """

    def test_listensOnEveryEndpoint(self) -> None:
        """
        Every C{--listen} endpoint is listened on with the one factory and
        the backlog; UDP is off with C{--udp 0}.
        """
        reactor = UDPMemoryReactor()
        options = tap.Options()
        options.parseOptions(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--listen",
                "tcp:0:interface=localhost",
                "--udp",
                "0",
                "--root",
                existingRoot(self),
            ]
        )
        service = tap.makeService(options, reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        port, factory, backlog, interface = reactor.tcpServers[0]
        self.assertIsInstance(factory, FramesServerFactory)
        self.assertEqual((port, backlog, interface), (0, 128, "127.0.0.1"))
        self.assertIs(reactor.tcpServers[1][1], factory)
        self.assertEqual(reactor.udpServers, [])
        service.stopService()

    def test_udp(self) -> None:
        """
        C{--udp PORT} listens for UDP echo on the UDP interface.
        """
        reactor = UDPMemoryReactor()
        options = tap.Options()
        options.parseOptions(["--udp", "9999", "--udp-upper", "--root", existingRoot(self)])
        service = tap.makeService(options, reactor)
        service.privilegedStartService()
        service.startService()
        [(port, protocol, interface, maxPacketSize)] = reactor.udpServers
        self.assertEqual((port, interface), (9999, "127.0.0.1"))
        self.assertTrue(protocol.upper)
        self.assertGreater(maxPacketSize, protocol.maxDatagram)
        service.stopService()

    def test_cannotListenIsStartupError(self) -> None:
        """
        A port that cannot be bound raises L{tap.StartupError}: an
        C{Exception}, so twistd removes its pidfile and reports it to the
        launcher of a daemon, and a C{SystemExit} with status 1 whose text
        is the reason; the one line is printed on the original stderr.
        """
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        options = tap.Options()
        options.parseOptions(
            ["--listen", "tcp:9:interface=127.0.0.1", "--udp", "0", "--root", existingRoot(self)]
        )
        service = tap.makeService(options, BusyReactor())
        with self.assertRaises(tap.StartupError) as e:
            service.privilegedStartService()
        self.assertIsInstance(e.exception, Exception)
        self.assertEqual(e.exception.code, 1)
        self.assertEqual(str(e.exception), "cannot listen: 127.0.0.1:9: Address already in use")
        self.assertEqual(
            stderr.getvalue(),
            "twistd frameserver: cannot listen: 127.0.0.1:9: Address already in use\n",
        )

    def test_defaultRootCreated(self) -> None:
        """
        Without C{--root}, C{./srv} is created if it is missing.
        """
        self.inDirectory(self.mktemp())
        tap.makeService(self.parse("--udp", "0"), UDPMemoryReactor())
        self.assertTrue(os.path.isdir("srv"))

    def test_explicitRootMustExist(self) -> None:
        """
        A C{--root} that does not exist, even one named like the default, is
        a one-line start-up error, and nothing is created.
        """
        base = self.inDirectory(self.mktemp())
        for given in ("srv", os.path.join("typo", "srv")):
            with self.assertRaises(SystemExit) as e:
                tap.makeService(self.parse("--udp", "0", "--root", given), UDPMemoryReactor())
            where = os.path.join(base, given)
            self.assertEqual(
                e.exception.code,
                f"twistd frameserver: --root {where} does not exist "
                "(create it first; only the default ./srv is created)",
            )
            self.assertEqual(os.listdir(base), [])

    def test_rootNotADirectory(self) -> None:
        """
        A C{--root} that is a file, given or by default, is a one-line
        start-up error.
        """
        base = self.inDirectory(self.mktemp())
        Path(base, "srv").write_bytes(b"")
        for args in ((), ("--root", "srv")):
            with self.assertRaises(SystemExit) as e:
                tap.makeService(self.parse("--udp", "0", *args), UDPMemoryReactor())
            self.assertIn(f"--root {base}{os.sep}srv is not a directory", str(e.exception.code))

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def inDirectory(self, path: str) -> str:
        """
        Create C{path} and make it the working directory until the test
        ends.

        @return: its absolute path.
        """
        path = os.path.abspath(path)
        os.makedirs(path)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(path)
        return path

    def test_badEndpointIsOneLine(self) -> None:
        """
        A malformed C{--listen} string is reported in one line.
        """
        options = tap.Options()
        options.parseOptions(
            [
                "--listen",
                "nosuchkind:1",
                "--insecure-no-auth-on-public-interface",
                "--udp",
                "0",
                "--root",
                existingRoot(self),
            ]
        )
        with self.assertRaises(SystemExit) as e:
            tap.makeService(options, UDPMemoryReactor())
        self.assertIn("bad --listen", str(e.exception.code))


class PluginTests(SynchronousTestCase):
    """
    The plugin that C{twistd} finds.
    """

    def test_found(self) -> None:
        """
        C{getPlugins(IServiceMaker)} finds C{frameserver}, pointing at the
        tap module's options and service.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("frameserver", makers)
        maker = makers["frameserver"]
        self.assertIs(maker.options, tap.Options)
        self.assertEqual(
            maker.makeService.__func__
            if hasattr(maker.makeService, "__func__")
            else maker.makeService,
            tap.makeService,
        )


class TwistdTests(SynchronousTestCase):
    """
    The real C{twistd frameserver} in a subprocess.
    """

    def busyPort(self) -> int:
        """
        A loopback TCP port that a socket of this test listens on until the
        test ends.
        """
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port: int = busy.getsockname()[1]
        return port

    def serverArgs(self, port: int) -> list[str]:
        """
        C{frameserver} arguments for listening on C{port} of loopback, with
        UDP off and an existing root.
        """
        root = os.path.abspath(existingRoot(self))
        return ["--udp", "0", "--root", root, "--listen", f"tcp:{port}:interface=127.0.0.1"]

    def daemon(self, port: int) -> tuple[subprocess.CompletedProcess[str], str, Path]:
        """
        Run C{twistd} without C{-n} (a daemon, stopped when the test ends)
        for L{serverArgs}C{(port)}, in a new directory.

        @return: how the launcher ended, the pidfile and the log file.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pidfile = os.path.join(directory, "frameserver.pid")
        self.addCleanup(stopLeftoverDaemon, pidfile)
        result = twistd(
            *self.serverArgs(port),
            twistdOptions=(f"--pidfile={pidfile}", "--logfile=frameserver.log"),
            cwd=directory,
            timeout=START_TIMEOUT,
        )
        return result, pidfile, Path(directory, "frameserver.log")

    def test_portInUseIsOneLine(self) -> None:
        """
        Under C{-n}, a port already in use stops the server with exactly one
        line on stderr and status 1, not a traceback, and twistd removes the
        pidfile it wrote.
        """
        port = self.busyPort()
        pidfile = os.path.abspath(self.mktemp())
        result = twistd(*self.serverArgs(port), twistdOptions=("-n", f"--pidfile={pidfile}"))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(
            result.stderr,
            f"twistd frameserver: cannot listen: 127.0.0.1:{port}: Address already in use\n",
        )
        self.assertNotIn("Traceback", result.stdout)
        self.assertFalse(os.path.exists(pidfile))

    def test_portInUseDaemon(self) -> None:
        """
        Without C{-n}, the launcher of a daemon that cannot listen returns
        within seconds with status 1 and the reason on stderr, and leaves no
        pidfile.
        """
        port = self.busyPort()
        result, pidfile, log = self.daemon(port)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"cannot listen: 127.0.0.1:{port}: Address already in use", result.stderr)
        # The daemon removes its pidfile just after it has told the launcher.
        waitUntil(lambda: not os.path.exists(pidfile), 10, "pidfile removed")
        self.assertIn(f"twistd frameserver: cannot listen: 127.0.0.1:{port}", log.read_text())

    def test_daemonStartsAndStops(self) -> None:
        """
        Without C{-n}, the launcher returns 0 once the daemon listens; the
        daemon serves, and C{SIGTERM} to the process id in its pidfile stops
        it and removes the pidfile.
        """
        result, pidfile, log = self.daemon(0)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        port = listeningPort(log.read_text())
        ping = frames("ping", server=f"127.0.0.1:{port}")
        self.assertEqual(ping.returncode, 0, ping.stderr)
        stopDaemon(pidfile)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

    def test_missingRootIsOneLine(self) -> None:
        """
        A C{--root} with a typo stops the server with one line on stderr and
        status 1; neither it nor its parent is created.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        typo = os.path.join(base, "vra", "srv")
        result = twistd("--udp", "0", "--root", typo, cwd=base)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertEqual(
            result.stderr,
            f"twistd frameserver: --root {typo} does not exist "
            "(create it first; only the default ./srv is created)\n",
        )
        self.assertEqual(os.listdir(base), [])

    def test_logsConnectionsAndRequests(self) -> None:
        """
        The server logs one line per connection and one per request, with
        peer, op, bytes, duration and outcome.
        """
        root = self.mktemp()
        os.makedirs(root)
        with ServerProcess(root) as server:
            result = frames("ping", "--size", "10", server=server.address)
            self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(server.log, r"connection from 127\.0\.0\.1:\d+")
        self.assertRegex(
            server.log,
            r"127\.0\.0\.1:\d+ - op=ping id=1 in=10 out=10 time=[\d.]+ms outcome=ok",
        )
        self.assertRegex(server.log, r"connection closed 127\.0\.0\.1:\d+: 1 requests")


class CommandSecurityDefaultsTests(SynchronousTestCase):
    """
    The command service's secure default.
    """

    def test_commandsOffLoopbackNeedLogin(self) -> None:
        """
        Allowing a command on a non-loopback listen without C{--users} is
        refused, even with the insecure flag that allows anonymous pings.
        """
        options = tap.Options()
        with self.assertRaises(SystemExit) as e:
            options.parseOptions(
                [
                    "--listen",
                    "tcp:0",
                    "--insecure-no-auth-on-public-interface",
                    "--allow-command",
                    "true",
                ]
            )
        self.assertIn("command service needs --users", str(e.exception.code))

    def test_commandsOnLoopbackAllowed(self) -> None:
        """
        On loopback, an allowlist alone is enough.
        """
        options = tap.Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--allow-command", "true"])
        self.assertEqual([s.name for s in options["command-specs"]], ["true"])
