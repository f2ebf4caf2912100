"""
Sphinx configuration for the twisted-frames documentation.

Pages are Markdown (MyST).  The API reference is rendered from the epytext
docstrings by pydoctor, run by its Sphinx extension during the HTML build;
the option and command reference is rendered from the code by
C{_ext/frames_reference.py}, so neither can drift from the code.

Build (warnings are errors)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
# Document the checkout itself, not whatever version happens to be installed.
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(DOCS / "_ext"))

import twisted_frames  # noqa: E402

project = "twisted-frames"
author = "twisted-frames developers"
copyright = "twisted-frames developers"
release = twisted_frames.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.intersphinx",
    "frames_apidocs",
    "frames_reference",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "README.md"]

myst_enable_extensions = ["colon_fence", "deflist"]
# Headings down to ### get link targets, so pages can link to sections.
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"twisted-frames {release}"

# -- API reference ---------------------------------------------------------------
# pydoctor (run by _ext/frames_apidocs.py) writes the API pages to
# <html output>/api and registers their inventory with intersphinx, so
# {py:class}`twisted_frames.FramesClient` links from any page into them.
frames_api_path = "api"
frames_api_args = [
    "--project-name=twisted-frames",
    f"--project-version={release}",
    "--docformat=epytext",
    str(REPO / "twisted_frames"),
]
intersphinx_mapping: dict[str, object] = {}
