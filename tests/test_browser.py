"""The example page in a real headless Chromium, over gunicorn gevent and real Redis.

Events must arrive through the page's client (``/stream/client.js``): multi-line and
non-ASCII data, named and unnamed types, three channels (public, staff,
private), and a resume after the server ends the stream (``SSE_MAX_AGE``):
events published while the browser waits to reconnect arrive once each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from flask_sse import Publisher

from .browser import Browser
from .conftest import Gunicorn, SteadyPublisher
from .sse_client import wait_for
from .test_docs import block

pytestmark = pytest.mark.integration

EVENTS = "return [...document.querySelectorAll('#events li')].map(li => [li.querySelector('.tag').textContent, li.querySelector('.text').textContent]);"
STATE = "return document.getElementById('state').textContent;"
POST = """
const [path, body, done] = arguments;
fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
  .then(response => done(response.status), error => done(String(error)));
"""


def test_the_example_page_in_a_real_browser(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser, tmp_path: Path
) -> None:
    server = gunicorn(redis_url, app="example.app:app", options=("-w", "2"),
                      env={"FLASK_SSE_MAX_AGE": "8", "FLASK_SSE_KEEPALIVE": "1"})
    page = f"http://127.0.0.1:{server.port}/"
    publisher = Publisher(redis_url)
    browser.open(page)
    assert browser.run_async(POST, "/login", {}) == 200
    browser.open(page)  # now with the staff channel too
    wait_for(lambda: browser.run(STATE) == "open", what="the client's open state")

    publisher.publish("naïve café ✓\nΚαλημέρα, мир: second line", type="news", channel="news")
    publisher.publish("no type: onmessage", channel="news")
    publisher.publish({"text": "for staff only"}, type="staff", channel="staff")
    assert browser.run_async(POST, "/publish", {"channel": "me", "text": "just for me"}) == 204
    def four_events() -> list[list[str]]:
        events: list[list[str]] = browser.run(EVENTS)
        return events if len(events) == 4 else []

    shown = wait_for(four_events, what="4 events")
    assert sorted(map(tuple, shown)) == [
        ("me", "just for me"),
        ("message", "no type: onmessage"),
        ("news", "naïve café ✓\nΚαλημέρα, мир: second line"),
        ("staff", "for staff only"),
    ]
    audience = "return document.getElementById('audience').textContent;"
    wait_for(lambda: browser.run(audience) == "1 open stream on news", what="the count of streams")

    # The server ends the stream (SSE_MAX_AGE); while the browser waits its
    # retry time, events are published: it must resume with Last-Event-ID.
    wait_for(lambda: browser.run(STATE).startswith("reconnecting"), timeout=15, what="the end of the stream")
    for number in range(3):
        publisher.publish(f"while away {number}", type="news", channel="news")
    wait_for(lambda: len(browser.run(EVENTS)) >= 7, timeout=15, what="the missed events")
    assert browser.run(STATE) == "open"
    texts = [text for _, text in browser.run(EVENTS)]
    assert sorted(texts[:3]) == [f"while away {number}" for number in range(3)]
    assert len(texts) == len(set(texts)) == 7  # nothing twice

    wait_for(lambda: browser.run(audience) == "1 open stream on news", what="the count again")

    # A second tab of the page shares the first one's stream: still one on news.
    first_tab = browser.current_tab()
    browser.new_tab()
    browser.open(page)
    wait_for(lambda: browser.run(STATE) == "open", what="the second tab's client")
    publisher.publish("to both tabs", type="news", channel="news")
    wait_for(lambda: "to both tabs" in [text for _, text in browser.run(EVENTS)], what="the event")
    wait_for(lambda: browser.run(audience) == "1 open stream on news", what="one stream for two tabs")
    browser.switch_to(first_tab)
    wait_for(lambda: browser.run(EVENTS)[0][1] == "to both tabs", what="the event in the first tab")
    screenshot = Path(os.environ.get("SSE_TEST_SCREENSHOT", tmp_path / "example.png"))
    browser.screenshot(screenshot)
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def test_a_private_stream_follows_the_session_across_reconnects(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser
) -> None:
    """Without a token: reconnects go on for as long as the session lasts, then stop for good."""
    # The server ends each stream after a second; the browser comes back 0.1 s later.
    server = gunicorn(redis_url, SSE_MAX_AGE=1, SSE_RETRY=100, SSE_KEEPALIVE=0.5)
    publisher = Publisher(redis_url)
    browser.open(f"http://127.0.0.1:{server.port}/pid")
    assert browser.run_async(POST, "/login/ann", {}) == 200
    browser.listen("/private?channel=news&channel=private-ann", "bySession")
    # Beside it, the same channel by a token that lives one to two seconds:
    # a reconnect after that is refused and the browser gives it up for good.
    token_url = server.request("GET", "/stream_url?channel=private-ann&expires_in=1")[1]["url"]
    browser.listen(str(token_url), "byToken")
    for number in range(5):
        opened = partial(lambda n: browser.seen("bySession")["opens"] > n, number)
        wait_for(opened, timeout=15, what=f"open {number + 1}")
        publisher.publish(f"for ann {number}", channel="private-ann")
        arrived = partial(lambda text: text in browser.seen("bySession")["data"], f"for ann {number}")
        wait_for(arrived, what=f"event {number}")
    seen = browser.seen("bySession")
    assert seen["opens"] >= 5 and seen["readyState"] == 1  # still open after 4+ server ends
    assert seen["data"] == [f"for ann {number}" for number in range(5)]  # each once, in order
    by_token = browser.seen("byToken")
    assert by_token["opens"] <= 2 and by_token["readyState"] == 2

    assert browser.run_async(POST, "/logout", {}) == 200
    wait_for(lambda: browser.seen("bySession")["readyState"] == 2, timeout=15, what="EventSource closed")
    status, body = server.request("GET", "/private?channel=private-ann")
    assert status == 403 and "authorize callback own_channel_only()" in str(body["error"])


#: Counts the page's calls of ``fetch`` (each one a renewal of the token).
COUNT_FETCHES = """
window.fetches = 0;
const realFetch = window.fetch;
window.fetch = (...args) => { window.fetches += 1; return realFetch(...args); };
window.received = [];
"""


def test_the_documented_token_renewal_loses_nothing(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser,
    steady_publisher: Callable[..., SteadyPublisher],
) -> None:
    """docs/security.md's ``listen()``: tokens of a second, streams ended every second."""
    snippet = block("docs/security.md", "// A page on another origin", "js")
    server = gunicorn(redis_url, SSE_MAX_AGE=1, SSE_RETRY=100, SSE_KEEPALIVE=0.5)
    browser.open(f"http://127.0.0.1:{server.port}/pid")
    browser.run(COUNT_FETCHES)
    browser.run(snippet + "listen('/stream_url?channel=private-ann&expires_in=1&external', "
                "(event) => window.received.push(event.data));")
    # a steady stream of events, also while the page renews
    steady = steady_publisher(redis_url, ["private-ann"], interval=0.05)
    wait_for(lambda: browser.run("return window.received.length;") > 0, what="a first event")
    wait_for(lambda: browser.run("return window.fetches;") >= 4, timeout=30, what="3 renewals")
    published = steady.finish()["private-ann"]
    wait_for(lambda: str(published - 1) in browser.run("return window.received;"), timeout=15,
             what="the last event")
    received = browser.run("return window.received;")
    assert received == [str(n) for n in range(int(received[0]), published)]  # each once, in order
