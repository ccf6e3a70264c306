"""The README's code blocks run as written."""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import tomllib
from flask import Flask

from flask_sse import sse

from .conftest import ROOT, OpenClientStream


def python_block(containing: str) -> str:
    """The README's Python code block that contains ``containing``."""
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        if containing in block:
            return str(block)
    raise AssertionError(f"no Python block of the README contains {containing!r}")


class Webhooks:
    """The task queue the README's example hands its webhooks to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def enqueue(self, kind: str, channel: str) -> None:
        self.sent.append((kind, channel))


def test_the_presence_webhooks_example(app: Flask, client_stream: OpenClientStream) -> None:
    webhooks = Webhooks()
    namespace: dict[str, Any] = {"app": app, "sse": sse, "webhooks": webhooks}
    exec(python_block("@channel_vacated.connect_via(app)"), namespace)  # noqa: S102
    first = client_stream("/stream?channel=room")
    second = client_stream("/stream?channel=room")
    first.close()
    assert webhooks.sent == [("channel_occupied", "room")]  # one stream is still open
    second.close()  # the receiver runs after the request has ended
    assert webhooks.sent == [("channel_occupied", "room"), ("channel_vacated", "room")]


def test_every_install_line_names_this_distribution_and_its_extras() -> None:
    """``pip install 'name[extra]'`` in the README and in error messages installs this package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "flask-sse", "flask-sse on the package index is another project"
    extras = set(project["optional-dependencies"])
    texts = [(ROOT / "README.md").read_text()]
    texts += [path.read_text() for path in (ROOT / "flask_sse").glob("*.py")]
    lines = [m for text in texts for m in re.findall(r"pip install '([\w.-]+)\[([\w,]+)\]'", text)]
    assert lines, "no install line found"
    for name, wanted in lines:
        if name != ".":
            assert name == project["name"], f"'{name}' is not this distribution"
        assert set(wanted.split(",")) <= extras, f"{wanted} is not among the extras {extras}"


def test_the_version_comes_from_the_package_metadata() -> None:
    import flask_sse

    assert flask_sse.__version__ == importlib.metadata.version("flask-sse-hub")
