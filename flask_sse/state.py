"""One app's server-sent events state, ``app.extensions["sse"]``, and the one way to get it."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app, has_app_context

from .admission import Admission
from .config import SSEConfig
from .publisher import Publisher


@dataclass(frozen=True)
class SSEState:
    """What one app needs to stream and publish: ``app.extensions["sse"]``."""

    config: SSEConfig
    publisher: Publisher
    #: this process's bucket of new streams (``SSE_ADMISSION_RATE``), if any
    admission: Admission | None = None


def app_state(caller: str, app: Flask | None = None) -> SSEState:
    """The state of ``app`` (the current app if ``None``), or an error that says what to do.

    ``caller`` names what needed it, for the message.
    """
    if app is None:
        if not has_app_context():
            raise RuntimeError(
                f"{caller!r} can only be used inside an application context (in a view, "
                "or under 'with app.app_context():'). Outside Flask, use "
                "flask_sse.Publisher(redis_url).publish(...)."
            )
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    state: SSEState | None = app.extensions.get("sse")
    if state is None:
        raise RuntimeError(
            f"{caller!r} can only be used once a server-sent events blueprint is "
            "registered on the app: app.register_blueprint(sse, url_prefix='/stream')."
        )
    return state
