"""The process-wide hooks: ending streams on SIGTERM (and its opt-out), closing everything."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest
from flask import Flask

from flask_sse import registry, signals
from flask_sse.registry import drain_window

from .conftest import MakeApp


class ServerHandler:
    """A SIGTERM handler of the server's own, as gunicorn installs one."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)


@pytest.fixture
def server_handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandler]:
    """The server's handler installed for the test, the previous one restored after."""
    handler = ServerHandler()
    previous = signal.signal(signal.SIGTERM, handler)
    monkeypatch.setattr(registry, "_sigterm_installed", False)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_streams_end_on_sigterm_and_the_servers_handler_still_runs(
    app: Flask, server_handler: ServerHandler
) -> None:
    reasons: list[str] = []
    signals.stream_closed.connect(lambda sender, **kw: reasons.append(kw["reason"]), app, weak=False)
    response = app.test_client().get("/stream", buffered=False)
    assert signal.getsignal(signal.SIGTERM) is not server_handler  # chained in front of it
    os.kill(os.getpid(), signal.SIGTERM)
    assert server_handler.received == [signal.SIGTERM]
    body = response.get_data()  # ends by itself: the hub ended the stream
    response.close()
    assert body.startswith(b"retry:")
    assert reasons == ["shutdown"]


def test_the_sigterm_hook_can_be_turned_off(
    make_app: MakeApp, server_handler: ServerHandler
) -> None:
    app = make_app(SSE_END_STREAMS_ON_SIGTERM=False)
    response = app.test_client().get("/stream", buffered=False)
    assert signal.getsignal(signal.SIGTERM) is server_handler
    response.close()


def test_close_all_stops_every_thread_and_ends_open_streams(app: Flask) -> None:
    response = app.test_client().get("/stream", buffered=False)
    assert any(thread.name.startswith("flask-sse") for thread in threading.enumerate())
    registry.close_all()
    assert not any(thread.name.startswith("flask-sse") for thread in threading.enumerate())
    assert response.get_data().startswith(b"retry:")  # the stream ended cleanly
    response.close()


class _Config:
    graceful_timeout = 6


class _Worker:
    """What gunicorn's worker looks like to the drain: its config, and its SIGTERM handler."""

    cfg = _Config()

    def handle_exit(self, signum: int, frame: object) -> None:
        """gunicorn's own handler."""


@pytest.mark.parametrize(
    ("drain_seconds", "handler", "window"),
    [
        (10.0, _Worker().handle_exit, 3.0),  # half of gunicorn's graceful timeout at most
        (2.0, _Worker().handle_exit, 2.0),
        (10.0, print, 10.0),  # not gunicorn's: as set
        (0.0, _Worker().handle_exit, 0.0),
    ],
)
def test_the_drain_fits_in_half_of_gunicorns_graceful_timeout(
    drain_seconds: float, handler: object, window: float
) -> None:
    assert drain_window(drain_seconds, handler) == window
