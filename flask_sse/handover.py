"""Streams handed over by their request: no greenlet, no stack, no request objects.

An established stream spends its life asleep, and the hub writes its events
straight to its socket (the direct write, ``transport.py``). What keeps it
costly is the request still being served around it: its greenlet's saved
stack and the server's, Werkzeug's and Flask's objects for the request,
about half of a stream's memory. Under ``flask_sse.worker.GeventWorker``
the request ends as soon as the stream is established and the stream goes
on as a :class:`ParkedStream`: each wake-up (an event the direct write could
not take, a keepalive due, the end) runs one turn of its
:class:`~flask_sse.live.LiveStream` in a short-lived greenlet, which
writes what the turn makes to the stream's own socket.

The response stays the same on the wire: the same chunks, and at the end
the last chunk, then the connection is closed (the request's end has told
``gunicorn`` not to keep it for another request).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from .live import LiveStream
from .transport import LAST_CHUNK, Transport, frame

logger = logging.getLogger("flask_sse")


def hand_over(live: LiveStream, transport: Transport, yielded: int) -> bool:
    """Hand the stream over if its worker parks streams and its bytes reach gunicorn untouched.

    ``yielded``: how many bytes the stream's body has produced. On True the
    body returns at once: the request ends and the stream goes on parked.
    """
    parking = transport.parking
    if not isinstance(parking, ParkedStreams):
        return False
    own = transport.take_socket(yielded)
    if own is None:
        return False
    if live.direct is not None:
        live.direct.move_to(own)
    live.watch_client()  # on its own socket: gunicorn closes the one it watched
    ParkedStream(live, own, transport, parking)
    return True


class ParkedStreams:
    """The streams a worker process has parked: its own, so that it can wait for them.

    ``spawn`` starts a function in a new greenlet (``gevent.spawn``). Under
    gevent, every "thread" is a greenlet of the one thread, so the set is
    only touched between switches.
    """

    def __init__(self, spawn: Callable[[Callable[[], None]], Any]) -> None:
        self.spawn = spawn
        self._streams: set[ParkedStream] = set()
        self._none = threading.Event()
        self._none.set()

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream: object) -> bool:
        return stream in self._streams

    def add(self, stream: ParkedStream) -> None:
        self._streams.add(stream)
        self._none.clear()

    def discard(self, stream: ParkedStream) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._none.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every parked stream to end; True if they have."""
        return self._none.wait(timeout)

    def close(self) -> None:
        """Hang up every parked stream that is still open (the worker is exiting)."""
        for stream in list(self._streams):
            stream.close()


class ParkedStream:
    """One stream after its request: turns of its :class:`LiveStream` on each wake-up.

    At most one turn runs at a time; a wake-up during a turn is seen by the
    turn itself (:meth:`Subscription.sleep` refuses while something is
    queued or the stream has ended, and the next wake-up time is asked for
    after each turn).
    """

    __slots__ = ("_live", "_socket", "_transport", "_parking", "_turning")

    def __init__(
        self, live: LiveStream, own: socket.socket, transport: Transport, parking: ParkedStreams
    ) -> None:
        self._live = live
        self._socket = own
        self._transport = transport
        self._parking = parking
        self._turning = False
        parking.add(self)
        live.subscription.call_on_wake(self._wake)
        self._wake()  # a first turn: what came meanwhile, and the first wake-up time

    def _wake(self) -> None:
        if not self._turning:
            self._turning = True
            self._parking.spawn(self._turns)

    def _turns(self) -> None:
        live = self._live
        subscription = live.subscription
        try:
            while True:
                chunk, done = live.turn(subscription.take())
                if chunk:
                    self._socket.sendall(frame(chunk))
                if done:
                    break
                subscription.wake_at(live.next_wake())
                if subscription.sleep():
                    self._turning = False
                    return
            self._socket.sendall(LAST_CHUNK)
        except OSError:
            pass  # the client is gone
        except Exception:  # noqa: BLE001 - the stream ends; the worker goes on
            logger.exception("A parked stream failed; ending it")
        self.close()

    def close(self) -> None:
        """End the stream: close its socket, release its subscription (once)."""
        if self not in self._parking:
            return
        self._parking.discard(self)
        self._live.subscription.call_on_wake(_ignore)
        self._live.finish()  # before the socket closes: nothing may write to it or watch it
        try:
            self._socket.close()
        finally:
            if self._transport.release is not None:
                self._transport.release()


def _ignore() -> None:
    """Wake-ups of a stream that has ended."""
