"""The hub's links to Redis: one pub/sub connection per server, and its reader thread.

A link connects (with backoff and jitter while Redis is away), reads every
reply and hands it to its listener (the hub) under the app's name for the
channel (Redis's may carry a DB or namespace prefix, see ``naming.py``;
another app's channels are skipped). It never reconnects silently: every
loss is reported, so the hub can replay from history what was published
meanwhile.

A cut network sends no RST, so a link must notice silence itself. Its
reader waits in ``recv`` without a timeout: under gevent a timeout costs a
timer set and cancelled for every wait, and a many-channel worker waits once
per event (about 7% of its CPU per event, see docs/performance.md).
Instead a second thread of the link, its watchdog, PINGs a connection quiet
for ``PING_INTERVAL`` and cuts one silent for ``READ_TIMEOUT`` (a
``shutdown`` of its socket, which ends the reader's ``recv``). Connections
without a socket of the operating system's (the embedded broker's) are read
with a timeout, and their reader judges their silence itself.

Locking: a link's ``connection``, ``attempts`` and ``channels`` are guarded
by the lock its owner hands it (the hub's), and every command is sent under
that lock. Only the reader thread reads from the connection, and only it
puts a new connection in place; a send that fails marks the link dead.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from typing import Any, Protocol

from . import metrics
from .naming import Names
from .replies import reader_for
from .routing import Router

logger = logging.getLogger("flask_sse")

#: Seconds of silence on a pub/sub connection before it is PINGed.
PING_INTERVAL = 5.0
#: A pub/sub connection that has read nothing (not even a PONG) for this long is dead.
READ_TIMEOUT = PING_INTERVAL * 3
#: How often the watchdog looks, as a share of ``PING_INTERVAL``.
WATCH_SHARE = 0.2
#: Reconnection backoff: first wait and cap, in seconds (with jitter).
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 2.0


class LinkListener(Protocol):
    """What a link reports to its owner, from its reader thread."""

    def link_up(self, link: Link, connection: Any) -> None:
        """A new connection is ready: put it in place and subscribe the link's channels."""

    def link_failed(self, link: Link, error: Exception) -> None:
        """A connection attempt failed."""

    def link_down(self, link: Link) -> bool:
        """The link failed or was lost; True if it should stop (nothing left to carry)."""

    def message(self, link: Link, channel: str, payload: bytes) -> None:
        """An event on ``channel`` (the app's name for it, not Redis's)."""

    def subscribed(self, link: Link, channel: str) -> None: ...

    def dropped(self, link: Link, channel: str) -> None:
        """The server unsubscribed a channel by itself (its cluster slot moved)."""


class Link:
    """One pub/sub connection to one Redis server, and the thread that reads it."""

    def __init__(
        self, node: str, router: Router, lock: threading.Lock, listener: LinkListener,
        names: Names,
    ) -> None:
        self.node = node
        #: the live connection, or None while (re)connecting (guarded by ``lock``)
        self.connection: Any = None
        #: connection attempts finished, successful or not (guarded by ``lock``)
        self.attempts = 0
        #: the channels this link carries (guarded by ``lock``)
        self.channels: set[str] = set()
        self._router = router
        self._lock = lock
        self._listener = listener
        self._names = names
        #: when the reader last read a reply (``time.monotonic()``), for the watchdog
        self.heard = 0.0
        #: the connection the watchdog cut for its silence, so the reader says why it failed
        self._silenced: Any = None
        self._closed = threading.Event()
        self._jitter = random.Random()  # its own: never disturbs the app's random state
        self._threads = [
            threading.Thread(target=self._run, name=f"flask-sse-link {node}", daemon=True),
            threading.Thread(target=self._watch, name=f"flask-sse-watch {node}", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def send(self, *command: str) -> None:
        """Send on the current connection; the caller holds the lock."""
        connection = self.connection
        if connection is None:
            return
        try:
            connection.send_command(*command, check_health=False)
        except Exception as error:  # noqa: BLE001 - any failure means the link is gone
            logger.warning("Redis pub/sub send to %s failed (%s); reconnecting", self.node, error)
            self.connection = None
            connection.disconnect()
            metrics.link_lost()

    def send_each(self, command: str, names: list[str], one_per_command: bool) -> None:
        """``command`` for all ``names``; one each on a cluster (one slot per command)."""
        if one_per_command:
            for name in names:
                self.send(command, name)
        elif names:
            self.send(command, *names)

    def retire(self) -> None:
        """Drop the connection (the caller holds the lock); the reader then asks the owner."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.disconnect()

    def close(self) -> None:
        """Stop the reader and release the connection (the caller must not hold the lock)."""
        self._closed.set()
        with self._lock:
            self.retire()

    def join(self, timeout: float = 5.0) -> None:
        for thread in self._threads:
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def ended(self) -> bool:
        """Whether its threads have ended (or never started)."""
        return not any(thread.is_alive() for thread in self._threads)

    # -- the reader thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            self._connect_and_read()
        finally:
            self._closed.set()  # the link is done: its watchdog stops too

    def _connect_and_read(self) -> None:
        backoff = BACKOFF_FIRST
        while not self.closed:
            try:
                connection = self._router.connect(self.node)
            except Exception as error:  # noqa: BLE001 - retried with backoff
                self._listener.link_failed(self, error)
                if self.closed or self._listener.link_down(self):
                    return
                if self._closed.wait(backoff * self._jitter.uniform(0.5, 1.0)):
                    return
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            if self.closed:
                connection.disconnect()
                return
            backoff = BACKOFF_FIRST
            self.heard = time.monotonic()  # before the watchdog can see the connection
            self._listener.link_up(self, connection)
            try:
                self._read(connection)
            except Exception as error:  # noqa: BLE001 - the link is gone; reconnect
                reason: Exception = error
                if self._silenced is connection:  # cut by the watchdog
                    reason = TimeoutError(f"no answer to PING for {READ_TIMEOUT:.0f} s")
                if not self.closed:
                    logger.warning(
                        "Redis pub/sub link to %s lost (%s); reconnecting", self.node, reason
                    )
                    if self.connection is connection:  # not counted by a failed send already
                        metrics.link_lost()
            finally:
                with self._lock:
                    if self.connection is connection:
                        self.connection = None
                connection.disconnect()
            if self.closed or self._listener.link_down(self):
                return

    def _read(self, connection: Any) -> None:
        read = reader_for(connection, PING_INTERVAL)
        while self.connection is connection:
            replies = read()
            if not replies:  # a timeout (only without a socket), or part of a reply
                if time.monotonic() - self.heard >= READ_TIMEOUT:
                    raise TimeoutError(f"no answer to PING for {READ_TIMEOUT:.0f} s")
                continue
            self.heard = time.monotonic()
            for reply in replies:
                if self.connection is not connection:
                    return
                self._dispatch(reply)

    # -- the watchdog thread -------------------------------------------------

    def _watch(self) -> None:
        """PING a quiet connection, and cut one that stays silent (see the module's doc)."""
        pinged = 0.0
        while not self._closed.wait(PING_INTERVAL * WATCH_SHARE):
            connection = self.connection
            now = time.monotonic()
            quiet = now - self.heard
            if connection is None or quiet < PING_INTERVAL:
                continue
            if quiet >= READ_TIMEOUT:
                self._cut(connection)
            elif now - pinged >= PING_INTERVAL and self._lock.acquire(blocking=False):
                # not waiting for the lock: a send stuck on a dead network holds it,
                # and the cut, which needs no lock, is what ends that send
                try:
                    if self.connection is connection:
                        self.send("PING")
                        pinged = now
                finally:
                    self._lock.release()

    def _cut(self, connection: Any) -> None:
        """End the reader's wait on ``connection``: shut its socket down, both ways."""
        sock = getattr(connection, "_sock", None)
        if isinstance(sock, socket.socket) and self._silenced is not connection:
            self._silenced = connection
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile: the reader has found out already

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) != 3:
            return  # a PONG
        kind, redis_channel, body = reply
        name = self._names.from_channel(redis_channel.decode("utf-8", "replace"))
        if name is None:
            return  # another app's channel (another DB or namespace)
        if kind in (b"message", b"smessage"):
            self._listener.message(self, name, body)
        elif kind in (b"subscribe", b"ssubscribe"):
            self._listener.subscribed(self, name)
        elif kind == b"sunsubscribe":
            self._listener.dropped(self, name)
