"""Real parts: redis-server, ``gunicorn -k gevent``, sockets, and what Redis sees."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable

import pytest

from .conftest import Gunicorn, RedisServer, free_port
from .sse_client import StreamClient, datas, open_stream, wait_for
from .test_access import token

pytestmark = pytest.mark.integration

Start = Callable[..., Gunicorn]
#: Run a test under gunicorn's gevent worker and under the one that parks streams.
both_workers = pytest.mark.parametrize("gunicorn", ["gevent", "parking"], indirect=True)


def redis_ports_of(pid: int, redis_port: int) -> set[int]:
    """Local ports of the established TCP connections from ``pid`` to Redis."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == redis_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def connections_redis_sees(redis_server: RedisServer, pid: int) -> int:
    """How many of Redis's clients are the worker's sockets (CLIENT LIST)."""
    ports = redis_ports_of(pid, redis_server.port)
    with redis_server.client() as client:
        addresses = [entry["addr"] for entry in client.client_list()]
    return sum(1 for address in addresses if int(address.rsplit(":", 1)[1]) in ports)


@both_workers
def test_both_apis_and_a_raw_publish_reach_every_subscribed_channel(
    gunicorn: Start, redis_url: str, redis_server: RedisServer
) -> None:
    server = gunicorn(redis_url)
    with open_stream(server, "channel=a&channel=b") as both, open_stream(server, "channel=b") as only_b:
        assert both.headers["Content-Type"] == "text/event-stream"
        assert both.headers["Cache-Control"] == "no-cache"
        assert both.headers["X-Accel-Buffering"] == "no"
        assert server.request("POST", "/publish", {"data": {"n": 1}, "type": "t", "id": 1, "channel": "a"}) == (
            200, {"receivers": 1}
        )
        server.request("POST", "/send_event", {"event": "legacy", "data": "x\ny", "channel": "b"})
        server.request("POST", "/publish", {"data": "nobody", "channel": "c"})
        with redis_server.client() as outside:
            outside.publish("b", '{"data": "from redis-cli", "type": "raw"}')
            outside.publish("a", '["array", {"old": true}]')
        events = both.events(4)
        assert [(event.data, event.type) for event in events] == [
            ('{"n": 1}', "t"),
            ("x\ny", "legacy"),
            ("from redis-cli", "raw"),
            ('{"old": true}', "array"),
        ]
        # ids are history positions, one per channel; raw publishes have none
        a, b = events[1].last_event_id.split(",")
        assert events[0].last_event_id == f"{a},0-0"
        assert events[3].last_event_id == events[2].last_event_id == events[1].last_event_id
        with redis_server.client() as history:
            assert [entry[0].decode() for entry in history.xrange("sse:history:{a}")] == [a]
        assert datas(only_b.events(2)) == ["x\ny", "from redis-cli"]


@both_workers
def test_keepalive_comment_on_a_silent_stream(gunicorn: Start, redis_url: str) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=0.3)
    with open_stream(server, "channel=quiet") as stream:
        assert stream.read_line() == ":\n"
        assert stream.read_line() == "\n"
        assert stream.parser.events == []


@both_workers
def test_redis_connections_stay_constant_from_1_to_300_subscribers(
    gunicorn: Start, redis_url: str, redis_server: RedisServer
) -> None:
    server = gunicorn(redis_url)
    pid = server.worker_pid
    first = open_stream(server, "channel=crowd")
    server.request("POST", "/publish", {"data": "warm", "channel": "crowd"})
    assert first.next_event().data == "warm"
    with_one = connections_redis_sees(redis_server, pid)
    streams = [first] + [open_stream(server, f"channel=crowd&channel=c{n % 7}") for n in range(299)]
    try:
        status, body = server.request("POST", "/publish", {"data": "all", "channel": "crowd"})
        assert body == {"receivers": 1}  # one process listening, whatever the number of tabs
        assert all(stream.next_event().data == "all" for stream in streams)
        with_300 = connections_redis_sees(redis_server, pid)
        assert with_300 == with_one
        assert with_300 <= 3
        assert len(redis_ports_of(pid, redis_server.port)) == with_300
    finally:
        for stream in streams:
            stream.close()


@both_workers
def test_closed_clients_are_released_within_the_keepalive(
    gunicorn: Start, redis_url: str, redis_server: RedisServer
) -> None:
    server = gunicorn(redis_url, SSE_KEEPALIVE=1)
    streams = [open_stream(server, "channel=gone&channel=gone-too") for _ in range(5)]
    with redis_server.client() as client:
        assert client.pubsub_numsub("gone", "gone-too") == [(b"gone", 1), (b"gone-too", 1)]
        for stream in streams:
            stream.close()
        wait_for(
            lambda: client.pubsub_numsub("gone", "gone-too") == [(b"gone", 0), (b"gone-too", 0)],
            timeout=1 + 2,
            what="PUBSUB NUMSUB to drop to 0",
        )
        subscribed = [entry for entry in client.client_list() if entry.get("sub", "0") != "0"]
        assert subscribed == []


@both_workers
def test_a_client_that_never_reads_is_cut_off_and_others_go_on(
    gunicorn: Start, redis_url: str, redis_server: RedisServer
) -> None:
    server = gunicorn(redis_url, SSE_QUEUE_SIZE=10)
    stuck = socket.create_connection(("127.0.0.1", server.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /stream?channel=flood HTTP/1.1\r\nHost: x\r\n\r\n")

    def subscribers() -> object:
        return server.count("/subscribers/flood")

    with open_stream(server, "channel=flood") as reader, redis_server.client() as outside:
        wait_for(lambda: subscribers() == 2, what="both clients subscribed")
        big = "x" * 16384
        for number in range(600):  # 10 MB: more than the queue (10) and the socket buffers hold
            outside.publish("flood", f'{{"data": "{number} {big}"}}')
            assert reader.next_event().data.split()[0] == str(number)
        wait_for(lambda: subscribers() == 1, what="the stuck client to be cut off")
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stuck.close()


def test_bad_requests_over_a_real_socket(gunicorn: Start, redis_url: str) -> None:
    server = gunicorn(redis_url)
    for query, error in [
        ("channel=", "must not be empty"),
        ("channel=%0Aevent:x", "control characters"),
        ("channel=" + "y" * 201, "at most 200"),
        ("&".join(f"channel={n}" for n in range(17)), "Too many channels"),
    ]:
        status, body = server.request("GET", f"/stream?{query}")
        assert status == 400
        assert error in str(body["error"])


def test_before_request_hook_guards_a_channel(gunicorn: Start, redis_url: str) -> None:
    server = gunicorn(redis_url)
    denied = StreamClient(server.port, "/private?channel=news&channel=secret")
    assert denied.status == 403
    assert b"needs a token" in denied.body()
    denied.close()
    allowed = StreamClient(server.port, "/private?channel=secret", headers={"X-Token": "open"})
    assert allowed.status == 200
    assert allowed.read_line() == "retry:3000\n"
    allowed.close()


def test_redis_unreachable_at_connect_is_retried_by_every_client(gunicorn: Start) -> None:
    """A browser gets an answer it retries (a 503 would close it for good); others a 503."""
    server = gunicorn(f"redis://127.0.0.1:{free_port()}/0", SSE_RETRY=1000)
    retries = []
    for _ in range(3):
        with StreamClient(server.port, "/stream?channel=news", {"Last-Event-ID": "5-0"}) as browser:
            assert browser.status == 200 and browser.headers["Content-Type"].startswith("text/event-stream")
            body = browser.body().decode()  # complete: the answer ends at once
            retry, comment = body.split("\n")[:2]
            assert retry.startswith("retry:") and "id:" not in body  # the browser keeps its id
            assert comment.startswith(": The event broker is unavailable")
            retries.append(int(retry.removeprefix("retry:")))
    assert all(500 <= retry <= 45_000 for retry in retries)  # SSE_RETRY and more, jittered
    status, error = server.request("GET", "/stream", headers={"Accept": "application/json"})
    assert status == 503 and "unavailable" in str(error["error"])


def test_the_hub_resubscribes_after_its_connection_is_killed(
    gunicorn: Start, redis_url: str, redis_server: RedisServer
) -> None:
    server = gunicorn(redis_url)
    with open_stream(server, "channel=k") as stream, redis_server.client() as outside:
        outside.publish("k", '{"data": "before"}')
        assert stream.next_event().data == "before"
        assert outside.client_kill_filter(_type="pubsub") == 1
        wait_for(lambda: outside.pubsub_numsub("k") == [(b"k", 1)], what="the hub to resubscribe")
        outside.publish("k", '{"data": "after"}')
        assert stream.next_event().data == "after"


@both_workers
def test_an_event_published_on_one_server_reaches_streams_on_another(
    gunicorn: Start, redis_url: str
) -> None:
    first, second = gunicorn(redis_url), gunicorn(redis_url, options=("-w", "2", "--preload"))
    with open_stream(first, "channel=shared") as on_first, open_stream(second, "channel=shared") as on_second:
        assert second.request("POST", "/publish", {"data": "hop", "channel": "shared"}) == (200, {"receivers": 2})
        assert on_first.next_event().data == "hop"
        assert on_second.next_event().data == "hop"


@both_workers
def test_the_example_app_under_several_gevent_workers(gunicorn: Start, redis_url: str) -> None:
    server = gunicorn(redis_url, app="example.app:app", options=("-w", "3"))
    assert server.request("GET", "/")[0] == 200
    streams = [open_stream(server, "channel=news") for _ in range(6)]
    try:
        assert server.request("POST", "/publish", {"channel": "news", "text": "hi"})[0] == 204
        for stream in streams:
            event = stream.next_event()
            assert event.type == "news"
            assert '"text": "hi"' in event.data
        with StreamClient(server.port, "/stream?channel=staff") as refused:
            assert refused.status == 403
    finally:
        for stream in streams:
            stream.close()


def expired_token(channel: str) -> str:
    """A token ``tests.serve`` signed for ``channel``, expired a minute ago."""
    return token([channel], time.time() - 60, "a secret for the tests only")


def test_private_channels_through_a_real_server(gunicorn: Start, redis_url: str, redis_server: RedisServer) -> None:
    server = gunicorn(redis_url)

    def url_for(*channels: str, expires_in: float = 3600) -> str:
        query = "&".join(f"channel={channel}" for channel in channels)
        status, body = server.request("GET", f"/stream_url?{query}&expires_in={expires_in}")
        assert status == 200
        return str(body["url"])

    good = url_for("news", "private-ann")
    assert "token=" in good
    with StreamClient(server.port, good) as stream, redis_server.client() as outside:
        assert stream.status == 200
        outside.publish("private-ann", '{"data": "for ann only"}')
        assert stream.next_event().data == "for ann only"
    bob = url_for("private-bob")
    refusals = {
        "/stream?channel=private-ann": "is private",
        f"/stream?channel=private-ann&token={expired_token('private-ann')}": "has expired",
        bob.replace("private-bob", "private-ann"): "does not open channel 'private-ann'",
        good[:-3] + "abc": "altered or signed with another key",
    }
    for url, error in refusals.items():
        with StreamClient(server.port, url) as refused:
            assert refused.status == 403, url
            assert error in json.loads(refused.body())["error"]


def test_limits_and_hostile_requests_through_a_real_server(gunicorn: Start, redis_url: str) -> None:
    server = gunicorn(redis_url, SSE_MAX_CONNECTIONS=3)
    for path, headers, status, error in [
        ("/stream?token=a&token=b", {}, 400, b"Give 'token' once"),
        ("/stream?channel=%FF", {}, 400, b"not valid UTF-8"),
        ("/stream", {"Last-Event-ID": "1-0," * 2000}, 400, b"longer than any id"),
        ("/stream?channel=" + "x" * 5000, {}, 414, b"Request Line is too large"),  # gunicorn's limit
    ]:
        with StreamClient(server.port, path, headers) as refused:
            assert refused.status == status, path[:60]
            assert error in refused.body()
    streams = [open_stream(server, "channel=full") for _ in range(3)]
    with StreamClient(server.port, "/stream?channel=full") as refused:
        assert refused.status == 200  # an EventSource retries it
        answer = refused.body()
        assert answer.startswith(b"retry:") and b"SSE_MAX_CONNECTIONS" in answer
    status, body = server.request("GET", "/stream?channel=full", headers={"Accept": "*/*"})
    assert status == 503 and "SSE_MAX_CONNECTIONS" in str(body["error"])
    for stream in streams:
        stream.close()


def test_cross_origin_event_source_with_credentials(gunicorn: Start, redis_url: str) -> None:
    server = gunicorn(redis_url, TEST_CORS_ORIGIN="http://app.example")
    headers = {"Origin": "http://app.example", "Cookie": "session=1"}
    with StreamClient(server.port, "/stream?channel=cors", headers) as stream:
        assert stream.status == 200
        assert stream.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert stream.headers["Access-Control-Allow-Credentials"] == "true"
        assert stream.read_line() == "retry:3000\n"
    with StreamClient(server.port, "/stream?channel=cors", {"Origin": "http://evil.example"}) as other:
        assert "Access-Control-Allow-Origin" not in other.headers


@both_workers
@pytest.mark.parametrize("nodelay", [True, False])
def test_sse_tcp_nodelay_sets_the_open_streams_socket_option(
    gunicorn: Start, redis_url: str, nodelay: bool
) -> None:
    server = gunicorn(redis_url, SSE_TCP_NODELAY=nodelay)
    with open_stream(server, "channel=packets") as stream:
        for n in range(3):  # events after the option is set still arrive, each whole
            server.request("POST", "/publish", {"data": n, "channel": "packets"})
        assert datas(stream.events(3)) == ["0", "1", "2"]
        port = stream.connection.sock.getsockname()[1]
        assert server.request("GET", f"/nodelay/{port}") == (200, {"nodelay": int(nodelay)})
