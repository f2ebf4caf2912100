"""
Tests for the shape of the package: imports flow one way.

The rules are read from the source with L{ast}, so they hold for every
module, including imports inside functions and under C{TYPE_CHECKING}.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import twisted_frames

PACKAGE = "twisted_frames"
ROOT = Path(twisted_frames.__file__).resolve().parent

# Modules that run in a client: they must not import the server side, so a
# client never loads the server's code (shared constants live lower down).
CLIENT_SIDE = [
    r"client",
    r"\w*client",
    r"[a-z]+\.client",
    r"files\.(local|tree)",
    r"cli(\..+)?",
    r"\w+cli",
]
# Modules that exist only to serve: the dispatcher, services, options, tap.
SERVER_SIDE = [
    r"server",
    r"tap",
    r"policy",
    r"security",
    r"udpservice",
    r"metrics",
    r"monitoring",
    r"proxied",
    r"workers",
    r"services",
    r"[a-z]+\.service",
    r"[a-z]+\.options",
    r"[a-z]+\.cred",
    r"[a-z]+\.process",
    # A service's package itself: its __init__ may gather server pieces.
    r"files",
    r"commands",
    r"auth",
]
# The CLI's quick path (cli.quick: frames ping and run without Twisted): no
# module that importing it imports may import, at its top, any of HEAVY.
QUICK_PATH = [
    r"cli\.quick",
]
HEAVY = ("twisted", "zope", "OpenSSL", "cryptography", "service_identity")


def moduleFiles() -> dict[str, Path]:
    """
    @return: every module of the package, by dotted name.
    """
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def importsOf(name: str, path: Path, known: set[str]) -> set[str]:
    """
    @param name: the dotted name of the module at C{path}.
    @param known: the names of all the package's modules.
    @return: the package's modules that C{name} imports anywhere in its
        source (top level, functions, C{TYPE_CHECKING} blocks).
    """
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for target in importedNames(name, path, ast.walk(tree), known):
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def importedNames(name: str, path: Path, nodes: Iterable[ast.AST], known: set[str]) -> list[str]:
    """
    @return: the dotted names the import statements among C{nodes} (of
        module C{name} at C{path}) import, relative ones resolved; C{from
        pkg import mod} gives C{pkg.mod} when it is one of C{known}.
    """
    isPackage = path.name == "__init__.py"
    base = name.split(".") if isPackage else name.split(".")[:-1]
    names: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # "from pkg import mod" imports the module pkg.mod when it is one.
            names += [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
    return names


def topLevelStatements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """
    The statements that run when a module is imported: C{body} and the
    blocks of its C{if}, C{try} and C{with} statements, not functions, and
    not C{if TYPE_CHECKING:} blocks.
    """
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                yield from topLevelStatements(node.body)
            yield from topLevelStatements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from topLevelStatements(block)
            for handler in node.handlers:
                yield from topLevelStatements(handler.body)
        elif isinstance(node, ast.With):
            yield from topLevelStatements(node.body)


def loadedOnImport(start: str) -> tuple[set[str], set[str]]:
    """
    What importing the package's module C{start} imports: the modules its
    top level imports, theirs, and so on, and the packages that hold them.

    @return: C{(modules, others)}: the package's modules, and the top-level
        names of the other modules their top levels import.
    """
    modules = moduleFiles()
    known = set(modules)
    seen: set[str] = set()
    others: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:cut]) for cut in range(1, len(parts))]
        path = modules[name]
        tree = ast.parse(path.read_text(), str(path))
        for target in importedNames(name, path, topLevelStatements(tree.body), known):
            if target.split(".")[0] != PACKAGE:
                others.add(target.split(".")[0])
                continue
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                todo.append(target)
    return seen, others


def importGraph() -> dict[str, set[str]]:
    """
    @return: for each module of the package, the package's modules it imports.
    """
    modules = moduleFiles()
    known = set(modules)
    return {name: importsOf(name, path, known) for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """
    @return: the modules C{start} imports, directly or through others.
    """
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def importCycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    @return: the groups of modules that import each other (each group
        sorted, the groups sorted); empty if imports flow one way.
    """
    reach = {node: reachable(graph, node) for node in graph}
    groups = {
        tuple(sorted(other for other in reach[node] if node in reach[other]))
        for node in graph
        if node in reach[node]
    }
    return [list(group) for group in sorted(groups)]


def matches(name: str, patterns: list[str]) -> bool:
    """
    @return: whether module C{name} (dotted, with the package prefix) matches
        one of C{patterns} (written without it).
    """
    short = name[len(PACKAGE) + 1 :]
    return any(re.fullmatch(pattern, short) for pattern in patterns)


class ModuleConventionTests(SynchronousTestCase):
    """
    Conventions every module of the package keeps.
    """

    def test_testCaseName(self) -> None:
        """
        Every module starts with a C{test-case-name} line, as Twisted's do,
        naming a test module that exists (C{tests.files.test_files} is
        C{tests/files/test_files.py}).
        """
        tests = Path(__file__).resolve().parent
        wrong = []
        for name, path in moduleFiles().items():
            first = path.read_text().split("\n", 1)[0]
            found = re.fullmatch(r"# -\*- test-case-name: tests\.([\w.]+) -\*-", first)
            if (
                found is None
                or not tests.joinpath(*found.group(1).split(".")).with_suffix(".py").exists()
            ):
                wrong.append(f"{name}: {first!r}")
        self.assertEqual(wrong, [])

    def test_publicNames(self) -> None:
        """
        C{twisted_frames} exports, in C{__all__}, the objects themselves of
        the modules that define them.
        """
        for name in twisted_frames.__all__:
            obj = getattr(twisted_frames, name)
            module = importlib.import_module(obj.__module__)
            self.assertIs(getattr(module, name), obj, name)
            self.assertTrue(obj.__module__.startswith(PACKAGE + "."), name)


class ImportRuleTests(SynchronousTestCase):
    """
    The package's imports flow one way.
    """

    def test_graphSeesImports(self) -> None:
        """
        The import reader finds the imports the rules depend on, including
        relative ones, so the rules below cannot pass by reading nothing.
        """
        graph = importGraph()
        self.assertIn("twisted_frames.wire", graph["twisted_frames.protocol"])
        self.assertIn("twisted_frames.protocol", graph["twisted_frames.server"])
        self.assertTrue(any(matches(name, CLIENT_SIDE) for name in graph))
        self.assertTrue(any(matches(name, SERVER_SIDE) for name in graph))

    def test_importCycles(self) -> None:
        """
        L{importCycles} reports each group of modules that import each other
        and nothing for a graph without cycles.
        """
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e", "a"}, "e": {"d"}, "f": {"a"}}
        self.assertEqual(importCycles(graph), [["a", "b", "c"], ["d", "e"]])
        self.assertEqual(importCycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}), [])

    def test_noCycles(self) -> None:
        """
        No module of the package imports itself through others, even
        lazily inside a function.
        """
        self.assertEqual(importCycles(importGraph()), [])

    def test_clientSideNeverImportsServerSide(self) -> None:
        """
        The client side (the client library, each service's client, the CLI)
        imports no module of the server side.
        """
        graph = importGraph()
        wrong = sorted(
            f"{name} -> {target}"
            for name, targets in graph.items()
            if matches(name, CLIENT_SIDE)
            for target in targets
            if matches(target, SERVER_SIDE)
        )
        self.assertEqual(wrong, [])


class QuickPathTests(SynchronousTestCase):
    """
    The modules of L{QUICK_PATH} stay free of Twisted and the TLS packages
    it brings, read from the source (C{tests/cli/test_startup.py} checks
    the modules a real process loads).
    """

    def test_loadedOnImport(self) -> None:
        """
        L{loadedOnImport} follows top-level imports through the package and
        its parent packages, and leaves out imports in functions and
        C{TYPE_CHECKING} blocks: C{twisted_frames.client} imports Twisted at
        its top, C{twisted_frames.cli.base} only in functions.
        """
        modules, others = loadedOnImport("twisted_frames.client")
        self.assertIn("twisted_frames.wire", modules)
        self.assertIn("twisted_frames", modules)
        self.assertIn("twisted", others)
        modules, others = loadedOnImport("twisted_frames.cli.base")
        self.assertNotIn("twisted_frames.client", modules)
        self.assertNotIn("twisted", others)

    def test_quickPathImportsNoTwisted(self) -> None:
        """
        Importing a module of L{QUICK_PATH} imports none of L{HEAVY}.
        """
        names = [name for name in moduleFiles() if matches(name, QUICK_PATH)]
        self.assertEqual(names, ["twisted_frames.cli.quick"])
        for name in names:
            modules, others = loadedOnImport(name)
            self.assertEqual(sorted(others & set(HEAVY)), [], name)
