"""Sphinx configuration of the documentation site (``sphinx-build -W docs docs/_build/html``)."""

from __future__ import annotations

import importlib.metadata

project = "flask-sse-hub"
author = "the flask-sse-hub authors"
copyright = "the flask-sse-hub authors, MIT License"
release = importlib.metadata.version("flask-sse-hub")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = f"flask-sse-hub {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Server-sent events for Flask, fanned out from Redis",
    "fixed_sidebar": True,
}
