"""The JavaScript client (``/stream/client.js``) in headless Chromium, over gunicorn gevent and Redis.

Tabs of one browser share one stream (the server counts its open streams),
each tab gets exactly its own channels' events, a leader's tab can close
without loss or repeat, channels change at run time without loss, ten tabs
still leave connections for the app's requests, a tab refused a channel
stops alone, and a cross-origin page renews its token through ``tokenUrl``
at every reconnect.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from flask_sse import Publisher

from .browser import Browser
from .conftest import Gunicorn, SteadyPublisher
from .sse_client import wait_for

pytestmark = pytest.mark.integration

#: Loads the client in the current tab and subscribes ``channels``; what it sees goes to ``window.seen``.
_CONNECT = """
const [url, channels, options, done] = arguments;
import("/stream/client.js").then(({ connect }) => {
  const seen = window.seen = { events: {}, states: [], resets: [] };
  const events = window.events = connect(url, options);
  window.subscriptions = {};
  window.record = (channel) => (data, event) => {
    (seen.events[channel] = seen.events[channel] || []).push(data);
  };
  for (const channel of channels) {
    window.subscriptions[channel] = events.subscribe(channel, window.record(channel));
  }
  events.on("state", (state) => seen.states.push(state));
  events.on("reset", (channel) => seen.resets.push(channel));
  done(true);
}, (error) => done(String(error)));
"""
_SEEN = "return window.seen;"
_STATE = "return window.events.state;"
_LEADS = "return window.events.engine.stream !== null;"


def open_tab(browser: Browser, page: str, channels: list[str], first: bool = False) -> str:
    """A tab of ``page`` (the current one if ``first``) whose client subscribes ``channels``."""
    handle = browser.current_tab() if first else browser.new_tab()
    browser.open(page)
    assert browser.run_async(_CONNECT, "/stream", channels, {}) is True
    return handle


def test_three_tabs_share_one_stream_and_each_gets_its_own_channels(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=0.5)
    page = f"http://127.0.0.1:{server.port}/pid"
    wanted = {"a": ["a"], "b": ["b"], "c": ["c", "a"]}  # each tab's channels
    tabs = {
        name: open_tab(browser, page, channels, first=name == "a")
        for name, channels in wanted.items()
    }
    for handle in tabs.values():
        browser.switch_to(handle)
        wait_for(lambda: browser.run(_STATE)["state"] == "open", what="the tab's stream")
    wait_for(lambda: set(browser.run(_STATE)["channels"]) == {"a", "b", "c"}, what="the union")
    publisher = Publisher(redis_url)
    for number in range(5):
        for channel in "abc":
            publisher.publish(f"{channel}{number}", channel=channel)
    sent = {channel: [f"{channel}{n}" for n in range(5)] for channel in "abc"}
    for name, handle in tabs.items():
        browser.switch_to(handle)
        want = {channel: sent[channel] for channel in wanted[name]}
        count = 5 * len(want)
        wait_for(lambda: sum(map(len, browser.run(_SEEN)["events"].values())) >= count,  # noqa: B023
                 what=f"tab {name}'s events")
        assert browser.run(_SEEN)["events"] == want
    wait_for(lambda: server.count("/streams") == 1, what="one stream for the browser, whatever its tabs")



def numbers(seen: dict[str, Any], channel: str) -> list[Any]:
    """The data of ``channel``'s events in a tab, in the order they came."""
    values: list[Any] = seen["events"].get(channel, [])
    return values


def every_event_once(
    read: Callable[[], dict[str, Any]], channel: str, published: int, first_at_most: Any
) -> list[Any]:
    """``channel``'s events in a tab (``read`` gives what it saw) once its last has come.

    Asserts each came once and in order, the first by ``first_at_most``.
    """

    def complete() -> list[Any]:
        got = numbers(read(), channel)
        return got if got[-1:] == [published - 1] else []

    got = wait_for(complete, what=f"the last {channel!r} event")
    assert got == list(range(got[0], published)), (channel, got[:5])
    assert got[0] <= first_at_most, (channel, got[0])
    return got


def test_the_leaders_tab_closes_and_the_others_carry_on_with_every_event_once(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser,
    steady_publisher: Callable[..., SteadyPublisher],
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=0.5)
    page = f"http://127.0.0.1:{server.port}/pid"
    leader = open_tab(browser, page, ["news"], first=True)
    wait_for(lambda: browser.run(_STATE)["state"] == "open", what="the leader's stream")
    assert browser.run(_LEADS)
    followers = [open_tab(browser, page, ["news"]), open_tab(browser, page, ["news", "sport"])]
    assert not browser.run(_LEADS)
    steady = steady_publisher(redis_url, ["news", "sport"])
    wait_for(lambda: len(numbers(browser.run(_SEEN), "news")) >= 20, what="events in a follower")
    browser.switch_to(leader)
    browser.close_tab()
    browser.switch_to(followers[0])
    wait_for(lambda: any(_leads(browser, tab) for tab in followers), what="a new leader")
    seen_after = {tab: len(_seen(browser, tab)["events"]["news"]) for tab in followers}
    wait_for(lambda: all(len(_seen(browser, tab)["events"]["news"]) >= seen_after[tab] + 30
                         for tab in followers), what="events after the hand-off")
    published = steady.finish()
    for tab, channels in zip(followers, (["news"], ["news", "sport"]), strict=True):
        for channel in channels:
            got = every_event_once(partial(_seen, browser, tab), channel, published[channel], 1)
            print(f"hand-off: a tab got {len(got)} of {published[channel]} {channel} events, "
                  f"{len(got) - len(set(got))} twice")
    wait_for(lambda: server.count("/streams") == 1, what="one stream on the server")


def _seen(browser: Browser, tab: str) -> dict[str, Any]:
    browser.switch_to(tab)
    seen: dict[str, Any] = browser.run(_SEEN)
    return seen


def _leads(browser: Browser, tab: str) -> bool:
    browser.switch_to(tab)
    return bool(browser.run(_LEADS))


_SUBSCRIBE = """
const [channel, done] = arguments;
const subscription = window.subscriptions[channel] = window.events.subscribe(channel, window.record(channel));
subscription.ready.then(() => done(true));
"""
_LEAVE = "window.subscriptions[arguments[0]].close();"


def test_channels_change_at_run_time_without_losing_or_repeating_events(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser,
    steady_publisher: Callable[..., SteadyPublisher],
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=0.5)
    page = f"http://127.0.0.1:{server.port}/pid"
    first = open_tab(browser, page, ["stays", "leaves"], first=True)
    second = open_tab(browser, page, ["other"])
    steady = steady_publisher(redis_url, ["stays", "leaves", "joins", "other", "late"])
    browser.switch_to(first)
    wait_for(lambda: len(numbers(browser.run(_SEEN), "stays")) >= 10, what="the first events")
    assert browser.run_async(_SUBSCRIBE, "joins") is True
    joined_at = steady.published["joins"]  # published once the stream carried the channel: all wanted
    wait_for(lambda: len(numbers(browser.run(_SEEN), "joins")) >= 10, what="the new channel's events")
    browser.run(_LEAVE, "leaves")
    left_with = len(numbers(browser.run(_SEEN), "leaves"))
    browser.switch_to(second)  # the other tab changes channels too: the shared stream reconnects again
    assert browser.run_async(_SUBSCRIBE, "late") is True
    late_at = steady.published["late"]
    wait_for(lambda: len(numbers(browser.run(_SEEN), "late")) >= 10, what="the other tab's new channel")
    published = steady.finish()

    in_first, in_second = partial(_seen, browser, first), partial(_seen, browser, second)
    stays = every_event_once(in_first, "stays", published["stays"], 1)
    joins = every_event_once(in_first, "joins", published["joins"], joined_at)
    late = every_event_once(in_second, "late", published["late"], late_at)
    other = every_event_once(in_second, "other", published["other"], 1)
    leaves = numbers(_seen(browser, first), "leaves")
    assert leaves == list(range(leaves[0], leaves[0] + len(leaves)))  # no gap or repeat until it left
    assert len(leaves) == left_with  # and nothing after
    assert "joins" not in _seen(browser, second)["events"]  # each tab only its own channels
    print(f"channel changes: stays {len(stays)}/{published['stays']}, joins {len(joins)} "
          f"(from {joins[0]}, ready at {joined_at}), late {len(late)} (from {late[0]}, ready at "
          f"{late_at}), other {len(other)}/{published['other']}, leaves {len(leaves)} until it left")
    wait_for(lambda: server.count("/streams") == 1, what="one stream on the server")


_FETCH = """
const done = arguments[arguments.length - 1];
const timeout = new Promise((resolve) => setTimeout(() => resolve("timed out"), 8000));
Promise.race([fetch("/pid").then((response) => response.status), timeout]).then(done, (e) => done(String(e)));
"""


def test_ten_tabs_leave_connections_for_the_apps_own_requests(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=0.5)
    page = f"http://127.0.0.1:{server.port}/pid"
    tabs = [open_tab(browser, page, [f"room-{n}"], first=n == 0) for n in range(10)]
    wait_for(lambda: browser.run(_STATE)["state"] == "open", what="the last tab's channel")
    for tab in tabs:
        browser.switch_to(tab)
        assert browser.run_async(_FETCH) == 200
    wait_for(lambda: server.count("/streams") == 1, what="one stream on the server")
    Publisher(redis_url).publish("hello", channel="room-9")
    wait_for(lambda: numbers(browser.run(_SEEN), "room-9") == ["hello"], what="the event")


def test_a_refused_stream_stops_with_the_servers_message(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=0.5)
    open_tab(browser, f"http://127.0.0.1:{server.port}/pid", ["private-bob"], first=True)
    assert_refused_private_bob(browser)
    assert server.count("/streams") == 0


def assert_refused_private_bob(browser: Browser) -> None:
    """The current tab's client stops with the server's refusal of ``private-bob``."""

    def closed() -> dict[str, Any] | None:
        state: dict[str, Any] = browser.run(_STATE)
        return state if state["state"] == "closed" else None

    state = wait_for(closed, what="the refusal")
    assert state is not None
    assert state["status"] == 403
    assert "Channel 'private-bob' is private" in state["reason"]


def test_a_cross_origin_page_renews_its_token_through_several_reconnects(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser,
    steady_publisher: Callable[..., SteadyPublisher],
) -> None:
    page_server = gunicorn(redis_url, TEST_TOKEN_SECONDS=1.5)
    origin = f"http://127.0.0.1:{page_server.port}"
    stream_server = gunicorn(redis_url, TEST_CORS_ORIGIN=origin, SSE_MAX_AGE=1, SSE_RETRY=100)
    browser.open(f"{origin}/pid")
    assert browser.run_async("fetch('/login/ann', {method: 'POST'}).then(r => arguments[0](r.status));") == 200
    stream = f"http://127.0.0.1:{stream_server.port}/stream"
    assert browser.run_async(_CONNECT, stream, ["private-ann"], {"tokenUrl": "/token"}) is True
    wait_for(lambda: browser.run(_STATE)["state"] == "open", what="the private stream")
    steady = steady_publisher(redis_url, ["private-ann"], interval=0.05)
    def opens() -> int:
        return sum(state["state"] == "open" for state in browser.run(_SEEN)["states"])

    wait_for(lambda: opens() >= 5, timeout=20, what="five streams, past three token lifetimes")
    published = steady.finish()
    every_event_once(lambda: browser.run(_SEEN), "private-ann", published["private-ann"], 1)
    assert not [state for state in browser.run(_SEEN)["states"] if state["state"] == "closed"]


def test_a_tab_whose_channels_are_refused_stops_alone_and_the_others_stream_on(
    gunicorn: Callable[..., Gunicorn], redis_url: str, browser: Browser
) -> None:
    """One tab asks for a channel it may not open: the stream the tabs share is refused
    (403), and only that tab is told; the others go on, on their own channels."""
    server = gunicorn(redis_url, SSE_KEEPALIVE=0.5)
    page = f"http://127.0.0.1:{server.port}/pid"
    allowed = open_tab(browser, page, ["news"], first=True)
    wait_for(lambda: browser.run(_STATE)["state"] == "open", what="the first tab's stream")
    refused = open_tab(browser, page, ["news", "private-bob"])
    assert_refused_private_bob(browser)
    browser.switch_to(allowed)

    def streaming_news() -> bool:
        state = browser.run(_STATE)
        return bool(state["state"] == "open" and state["channels"] == ["news"])

    wait_for(streaming_news, what="the other tab streaming on")
    Publisher(redis_url).publish("after the refusal", channel="news")
    wait_for(lambda: browser.run(_SEEN)["events"].get("news") == ["after the refusal"],
             what="the event in the tab that was not refused")
    browser.switch_to(refused)
    assert browser.run(_SEEN)["events"] == {}
    assert browser.run(_STATE)["state"] == "closed"
    wait_for(lambda: server.count("/streams") == 1, what="one stream, for the tab that may")
    browser.run('window.subscriptions["private-bob"].close();')  # it gives up the channel
    wait_for(streaming_news, what="the tab, back on the shared stream")
    Publisher(redis_url).publish("once it gave up", channel="news")
    wait_for(lambda: browser.run(_SEEN)["events"].get("news") == ["once it gave up"],
             what="the event in the tab that gave up its refused channel")
