"""Publishes that meet on their way to Redis go together, in one round trip.

A worker serving many requests at once (gunicorn's gevent worker, or
threads) may have several of them publishing at the same moment; each would
wait for a round trip of its own, and Redis would pay a read, a dispatch and
a write for each. Instead, a publish that finds none on its way is sent at
once, alone; those that come while it waits for its answer queue up, and
the first of them sends them all in one pipeline once that answer is in. A
lone publish never waits for company.

Each call gets its own result or error. An error that leaves the whole
round trip uncertain (a lost connection) reaches every call of it, and each
retries on its own: safe, since a publish is stored once per identity.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from redis.exceptions import ConnectionError

Call = TypeVar("Call")
Result = TypeVar("Result")


class _Waiter(Generic[Call]):
    __slots__ = ("call", "outcome", "leads", "done")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.outcome: object = None
        #: set by the caller that sent the batch before: send the next one
        self.leads = False
        #: made for a call that queues behind another (a lone call needs none)
        self.done: threading.Event | None = None


class Batcher(Generic[Call, Result]):
    """Sends concurrent calls in batches: ``send`` takes a list of calls and
    returns, in order, each one's result or the exception it met."""

    def __init__(self, send: Callable[[list[Call]], list[Result | Exception]]) -> None:
        self._send = send
        self._lock = threading.Lock()  # guards _queue and _busy
        self._queue: list[_Waiter[Call]] = []
        self._busy = False  # a batch is on its way (or its sender is about to send it)

    def call(self, call: Call) -> Result:
        """Send ``call`` (alone, or with those that came meanwhile); its result, or raise."""
        waiter = _Waiter(call)
        with self._lock:
            self._queue.append(waiter)
            follows, self._busy = self._busy, True
            if follows:
                waiter.done = done = threading.Event()
        if follows:
            try:
                done.wait()
            except BaseException:  # the caller was interrupted (a timeout of its request)
                self._abandon(waiter)
                raise
            if not waiter.leads:
                return self._outcome(waiter)
        self._send_queued()
        return self._outcome(waiter)

    def _send_queued(self) -> None:
        """Send every queued call, give each its outcome, and hand the next batch on."""
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            outcomes: list[object] = list(self._send([waiter.call for waiter in batch]))
        except Exception as error:  # noqa: BLE001 - every call of the batch gets it
            outcomes = [error] * len(batch)
        except BaseException:
            interrupted = ConnectionError("the publish sending this batch was interrupted")
            self._finish(batch, [interrupted] * len(batch))
            raise
        self._finish(batch, outcomes)

    def _finish(self, batch: list[_Waiter[Call]], outcomes: list[object]) -> None:
        for waiter, outcome in zip(batch, outcomes, strict=True):
            waiter.outcome = outcome
            waiter.leads = False
            if waiter.done is not None:
                waiter.done.set()
        self._hand_on()

    def _hand_on(self) -> None:
        """The next queued call sends the next batch; with none, nothing is on its way."""
        with self._lock:
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._busy = False
            else:
                successor.leads = True
        if successor is not None and successor.done is not None:
            successor.done.set()

    def _abandon(self, waiter: _Waiter[Call]) -> None:
        """A queued caller gave up. Its call stays queued (the next batch sends
        it) unless it had just been given the turn to send: then it is dropped
        and the turn passes on."""
        with self._lock:
            handed = waiter.leads and waiter in self._queue
            if handed:
                self._queue.remove(waiter)
        if handed:
            self._hand_on()

    @staticmethod
    def _outcome(waiter: _Waiter[Call]) -> Result:
        outcome = waiter.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]
