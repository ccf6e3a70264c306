"""The hub on its own: reference counts, races, replay, rerouting and close.

Driven through its constructor with a fake router (connections whose
replies the test controls), a fake history and a fake presence, so each
rule is checked without a Redis server or a web server.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from flask_sse.history import ORIGIN, Position
from flask_sse.hub import Hub, HubUnavailable
from flask_sse.routing import Router
from flask_sse.subscription import CloseReason, Subscription

from .sse_client import wait_for


class FakeConnection:
    """A pub/sub connection: records what is sent, answers what the test queues."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.sent: list[tuple[str, ...]] = []
        self.closed = False
        self._replies: deque[Any] = deque()
        self._changed = threading.Condition()

    def send_command(self, *command: str, check_health: bool = True) -> None:
        if self.closed:
            raise redis.ConnectionError("closed")
        self.sent.append(command)
        kind = {"SUBSCRIBE": b"subscribe", "SSUBSCRIBE": b"ssubscribe"}.get(command[0])
        if kind is not None:
            for name in command[1:]:
                self.push(kind, name, 1)

    def push(self, kind: bytes, name: str, body: Any) -> None:
        with self._changed:
            self._replies.append([kind, name.encode(), body])
            self._changed.notify_all()

    def message(self, name: str, position: str, data: str) -> None:
        self.push(b"message", name, json.dumps({"id": position, "data": data}).encode())

    def can_read(self, timeout: float) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: self._replies or self.closed, timeout)
            if self.closed:
                raise redis.ConnectionError("closed")
            return bool(self._replies)

    def read_response(self, **options: Any) -> Any:
        with self._changed:
            return self._replies.popleft()

    def disconnect(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def subscribed(self) -> set[str]:
        """What Redis would hold after every command sent so far."""
        names: set[str] = set()
        for command, *args in self.sent:
            if command in ("SUBSCRIBE", "SSUBSCRIBE"):
                names.update(args)
            elif command in ("UNSUBSCRIBE", "SUNSUBSCRIBE"):
                names.difference_update(args)
        return names


class FakeRouter(Router):
    def __init__(self, sharded: bool = False, owners: dict[str, str] | None = None) -> None:
        self.sharded = sharded
        self.subscribe_command = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self.unsubscribe_command = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self.owners = owners or {}
        self.connections: list[FakeConnection] = []
        self.down: set[str] = set()
        self.refreshing = threading.Event()
        self.refreshing.set()
        #: the nodes whose idle command connections the hub asked to close, in order
        self.idle_dropped: list[str] = []

    def node_for(self, channel: str) -> str:
        return self.owners.get(channel, "server")

    def connect(self, node: str) -> Any:
        if node in self.down:
            raise redis.ConnectionError(f"{node} is down")
        connection = FakeConnection(node)
        self.connections.append(connection)
        return connection

    def refresh(self) -> None:
        self.refreshing.wait(10)

    def drop_idle(self, node: str) -> None:
        self.idle_dropped.append(node)

    def live(self, node: str = "server") -> FakeConnection:
        def newest() -> FakeConnection | None:
            return next(
                (c for c in reversed(self.connections) if c.node == node and not c.closed), None
            )

        connection = wait_for(newest, what=f"a live connection to {node}")
        assert connection is not None
        return connection


class FakeHistory:
    def __init__(self) -> None:
        self.events: dict[str, list[tuple[Position, bytes]]] = {}
        self.gap = False

    def append(self, channel: str, position: Position, data: str) -> None:
        payload = json.dumps({"id": f"{position[0]}-{position[1]}", "data": data}).encode()
        self.events.setdefault(channel, []).append((position, payload))

    def newest(self, channel: str) -> Position:
        events = self.events.get(channel)
        return events[-1][0] if events else ORIGIN

    def after(
        self, channel: str, position: Position
    ) -> tuple[list[tuple[Position, bytes]], bool, Position]:
        events = [e for e in self.events.get(channel, []) if e[0] > position]
        return events, self.gap, self.newest(channel)


class FakePresence:
    key = "sse:presence:fake"

    def __init__(self) -> None:
        self.reports: list[dict[str, int]] = []

    def report(self, counts: dict[str, int]) -> None:
        self.reports.append(counts)


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def history() -> FakeHistory:
    return FakeHistory()


@pytest.fixture
def hub(router: FakeRouter, history: FakeHistory) -> Iterator[Hub]:
    hub = Hub(router, history, FakePresence(), subscribe_timeout=2)  # type: ignore[arg-type]
    yield hub
    hub.close()


def received(subscription: Subscription, count: int) -> list[str]:
    """The data of the next ``count`` deliveries (positions must be in order)."""
    got: list[Any] = []
    deadline = time.monotonic() + 5
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} deliveries came"
        subscription.wake_at(deadline)  # the hub's scheduler wakes a wait that gets nothing
        got += subscription.wait()
    return [delivery.chunk.split(b"data:")[1].split(b"\n")[0].decode() for delivery in got]


def test_one_subscribe_per_channel_and_one_unsubscribe_after_the_last(
    hub: Hub, router: FakeRouter
) -> None:
    first, occupied = hub.subscribe(["a", "b"], 10)
    assert occupied == ("a", "b")
    second, occupied = hub.subscribe(["a"], 10)
    assert occupied == ()
    connection = router.live()
    assert connection.sent == [("SUBSCRIBE", "a", "b")]
    assert hub.unsubscribe(first) == ["b"]
    assert connection.subscribed() == {"a"}
    assert hub.local_subscribers("a") == 1 and hub.channels() == ["a"]
    assert hub.unsubscribe(second) == ["a"]
    assert connection.subscribed() == set() and hub.streams == 0


def test_racing_subscribes_and_unsubscribes_leave_nothing_behind(
    hub: Hub, router: FakeRouter
) -> None:
    errors: list[BaseException] = []

    def churn(number: int) -> None:
        try:
            for round_ in range(30):
                channels = [f"c{(number + round_) % 4}", f"c{round_ % 3}"]
                subscription, _ = hub.subscribe(channels, 10)
                hub.unsubscribe(subscription)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert hub.channels() == [] and hub.streams == 0
    assert router.live().subscribed() == set()
    kept, _ = hub.subscribe(["c1"], 10)  # and a channel still works afterwards
    router.live().message("c1", "5-0", "after the churn")
    assert received(kept, 1) == ["after the churn"]


def test_replay_after_a_lost_link_and_live_copies_skipped(
    hub: Hub, router: FakeRouter, history: FakeHistory
) -> None:
    history.append("a", (1, 0), "old")
    subscription, _ = hub.subscribe(["a"], 10)
    assert hub.positions(["a"]) == {"a": (1, 0)}
    first = router.live()
    first.message("a", "2-0", "live")
    assert received(subscription, 1) == ["live"]
    for seq, data in [(2, "live"), (3, "missed"), (4, "missed too")]:
        history.append("a", (seq, 0), data)
    first.disconnect()  # the link drops; 3 and 4 are published meanwhile
    wait_for(lambda: router.live() is not first, what="a new connection")
    assert router.idle_dropped == ["server"]  # before the replay reads history on one
    second = router.live()
    second.message("a", "3-0", "missed")  # live copies of what was replayed
    second.message("a", "4-0", "missed too")
    second.message("a", "5-0", "new")
    assert received(subscription, 3) == ["missed", "missed too", "new"]
    assert hub.positions(["a"]) == {"a": (5, 0)}


def test_history_lost_while_away_resets_to_its_newest_and_goes_on(
    hub: Hub, router: FakeRouter, history: FakeHistory
) -> None:
    history.append("a", (50, 0), "before the loss")
    subscription, _ = hub.subscribe(["a"], 10)
    router.live().message("a", "51-0", "seen")
    assert received(subscription, 1) == ["seen"]
    history.events["a"] = [((7, 0), b'{"id": "7-0", "data": "after the loss"}')]
    history.gap = True  # Redis came back without its data: positions start lower
    router.live().disconnect()
    (reset,) = wait_for(subscription.wait)
    assert reset.chunk.startswith(b"event:reset\n") and reset.baseline == (7, 0)
    assert hub.positions(["a"]) == {"a": (7, 0)}
    router.live().message("a", "8-0", "new")
    assert received(subscription, 1) == ["new"]


def test_a_gap_in_history_is_signalled_with_reset(
    hub: Hub, router: FakeRouter, history: FakeHistory
) -> None:
    subscription, _ = hub.subscribe(["a"], 10)
    router.live().message("a", "2-0", "seen")
    assert received(subscription, 1) == ["seen"]
    history.gap = True
    router.live().disconnect()
    (delivery,) = wait_for(subscription.wait)
    assert delivery.chunk.startswith(b"event:reset\n")


def test_a_slow_subscriber_is_ended_and_hung_up(hub: Hub, router: FakeRouter) -> None:
    hung_up = threading.Event()
    slow, _ = hub.subscribe(["a"], 2, on_overflow=hung_up.set)
    for seq in range(1, 4):
        router.live().message("a", f"{seq}-0", str(seq))
    assert hung_up.wait(5)
    assert slow.ended and slow.end_reason is CloseReason.SLOW


def test_a_dropped_shard_channel_moves_without_stalling_the_reader(history: FakeHistory) -> None:
    router = FakeRouter(sharded=True, owners={"x": "A", "y": "A"})
    hub = Hub(router, history, FakePresence(), subscribe_timeout=2)  # type: ignore[arg-type]
    try:
        x, _ = hub.subscribe(["x"], 10)
        y, _ = hub.subscribe(["y"], 10)
        shard = router.live("A")
        router.refreshing.clear()  # the topology takes its time to settle
        router.owners["x"] = "B"
        shard.push(b"sunsubscribe", "x", 0)
        shard.message("y", "7-0", "still flowing")  # the shard's reader is not held up
        assert received(y, 1) == ["still flowing"]
        router.refreshing.set()
        moved = router.live("B")
        wait_for(lambda: ("SSUBSCRIBE", "x") in moved.sent, what="x on its new owner")
        moved.message("x", "8-0", "from B")
        assert received(x, 1) == ["from B"]
    finally:
        hub.close()


def test_close_ends_streams_stops_threads_and_releases_connections(
    router: FakeRouter, history: FakeHistory
) -> None:
    before = set(threading.enumerate())
    hub = Hub(router, history, FakePresence(), subscribe_timeout=2)  # type: ignore[arg-type]
    subscription, _ = hub.subscribe(["a"], 10)
    hub.close()
    assert subscription.ended and subscription.end_reason is CloseReason.SHUTDOWN
    assert all(connection.closed for connection in router.connections)
    assert set(threading.enumerate()) <= before
    with pytest.raises(HubUnavailable, match="closed"):
        hub.subscribe(["a"], 10)


def test_redis_down_is_unavailable_not_a_hang(router: FakeRouter, history: FakeHistory) -> None:
    router.down.add("server")
    hub = Hub(router, history, FakePresence(), subscribe_timeout=2)  # type: ignore[arg-type]
    try:
        with pytest.raises(HubUnavailable, match="unreachable"):
            hub.subscribe(["a"], 10)
    finally:
        hub.close()


def test_a_link_nobody_needs_stops_retrying(router: FakeRouter, history: FakeHistory) -> None:
    router.down.add("server")
    hub = Hub(router, history, FakePresence(), subscribe_timeout=2)  # type: ignore[arg-type]
    try:
        with pytest.raises(HubUnavailable):
            hub.subscribe(["a"], 10)
        wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("flask-sse-link")],
                 what="the link's reader to stop")
        router.down.clear()  # Redis is back: the next stream opens a link again
        subscription, _ = hub.subscribe(["a"], 10)
        assert not subscription.ended
    finally:
        hub.close()


def test_shutdown_ends_every_stream_from_the_scheduler(hub: Hub) -> None:
    first, _ = hub.subscribe(["a"], 10)
    first.wake_at(float("inf"))
    hub.shutdown()
    wait_for(lambda: first.ended, what="the stream to be ended")
    assert first.end_reason is CloseReason.SHUTDOWN
    later, _ = hub.subscribe(["b"], 10)  # streams that open while stopping end too
    wait_for(lambda: later.ended, what="the later stream to be ended")


def test_a_drain_ends_streams_a_share_at_a_time_over_its_window(hub: Hub) -> None:
    subscriptions = [hub.subscribe(["a"], 10)[0] for _ in range(40)]
    for subscription in subscriptions:
        subscription.wake_at(float("inf"))
    hub.shutdown(drain_window=1.0)
    samples: list[list[bool]] = []  # which streams had ended, oldest first, at each look

    def all_ended() -> bool:
        # read newest first: a stream is ended after every older one, so no
        # look can catch a newer one ended and an older one not yet
        samples.append([subscription.ended for subscription in reversed(subscriptions)][::-1])
        return all(samples[-1])

    wait_for(all_ended, timeout=5, what="every stream to be ended")
    counts = [sum(ended) for ended in samples]
    partly = [count for count in counts if 0 < count < len(subscriptions)]
    assert len(set(partly)) >= 4, f"streams did not end a share at a time: {sorted(set(counts))}"
    assert all(s.end_reason is CloseReason.SHUTDOWN for s in subscriptions)
    for ended in samples:  # oldest first: whatever has ended is the oldest streams
        assert ended == sorted(ended, reverse=True), ended
