"""Prometheus metrics (the ``metrics`` extra): streams, events, and the hub's fan-out.

Off unless an app sets ``SSE_METRICS = True`` (or a process without an app,
such as a task queue's worker that publishes, calls :func:`enable`). Once on,
they count for the whole process, as prometheus_client's registry is the
process's own: every hub, stream and ``Publisher`` in it.

The rest of the package calls the hooks below whether metrics are on or not:
off, a hook is one call and one test, so nothing else has to ask. On, they
count in batches where the code has one (the hub adds once per event the
streams it wrote that event to; a stream adds once per chunk the events in
it), because a delivery costs a few microseconds and one update of a
multiprocess counter about one.

No metric has a channel label: channel names are unbounded (one per user,
per job), and every label value is a time series of its own in Prometheus.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from .signals import stream_closed, stream_opened
from .subscription import CloseReason

if TYPE_CHECKING:
    from prometheus_client import Counter

#: Upper bounds (seconds) of the fan-out histogram: 100 us to 1 s.
FANOUT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0
)
_INSTALL = "pip install 'flask-sse-hub[metrics]'"


class _Metrics:
    """The process's metrics, made once, in prometheus_client's default registry."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        #: livesum: the sum over the worker processes alive now
        self.open_streams = Gauge(
            "sse_open_streams", "Streams open now.", multiprocess_mode="livesum"
        )
        self.opened = Counter("sse_streams_opened", "Streams opened, resumed ones included.")
        closed = Counter(
            "sse_streams_closed",
            "Streams ended, by reason ('slow': fell SSE_QUEUE_SIZE events behind).",
            ["reason"],
        )
        self.closed: dict[CloseReason, Counter] = {
            reason: closed.labels(reason.value) for reason in CloseReason
        }
        delivered = Counter(
            "sse_events_delivered",
            "Events written to streams: by the hub straight to an idle stream's socket "
            "(direct), or by the stream itself (queued).",
            ["path"],
        )
        self.direct = delivered.labels("direct")
        self.queued = delivered.labels("queued")
        self.published = Counter("sse_events_published", "Publish calls that succeeded.")
        self.publish_errors = Counter(
            "sse_publish_errors", "Publish calls that raised a Redis error, by its class.",
            ["error"],
        )
        self.resumes = Counter("sse_resumes", "Streams opened with a Last-Event-ID.")
        self.resume_replayed = Counter(
            "sse_resume_replayed_events", "Events sent from history to resuming streams."
        )
        self.resets = Counter(
            "sse_reset_events", "reset events sent: history lacked some of what a stream missed."
        )
        self.link_losses = Counter(
            "sse_hub_link_losses", "Pub/sub connections to Redis that broke."
        )
        self.hub_replayed = Counter(
            "sse_hub_replayed_events",
            "Events the hub replayed from history after a pub/sub connection broke.",
        )
        self.fanout = Histogram(
            "sse_fanout_seconds",
            "Time from the hub reading an event from Redis to its last local delivery.",
            buckets=FANOUT_BUCKETS,
        )


_on: _Metrics | None = None
_enabling = threading.Lock()


def enable() -> None:
    """Turn the metrics on for this process (``SSE_METRICS`` does it at registration).

    Raises ``RuntimeError`` naming the extra to install when prometheus_client
    is missing, so an app that asks for metrics never runs without them.
    """
    global _on
    with _enabling:
        if _on is None:
            _require()
            _on = _Metrics()
            stream_opened.connect(_stream_opened)
            stream_closed.connect(_stream_closed)


def metrics_view() -> tuple[bytes, dict[str, str]]:
    """A view of the metrics in Prometheus's text format, for the app to route.

    ``app.add_url_rule("/metrics", view_func=metrics_view)``, behind whatever
    guards the app's other internal pages.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), the
    sum over every worker, read from that directory, so whichever worker
    answers the scrape tells the whole server's figures.
    """
    _require()
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), {"Content-Type": CONTENT_TYPE_LATEST}


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "flask-sse's metrics (SSE_METRICS = True) need prometheus_client, which is not "
            f"installed: {_INSTALL}, or set SSE_METRICS = False."
        ) from None


# -- the hooks ---------------------------------------------------------------


def _stream_opened(sender: object, **_: object) -> None:
    on = _on
    if on is not None:
        on.opened.inc()
        on.open_streams.inc()


def _stream_closed(sender: object, *, reason: CloseReason, **_: object) -> None:
    on = _on
    if on is not None:
        on.closed[reason].inc()
        on.open_streams.dec()


def fanned_out(received: float, direct: int) -> None:
    """The hub handed a live event read at ``received`` (``time.monotonic()``) to its streams.

    ``direct``: how many of them it wrote the event to itself.
    """
    on = _on
    if on is not None:
        if direct:
            on.direct.inc(direct)
        on.fanout.observe(time.monotonic() - received)


def hub_replayed(events: int, resets: int, direct: int) -> None:
    """After a lost link the hub replayed ``events`` from history, and ``resets`` resets.

    ``direct``: the deliveries of them it wrote to streams itself.
    """
    on = _on
    if on is not None:
        on.hub_replayed.inc(events)
        if resets:
            on.resets.inc(resets)
        if direct:
            on.direct.inc(direct)


def written(events: int) -> None:
    """A stream wrote a chunk of ``events`` events itself (the queued path)."""
    on = _on
    if on is not None:
        on.queued.inc(events)


def resumed(replayed: int, resets: int) -> None:
    """A stream resumed from a Last-Event-ID, sent ``replayed`` events and ``resets`` resets."""
    on = _on
    if on is not None:
        on.resumes.inc()
        if replayed:
            on.resume_replayed.inc(replayed)
        if resets:
            on.resets.inc(resets)


def published() -> None:
    on = _on
    if on is not None:
        on.published.inc()


def publish_failed(error: Exception) -> None:
    """A publish raised ``error`` (after its attempts); labelled with its class, a bounded set."""
    on = _on
    if on is not None:
        on.publish_errors.labels(type(error).__name__).inc()


def link_lost() -> None:
    """A pub/sub connection of the hub broke (the hub reconnects and replays)."""
    on = _on
    if on is not None:
        on.link_losses.inc()
