"""Sphinx configuration of the smtpproto-server documentation."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# Build from the checkout even when the package is not installed.
sys.path.insert(0, str(DOCS.parent / "src"))
sys.path.insert(0, str(DOCS / "_ext"))

import smtpproto

project = "smtpproto-server"
author = "smtpproto developers"
copyright = "2026, smtpproto developers"
release = smtpproto.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "clihelp",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []
# Option names such as --listen must not turn into dashes.
smartquotes = False

html_theme = "furo"
html_title = f"smtpproto-server {release}"
html_static_path = ["_static"]

autodoc_member_order = "bysource"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autoclass_content = "class"
autodoc_typehints = "signature"
python_maximum_signature_line_length = 88
