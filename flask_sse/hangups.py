"""Noticing at once that a stream's client closed its connection.

An ``EventSource`` sends nothing after its request, so its connection turns
readable only when the browser closes it: a tab closed, a page left, the
client script reopening its stream with other channels. Watching each open
stream's socket for that ends the stream within milliseconds, so
``subscriber_count``, the ``stream_closed`` and ``channel_vacated`` signals
and the Redis subscription follow the browser at once, instead of at the
stream's next look at its connection (every ``SSE_KEEPALIVE``). A client
that vanished without closing (a laptop shut, a network cut) sends nothing
either; that look, and the first write that fails, still find it.

Under gevent (``gunicorn -k gevent``, the parking worker) each watched
socket gets a read watcher of the event loop: no greenlet, no thread. Under
threads (gunicorn's ``gthread``, the development server) one thread per hub
waits on all of them with a selector. Readable means the client closed, or
sent bytes no ``EventSource`` sends: the watch's owner closes the watch
either way (it would fire again and again otherwise), and ends the stream
only if the connection is closed, as its next look would have found. The
watches are light (about 300 bytes a stream under gevent): the watcher and
one bound method.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger("flask_sse")

#: Called once a watched socket turns readable.
OnReadable = Callable[[], None]


class Watch(Protocol):
    """One socket being watched: :meth:`close` it once it fired, or before the socket closes."""

    def close(self) -> None: ...


class HangUps:
    """The watches of one hub's streams; :meth:`close` stops its thread, if it started one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._selecting: _Selecting | None = None
        self._closed = False

    def watch(self, client: socket.socket, on_readable: OnReadable) -> Watch:
        """Call ``on_readable`` once ``client`` turns readable (until the watch is closed).

        Called from any thread; ``on_readable`` runs in the event loop
        (gevent) or in the hub's watching thread, so it must only look and
        signal, never wait.
        """
        fd = client.fileno()
        if fd < 0:
            return _NOT_WATCHING  # closed already: the stream's next look ends it
        if type(client).__module__.startswith("gevent"):
            from gevent import get_hub  # type: ignore[import-untyped]

            # ref=False: an open stream's watch does not keep the loop running at exit
            watcher: Watch = get_hub().loop.io(fd, 1, ref=False)
            watcher.start(on_readable)  # type: ignore[attr-defined]
            return watcher
        with self._lock:
            if self._closed:
                return _NOT_WATCHING
            if self._selecting is None:
                self._selecting = _Selecting()
            selecting = self._selecting
        return selecting.watch(fd, on_readable)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            selecting, self._selecting = self._selecting, None
        if selecting is not None:
            selecting.close()


class _NotWatching:
    def close(self) -> None:
        """Nothing to close."""


_NOT_WATCHING = _NotWatching()


class _Selecting:
    """A thread that waits on every watched socket of a hub with one selector.

    Watches are added and removed from other threads under ``_lock``, and a
    byte on ``_wake`` makes the thread look at the selector's set again.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._woken, self._wake = socket.socketpair()
        self._woken.setblocking(False)
        self._wake.setblocking(False)
        self._selector.register(self._woken, selectors.EVENT_READ)
        self._lock = threading.Lock()  # guards the selector's set
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="flask-sse-hangups", daemon=True)
        self._thread.start()

    def watch(self, fd: int, on_readable: OnReadable) -> Watch:
        watch = _SelectedWatch(self, fd, on_readable)
        with self._lock:
            if self._closed:
                return _NOT_WATCHING
            self._selector.register(fd, selectors.EVENT_READ, watch)
        self._poke()
        return watch

    def forget(self, watch: _SelectedWatch) -> bool:
        """Stop watching ``watch``'s socket; False if it was not watched (any more)."""
        with self._lock:
            if self._closed:
                return False
            try:
                if self._selector.get_key(watch.fd).data is not watch:
                    return False  # stopped, and its number is another socket's now
                self._selector.unregister(watch.fd)
            except (KeyError, ValueError):
                return False  # stopped already
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._poke()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        self._selector.close()
        self._woken.close()
        self._wake.close()

    def _poke(self) -> None:
        try:
            self._wake.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already, or the pair is closed

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                watch = key.data
                if watch is None:  # a poke
                    try:
                        while self._woken.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                if self.forget(watch):  # not closed meanwhile
                    try:
                        watch.on_readable()
                    except Exception:  # noqa: BLE001 - the thread watches the other streams on
                        logger.exception("Could not look at a readable stream connection")


class _SelectedWatch:
    """One socket in a :class:`_Selecting`'s set (once it fired, no longer)."""

    __slots__ = ("_selecting", "fd", "on_readable")

    def __init__(self, selecting: _Selecting, fd: int, on_readable: OnReadable) -> None:
        self._selecting = selecting
        self.fd = fd
        self.on_readable = on_readable

    def close(self) -> None:
        self._selecting.forget(self)
