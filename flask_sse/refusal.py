"""Answers for a stream that cannot be served now, which every client retries.

``EventSource`` treats any answer but ``200 text/event-stream`` as final: it
closes for good and the page is dead until it is reloaded. So a browser
(it sends ``Accept: text/event-stream``) that comes while Redis is
unreachable, or while the process holds ``SSE_MAX_CONNECTIONS``, gets a
``200`` event stream that only says ``retry:`` and ends: the browser waits
that long, reconnects with the ``Last-Event-ID`` it had (the answer has no
``id:``, so the browser's position is kept) and resumes without loss. Other
clients get ``503`` with ``Retry-After``, as HTTP clients expect.

The retry delay grows while the trouble lasts (half its age so far, between
``SSE_RETRY`` and :data:`LONGEST_RETRY`) and is jittered, so that browsers
refused together do not all come back at the same moment.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from flask import Request, Response, jsonify

#: Longest ``retry:`` a refused browser is given, in milliseconds.
LONGEST_RETRY = 30_000
#: Seconds a client that is not a browser is asked to wait (``Retry-After``).
RETRY_AFTER_SECONDS = 5


class Trouble:
    """How long this process has been unable to open streams.

    Any thread may call :meth:`began` and :meth:`ended`; a race between them
    only shifts the next delay, so there is no lock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None

    def began(self) -> float:
        """Note a refusal; the seconds since the first refusal of this spell."""
        now = self._clock()
        if self._since is None:
            self._since = now
        return now - self._since

    def ended(self) -> None:
        """A stream opened: the next refusal starts a new spell."""
        self._since = None

    def retry_ms(self, shortest: int) -> int:
        """The ``retry:`` for a browser refused now: grows with the spell, jittered."""
        grown = max(float(shortest), self.began() * 1000 / 2)
        return jittered(min(grown, LONGEST_RETRY))


def jittered(retry_ms: float) -> int:
    """``retry_ms`` ±50%: browsers told to wait together come back apart."""
    return int(retry_ms * random.uniform(0.5, 1.5))


#: This process's spell of trouble (shared by every app: they share the hub's Redis).
trouble = Trouble()


def wants_event_stream(request: Request) -> bool:
    """Whether the client is an ``EventSource`` (or says it reads event streams)."""
    return "text/event-stream" in request.headers.get("Accept", "")


def unavailable(request: Request, message: str, shortest_retry: int) -> Response:
    """The answer for a stream that cannot open now, saying why.

    A browser gets ``200`` with ``retry:`` and a comment line with
    ``message`` (which ``EventSource`` ignores); others get ``503`` with
    ``Retry-After`` and ``{"error": message}``.
    """
    if wants_event_stream(request):
        retry = trouble.retry_ms(shortest_retry)
        body = f"retry:{retry}\n: {' '.join(message.splitlines())}\n\n"
        return Response(
            body,
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    trouble.began()
    response = jsonify(error=message)
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
