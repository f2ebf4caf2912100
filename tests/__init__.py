"""
The tests of twisted-frames.

A warning raised in this project's code is an error under both runners:
pytest applies C{filterwarnings} from C{pyproject.toml}, and importing this
package applies the same filters for Trial (L{projectWarningFilters}).
"""

from __future__ import annotations

import builtins
import tomllib
import warnings
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def projectWarningFilters() -> list[tuple[str, str, type[Warning], str]]:
    """
    The pytest C{filterwarnings} of C{pyproject.toml}, parsed.

    @return: C{(action, message, category, module)} for each, in the order
        pytest applies them (each one before the ones already applied).
    """
    with PYPROJECT.open("rb") as f:
        lines = tomllib.load(f)["tool"]["pytest"]["ini_options"]["filterwarnings"]
    filters = []
    for line in lines:
        action, message, category, module = (line.split(":") + ["", "", ""])[:4]
        filters.append((action, message, getattr(builtins, category or "Warning"), module))
    return filters


def applyProjectWarningFilters() -> None:
    """
    Install L{projectWarningFilters} in front of the current filters.

    Trial collects warnings during a test and re-emits those not flushed
    with C{warnings.warn_explicit} after it, which then raises: the test is
    reported as an error.
    """
    for action, message, category, module in projectWarningFilters():
        warnings.filterwarnings(action, message, category, module)  # type: ignore[call-overload]


applyProjectWarningFilters()
