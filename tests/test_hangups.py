"""A stream whose client closes its connection ends at once, not at its next keepalive.

Every server keeps ``SSE_KEEPALIVE`` at a minute here, so a stream released
within a few seconds was released by noticing the close itself: under
``gunicorn -k gevent`` and the parking worker (the event loop's watcher),
gunicorn's ``gthread`` worker and Werkzeug's development server (the hub's
watching thread), waitress (its own ``client_disconnected``, asked every
second), and a tab closed in Chromium.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from werkzeug.serving import make_server

from flask_sse import Publisher
from flask_sse.hangups import HangUps
from flask_sse.registry import hub_for

from .browser import Browser
from .conftest import Gunicorn
from .sse_client import open_stream, wait_for

Start = Callable[..., Gunicorn]
#: Far longer than any wait below: a release within it was not the keepalive's.
KEEPALIVE = 60
#: How long a released stream may take to count as released.
PROMPTLY = 5.0


# -- the watching thread, on socket pairs -----------------------------------


@pytest.fixture
def hang_ups() -> Iterator[HangUps]:
    watching = HangUps()
    yield watching
    watching.close()


@pytest.fixture
def pairs() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    made: list[socket.socket] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        made.extend((ours, theirs))
        return ours, theirs

    yield pair
    for sock in made:
        sock.close()


def test_a_readable_socket_is_told_once_and_a_closed_watch_never(
    hang_ups: HangUps, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    told: list[str] = []
    watched, closing = pairs()
    unwatched, closing_too = pairs()
    hang_ups.watch(watched, lambda: told.append("watched"))
    hang_ups.watch(unwatched, lambda: told.append("unwatched")).close()
    closing_too.close()  # both readable at once: the closed watch is not in the selector's set
    closing.close()
    wait_for(lambda: told, what="the readable socket to be told")
    assert any(thread.name == "flask-sse-hangups" for thread in threading.enumerate())
    hang_ups.close()  # joins the thread: anything it was to tell, it has told
    assert told == ["watched"]
    assert not any(thread.name == "flask-sse-hangups" for thread in threading.enumerate())


def test_bytes_and_a_close_are_told_alike_and_a_socket_can_be_watched_again(
    hang_ups: HangUps, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    """The owner tells them apart (``Transport.client_gone``); the watch fires once for either."""
    told: list[str] = []
    talking, talker = pairs()
    talker.sendall(b"x")
    hang_ups.watch(talking, lambda: told.append("bytes"))
    wait_for(lambda: told == ["bytes"], what="the bytes to be told")
    talker.close()  # told only to a new watch: the first one fired
    hang_ups.watch(talking, lambda: told.append("closed"))
    wait_for(lambda: told == ["bytes", "closed"], what="a new watch of the socket to fire")


# -- real servers ---------------------------------------------------------------


def _released_promptly(count: Callable[[], int], close: Callable[[], None]) -> None:
    wait_for(lambda: count() == 1, what="the stream to open")
    close()
    wait_for(lambda: count() == 0, timeout=PROMPTLY, what="the closed stream to be released")


@pytest.mark.integration
@pytest.mark.parametrize("gunicorn", ["gevent", "parking"], indirect=True)
@pytest.mark.parametrize("channels", ["channel=hangup", "channel=hangup&channel=other"])
def test_a_closed_stream_is_released_at_once_under_gevent(
    gunicorn: Start, redis_url: str, channels: str
) -> None:
    """One channel (written to directly) and two (through the stream's own turns)."""
    server = gunicorn(redis_url, SSE_KEEPALIVE=KEEPALIVE)
    staying = open_stream(server, "channel=hangup")
    leaving = open_stream(server, channels)
    wait_for(lambda: server.count("/streams") == 2, what="both streams to open")
    leaving.close()
    wait_for(lambda: server.count("/streams") == 1, timeout=PROMPTLY,
             what="the closed stream to be released")
    Publisher(redis_url).publish("still here", channel="hangup")
    assert staying.next_event().data == "still here"
    staying.close()


@pytest.mark.integration
@pytest.mark.parametrize("gunicorn", ["gevent", "parking"], indirect=True)
def test_a_client_that_sends_bytes_keeps_its_stream(gunicorn: Start, redis_url: str) -> None:
    """Readable without being closed: the watch ends, the stream goes on."""
    server = gunicorn(redis_url, SSE_KEEPALIVE=KEEPALIVE)
    stream = open_stream(server, "channel=talker")
    stream.connection.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined: unanswered
    Publisher(redis_url).publish("after the bytes", channel="talker")
    assert stream.next_event().data == "after the bytes"
    assert server.count("/streams") == 1
    stream.close()


@pytest.mark.integration
def test_a_closed_stream_is_released_at_once_under_gthread(
    gunicorn: Start, redis_url: str
) -> None:
    server = gunicorn(redis_url, options=("-k", "gthread", "--threads", "4", "-w", "1"),
                      SSE_KEEPALIVE=KEEPALIVE)
    stream = open_stream(server, "channel=threads")
    _released_promptly(lambda: server.count("/streams"), stream.close)


@pytest.mark.integration
def test_a_closed_stream_is_released_at_once_under_the_development_server(
    make_app: Callable[..., Flask], redis_url: str
) -> None:
    """Werkzeug's threaded server, as ``flask run`` starts it."""
    app = make_app(redis_url, SSE_KEEPALIVE=KEEPALIVE)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="werkzeug")
    serving.start()
    try:
        stream = open_stream(server.server_port, "channel=dev")
        hub = hub_for(redis_url)
        _released_promptly(lambda: hub.streams, stream.close)
    finally:
        server.shutdown()
        serving.join()


@pytest.mark.integration
def test_a_closed_stream_is_released_within_a_second_or_two_under_waitress(
    waitress: Start, redis_url: str
) -> None:
    """waitress gives no socket; with ``--channel-request-lookahead=1`` it can be asked."""
    server = waitress(
        redis_url, options=("--threads=4", "--channel-request-lookahead=1"),
        SSE_KEEPALIVE=KEEPALIVE,
    )
    stream = open_stream(server, "channel=waitress-hangup")
    _released_promptly(lambda: server.count("/streams"), stream.close)


@pytest.mark.integration
def test_a_closed_tab_is_released_at_once(
    gunicorn: Start, redis_url: str, browser: Browser
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=KEEPALIVE)
    browser.open(f"http://127.0.0.1:{server.port}/pid")
    first = browser.current_tab()
    browser.new_tab()
    browser.open(f"http://127.0.0.1:{server.port}/pid")
    browser.listen("/stream?channel=tabs")
    wait_for(lambda: browser.seen()["opens"] == 1, what="the tab's stream to open")
    assert server.count("/count/tabs") == 1
    browser.close_tab()
    browser.switch_to(first)
    wait_for(lambda: server.count("/count/tabs") == 0, timeout=PROMPTLY,
             what="the closed tab's stream to be released")
