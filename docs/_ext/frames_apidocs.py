"""
Build the API reference with pydoctor as part of the Sphinx HTML build.

pydoctor renders the package's epytext docstrings natively (it is what
Twisted uses).  It runs when the HTML builder starts and writes to
C{<html output>/api}; its C{objects.inv} is registered with intersphinx so
that pages can write {py:class}`twisted_frames.FramesClient` and get a link
into the API reference.

Why not C{pydoctor.sphinx_ext.build_apidocs}: it turns every line pydoctor
prints into a Sphinx warning.  Here a broken link to something of our own
(a typo in C{L{...}}) or a malformed docstring stays a warning (an error with
C{-W}), but a link to another project's API (Twisted, the standard library)
that cannot be resolved without fetching that project's inventory over the
network is only logged, and rendered as code.  The build then works offline
and still fails on every docstring mistake in this project.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from pydoctor.driver import main as pydoctor
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: pydoctor appends this to "Cannot find link target" when the name's first
#: component is not one of the packages being documented.
EXTERNAL = "(you can link to external docs with --intersphinx)"


def buildAPIDocs(app: Sphinx) -> None:
    """
    Run pydoctor into C{<outdir>/api} and register its inventory.
    """
    if app.builder.name not in ("html", "dirhtml"):
        return
    output = Path(app.outdir) / app.config.frames_api_path
    arguments = [
        "--make-html",
        "--quiet",
        f"--html-output={output}",
        *app.config.frames_api_args,
    ]
    logger.info("pydoctor %s", " ".join(arguments))
    captured = io.StringIO()
    with redirect_stdout(captured):
        try:
            pydoctor(args=arguments)
        except SystemExit as e:
            # pydoctor exits on bad arguments; say so instead of aborting.
            logger.warning("pydoctor exited with status %s", e.code)
    for line in captured.getvalue().splitlines():
        if EXTERNAL in line:
            logger.info("pydoctor: %s", line)
        elif line.strip():
            logger.warning("pydoctor: %s", line)
    inventory = output / "objects.inv"
    if inventory.exists():
        # Sphinx's normalised form: name -> (name, (base URI, (inventory,))).
        app.config.intersphinx_mapping["api"] = (
            "api",
            (app.config.frames_api_path + "/", (str(inventory),)),
        )


def setup(app: Sphinx) -> dict[str, Any]:
    """
    Register the configuration values and the builder hook.
    """
    app.add_config_value("frames_api_args", [], "env")
    app.add_config_value("frames_api_path", "api", "env")
    # Before sphinx.ext.intersphinx loads its inventories (priority 500).
    app.connect("builder-inited", buildAPIDocs, priority=490)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
