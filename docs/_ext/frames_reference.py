"""
Reference pages generated from the code, so that they cannot drift from it.

A page asks for generated text with a MyST comment line (invisible if this
extension is not loaded)::

    % generated: twistd-frameserver-options
    % generated: frames-commands
    % generated: frameserver-metrics

for the table of an op's request fields, made from its declaration (see
L{twisted_frames.fields})::

    % op-fields: get

and for the error-code table with a fenced block whose lines are
C{code: meaning} (continuation lines indented)::

    ```{error-codes}
    not_found: The path does not exist.
    ```

The options of C{twistd frameserver} come from L{twisted_frames.tap.Options},
the commands of C{frames} from L{twisted_frames.cli.buildParser}, the metrics
from L{twisted_frames.metrics.FAMILIES}: options, commands and metric
families added to them later appear here with no change to the docs.  The
error-code block is checked against L{twisted_frames.wire.ErrorCode}: a code
without a meaning, or a meaning for a code that does not exist, is a build
warning (an error with C{-W}); whether a code closes the connection comes from
L{twisted_frames.wire.VIOLATIONS}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

logger = logging.getLogger(__name__)

MARKER = re.compile(r"^% generated: ([\w-]+)[ \t]*$", re.M)
OP_FIELDS = re.compile(r"^% op-fields: ([\w-]+)[ \t]*$", re.M)
ERROR_BLOCK = re.compile(r"^```\{error-codes\}[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)

_PUNCTUATION = set(string.punctuation)


def escape(text: str) -> str:
    """
    Markdown for plain text: every ASCII punctuation character
    backslash-escaped (always allowed in CommonMark), newlines folded.
    """
    text = " ".join(text.split())
    return "".join("\\" + c if c in _PUNCTUATION else c for c in text)


def code(text: str) -> str:
    """
    An inline code span holding C{text} exactly.
    """
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def cell(text: str) -> str:
    """
    Text for a table cell (a literal C{|} would end the cell).
    """
    return text.replace("|", "\\|")


@contextmanager
def _buildEnvironment() -> Iterator[None]:
    """
    Render defaults as a user gets them: not influenced by the environment
    of whoever builds the docs (C{FRAMES_SERVER}), nor by the terminal width.
    """
    saved = {k: os.environ.get(k) for k in ("FRAMES_SERVER", "COLUMNS")}
    os.environ.pop("FRAMES_SERVER", None)
    os.environ["COLUMNS"] = "88"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- twistd frameserver ----------------------------------------------------------


def frameserverOptions() -> str:
    """
    A Markdown table of every option of C{twistd frameserver}.
    """
    from twisted_frames.tap import Options

    options = Options()
    shortFor: dict[str, str] = {
        long: short
        for short, long in options.synonyms.items()
        if short != long and len(short) == 1
    }
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for spec in options.longOpt:
        takesValue = spec.endswith("=")
        name = spec.rstrip("=")
        names = [f"--{name}" + ("=VALUE" if takesValue else "")]
        if name in shortFor:
            names.insert(0, f"-{shortFor[name]}" + (" VALUE" if takesValue else ""))
        meaning = escape(options.docs.get(name) or "")
        dispatch = options._dispatch.get(name)
        coerceDoc = getattr(dispatch, "doc", "")
        if coerceDoc:
            meaning += " " + escape(coerceDoc)
        default = options.defaults.get(name)
        shown = code(str(default)) if takesValue and default is not None else ""
        rows.append(
            "| " + ", ".join(code(n) for n in names) + f" | {cell(shown)} | {cell(meaning)} |"
        )
    return "\n".join(rows) + "\n"


# -- frames ------------------------------------------------------------------------


def _isSubparsers(action: argparse.Action) -> bool:
    return isinstance(action, argparse._SubParsersAction)


def _helpText(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def _argumentTables(parser: argparse.ArgumentParser, withHelp: bool = True) -> str:
    positionals = ["| argument | meaning |", "|---|---|"]
    optionals = ["| option | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or _isSubparsers(action):
            continue
        if isinstance(action, argparse._HelpAction) and not withHelp:
            continue
        meaning = cell(escape(_helpText(parser, action)))
        if not action.option_strings:
            positionals.append(f"| {code(action.metavar or action.dest)} | {meaning} |")
            continue
        takesValue = action.nargs != 0
        metavar = ""
        if takesValue:
            metavar = " " + (
                action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            )
        names = ", ".join(code(o + metavar) for o in action.option_strings)
        default = action.default
        shown = (
            ""
            if not takesValue or default is None or default == argparse.SUPPRESS
            else code(str(default))
        )
        optionals.append(f"| {names} | {cell(shown)} | {meaning} |")
    out = []
    if len(positionals) > 2:
        out.append("\n".join(positionals))
    if len(optionals) > 2:
        out.append("\n".join(optionals))
    return "\n\n".join(out)


def _commands(parser: argparse.ArgumentParser, prefix: str, level: int) -> list[str]:
    parts: list[str] = []
    for action in parser._actions:
        if not _isSubparsers(action):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            full = f"{prefix} {name}"
            parts.append(f"{'#' * level} {code(full)}\n")
            if helps.get(name):
                summary = escape(helps[name])
                parts.append(summary[:1].upper() + summary[1:] + ".\n")
            if sub.description:
                parts.append(escape(sub.description) + "\n")
            usage = sub.format_usage().strip().removeprefix("usage: ")
            parts.append(f"```text\n{usage}\n```\n")
            tables = _argumentTables(sub, withHelp=False)
            if tables:
                parts.append(tables + "\n")
            if sub.epilog:
                parts.append(escape(sub.epilog) + "\n")
            parts.extend(_commands(sub, full, min(level + 1, 6)))
    return parts


def framesCommands() -> str:
    """
    The C{frames} command line: global options, then every command (and
    nested command) with its usage and arguments.
    """
    from twisted_frames.cli import buildParser

    parser = buildParser()
    parts = [
        "```text\n" + parser.format_usage().strip().removeprefix("usage: ") + "\n```\n",
        escape(parser.description or "") + "\n",
        "Global options (before the command):\n",
        _argumentTables(parser) + "\n",
    ]
    if parser.epilog:
        parts.append(escape(parser.epilog) + "\n")
    parts.extend(_commands(parser, "frames", 3))
    return "\n".join(parts)


# -- error codes ---------------------------------------------------------------------


def errorCodes(block: str, docname: str) -> str:
    """
    The error-code table: the meanings written in the page, checked against
    the codes in the code.
    """
    from twisted_frames.wire import VIOLATIONS, ErrorCode

    meanings: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and current is not None:
            meanings[current] += " " + line.strip()
            continue
        name, sep, text = line.partition(":")
        if not sep:
            logger.warning("error-codes: %r is not 'code: meaning'", line, location=docname)
            continue
        current = name.strip()
        meanings[current] = text.strip()
    known = [str(c) for c in ErrorCode]
    for c in known:
        if c not in meanings:
            logger.warning(
                "error-codes: %s has no meaning written in the page", c, location=docname
            )
    for c in meanings:
        if c not in known:
            logger.warning("error-codes: %s is not in wire.ErrorCode", c, location=docname)
    rows = ["| code | after it | meaning |", "|---|---|---|"]
    for c in known:
        after = "connection closed" if ErrorCode(c) in VIOLATIONS else "connection stays usable"
        rows.append(f"| {code(c)} | {after} | {cell(escape(meanings.get(c, '')))} |")
    return "\n".join(rows) + "\n"


# -- metrics ---------------------------------------------------------------------------


def frameserverMetrics() -> str:
    """
    A Markdown table of every metric family of C{twistd frameserver
    --metrics}: name as exported, type, labels and their values, meaning,
    and a gauge's multiprocess mode.
    """
    from twisted_frames.metrics import FAMILIES, Metrics

    exported = {m.name: m for m in Metrics().registry.collect()}
    rows = [
        "| metric | type | labels | meaning | several processes |",
        "|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        # The exposition name: prometheus_client adds _total to counters.
        names = [family.name + ("_total" if exported[family.name].type == "counter" else "")]
        if family.kind == "histogram":
            names = [family.name + suffix for suffix in ("_bucket", "_sum", "_count")]
        labels = family.values or ", ".join(family.labels) or ""
        processes = f"gauge: {code(family.mode)}" if family.mode else "summed"
        shown = ", ".join(code(n) for n in names)
        rows.append(
            f"| {shown} | {family.kind} | {cell(labels)} | {cell(escape(family.help))} "
            f"| {processes} |"
        )
    return "\n".join(rows) + "\n"


# -- wiring ------------------------------------------------------------------------------

GENERATORS = {
    "twistd-frameserver-options": frameserverOptions,
    "frames-commands": framesCommands,
    "frameserver-metrics": frameserverMetrics,
}


def declaredFields() -> dict[str, dict[str, Any]]:
    """
    @return: op name to its declared request fields, from every service.
    """
    from twisted_frames.auth.service import AuthService
    from twisted_frames.commands.service import CommandService
    from twisted_frames.files.service import FileService

    ops: dict[str, dict[str, Any]] = {}
    for service in (FileService, CommandService, AuthService):
        ops.update(service._declaredFields())
    return ops


def _defaultText(field: Any) -> str:
    from twisted_frames.fields import ABSENT

    if field.defaultDoc is not None:
        return cell(field.defaultDoc)
    if field.onlyIf is not None:
        return f"required if {code(field.onlyIf)}"
    if field.default is ABSENT or (field.default is None and not field.nullable):
        return "required"
    if field.default is None:
        return "none"
    return code(json.dumps(field.default))


def opFields(op: str, docname: str) -> str:
    """
    The table of op C{op}'s request fields: name, type, default, meaning
    (the field's doc string, Markdown).
    """
    fields = declaredFields().get(op)
    if fields is None:
        logger.warning("op %r declares no fields", op, location=docname)
        return ""
    rows = ["| request field | type | default | |", "| --- | --- | --- | --- |"]
    for name, field in fields.items():
        rows.append(
            f"| {code(name)} | {escape(field.typeName)} | {_defaultText(field)} "
            f"| {cell(' '.join(field.doc.split()))} |"
        )
    return "\n".join(rows) + "\n"


def expand(app: Sphinx, docname: str, source: list[str]) -> None:
    """
    Replace the markers of one page with generated Markdown.
    """
    text = source[0]
    found = False

    def generate(match: re.Match[str]) -> str:
        nonlocal found
        found = True
        name = match.group(1)
        if name not in GENERATORS:
            logger.warning("unknown generated section %r", name, location=docname)
            return ""
        with _buildEnvironment():
            return GENERATORS[name]()

    text = MARKER.sub(generate, text)

    def fieldTable(match: re.Match[str]) -> str:
        nonlocal found
        found = True
        return opFields(match.group(1), docname)

    text = OP_FIELDS.sub(fieldTable, text)

    def table(match: re.Match[str]) -> str:
        nonlocal found
        found = True
        return errorCodes(match.group(1), docname)

    text = ERROR_BLOCK.sub(table, text)
    if found:
        generated: set[str] = getattr(app.env, "frames_generated", set())
        generated.add(docname)
        app.env.frames_generated = generated  # type: ignore[attr-defined]
    source[0] = text


def alwaysReread(
    app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    """
    Generated pages depend on the code, which Sphinx does not track: read
    them again on every build.
    """
    return sorted(getattr(env, "frames_generated", set()) - removed)


def setup(app: Sphinx) -> dict[str, Any]:
    """
    Register the hooks.
    """
    app.connect("source-read", expand)
    app.connect("env-get-outdated", alwaysReread)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
