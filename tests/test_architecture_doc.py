"""
Tests for C{docs/architecture.md}: the names it gives exist, and its worked
examples (an op, a CLI verb) run as printed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import re
from pathlib import Path
from typing import Any
from unittest import skipUnless

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.cli.base import UI
from twisted_frames.client import ClientProtocol, FramesClient
from twisted_frames.server import FramesServerFactory

PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

#: A dotted name in the package, as the page writes it.
DOTTED = re.compile(r"\btwisted_frames(?:\.[A-Za-z_]\w*)+")


def resolve(dotted: str) -> object:
    """
    @return: the object C{dotted} names: the longest importable module
        prefix, then attributes.
    @raise LookupError: if no such module or attribute exists.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise LookupError(f"{dotted}: {'.'.join(parts[:cut])} has no {attr}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"{dotted}: no such module")


def pythonBlock(containing: str) -> str:
    """
    @return: the one fenced Python block of the page that contains
        C{containing}.
    """
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    [block] = [b for b in blocks if containing in b]
    return block


def connected(factory: FramesServerFactory) -> tuple[FramesClient, iosim.IOPump]:
    """
    A client greeted by a server protocol from C{factory}, in memory.
    """
    peer = IPv4Address("TCP", "192.0.2.7", 40000)
    server = factory.buildProtocol(peer)
    client = ClientProtocol()
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, True, peerAddress=peer),
        client,
        iosim.FakeTransport(client, False),
    )
    pump.flush()
    return FramesClient(client), pump


class NamesTests(SynchronousTestCase):
    """
    The page cannot name what the package does not have.
    """

    def test_resolve(self) -> None:
        """
        L{resolve} finds modules, their attributes and nested attributes, and
        raises L{LookupError} for a missing one, so the test below can fail.
        """
        from twisted_frames.files.service import FileService

        self.assertIs(resolve("twisted_frames.files.service.FileService"), FileService)
        self.assertIs(resolve("twisted_frames.files.service.FileService.opPut"), FileService.opPut)
        self.assertRaises(LookupError, resolve, "twisted_frames.files.nothing")
        self.assertRaises(LookupError, resolve, "twisted_frames.files.service.Nothing")

    def test_everyNameExists(self) -> None:
        """
        Every C{twisted_frames.*} name on the page is a module of the
        package or an attribute of one.
        """
        names = sorted(set(DOTTED.findall(PAGE.read_text(encoding="utf-8"))))
        self.assertGreater(len(names), 40)
        wrong = []
        for name in names:
            try:
                resolve(name)
            except LookupError as e:
                wrong.append(str(e))
        self.assertEqual(wrong, [])

    def test_layersNamed(self) -> None:
        """
        The page names each core module and each subpackage.
        """
        names = set(DOTTED.findall(PAGE.read_text(encoding="utf-8")))
        for module in [
            "wire",
            "protocol",
            "server",
            "client",
            "policy",
            "security",
            "tls",
            "udp",
            "tap",
            "files",
            "commands",
            "auth",
            "cli",
        ]:
            self.assertIn(f"twisted_frames.{module}", names)


class ExampleTests(SynchronousTestCase):
    """
    The page's worked examples run as printed.
    """

    def shoutServer(self) -> FramesServerFactory:
        """
        A server with the page's example service.
        """
        namespace: dict[str, Any] = {}
        exec(pythonBlock("class ShoutService"), namespace)
        return FramesServerFactory([namespace["ShoutService"]()])

    def test_op(self) -> None:
        """
        The example op answers with its body in capitals and its length.
        """
        client, pump = connected(self.shoutServer())
        d = client.request("shout", {}, b"hello")
        pump.flush()
        reply = self.successResultOf(d)
        self.assertEqual((reply.header["length"], reply.body), (5, b"HELLO"))

    def test_opBodyLimit(self) -> None:
        """
        The example op's C{maxBody} is enforced by the dispatcher: a larger
        body is refused.
        """
        client, pump = connected(self.shoutServer())
        d = client.request("shout", {}, b"x" * 1025)
        pump.flush()
        self.assertEqual(self.failureResultOf(d).value.code, "body_too_large")

    @skipUnless(
        importlib.util.find_spec("twisted_frames.fields") is not None,
        "needs declared op fields (twisted_frames.fields)",
    )
    def test_opFields(self) -> None:
        """
        The example op with a declared field gets the checked value in
        C{request.fields}, its default when the field is not sent, and the
        dispatcher refuses a bad value before the handler runs.
        """
        namespace: dict[str, Any] = {}
        exec(pythonBlock("class CaseService"), namespace)
        client, pump = connected(FramesServerFactory([namespace["CaseService"]()]))
        lower = client.request("case", {"to": "lower"}, b"Hello")
        default = client.request("case", {}, b"Hello")
        bad = client.request("case", {"to": "title"}, b"Hello")
        pump.flush()
        self.assertEqual(self.successResultOf(lower).body, b"hello")
        self.assertEqual(self.successResultOf(default).body, b"HELLO")
        error = self.failureResultOf(bad).value
        self.assertEqual(
            (error.code, error.message),
            ("invalid_argument", "'to' must be one of ['upper', 'lower']"),
        )
        self.assertIn(
            "`'to' must be one of ['upper', 'lower']` (`invalid_argument`)", PAGE.read_text()
        )

    def test_verb(self) -> None:
        """
        The example verb registers C{frames shout TEXT}, and its C{run}
        prints what the example op answers.
        """
        namespace: dict[str, Any] = {}
        exec(pythonBlock("def register"), namespace)
        parser = argparse.ArgumentParser(prog="frames")
        namespace["register"](parser.add_subparsers())
        args = parser.parse_args(["shout", "hello"])
        client, pump = connected(self.shoutServer())

        async def openClient(reactor: Any, given: argparse.Namespace) -> FramesClient:
            self.assertIs(given, args)
            return client

        namespace["openClient"] = openClient
        out = io.StringIO()
        d = defer.Deferred.fromCoroutine(args.run(None, args, UI(False, out)))
        pump.flush()
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(out.getvalue(), "HELLO\n")
        self.assertTrue(client.protocol.isClosed)
