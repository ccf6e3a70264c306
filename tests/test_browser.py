"""The example page in a real headless Chromium, over gunicorn gevent and real Redis.

Events must arrive through the browser's own ``EventSource``: multi-line and
non-ASCII data, named and unnamed types, three channels (public, staff,
private), and a resume after the server ends the stream (``SSE_MAX_AGE``):
events published while the browser waits to reconnect arrive once each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flask_sse import Publisher

from .browser import Browser
from .conftest import Gunicorn, _need, free_port
from .sse_client import wait_for

pytestmark = pytest.mark.integration

EVENTS = "return [...document.querySelectorAll('#events li')].map(li => [li.querySelector('.tag').textContent, li.querySelector('.text').textContent]);"
STATE = "return document.getElementById('state').textContent;"
POST = """
const [path, body, done] = arguments;
fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
  .then(response => done(response.status), error => done(String(error)));
"""


def test_the_example_page_in_a_real_browser(
    gunicorn: Callable[..., Gunicorn], redis_url: str, tmp_path: Path
) -> None:
    chromium = _need("chromium", "chromium")
    chromedriver = _need("chromedriver", "chromium-driver")
    server = gunicorn(redis_url, app="example.app:app", options=("-w", "2"),
                      env={"FLASK_SSE_MAX_AGE": "8", "FLASK_SSE_KEEPALIVE": "1"})
    page = f"http://127.0.0.1:{server.port}/"
    publisher = Publisher(redis_url)
    browser = Browser(chromedriver, chromium, free_port())
    try:
        browser.open(page)
        assert browser.run_async(POST, "/login", {}) == 200
        browser.open(page)  # now with the staff channel too
        wait_for(lambda: browser.run(STATE) == "open", what="EventSource.onopen")

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
        screenshot = Path(os.environ.get("SSE_TEST_SCREENSHOT", tmp_path / "example.png"))
        browser.screenshot(screenshot)
        assert screenshot.read_bytes().startswith(b"\x89PNG")
    finally:
        browser.close()
