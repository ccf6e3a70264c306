"""Apps sharing one Redis server never see each other's events, history or counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from .conftest import Gunicorn, RedisServer
from .sse_client import open_stream, wait_for

pytestmark = pytest.mark.integration

Start = Callable[..., Gunicorn]


def stream_url(server: Gunicorn, *channels: str) -> str:
    query = "&".join(f"channel={name}" for name in channels)
    status, body = server.request("GET", f"/stream_url?{query}")
    assert status == 200
    url = body["url"]
    assert isinstance(url, str)
    return url


def publish(server: Gunicorn, channel: str, data: str) -> None:
    status, _ = server.request("POST", "/publish", {"data": data, "channel": channel})
    assert status == 200


@pytest.mark.parametrize(
    ("first", "second"),
    [({"db": 4}, {"db": 5}), ({"SSE_NAMESPACE": "shop"}, {"SSE_NAMESPACE": "blog"})],
    ids=["two DB numbers", "two namespaces"],
)
def test_two_apps_on_one_redis_server_are_apart(
    gunicorn: Start, redis_url: str, redis_server: RedisServer,
    first: dict[str, object], second: dict[str, object],
) -> None:
    servers = []
    for number, settings in enumerate((first, second)):
        url = redis_url.rsplit("/", 1)[0] + f"/{settings.pop('db', 0)}"
        servers.append(gunicorn(url, SECRET_KEY=f"key {number}", **settings))
    streams = []
    for server in servers:
        path, _, query = stream_url(server, "news", "private-user-1").partition("?")
        streams.append(open_stream(server, query, path=path))

    def reports() -> int:  # each app's worker has written its counts
        total = 0
        for db in (0, 4, 5):
            with redis.Redis(port=redis_server.port, db=db) as client:
                total += sum(client.hlen(key) for key in client.scan_iter("sse:*presence:*"))
        return total

    wait_for(lambda: reports() == 2 * 2, what="both apps' counts in Redis")
    assert [server.count("/count/news") for server in servers] == [1, 1]
    publish(servers[0], "news", "for the first")
    publish(servers[0], "private-user-1", "private to the first")
    publish(servers[1], "news", "for the second")
    assert [e.data for e in streams[0].events(2)] == ["for the first", "private to the first"]
    assert [e.data for e in streams[1].events(1)] == ["for the second"]
    for stream in streams:
        stream.close()
    resumed = [open_stream(server, "channel=news", last_event_id="0-0") for server in servers]
    assert resumed[0].next_event().data == "for the first"  # history is each app's own
    assert resumed[1].next_event().data == "for the second"
    for stream in resumed:
        stream.close()


def test_other_publishers_publish_to_the_prefixed_channel(
    gunicorn: Start, redis_url: str, redis_server: RedisServer
) -> None:
    server = gunicorn(redis_url.rsplit("/", 1)[0] + "/4", SSE_NAMESPACE="shop")
    stream = open_stream(server, "channel=news")
    with redis_server.client() as client:
        assert client.publish("news", '{"data": "not for this app"}') == 0
        assert client.publish("shop:db4:news", '{"data": "from another language"}') == 1
    assert stream.next_event().data == "from another language"
    stream.close()
