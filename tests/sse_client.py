"""Event-stream clients for the tests: Flask's test client or a real socket, one parser.

``parse`` follows the spec's "interpreting an event stream" algorithm (line
ends CR, LF and CRLF, ``:`` comments, one leading space stripped, ``id`` with
NUL ignored, ``retry`` ASCII digits only), so the tests see exactly what a
browser's ``EventSource`` would.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from werkzeug.test import TestResponse

T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    data: str
    type: str = "message"
    last_event_id: str = ""


@dataclass
class Parser:
    """The spec's parser state; feed it lines, collect ``events``."""

    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_event_id: str = ""
    _data: str = ""
    _type: str = ""

    def feed_line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:])
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value and all("0" <= char <= "9" for char in value):
                self.retry = int(value)

    def _dispatch(self) -> None:
        if self._data == "":
            self._type = ""
            return
        self.events.append(Event(self._data[:-1], self._type or "message", self.last_event_id))
        self._data = ""
        self._type = ""


def parse(stream: str) -> Parser:
    """Parse a whole decoded stream (a trailing incomplete event is dropped)."""
    if stream.startswith("\ufeff"):
        stream = stream[1:]
    parser = Parser()
    lines = re.split(r"\r\n|\r|\n", stream)
    for line in lines[:-1]:  # the last piece has no line end yet
        parser.feed_line(line)
    return parser


class TestClientStream:
    """A stream opened with Flask's test client (``buffered=False``), read chunk by chunk.

    Each chunk is what the view yielded, so a test can assert on the exact
    text sent (``read_chunk``) or on what a browser would see (``events``,
    ``parser``).
    """

    __test__ = False  # a helper, not a class of tests for pytest to collect

    def __init__(self, response: TestResponse) -> None:
        self.response = response
        self.status = response.status_code
        self.parser = Parser()
        self.ended = False
        self.closed = False
        self._chunks: Iterator[bytes] = response.iter_encoded()
        self._rest = ""

    def read_chunk(self) -> str:
        """The next chunk, fed to the parser; ``EOFError`` once the app ended the stream."""
        try:
            text = next(self._chunks).decode()
        except StopIteration:
            self.ended = True
            raise EOFError("the app ended the stream") from None
        lines = (self._rest + text).split("\n")
        self._rest = lines.pop()
        for line in lines:
            self.parser.feed_line(line)
        return text

    def read_to_end(self) -> list[str]:
        """Every chunk left, until the app ends the stream by itself."""
        chunks = []
        while True:
            try:
                chunks.append(self.read_chunk())
            except EOFError:
                return chunks

    def events(self, count: int, timeout: float = 5) -> list[Event]:
        """The stream's first ``count`` events; fails, rather than hangs, if they do not come.

        The deadline is checked between chunks: keepalives keep them coming.
        """
        deadline = time.monotonic() + timeout
        while len(self.parser.events) < count:
            assert time.monotonic() < deadline, f"got {self.parser.events}, wanted {count}"
            try:
                self.read_chunk()
            except EOFError:
                raise AssertionError(f"the stream ended after {self.parser.events}, wanted {count}") from None
        return self.parser.events[:count]

    def close(self) -> None:
        """Hang up, as a browser closing its tab: the app releases the stream's channels.

        Closing twice is harmless, so a test may close early and its fixture again.
        """
        if not self.closed:
            self.closed = True
            self.response.close()


class StreamClient:
    """One open ``GET`` of an event stream over a real TCP connection."""

    def __init__(
        self, port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10
    ) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.connection.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.parser = Parser()
        self._buffer = b""

    def body(self) -> bytes:
        """The whole body of a response that is not a stream (a 400, a 503)."""
        return self.response.read()

    def read_line(self) -> str:
        """The next line (with its LF), read in large pieces from the socket."""
        while b"\n" not in self._buffer:
            piece = self.response.read1(1 << 16)
            if not piece:
                raise EOFError("the server ended the stream")
            self._buffer += piece
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode("utf-8")
        self.parser.feed_line(text)
        return text + "\n"

    def read_to_end(self) -> list[str]:
        """Every line left, up to a complete end of the response.

        A response cut off without its last chunk raises ``http.client.IncompleteRead``.
        """
        lines = []
        while True:
            try:
                lines.append(self.read_line())
            except EOFError:
                return lines

    def next_event(self) -> Event:
        """Block (up to the socket timeout) until the next event."""
        seen = len(self.parser.events)
        while len(self.parser.events) == seen:
            self.read_line()
        return self.parser.events[seen]

    def events(self, count: int) -> list[Event]:
        return [self.next_event() for _ in range(count)]

    def close(self) -> None:
        """Close the connection, as a browser does (the response too: a response the
        connection no longer holds, one sent with ``Connection: close``, keeps it open)."""
        self.response.close()
        self.connection.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Served(Protocol):
    """A server of the tests' own (``conftest.Gunicorn``): where it listens."""

    @property
    def port(self) -> int: ...


def open_stream(
    server: int | Served,
    query: str = "",
    *,
    path: str = "/stream",
    headers: dict[str, str] | None = None,
    last_event_id: str | None = None,
) -> StreamClient:
    """A stream over a real socket that has read its opening (``retry:`` and the positions).

    What the stream reads next is live (or the backlog of a resume), so a
    test can publish at once and count exactly what arrives.
    """
    port = server if isinstance(server, int) else server.port
    all_headers = dict(headers or {})
    if last_event_id:
        all_headers["Last-Event-ID"] = last_event_id
    stream = StreamClient(port, f"{path}?{query}" if query else path, all_headers)
    assert stream.status == 200, stream.body()
    assert stream.read_line() == "retry:3000\n"
    while stream.read_line() != "\n":
        pass
    return stream


def wait_for(condition: Callable[[], T], timeout: float = 10, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def datas(events: Iterable[Event]) -> list[str]:
    return [event.data for event in events]
