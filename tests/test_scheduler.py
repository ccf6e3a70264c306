"""The scheduler lets go of streams that left, also when thousands leave at once."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from flask_sse.scheduler import Scheduler
from flask_sse.subscription import Subscription


class _Mark:
    """Held only by one subscription: alive as long as something holds that subscription."""

    def __call__(self) -> None:
        """An ``on_overflow`` that is never called here."""


def test_streams_that_leave_together_are_let_go_at_once_and_the_others_still_woken() -> None:
    scheduler = Scheduler(open_streams=list)
    later = time.monotonic() + 60  # their keepalives: far beyond the test
    staying = [Subscription(("stays",), 10, scheduler) for _ in range(10)]
    for subscription in staying:
        subscription.wake_at(later)
    marks = []
    for _ in range(100):
        mark = _Mark()
        marks.append(weakref.ref(mark))
        leaving = Subscription(("leaves",), 10, scheduler, on_overflow=mark)
        leaving.wake_at(later)
        scheduler.cancel(leaving)  # the stream ended: the hub unsubscribed it
        del leaving, mark
    gc.collect()
    held = sum(mark() is not None for mark in marks)
    assert held <= len(staying), f"the scheduler still holds {held} of 100 streams that left"

    staying[0].wake_at(time.monotonic())
    waiting = threading.Thread(target=staying[0].wait)
    waiting.start()
    scheduler.start()
    try:
        waiting.join(5)
        assert not waiting.is_alive(), "a stream that stayed was not woken when due"
    finally:
        scheduler.close()
        staying[0].wake()
        waiting.join(5)
