"""
The import budget of the C{frames} CLI: what a command loads before it
sends a byte.  Checked by the modules a real C{frames} process has loaded
when it exits, not by timing, so the tests are deterministic; each module
kept out here is start-up time every invocation saves (see
L{twisted_frames.cli.main.main} and L{twisted_frames.tcpclient}).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ServerProcess, childEnv
from twisted_frames.cli.main import buildParser, needsTLS

#: Runs C{frames} as its console script does (C{main()} with no argument,
#: the command line in C{sys.argv}) and writes the names of the modules
#: loaded at exit to the file C{$LOADED_MODULES} names.
CONSOLE_SCRIPT = """\
import atexit, os, sys

def dump(path=os.environ["LOADED_MODULES"]):
    with open(path, "w") as f:
        f.write("\\n".join(sorted(m for m, v in sys.modules.items() if v is not None)))

atexit.register(dump)
sys.argv[0] = "frames"
from twisted_frames.cli import main
sys.exit(main())
"""

#: What a command without TLS never needs, with what loads it otherwise:
#: pyOpenSSL and what it brings (Twisted's reactor imports its TLS support
#: whenever pyOpenSSL is importable), Twisted's endpoints (the endpoint
#: string parser, the plugin system; a connection to an address is one
#: C{connectTCP}), tqdm (only for a progress bar), the server side, and
#: what C{http.cookiejar} imports (Twisted's C{compat} imports it only to
#: offer it under a deprecated name).  Not listed: C{asyncio} and
#: C{twisted.logger}, which C{twisted.internet.defer} itself imports.
NOT_LOADED = (
    "OpenSSL",
    "cryptography",
    "service_identity",
    "idna",
    "twisted.internet.ssl",
    "twisted.internet._sslverify",
    "twisted.protocols.tls",
    "twisted.internet.endpoints",
    "twisted.plugin",
    "tqdm",
    "twisted_frames.tls",
    "twisted_frames.certs",
    "twisted_frames.server",
    "twisted_frames.jsonlog",
    "twisted_frames.security",
    "twisted_frames.commands.process",
    "twisted_frames.files.service",
    "urllib.request",
    "http.client",
    "email",
)


#: What the quick path (L{twisted_frames.cli.quick}) never loads, with
#: TLS and login or without: Twisted, zope.interface, pyOpenSSL and
#: cryptography.
QUICK_NOT_LOADED = ("twisted", "zope", "OpenSSL", "cryptography", "service_identity")


def loadedBy(
    tmp: str, *argv: str, twisted: bool = False
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """
    Run C{frames ARGV} as the console script and return its result and the
    modules it had loaded when it exited.

    @param twisted: force the Twisted path (C{FRAMES_TWISTED=1}); else the
        quick path runs the verbs it knows.
    """
    out = os.path.join(tmp, "modules")
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, "--timeout", "30", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=childEnv({"LOADED_MODULES": out, "FRAMES_TWISTED": "1" if twisted else "0"}),
        stdin=subprocess.DEVNULL,
    )
    with open(out) as f:
        return result, set(f.read().split())


def heavy(modules: set[str], listed: tuple[str, ...] = NOT_LOADED) -> list[str]:
    """
    @return: the modules of C{modules} that are, or are inside, one of
        C{listed}.
    """
    return sorted(m for m in modules for h in listed if m == h or m.startswith(h + "."))


class ImportBudgetTests(SynchronousTestCase):
    """
    Through Twisted (forced for C{ping} and C{run}, which otherwise take
    the quick path), C{frames} commands load what they need and no more.
    """

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        root = os.path.join(self.tmp, "srv")
        os.makedirs(root)
        self.server = ServerProcess(root, "--allow-command", "true").__enter__()
        self.addCleanup(self.server.stop)

    def assertLean(self, *argv: str) -> set[str]:
        """
        C{frames --server SERVER ARGV} through Twisted succeeds without
        loading any of L{NOT_LOADED}, having loaded the reactor and the
        client (so that the list it is checked against is a real one).

        @return: the modules it loaded.
        """
        result, modules = loadedBy(self.tmp, "--server", self.server.address, *argv, twisted=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("twisted.internet.reactor", modules)
        self.assertIn("twisted_frames.client", modules)
        self.assertEqual(heavy(modules), [])
        return modules

    def test_ping(self) -> None:
        """
        C{frames ping} pongs, and loads neither TLS, nor Twisted's
        endpoints, nor tqdm, nor the server side.
        """
        self.assertLean("ping")

    def test_pingJSON(self) -> None:
        """
        So does C{frames --json ping -c 2}.
        """
        self.assertLean("--json", "ping", "-c", "2")

    def test_run(self) -> None:
        """
        C{frames run -- true} runs the command, and loads the command
        client but none of L{NOT_LOADED}.
        """
        modules = self.assertLean("run", "--", "true")
        self.assertIn("twisted_frames.commands.client", modules)

    def test_putAndGet(self) -> None:
        """
        C{frames put} and C{frames get} without a terminal (so without a
        progress bar) load the file client but not tqdm, nor any of
        L{NOT_LOADED}.
        """
        local = os.path.join(self.tmp, "small")
        with open(local, "wb") as f:
            f.write(b"x" * 1000)
        modules = self.assertLean("put", local, "small")
        self.assertIn("twisted_frames.files.client", modules)
        self.assertLean("get", "small", os.path.join(self.tmp, "back"))
        with open(os.path.join(self.tmp, "back"), "rb") as f:
            self.assertEqual(f.read(), b"x" * 1000)

    def test_loginWithoutTLS(self) -> None:
        """
        A login over plain TCP (whose channel binding is none) works without
        pyOpenSSL loaded, and loads none of L{NOT_LOADED} either.
        """
        users, secret = os.path.join(self.tmp, "users"), os.path.join(self.tmp, "alice.secret")
        made, _ = loadedBy(self.tmp, "keygen", "alice", "--users", users, "-o", secret)
        self.assertEqual(made.returncode, 0, made.stderr)
        root = os.path.join(self.tmp, "srv2")
        os.makedirs(root)
        with ServerProcess(root, "--users", users) as server:
            result, modules = loadedBy(
                self.tmp,
                "--server",
                server.address,
                "--user",
                "alice",
                "--secret-file",
                secret,
                "ls",
                twisted=True,
            )
            server.waitFor(r"login: .*user=alice")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("twisted_frames.auth.client", modules)
        self.assertEqual(heavy(modules), [])

    def test_tlsLoadsPyOpenSSL(self) -> None:
        """
        With C{--tls}, pyOpenSSL is loaded as usual (so the check above can
        see it), and a server without TLS is reported as before.
        """
        result, modules = loadedBy(
            self.tmp,
            "--greeting-timeout",
            "2",
            "--tls",
            "--server",
            self.server.address,
            "ping",
            twisted=True,
        )
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("OpenSSL.SSL", modules)
        self.assertIn("twisted.protocols.tls", modules)
        self.assertNotIn("twisted.internet.endpoints", modules)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)


class QuickImportTests(SynchronousTestCase):
    """
    C{frames ping}, C{run}, C{ls}, C{stat}, C{rm}, C{mkdir}, C{get} of
    one file and C{put} of one small file, over plain TCP or mutual TLS,
    with a login or without, take the quick path: none of
    L{QUICK_NOT_LOADED}.
    """

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)

    def serve(self, *options: str) -> ServerProcess:
        """
        A server allowing C{true}, with C{options}, stopped after the test.
        """
        root = os.path.join(self.tmp, f"srv{len(os.listdir(self.tmp))}")
        os.makedirs(root)
        server = ServerProcess(root, "--allow-command", "true", *options).__enter__()
        self.addCleanup(server.stop)
        return server

    def assertQuick(self, *argv: str) -> set[str]:
        """
        C{frames ARGV} succeeds without loading any of L{QUICK_NOT_LOADED},
        having loaded the quick path and the codec.

        @return: the modules it loaded.
        """
        result, modules = loadedBy(self.tmp, *argv)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("twisted_frames.cli.quick", modules)
        self.assertIn("twisted_frames.wire", modules)
        self.assertEqual(heavy(modules, QUICK_NOT_LOADED), [])
        return modules

    def keygen(self) -> tuple[str, str]:
        """
        @return: a users file with alice and her secret file.
        """
        users, secret = os.path.join(self.tmp, "users"), os.path.join(self.tmp, "alice.secret")
        made, _ = loadedBy(self.tmp, "keygen", "alice", "--users", users, "-o", secret)
        self.assertEqual(made.returncode, 0, made.stderr)
        return users, secret

    def test_plain(self) -> None:
        """
        C{ping}, C{--json ping -c 2}, C{run -- true}, C{mkdir}, C{ls},
        C{stat}, C{rm}, C{get} and C{put} over plain TCP.
        """
        server = self.serve()
        self.assertQuick("--server", server.address, "ping")
        self.assertQuick("--server", server.address, "--json", "ping", "-c", "2")
        self.assertQuick("--server", server.address, "run", "--", "true")
        self.assertQuick("--server", server.address, "mkdir", "d")
        self.assertQuick("--server", server.address, "ls")
        self.assertQuick("--server", server.address, "stat", "d")
        self.assertQuick("--server", server.address, "rm", "d")
        with open(os.path.join(server.root, "f"), "wb") as f:
            f.write(b"x" * 3000)
        back = os.path.join(self.tmp, "back")
        self.assertQuick("--server", server.address, "get", "f", back)
        with open(back, "rb") as f:
            self.assertEqual(f.read(), b"x" * 3000)
        self.assertQuick("--server", server.address, "mkdir", "p")
        # Into a remote directory, found by its stat.
        self.assertQuick("--server", server.address, "put", back, "p")
        with open(os.path.join(server.root, "p", "back"), "rb") as f:
            self.assertEqual(f.read(), b"x" * 3000)

    def test_login(self) -> None:
        """
        C{ping} and C{run} with a login over plain TCP.
        """
        users, secret = self.keygen()
        server = self.serve("--users", users)
        login = ("--server", server.address, "--secret-file", secret)
        self.assertQuick(*login, "ping")
        self.assertQuick(*login, "run", "--", "true")
        self.assertQuick(*login, "ls")
        server.waitFor(r"login: .*user=alice")

    def test_tlsAndLogin(self) -> None:
        """
        C{ping}, C{run}, C{get} and C{put} over mutual TLS, without and with a login (whose
        channel binding the quick path computes without pyOpenSSL), and
        the standard library's TLS loaded instead.
        """
        certs = os.path.join(self.tmp, "certs")
        made, _ = loadedBy(self.tmp, "make-certs", certs, "--host", "localhost")
        self.assertEqual(made.returncode, 0, made.stderr)
        users, secret = self.keygen()
        server = self.serve(
            "--users",
            users,
            "--tls-cert",
            os.path.join(certs, "server.pem"),
            "--tls-key",
            os.path.join(certs, "server.key"),
            "--tls-ca",
            os.path.join(certs, "ca.pem"),
        )
        tls = (
            "--server",
            f"localhost:{server.port}",
            "--ca",
            os.path.join(certs, "ca.pem"),
            "--cert",
            os.path.join(certs, "client.pem"),
            "--key",
            os.path.join(certs, "client.key"),
        )
        anonymous = self.serve(*server.extra[4:])
        self.assertQuick(*tls[:1], f"localhost:{anonymous.port}", *tls[2:], "ping")
        modules = self.assertQuick(*tls, "--secret-file", secret, "ping")
        self.assertIn("ssl", modules)
        self.assertQuick(*tls, "--secret-file", secret, "run", "--", "true")
        with open(os.path.join(server.root, "f"), "wb") as f:
            f.write(b"y" * 3000)
        back = os.path.join(self.tmp, "back")
        self.assertQuick(*tls, "--secret-file", secret, "get", "-q", "f", back)
        with open(back, "rb") as f:
            self.assertEqual(f.read(), b"y" * 3000)
        self.assertQuick(*tls, "--secret-file", secret, "put", "-q", back, "g")
        with open(os.path.join(server.root, "g"), "rb") as f:
            self.assertEqual(f.read(), b"y" * 3000)
        server.waitFor(r"login: .*user=alice")


class LeanImportTests(SynchronousTestCase):
    """
    The lean imports of L{twisted_frames.cli.main.main} leave the process
    able to use what they held back.
    """

    def test_versionNeedsNoTwisted(self) -> None:
        """
        C{frames --version} and a usage error answer before Twisted is
        imported.
        """
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        for argv, status in [(["--version"], 0), (["ping", "--count", "0"], 2)]:
            result, modules = loadedBy(tmp, *argv)
            self.assertEqual(result.returncode, status, result.stderr)
            self.assertIn("twisted_frames.cli.main", modules)
            self.assertEqual([m for m in modules if m.split(".")[0] == "twisted"], [], argv)

    def test_cookieJarOnFirstUse(self) -> None:
        """
        In a process that imported Twisted's reactor lean, C{http.cookiejar}
        has not run until it is used, and then works (in a subprocess: the
        lean imports change the process for good).
        """
        code = (
            "import sys\n"
            "from twisted_frames.cli.main import _leanImports\n"
            "with _leanImports(True, False):\n"
            "    from twisted.internet import reactor\n"
            "from twisted.python import compat\n"
            "assert 'urllib.request' not in sys.modules\n"
            "from http.cookiejar import CookieJar\n"
            "assert 'urllib.request' in sys.modules\n"
            "assert 'twisted.protocols.tls' not in sys.modules\n"
            "import OpenSSL.SSL\n"
            "print(len(CookieJar()))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=childEnv(),
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout), (0, "0\n"), result.stderr)


class NeedsTLSTests(SynchronousTestCase):
    """
    L{needsTLS} says which commands may use pyOpenSSL.
    """

    def test_flags(self) -> None:
        """
        C{--tls}, C{--ca} and C{--cert} (or their environment variables)
        need TLS; C{--user}/C{--secret-file} alone do not.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMES_")}
        self.patch(os, "environ", env)
        cases = [
            ([], False),
            (["--tls"], True),
            (["--ca", "ca.pem"], True),
            (["--cert", "c.pem"], True),
            (["--user", "alice", "--secret-file", "s"], False),
        ]
        for flags, expected in cases:
            args = buildParser().parse_args([*flags, "--server", "h:1", "ping"])
            self.assertEqual(needsTLS(args), expected, flags)
        self.patch(os, "environ", {**env, "FRAMES_CA": "ca.pem"})
        self.assertTrue(needsTLS(buildParser().parse_args(["ping"])))

    def test_endpointStrings(self) -> None:
        """
        A C{--server} endpoint string of a TLS type needs TLS; C{tcp:} and
        C{unix:} ones do not.
        """
        for server, expected in [
            ("ssl:host=h:port=1", True),
            ("tls:h:1", True),
            ("tcp:host=h:port=1", False),
            ("unix:path=/s", False),
            ("[::1]:1", False),
        ]:
            args = buildParser().parse_args(["--server", server, "ping"])
            self.assertEqual(needsTLS(args), expected, server)
