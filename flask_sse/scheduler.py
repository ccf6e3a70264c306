"""Wakes each stream when it asked to be woken: keepalives, time limits, shutdown.

One thread per hub with a heap of due times, so each tick looks only at the
streams that are due, not at every stream. A stream asks for its next
wake-up with :meth:`Subscription.wake_at`; an entry whose stream has since
moved its time later is put back at the new time when it comes up (cheaper
than removing it from the middle of the heap).

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

from .subscription import Subscription

#: Longest sleep between looks at the heap, in seconds: no coarser than the
#: smallest ``SSE_KEEPALIVE`` allowed, and how soon a shutdown is noticed.
TICK = 0.1


class Scheduler:
    """A heap of (due time, stream) and the thread that wakes them.

    ``on_shutdown(share)`` is called from this thread at every tick after
    :meth:`shutdown`, with the share of the drain window gone by (0 to 1;
    1 from the end of the window on, so streams that open meanwhile end too).
    """

    def __init__(self, on_shutdown: Callable[[float], None]) -> None:
        self._on_shutdown = on_shutdown
        self._heap: list[tuple[float, int, Subscription]] = []
        self._order = itertools.count()  # ties never compare subscriptions
        self._lock = threading.Lock()  # guards _heap and every Subscription.scheduled_at
        self._stop = threading.Event()
        self._ending = False
        self._drain_window = 0.0
        self._ending_since: float | None = None  # only this thread reads and writes it
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
        """Forget ``subscription`` (its entry is dropped when it comes up)."""
        with self._lock:
            subscription.scheduled_at = -math.inf

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
                self._on_shutdown(self._drained_share())
            for subscription in self._take_due(time.monotonic()):
                subscription.wake()

    def _drained_share(self) -> float:
        now = time.monotonic()
        if self._ending_since is None:
            self._ending_since = now
        window = self._drain_window
        return 1.0 if window <= 0 else min(1.0, (now - self._ending_since) / window)

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
