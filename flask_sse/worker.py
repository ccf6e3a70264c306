"""A gunicorn worker that parks established streams: ``-k flask_sse.worker.GeventWorker``.

It is ``gunicorn -k gevent`` in every way but one: a stream whose bytes reach
gunicorn untouched (as for the direct write; see ``transport.py``) ends its
request once it is established, and goes on as a parked stream of the hub
(``handover.py``), without a greenlet or the request's objects. That halves
the memory an open stream takes. Everything else, the app's other views
included, is served as by the gevent worker.

Two differences follow, both written in the docs:

- ``--worker-connections`` bounds the requests being served, not the parked
  streams: ``SSE_MAX_CONNECTIONS`` is the bound on streams.
- On a graceful stop, the worker waits for its parked streams too (the
  drain ends them, see ``SSE_DRAIN_SECONDS``), up to ``--graceful-timeout``
  after the signal, then hangs up on the rest.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import gevent  # type: ignore[import-untyped]
from gunicorn.workers.ggevent import (  # type: ignore[import-untyped]
    GeventWorker as _GunicornGeventWorker,
)

from .handover import ParkedStreams
from .transport import PARKING

#: Seconds between the worker's heartbeats to the arbiter while it waits for streams.
HEARTBEAT = 1.0


class GeventWorker(_GunicornGeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, whose established streams go on without their request."""

    wsgi: Any  # the app, set by gunicorn's load_wsgi()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parked: ParkedStreams | None = None  # made once patched: it holds an Event
        self._stopping_since: float | None = None

    def patch(self) -> None:
        # gunicorn imports this class before the worker patches, so ssl and
        # redis-py are imported already; redis-py's asyncio client (which no
        # gevent app uses) holds the one unpatched reference gevent warns of.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"Monkey-patching ssl after ssl has already been imported.*"
                r"Modules that had direct imports \(NOT patched\): "
                r"\['redis\.asyncio\.connection \([^)]*\)'\]\. $",
            )
            super().patch()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: Any = self.wsgi
        parked = self.parked = ParkedStreams(gevent.spawn)

        def parking_app(environ: dict[str, Any], start_response: Any) -> Any:
            environ[PARKING] = parked
            return app(environ, start_response)

        self.wsgi = parking_app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._stopping_since = time.monotonic()
        super().handle_exit(sig, frame)

    def run(self) -> None:
        super().run()  # until stopped, and its requests done or its graceful timeout over
        if self.parked is None:
            return
        deadline = (self._stopping_since or time.monotonic()) + self.cfg.graceful_timeout
        while len(self.parked) and time.monotonic() < deadline:
            self.notify()
            self.parked.wait(min(HEARTBEAT, max(0.0, deadline - time.monotonic())))
        if len(self.parked):
            self.log.warning(
                "Hanging up on %d parked streams still open at the graceful timeout "
                "(SSE_DRAIN_SECONDS ends them sooner)", len(self.parked),
            )
        self.parked.close()
