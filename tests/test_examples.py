"""
The tutorial's example scripts (C{docs/examples/}) run and print what the
tutorial says they print.

Each runs as a subprocess with a bounded time, on loopback ports the
operating system picks; the last ones talk to a real C{twistd frameserver}.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames import tap
from twisted_frames.testing import connectedPair

from .serverprocess import ROOT, ServerProcess, childEnv, frames

EXAMPLES = ROOT / "docs" / "examples"
TUTORIAL = ROOT / "docs" / "tutorial"
TIMEOUT = 60


def runExample(name: str, *args: str) -> str:
    """
    Run one example script to completion and return what it printed.

    @raise AssertionError: if it fails or prints on stderr.
    """
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=childEnv(),
        cwd=EXAMPLES,
    )
    if result.returncode != 0 or result.stderr:
        raise AssertionError(f"{name} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


class StickyPacketsTests(SynchronousTestCase):
    """
    Step 1: C{sticky_packets.py}.
    """

    def test_smallSendsArriveTogether(self) -> None:
        """
        Three C{send} calls are read by one C{recv}, glued together.
        """
        out = runExample("sticky_packets.py")
        self.assertIn("recv(1024) -> b'hellofromTCP'\n", out)

    def test_largeSendArrivesInPieces(self) -> None:
        """
        One 4 MiB C{sendall} takes many C{recv} calls (at least 64 of at
        most 64 KiB each), none larger than asked for.
        """
        out = runExample("sticky_packets.py")
        self.assertIn("sendall() of 4194304 bytes\n", out)
        calls = int(re.search(r"arrived in (\d+) recv\(\) calls", out).group(1))  # type: ignore[union-attr]
        self.assertGreaterEqual(calls, 64)
        largest = int(re.search(r"largest (\d+) bytes", out).group(1))  # type: ignore[union-attr]
        self.assertLessEqual(largest, 65536)


class LengthPrefixTests(SynchronousTestCase):
    """
    Step 2: C{length_prefix.py}.
    """

    def test_framesSurviveGluingAndSplitting(self) -> None:
        """
        Glued frames come out one by one, a 4 MiB frame is reassembled from
        many reads, the header describes the body, and end of stream is
        reported as such.
        """
        out = runExample("length_prefix.py")
        self.assertIn("length 5 as '!I' (big-endian): 00 00 00 05\n", out)
        self.assertIn("the same 4 bytes read little-endian: 83886080\n", out)
        self.assertIn(
            "recv_frame() -> b'hello'\nrecv_frame() -> b'from'\nrecv_frame() -> b'TCP'\n", out
        )
        calls = int(re.search(r"4194304 bytes, in (\d+) recv\(\) calls", out).group(1))  # type: ignore[union-attr]
        self.assertGreaterEqual(calls, 65)
        self.assertIn("'name': 'notes.txt', 'size': 170000", out)
        self.assertIn("size and sha256 match the header: True\n", out)
        self.assertIn("then: connection closed after 0 of 4 bytes\n", out)


class TwistedFramingTests(SynchronousTestCase):
    """
    Step 3: C{int32_echo.py} and C{accept_queue.py}.
    """

    def test_reactorServesClientsConcurrently(self) -> None:
        """
        Other clients get answers while one is stuck mid-frame; an
        over-limit length prefix closes only that client's connection.
        """
        out = runExample("int32_echo.py")
        replies = out.index("reply: b'HELLO FROM CLIENT 3'")
        self.assertLess(out.index("slow: sent 6 of 8 bytes"), replies)
        self.assertLess(replies, out.index("slow: reply b'SLOW'"))
        self.assertIn("server: refusing a 2147483648-byte frame", out)
        self.assertTrue(out.endswith("reply: b'STILL THERE?'\n"), out)

    def test_kernelQueuesConnections(self) -> None:
        """
        Connections complete before C{accept}, and are accepted in order
        with the data their clients already sent.
        """
        out = runExample("accept_queue.py")
        self.assertIn("client 3: connect() returned and sent; nobody has called accept()", out)
        held = re.findall(r"already holding b'hi from client (\d)'", out)
        self.assertEqual(held, ["1", "2", "3"])


class UDPTests(SynchronousTestCase):
    """
    Step 4: C{udp_datagrams.py}, alone and against the echo service.
    """

    def test_datagrams(self) -> None:
        """
        Boundaries are kept, a short read truncates, a full receive buffer
        drops datagrams silently; the echo service behaves the same way.
        """
        root = self.mktemp()
        os.makedirs(root)
        with ServerProcess(root, udp=True) as server:
            assert server.udpPort is not None
            out = runExample("udp_datagrams.py", str(server.udpPort))
        self.assertIn(
            "recvfrom(1024) -> b'hello'\nrecvfrom(1024) -> b'from'\nrecvfrom(1024) -> b'UDP'\n",
            out,
        )
        self.assertIn("recvfrom(512) -> 512 bytes; the other 1488 are gone\n", out)
        self.assertIn("recvfrom(512) -> b'next': the next datagram", out)
        received = int(re.search(r"sent 200, received (\d+)", out).group(1))  # type: ignore[union-attr]
        self.assertLess(received, 200)
        self.assertIn("reply: b'one'\nreply: b'two'\nreply: b'three'\n", out)
        self.assertIn("reply: 512 bytes of 2000\n", out)
        self.assertIn("no reply within 0.5 s: dropped", out)


class FramesTests(SynchronousTestCase):
    """
    Step 5: the C{frames} commands shown in the tutorial, and
    C{frames_client.py}, against a real server.
    """

    def test_clientLibrary(self) -> None:
        """
        The async program pings, pipelines three pings, gets a request-level
        error and keeps using the connection.
        """
        root = self.mktemp()
        os.makedirs(root)
        with ServerProcess(root) as server:
            out = runExample("frames_client.py", server.address)
        self.assertIn(", protocol twisted-frames v1\n", out)
        self.assertIn("ping -> b'hello'\n", out)
        self.assertEqual(out.count("bytes back, identical: True"), 3)
        self.assertIn("error: code 'unknown_op'", out)
        self.assertTrue(out.endswith("still connected: ping -> b'again'\n"), out)

    def test_tutorialCommands(self) -> None:
        """
        Every C{$ frames ...} command in the tutorial's last step succeeds
        against a real server with the UDP echo on, after the shell
        commands before it (which make the files it sends), in one
        directory.
        """
        page = (TUTORIAL / "5-twisted-frames.md").read_text(encoding="utf-8")
        commands = re.findall(r"^\$ (.+)$", page, flags=re.M)
        self.assertGreaterEqual(len([c for c in commands if c.startswith("frames ")]), 3)
        root, here = self.mktemp(), self.mktemp()
        os.makedirs(root)
        os.makedirs(here)
        with ServerProcess(root, udp=True) as server:
            for command in commands:
                if not command.startswith("frames "):
                    done = subprocess.run(command, shell=True, cwd=here, timeout=30)
                    self.assertEqual(done.returncode, 0, command)
                    continue
                args = shlex.split(command)[1:]
                if args[0] == "udp-echo":
                    args += ["--port", str(server.udpPort)]
                result = frames(*args, server=server.address, cwd=here)
                self.assertEqual(result.returncode, 0, (command, result.stderr))
                self.assertTrue(result.stdout, command)


def exampleNames() -> list[str]:
    """
    The example scripts in C{docs/examples/}.
    """
    return sorted(p.name for p in Path(EXAMPLES).glob("*.py"))


class EveryExampleTestedTests(SynchronousTestCase):
    """
    No example script goes untested.
    """

    def test_everyExampleIsRunHere(self) -> None:
        """
        Each script in C{docs/examples/} is named in this test module.
        """
        source = Path(__file__).read_text(encoding="utf-8")
        missing = [n for n in exampleNames() if f'"{n}"' not in source]
        self.assertEqual(missing, [])


def loadExample(name: str) -> ModuleType:
    """
    Import one example script of C{docs/examples/} as a module.
    """
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CounterServiceTests(SynchronousTestCase):
    """
    C{counter_service.py}: a service added to C{twistd frameserver} by one
    registration, with no edit to the package.
    """

    def setUp(self) -> None:
        self.counter = loadExample("counter_service.py")
        # The one line of registration: the server's services plus this one.
        self.Options = tap.optionsFor((*tap.SERVICES, self.counter.COUNTER))

    def parse(self, *argv: str) -> tap.ServerOptions:
        """
        Parse C{argv} with the registered service's options added.
        """
        root = self.mktemp()
        os.makedirs(root)
        options = self.Options()
        options.parseOptions(["--root", root, "--udp", "0", *argv])
        return options

    def test_options(self) -> None:
        """
        The service's options are parsed and checked with the others, and
        listed in C{--help}; C{tap.Options} stays without them.
        """
        options = self.parse("--counter-start", "41", "--counter-step", "2")
        self.assertEqual((options["counter-start"], options["counter-step"]), (41, 2))
        self.assertIn("--counter-step=", str(self.Options()))
        self.assertNotIn("--counter-step=", str(tap.Options()))
        with self.assertRaises(SystemExit) as e:
            self.parse("--counter-step", "0")
        self.assertIn("--counter-step must be in 1..1000, not 0", str(e.exception))

    def test_countOverAConnection(self) -> None:
        """
        C{makeService} builds the service with the others: a client of the
        server sees C{count} in the greeting and calls it.
        """
        options = self.parse("--counter-start", "41", "--counter-step", "2")
        top = tap.makeService(options, MemoryReactorClock())
        top.startService()
        self.addCleanup(top.stopService)
        connection = connectedPair(top.factory, peer="127.0.0.1")
        connection.pump.flush()
        self.assertIn("count", connection.client.greeting["ops"])
        frames = connection.frames
        replies = [self.successResultOf(connection.run(frames.request("count"))) for _ in "ab"]
        self.assertEqual([r.header["count"] for r in replies], [41, 43])
        self.assertIn("list", connection.client.greeting["ops"])
