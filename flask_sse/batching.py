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
        #: set when the call has its outcome, or the turn to send
        self.done = threading.Event()


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
        with self._lock:
            if not self._busy:  # nothing on its way: send it at once, alone
                self._busy = True
                waiter = None
            else:
                waiter = _Waiter(call)
                self._queue.append(waiter)
        if waiter is None:
            return self._send_alone(call)
        try:
            waiter.done.wait()
        except BaseException:  # the caller was interrupted (a timeout of its request)
            self._abandon(waiter)
            raise
        if waiter.leads:
            self._send_queued()
        return self._outcome(waiter)

    def _send_alone(self, call: Call) -> Result:
        """Send one call that found nothing on its way, then hand the next batch on."""
        try:
            outcome: object = self._send([call])[0]
        except Exception as error:  # noqa: BLE001 - the call's own outcome
            outcome = error
        finally:
            self._hand_on()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]

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
        if successor is not None:
            successor.done.set()

    def _abandon(self, waiter: _Waiter[Call]) -> None:
        """A queued caller gave up (its exception tells it the call may not have
        gone). A call still queued is dropped, and if it had just been given
        the turn to send, the turn passes on: nobody is left to take it. A
        call already in a batch on its way goes with it."""
        with self._lock:
            queued = waiter in self._queue
            if queued:
                self._queue.remove(waiter)
        if queued and waiter.leads:
            self._hand_on()

    @staticmethod
    def _outcome(waiter: _Waiter[Call]) -> Result:
        outcome = waiter.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]
