"""Everything that touches a stream's connection through its server.

The rest of the package sees a stream as a WSGI body. Only this module
knows that a client has a socket (to notice it left without reading its
data, and to hang up on a slow one), that ``gunicorn`` frames a streamed
HTTP/1.1 response as chunks, and that an idle stream's events can then be
written straight to that socket from the hub's thread (:class:`DirectWriter`),
which is what lets one worker fan out as fast as a bare gevent loop.

The direct write is used only when nothing can change the body on its way
out: the response must reach ``gunicorn``'s own ``start_response`` with the
body the view made (no ``after_request`` hook replaced it, no
``Content-Encoding``, no middleware in between), and every byte the stream
has yielded so far must have reached ``gunicorn`` unchanged. Otherwise, or
with ``SSE_DIRECT_WRITE = False``, every event goes through WSGI.

Under the same conditions, a worker that parks streams
(``flask_sse.worker.GeventWorker``) lets the request end once the stream is
established: :meth:`Transport.take_socket` gives the stream a socket of its
own and tells ``gunicorn`` to let go of the connection without ending the
response (see ``handover.py``).
"""

from __future__ import annotations

import _socket
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response

from .delivery import Delivery
from .history import Position
from .subscription import Subscription

#: The WSGI environ key under which a worker that parks streams puts its
#: :class:`~flask_sse.handover.ParkedStreams`.
PARKING = "flask_sse.parking"


class Transport:
    """One stream's view of its server: the client's socket, and the way out."""

    def __init__(
        self, client: socket.socket | None, parking: Any = None,
        disconnected: Callable[[], bool] | None = None,
    ) -> None:
        #: the client's socket, when the server exposes it (the stream's own once handed over)
        self.client = client
        #: the server's own answer to "has the client left?", where it gives no socket
        #: (waitress's ``waitress.client_disconnected``)
        self._disconnected = disconnected
        #: the worker's parked streams, when the worker parks them
        self.parking = parking
        #: releases the stream's subscription; set by the view, called once the stream ends
        self.release: Callable[[], None] | None = None
        #: True once the request has handed the stream over (its end releases it then)
        self.handed_over = False
        #: gunicorn's response object, once the body is known to reach it untouched
        self._server_response: Any = None

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> Transport:
        client = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        return cls(client, environ.get(PARKING), environ.get("waitress.client_disconnected"))

    def response_closed(self) -> None:
        """The server closed the response: release the stream, unless it was handed over."""
        if not self.handed_over and self.release is not None:
            self.release()

    def client_gone(self) -> bool:
        """True if the client closed its end; checked without reading its data.

        Peeks at the file descriptor with a plain, non-blocking ``recv`` (no
        ``select()``, which fails for descriptors of 1024 and above; not the
        server's socket object, whose ``recv`` gevent would turn into a wait).
        On TLS this sees the encrypted bytes: end of file still means gone.
        Without a socket, the server's own answer if it gives one (waitress
        knows only if its ``channel_request_lookahead`` is 1 or more).
        """
        if self.client is None:
            return self._disconnected is not None and bool(self._disconnected())
        try:
            fd = self.client.fileno()
        except (OSError, ValueError):
            return True
        if fd < 0:
            return True
        probe = _socket.socket(fileno=fd)
        try:
            return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            probe.detach()

    @property
    def only_asked(self) -> bool:
        """True if a client's leaving can be found only by asking the server (waitress),
        not by watching its socket: the stream then asks often."""
        return self.client is None and self._disconnected is not None

    def hang_up(self) -> None:
        """Close a slow client's connection, even while a write to it is blocked."""
        if self.client is not None:
            try:
                self.client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def merge_small_writes(self) -> None:
        """Let the kernel merge the stream's next writes while earlier ones are unacknowledged.

        Turns Nagle's algorithm back on (``SSE_TCP_NODELAY = False``) once the
        stream is open: a lone event still leaves at once, and events that come
        faster than the client acknowledges share packets. Not on a socket
        that is not TCP (a Unix socket has no such option).
        """
        client = self.client
        if client is None or client.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        except OSError:
            pass  # the client is gone: the stream notices it itself

    def offer_direct(self, start_response: Callable[..., Any]) -> None:
        """The response is being served with ``start_response``: note gunicorn's, if it is."""
        try:
            from gunicorn.http.wsgi import Response as GunicornResponse  # type: ignore[import-untyped]
        except ImportError:
            return
        server_response = getattr(start_response, "__self__", None)
        if isinstance(server_response, GunicornResponse):
            self._server_response = server_response

    def direct_writer(
        self, subscription: Subscription, history: bool, positions: dict[str, Position],
        yielded: int,
    ) -> DirectWriter | None:
        """A :class:`DirectWriter` for this stream, if its events may bypass WSGI.

        ``yielded`` is how many body bytes the stream has produced so far:
        unless gunicorn has received exactly that many, something between us
        transforms the body.
        """
        if len(subscription.channels) != 1:
            return None
        client = self._server_socket(yielded)
        if client is None:
            return None
        return DirectWriter(subscription, client, history, positions)

    def take_socket(self, yielded: int) -> socket.socket | None:
        """The client's connection as a socket of the stream's own, if it may be handed over.

        Only under a worker that parks streams, and only where a direct write
        would be allowed (``yielded`` as for :meth:`direct_writer`). gunicorn
        is told to end the request without ending the response: no last
        chunk, and it closes only its own descriptor of the connection.
        """
        server_response = self._server_response
        client = self._server_socket(yielded) if self.parking is not None else None
        if client is None:
            return None
        try:
            own = socket.socket(fileno=os.dup(client.fileno()))
        except OSError:
            return None
        server_response.chunked = False  # gunicorn's close() writes no last chunk
        server_response.must_close = True  # and it keeps no connection alive for more requests
        self._server_response = None  # nor any of the request's objects
        self.client = own
        self.handed_over = True
        return own

    def _server_socket(self, yielded: int) -> socket.socket | None:
        """gunicorn's socket, if the body reaches it untouched (``yielded`` bytes so far,
        all received), chunked, without TLS, and non-blocking (gevent's)."""
        server_response = self._server_response
        if server_response is None or not server_response.chunked:
            return None
        if server_response.sent != yielded:
            return None
        client: socket.socket = server_response.sock
        try:
            if os.get_blocking(client.fileno()) or isinstance(client, ssl.SSLSocket):
                return None
        except (OSError, ValueError):
            return None
        return client


class EventStreamResponse(Response):
    """The stream's response: tells its transport whether the body may be bypassed."""

    def __init__(
        self, body: Iterator[bytes], transport: Transport, direct_write: bool,
        headers: dict[str, str],
    ) -> None:
        super().__init__(body, content_type="text/event-stream", headers=headers)
        self._body = body
        self._transport = transport
        self._direct_write = direct_write

    def __call__(self, environ: Any, start_response: Any) -> Any:
        untouched = self.response is self._body and "Content-Encoding" not in self.headers
        if self._direct_write and untouched:
            self._transport.offer_direct(start_response)
        return super().__call__(environ, start_response)


def frame(chunk: bytes) -> bytes:
    """``chunk`` as one HTTP/1.1 chunk."""
    return b"%X\r\n%s\r\n" % (len(chunk), chunk)


#: ``os.write``, looked up once: the direct write is the fan-out's inner loop.
_write = os.write

#: The end of a chunked HTTP/1.1 response.
LAST_CHUNK = b"0\r\n\r\n"


class DirectWriter:
    """Writes an event straight to the client's socket, from the hub's thread.

    While a stream's own greenlet sleeps with nothing queued, the hub offers
    it each event; it goes out in one non-blocking ``os.write``, without
    waking the stream's greenlet or passing through WSGI. Only single-channel
    streams (several channels need per-client ids). This repeats the
    single-channel rule of the stream's rendering (skip what the client
    has, move its position on): it is the hot path.

    It returns True once it has written the event (all of it, or part: if
    the socket takes only part of the chunk, the rest is kept for the
    stream's greenlet, which is woken to send it before anything else);
    otherwise the event is queued as usual. ``last_write`` is when the
    last event went out this way (``time.monotonic()``), for keepalives.
    """

    __slots__ = ("_subscription", "_client", "_fd", "_history", "_positions", "_channel",
                 "remainder", "broken", "last_write")

    def __init__(
        self, subscription: Subscription, client: socket.socket, history: bool,
        positions: dict[str, Position],
    ) -> None:
        self._subscription = subscription
        self._client = client
        self._fd = client.fileno()
        self._history = history
        self._positions = positions
        self._channel = subscription.channels[0]
        self.remainder = b""
        self.broken = False
        self.last_write = 0.0

    def write(self, delivery: Delivery) -> bool:
        """Write ``delivery`` now if the stream's rules allow: True if it went out.

        A method, not ``__call__``: the fan-out calls it once per stream and
        event, and CPython calls a bound method faster than an object.
        """
        if self.remainder or self.broken:
            return False  # queued behind what the stream's greenlet has yet to send
        position = delivery.position
        if self._history:
            if position is None:
                return False  # rendered without id by the stream's own greenlet
            if position <= self._positions[self._channel]:
                return False  # the client has it: the stream's greenlet skips it
        framed = delivery.framed
        if framed is None:  # the first stream of the fan-out frames it for all
            framed = delivery.framed = frame(delivery.chunk)
        try:
            sent = _write(self._fd, framed)
        except BlockingIOError:
            return False
        except OSError:
            self.broken = True
            self._subscription.wake()  # to find its client gone
            return False  # not written: queued, never to be sent
        if position is not None:
            self._positions[self._channel] = position
        self.last_write = delivery.created
        if sent < len(framed):
            self.remainder = framed[sent:]
            self._subscription.wake()
        return True

    def move_to(self, client: socket.socket) -> None:
        """Write to ``client`` from now on (the stream's own socket, once handed over)."""
        self._client = client
        self._fd = client.fileno()

    def flush(self) -> bool:
        """Send what the hub could not (from the stream's thread); False if the client is gone."""
        if self.remainder:
            try:
                self._client.sendall(self.remainder)
            except OSError:
                return False
            self.remainder = b""
        return not self.broken
