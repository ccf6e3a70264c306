"""A browser never gives up because the server was briefly unable (headless Chromium).

``EventSource`` treats any answer but ``200 text/event-stream`` as final. So
while Redis is down, or the process holds ``SSE_MAX_CONNECTIONS``, a
reconnecting page must get an answer it retries, and must come back on its
own, with every accepted event once, when the trouble ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from flask_sse import Publisher

from .browser import Browser
from .conftest import Gunicorn, RedisServer
from .sse_client import StreamClient, wait_for

pytestmark = pytest.mark.integration

def test_a_page_outlives_a_redis_outage_across_several_stream_ends(
    gunicorn: Callable[..., Gunicorn], durable_redis: RedisServer, browser: Browser
) -> None:
    server = gunicorn(durable_redis.url, SSE_MAX_AGE=2, SSE_RETRY=200, SSE_KEEPALIVE=0.5)
    publisher = Publisher(durable_redis.url)
    browser.open(f"http://127.0.0.1:{server.port}/pid")
    browser.listen("/stream?channel=news")
    wait_for(lambda: browser.seen()["opens"] == 1, what="the stream to open")
    accepted = []
    for number in range(3):
        accepted.append(f"before {number}")
        publisher.publish(accepted[-1], channel="news")
    wait_for(lambda: browser.seen()["data"] == accepted, what="the events before the outage")

    durable_redis.stop()
    stopped = time.monotonic()
    errors_before = browser.seen()["errors"]
    retried: list[str] = []

    def publish_until_accepted() -> None:
        """As the docs say to: retry a publish that raised ConnectionError."""
        while True:
            try:
                publisher.publish("during", channel="news")
            except redis.ConnectionError:
                if stop.wait(0.2):
                    return
                continue
            retried.append("during")
            return

    stop = threading.Event()
    publishing = threading.Thread(target=publish_until_accepted)
    publishing.start()
    try:
        # The server ends the page's stream (SSE_MAX_AGE); every reconnect
        # meets the outage, which lasts 15 s. The page must go on asking, never close.
        def long_outage_met_often() -> bool:
            return time.monotonic() - stopped >= 15 and browser.seen()["errors"] >= errors_before + 8

        wait_for(long_outage_met_often, timeout=60, what="15 s of outage and eight reconnects")
        assert not browser.seen()["closed"]
    finally:
        durable_redis.start()
        publishing.join(30)
        stop.set()
    assert retried == ["during"]
    accepted.append("during")
    for number in range(2):
        accepted.append(f"after {number}")
        publisher.publish(accepted[-1], channel="news")
    wait_for(lambda: browser.seen()["data"] == accepted, timeout=60, what="every accepted event")
    assert not browser.seen()["closed"]


def test_a_page_waits_out_the_connection_limit(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser
) -> None:
    server = gunicorn(redis_url, SSE_MAX_CONNECTIONS=1, SSE_RETRY=200, SSE_KEEPALIVE=0.5)
    holder = StreamClient(server.port, "/stream?channel=other")  # the only stream this worker takes
    assert holder.status == 200
    browser.open(f"http://127.0.0.1:{server.port}/pid")
    browser.listen("/stream?channel=news")
    wait_for(lambda: browser.seen()["errors"] >= 3, what="three refusals at the limit")
    assert not browser.seen()["closed"] and browser.seen()["data"] == []
    holder.close()
    publisher = Publisher(redis_url)

    def arrived() -> bool:
        publisher.publish("welcome", channel="news")
        return "welcome" in browser.seen()["data"]

    wait_for(arrived, timeout=30, what="the page to get in and receive")
    assert not browser.seen()["closed"]
