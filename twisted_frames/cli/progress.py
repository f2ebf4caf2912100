# -*- test-case-name: tests.cli.test_files -*-
"""
How the file commands show sizes, rates and progress: binary units
everywhere, and a tqdm bar on a terminal only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..printable import printable


def humanSize(n: float) -> str:
    """
    C{n} bytes in binary units (C{B}, C{KiB}, ...), as every summary line and
    the progress bar say sizes.
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


#: The progress bar's layout: tqdm's default, with sizes and rate in the
#: binary units of the summary line (tqdm's own say "MB" for 1024-based
#: sizes and use 1000-based rates).
_BAR_FORMAT = "{l_bar}{bar}| {done}/{size} [{elapsed}<{remaining}, {speed}]"


def progressBar(total: int | None, label: str, stream: TextIO) -> Any:
    """
    A tqdm progress bar of bytes on C{stream}, in the units of L{humanSize}.
    """
    from tqdm import tqdm  # type: ignore[import-untyped]

    class BinaryBar(tqdm):  # type: ignore[misc]
        @property
        def format_dict(self) -> dict[str, Any]:
            d: dict[str, Any] = super().format_dict
            rate = d.get("rate")
            d["done"] = humanSize(d["n"])
            d["size"] = "?" if d["total"] is None else humanSize(d["total"])
            d["speed"] = f"{humanSize(rate)}/s" if rate else "?"
            return d

    return BinaryBar(
        total=total,
        unit="B",
        desc=printable(label),
        file=stream,
        leave=False,
        dynamic_ncols=True,
        bar_format=_BAR_FORMAT,
    )


class TransferBar:
    """
    A tqdm progress bar on stderr, or nothing when stderr is not a terminal
    or the user asked for quiet or JSON output.
    """

    def __init__(self, args: argparse.Namespace, total: int | None, label: str) -> None:
        self.bar: Any = None
        if args.quiet or args.json or not sys.stderr.isatty():
            return
        self.bar = progressBar(total, label, sys.stderr)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def retarget(self, total: int | None, label: str) -> None:
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.set_description(printable(label))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def transferRate(size: int, seconds: float) -> str:
    """
    The rate of C{size} bytes in C{seconds}, in the units of L{humanSize}.
    """
    return f"{humanSize(size / seconds)}/s" if seconds > 0 else "-"
