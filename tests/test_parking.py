"""The worker that parks established streams (``gunicorn -k flask_sse.worker.GeventWorker``).

Real parts: redis-server, gunicorn with the package's worker, sockets. The
streams' behaviour under it is also checked by the integration tests that
run under both workers (``both_workers`` in ``test_integration.py``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Gunicorn
from .sse_client import StreamClient, open_stream, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("gunicorn", ["parking"], indirect=True),
]

Start = Callable[..., Gunicorn]


def test_established_streams_are_parked_and_get_every_event_once(
    gunicorn: Start, redis_url: str
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=1)
    singles = [open_stream(server, "channel=news") for _ in range(20)]
    pairs = [open_stream(server, "channel=news&channel=sport") for _ in range(5)]
    wait_for(lambda: server.count("/parked") == 25, what="every stream parked")
    for number in range(40):
        channel = "news" if number % 2 == 0 else "sport"
        server.request("POST", "/publish", {"data": str(number), "channel": channel})
    for stream in singles:
        events = stream.events(20)
        assert [event.data for event in events] == [str(n) for n in range(0, 40, 2)]
        assert len({event.last_event_id for event in events}) == 20
    for stream in pairs:
        events = stream.events(40)
        assert [event.data for event in events] == [str(n) for n in range(40)]
        assert all("," in event.last_event_id for event in events)  # one position per channel
    resumed = open_stream(server, "channel=news&channel=sport", last_event_id=pairs[0].parser.events[19].last_event_id)
    assert [event.data for event in resumed.events(20)] == [str(n) for n in range(20, 40)]
    for stream in [*singles, *pairs, resumed]:
        stream.close()
    wait_for(lambda: server.count("/streams") == 0, timeout=1 + 5, what="every stream released")
    assert server.count("/parked") == 0


def test_a_stream_whose_body_is_changed_is_served_by_its_request(
    gunicorn: Start, redis_url: str
) -> None:
    """An ``after_request`` hook compresses the body: the stream cannot be handed over."""
    server = gunicorn(redis_url, TEST_GZIP=True)
    with StreamClient(server.port, "/stream?channel=zipped") as stream:
        assert stream.headers["Content-Encoding"] == "gzip"
        wait_for(lambda: server.count("/streams") == 1, what="the stream open")
        assert server.count("/parked") == 0


def test_max_age_ends_a_parked_stream_with_a_complete_response(
    gunicorn: Start, redis_url: str
) -> None:
    server = gunicorn(redis_url, SSE_MAX_AGE=1, SSE_KEEPALIVE=0.3)
    with open_stream(server, "channel=aging") as stream:
        wait_for(lambda: server.count("/parked") == 1, what="the stream parked")
        server.request("POST", "/publish", {"data": "before the end", "channel": "aging"})
        lines = stream.read_to_end()
    assert "data:before the end\n" in lines
    assert [event.data for event in stream.parser.events] == ["before the end"]
    wait_for(lambda: server.count("/parked") == 0, what="the parked stream gone")


def test_sigterm_drains_parked_streams_and_the_worker_waits_for_them(
    gunicorn: Start, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "gunicorn.log"
    server = gunicorn(
        redis_url, options=("-w", "1", "--graceful-timeout", "6"), log=log, SSE_DRAIN_SECONDS=1
    )
    pid = server.worker_pid
    streams = [open_stream(server, "channel=leaving") for _ in range(10)]
    wait_for(lambda: server.count("/parked") == 10, what="every stream parked")
    os.kill(pid, signal.SIGTERM)
    for stream in streams:
        lines = stream.read_to_end()  # a complete response, not a cut connection
        assert any(line.startswith("retry:") for line in lines), lines
        stream.close()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}/status") or _zombie(pid), timeout=8,
             what="the worker to exit")
    text = log.read_text()
    assert "Hanging up" not in text
    assert "Traceback" not in text
    assert "MonkeyPatchWarning" not in text  # the worker imports the package before gevent patches


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        return any(line.startswith("State:") and "Z" in line for line in status)
