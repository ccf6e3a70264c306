"""Wakes each stream when it asked to be woken: keepalives, time limits, shutdown.

One thread per hub with a heap of due times, so each tick looks only at the
streams that are due, not at every stream. A stream asks for its next
wake-up with :meth:`Subscription.wake_at`; an entry whose stream has since
moved its time later is put back at the new time when it comes up (cheaper
than removing it from the middle of the heap). The entries of ended streams
are dropped together once they are half the heap: when many clients leave at
once, the thread would otherwise wake for each of them over the next
``SSE_KEEPALIVE``, and hold their subscriptions until then.

This thread never waits on Redis, so keepalives and ``SSE_MAX_AGE`` keep
their times while Redis is slow or frozen.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable

from .subscription import CloseReason, Subscription

#: Longest sleep between looks at the heap, in seconds: no coarser than the
#: smallest ``SSE_KEEPALIVE`` allowed, and how soon a shutdown is noticed.
TICK = 0.1


class Drain:
    """Ends the streams of a stopping process a share at a time over ``window`` seconds.

    Oldest first, counted against the streams open when it began; from the
    end of the window on, every stream still open (also those opened since).
    Only the scheduler's thread uses it.
    """

    def __init__(self, window: float, began: float, total: int) -> None:
        self._window = window
        self._began = began
        self._total = total
        self._ended = 0

    def end_due(self, open_streams: list[Subscription], now: float) -> None:
        due = len(open_streams)
        if self._window > 0 and now - self._began < self._window:
            share = (now - self._began) / self._window
            due = max(0, min(due, math.ceil(self._total * share) - self._ended))
        for subscription in open_streams[:due]:
            subscription.end(CloseReason.SHUTDOWN)
        self._ended += due


class Scheduler:
    """A heap of (due time, stream) and the thread that wakes them.

    After :meth:`shutdown`, it also ends the streams that ``open_streams()``
    lists (oldest first), a share at each tick (see :class:`Drain`).
    """

    def __init__(self, open_streams: Callable[[], list[Subscription]]) -> None:
        self._open_streams = open_streams
        self._heap: list[tuple[float, int, Subscription]] = []
        self._cancelled = 0  # cancels since the heap was last cleared of them (some came up since)
        self._order = itertools.count()  # ties never compare subscriptions
        self._lock = threading.Lock()  # guards _heap and every Subscription.scheduled_at
        self._stop = threading.Event()
        self._ending = False
        self._drain_window = 0.0
        self._drain: Drain | None = None  # only this thread reads and writes it
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="flask-sse-scheduler", daemon=True
                )
                self._thread.start()

    def schedule(self, subscription: Subscription, when: float) -> None:
        """Wake ``subscription`` at ``when`` unless it asks again first."""
        with self._lock:
            if when < subscription.scheduled_at:  # otherwise its entry comes first anyway
                subscription.scheduled_at = when
                heapq.heappush(self._heap, (when, next(self._order), subscription))

    def cancel(self, subscription: Subscription) -> None:
        """Forget ``subscription`` (its entry is dropped when it comes up, or with the others)."""
        with self._lock:
            if subscription.scheduled_at != math.inf:  # it has an entry in the heap
                self._cancelled += 1
            subscription.scheduled_at = -math.inf
            if self._cancelled > len(self._heap) // 2:
                self._heap = [entry for entry in self._heap if entry[0] == entry[2].scheduled_at]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def shutdown(self, drain_window: float = 0.0) -> None:
        """End every stream from this thread, spread over ``drain_window`` seconds.

        Safe in a signal handler: it only sets two attributes.
        """
        self._drain_window = drain_window
        self._ending = True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                next_due = self._heap[0][0] if self._heap else math.inf
            pause = min(TICK, max(0.0, next_due - time.monotonic()))
            if self._stop.wait(pause):
                return
            if self._ending:
                now = time.monotonic()
                streams = self._open_streams()
                if self._drain is None:
                    self._drain = Drain(self._drain_window, now, len(streams))
                self._drain.end_due(streams, now)
            for subscription in self._take_due(time.monotonic()):
                subscription.wake()

    def _take_due(self, now: float) -> list[Subscription]:
        due = []
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= now:
                when, _, subscription = heapq.heappop(heap)
                if when != subscription.scheduled_at:
                    continue  # a stale entry: cancelled, or replaced by an earlier one
                if subscription.due <= now:
                    subscription.scheduled_at = math.inf  # the stream asks again once awake
                    due.append(subscription)
                else:  # it moved its time later since: put it back there
                    subscription.scheduled_at = subscription.due
                    heapq.heappush(heap, (subscription.due, next(self._order), subscription))
        return due
