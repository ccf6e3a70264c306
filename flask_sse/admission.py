"""Admission control: how many new streams one process starts per second.

Opening a stream costs more than keeping one: a subscription, and for a
resume a history read. When a server goes away, all its browsers arrive at
the others at once; past ``SSE_ADMISSION_RATE`` streams per second, a
process turns the rest away with the answer every client retries
(``refusal.py``: a browser waits its jittered ``retry:`` and comes back
with its ``Last-Event-ID``), rather than taking on work it cannot do in
time.

A token bucket holds one second of the rate. A resume (a request with a
``Last-Event-ID``) may take any token; a new stream only one from the top
half of the bucket, so that under load new streams wait first and browsers
that had a stream get it back first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Admission:
    """A token bucket of ``rate`` new streams per second; any thread may ask."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._updated = clock()
        self._lock = threading.Lock()  # guards _tokens and _updated

    def admit(self, resuming: bool) -> bool:
        """Whether a stream may open now (and if so, take its token)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            reserve = 0.0 if resuming else self.rate / 2
            if self._tokens - 1 < reserve:
                return False
            self._tokens -= 1
            return True
