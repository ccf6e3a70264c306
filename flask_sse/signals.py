"""Signals, with blinker as Flask's own: build presence, webhooks or metrics on them.

Each is sent with the app as sender::

    from flask_sse.signals import channel_occupied

    @channel_occupied.connect_via(app)
    def occupied(app, channel):
        ...

- ``stream_opened(app, channels)``: a stream was accepted (after the checks).
- ``stream_closed(app, channels, reason)``: it ended; ``reason`` is a
  :class:`flask_sse.subscription.CloseReason` (a ``str`` enumeration):
  ``"client gone"`` (also when the server closed it), ``"slow"`` (fell
  ``SSE_QUEUE_SIZE`` behind), ``"max age"`` (``SSE_MAX_AGE``) or
  ``"shutdown"`` (the worker got SIGTERM, or the hub was closed).
- ``channel_occupied(app, channel)``: the first stream of ``channel`` in this
  process opened; ``channel_vacated(app, channel)``: its last one closed.
  Per process: for a total across workers use ``sse.subscriber_count()``.

Receivers run in the stream's own thread (greenlet), with the app's context
pushed (also for the signals sent after the request has ended); keep them
short, and hand slow work (an HTTP webhook) to a task queue.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

stream_opened = _signals.signal("sse-stream-opened")
stream_closed = _signals.signal("sse-stream-closed")
channel_occupied = _signals.signal("sse-channel-occupied")
channel_vacated = _signals.signal("sse-channel-vacated")
