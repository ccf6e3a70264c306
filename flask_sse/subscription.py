"""One client's end of the hub: a bounded queue, a wake-up, a schedule and an end.

Who calls what, from which thread:

- the hub's link readers call :meth:`Subscription.deliver`;
- the client's own thread (its greenlet under gevent) calls
  :meth:`Subscription.wait` and :meth:`Subscription.wake_at`, and reads
  :attr:`Subscription.ended`; a stream handed over by its request has no
  thread of its own: it is called back instead (:meth:`Subscription.call_on_wake`),
  and its turns call :meth:`Subscription.take` and :meth:`Subscription.sleep`;
- the scheduler calls :meth:`Subscription.wake` when the time asked for
  with :meth:`~Subscription.wake_at` has come;
- any thread may call :meth:`Subscription.end`: the first reason given is
  the one reported (two threads ending it at once report either).
"""

from __future__ import annotations

import enum
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .delivery import Delivery


class CloseReason(str, enum.Enum):
    """Why a stream ended: the ``reason`` of the ``stream_closed`` signal.

    A ``str`` enumeration, so ``reason == "slow"`` works in receivers.
    """

    #: the client went away, or the server closed the response
    CLIENT_GONE = "client gone"
    #: the client fell ``SSE_QUEUE_SIZE`` events behind
    SLOW = "slow"
    #: ``SSE_MAX_AGE`` was reached
    MAX_AGE = "max age"
    #: the process is stopping (SIGTERM) or its hub was closed
    SHUTDOWN = "shutdown"


class Scheduler(Protocol):
    """What a subscription needs of the scheduler (see ``scheduler.py``)."""

    def schedule(self, subscription: Subscription, when: float) -> None: ...


#: A fast path offered each delivery while the client's thread sleeps with
#: nothing queued: it may write the event itself and return True.
DirectWrite = Callable[["Delivery"], bool]


class Subscription:
    """One client's bounded queue of deliveries.

    A client that falls ``limit`` events behind is ended with
    :attr:`CloseReason.SLOW` and ``on_overflow`` is called (to hang up its
    connection): memory stays bounded and the other clients are not held up.
    """

    __slots__ = (
        "channels", "due", "scheduled_at", "_scheduler", "_queue", "_limit", "_wakeup",
        "_sleeping", "_on_overflow", "_direct_write", "_reason", "_on_wake",
    )

    def __init__(
        self,
        channels: tuple[str, ...],
        limit: int,
        scheduler: Scheduler,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.channels = channels
        #: when the client's thread wants to be woken (``time.monotonic()``);
        #: written by that thread through :meth:`wake_at`, read by the scheduler
        self.due = math.inf
        #: the time of this subscription's entry in the scheduler's heap;
        #: the scheduler's alone (under its lock)
        self.scheduled_at = math.inf
        self._scheduler = scheduler
        self._queue: deque[Delivery] = deque()
        self._limit = limit
        self._wakeup = threading.Event()
        self._sleeping = False
        self._on_overflow = on_overflow
        self._direct_write: DirectWrite | None = None
        self._reason: CloseReason | None = None
        self._on_wake: Callable[[], None] | None = None

    # -- the hub's side ------------------------------------------------------

    def deliver(self, delivery: Delivery) -> bool:
        """Queue ``delivery``, or let the direct writer write it: True if that wrote it."""
        if self._reason is not None:
            return False
        queue = self._queue
        if self._sleeping and not queue:
            direct_write = self._direct_write
            if direct_write is not None and direct_write(delivery):
                return True
        if len(queue) >= self._limit:
            self.end(CloseReason.SLOW)
            if self._on_overflow is not None:
                self._on_overflow()
            return False
        queue.append(delivery)
        self._signal()
        return False

    # -- the client's side ---------------------------------------------------

    def wait(self) -> list[Delivery]:
        """Everything queued, oldest first; empty when woken for another reason."""
        queue = self._queue
        if not queue:
            self._wakeup.clear()
            # checked again: a delivery or an end may have come before clear()
            if not queue and self._reason is None:
                self._sleeping = True
                self._wakeup.wait()
        return self.take()

    def take(self) -> list[Delivery]:
        """Everything queued, oldest first, without waiting (a stream called back on wake-ups)."""
        self._sleeping = False
        queue = self._queue
        return [queue.popleft() for _ in range(len(queue))]

    def sleep(self) -> bool:
        """Offer the next deliveries to the direct writer until the next wake-up.

        False, without sleeping, if something is queued or the stream has ended
        meanwhile: take that first. For a stream called back on wake-ups.
        """
        if self._queue or self._reason is not None:
            return False
        self._sleeping = True
        return True

    def call_on_wake(self, on_wake: Callable[[], None]) -> None:
        """Call ``on_wake`` instead of waking a waiting thread: the stream has none any more."""
        self._on_wake = on_wake

    def wake_at(self, when: float) -> None:
        """Wake the client's thread at ``when`` (``time.monotonic()``) if nothing comes."""
        self.due = when
        self._scheduler.schedule(self, when)

    def write_directly_with(self, direct_write: DirectWrite | None) -> None:
        """Offer deliveries to ``direct_write`` while the client's thread sleeps."""
        self._direct_write = direct_write

    # -- any thread ----------------------------------------------------------

    def wake(self) -> None:
        self._signal()

    def end(self, reason: CloseReason) -> None:
        """Ask the stream to end now, for ``reason`` (the first reason given wins)."""
        if self._reason is None:
            self._reason = reason
        self._signal()

    def _signal(self) -> None:
        on_wake = self._on_wake
        if on_wake is None:
            self._wakeup.set()
        else:
            on_wake()

    @property
    def ended(self) -> bool:
        return self._reason is not None

    @property
    def end_reason(self) -> CloseReason:
        """Why the stream ended; a stream nobody ended was closed by its client."""
        return self._reason or CloseReason.CLIENT_GONE
