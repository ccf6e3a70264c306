"""The README's code blocks run as written."""

from __future__ import annotations

import re
from typing import Any

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
