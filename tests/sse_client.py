"""A small event-stream client for the tests: a real socket, the WHATWG parser.

``parse`` follows the spec's "interpreting an event stream" algorithm (line
ends CR, LF and CRLF, ``:`` comments, one leading space stripped, ``id`` with
NUL ignored, ``retry`` ASCII digits only), so the tests see exactly what a
browser's ``EventSource`` would.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

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

    def next_event(self) -> Event:
        """Block (up to the socket timeout) until the next event."""
        seen = len(self.parser.events)
        while len(self.parser.events) == seen:
            self.read_line()
        return self.parser.events[seen]

    def events(self, count: int) -> list[Event]:
        return [self.next_event() for _ in range(count)]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
