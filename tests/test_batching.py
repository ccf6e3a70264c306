"""Publishes that meet go in one round trip: the batcher alone, then against a real Redis."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from flask_sse.batching import Batcher
from flask_sse.history import History

from .conftest import RedisServer
from .sse_client import wait_for


class GatedSend:
    """A ``send`` that records each batch and holds the first until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.first_on_its_way = threading.Event()
        self.release = threading.Event()

    def __call__(self, calls: list[int]) -> list[int | Exception]:
        self.batches.append(calls)
        if len(self.batches) == 1:
            self.first_on_its_way.set()
            self.release.wait(10)
        return [ValueError(f"odd {call}") if call % 2 else call * 10 for call in calls]


def queued(batcher: Batcher[int, int]) -> int:
    return len(batcher._queue)  # noqa: SLF001 - how many wait behind the call on its way


def test_a_lone_call_is_sent_at_once_and_alone() -> None:
    send = GatedSend()
    send.release.set()
    batcher: Batcher[int, int] = Batcher(send)
    assert batcher.call(2) == 20
    assert batcher.call(4) == 40
    assert send.batches == [[2], [4]]


def test_calls_that_come_meanwhile_go_together_each_with_its_own_outcome() -> None:
    send = GatedSend()
    batcher: Batcher[int, int] = Batcher(send)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.call, 0)
        assert send.first_on_its_way.wait(10)
        others = {call: pool.submit(batcher.call, call) for call in range(1, 6)}
        wait_for(lambda: queued(batcher) == 5, what="five calls to queue")
        send.release.set()
        assert first.result(10) == 0
        for call, future in others.items():
            if call % 2:
                with pytest.raises(ValueError, match=f"odd {call}"):
                    future.result(10)
            else:
                assert future.result(10) == call * 10
    assert send.batches[0] == [0]
    assert sorted(send.batches[1]) == [1, 2, 3, 4, 5]
    assert len(send.batches) == 2


def test_an_error_of_the_whole_round_trip_reaches_every_call_of_it() -> None:
    release = threading.Event()
    sent: list[list[int]] = []

    def send(calls: list[int]) -> list[int | Exception]:
        sent.append(calls)
        if len(sent) == 1:
            release.wait(10)
            return calls  # type: ignore[return-value]
        raise redis.ConnectionError("lost")

    batcher: Batcher[int, int] = Batcher(send)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.call, 1)
        wait_for(lambda: len(sent) == 1, what="the first call on its way")
        others = [pool.submit(batcher.call, call) for call in (2, 3, 4)]
        wait_for(lambda: queued(batcher) == 3, what="three calls to queue")
        release.set()
        assert first.result(10) == 1
        for future in others:
            with pytest.raises(redis.ConnectionError, match="lost"):
                future.result(10)
    # nothing is left on its way: the next call is sent at once, alone
    with pytest.raises(redis.ConnectionError):
        batcher.call(5)
    assert sorted(sent[1]) == [2, 3, 4] and sent[2] == [5]


class Interrupted(Exception):
    """What a request's timeout raises in a caller waiting for its turn."""


def test_a_caller_that_gives_up_waiting_leaves_nothing_stuck_behind_it() -> None:
    """Its call is dropped (its caller was told, by the exception), and the next call
    is sent: before, the turn to send could be handed to the caller that had left."""
    send = GatedSend()
    batcher: Batcher[int, int] = Batcher(send)

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(batcher.call, 0)
            assert send.first_on_its_way.wait(10)
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                batcher.call(2)  # queues behind the first, and gives up
            assert queued(batcher) == 0
            send.release.set()
            assert first.result(10) == 0
            assert pool.submit(batcher.call, 4).result(10) == 40
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert send.batches == [[0], [4]]


def test_concurrent_publishes_are_each_stored_once_with_their_own_position(
    redis_server: RedisServer,
) -> None:
    with redis_server.client() as client:
        client.flushall()
        history = History(redis.Redis(port=redis_server.port))
        client.script_flush()  # the first batch meets NOSCRIPT and is sent again
        sizes: list[int] = []
        send = history._send  # noqa: SLF001 - watched, to see the publishes meet

        def watched(calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
            sizes.append(len(calls))
            return send(calls)

        history._publishes._send = watched  # noqa: SLF001

        def publish(n: int) -> tuple[str | None, int]:
            return history.publish("crowd", f'{{"data":"{n}"}}', 1000, 60, f"identity-{n}")

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(publish, range(200)))
            repeats = list(pool.map(publish, range(0, 200, 10)))
        positions = [position for position, _ in results]
        assert None not in positions and len(set(positions)) == 200
        assert repeats == [(None, 0)] * 20  # a repeated identity is neither stored nor published
        stored = client.xrange("sse:history:{crowd}")
        assert sorted(entry[1][b"d"].decode() for entry in stored) == sorted(
            f'{{"data":"{n}"}}' for n in range(200)
        )
        assert {entry[0].decode() for entry in stored} == set(positions)
    assert sum(sizes) == 220 and max(sizes) > 1  # some went together
