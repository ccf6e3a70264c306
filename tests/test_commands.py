"""The history script's calls sent without redis-py's command path: packing, replies, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from flask_sse import Publisher, registry
from flask_sse.commands import DirectCalls, pack
from flask_sse.history import ORIGIN, History, format_position
from flask_sse.registry import history_for
from flask_sse.replies import read_answers

from .conftest import RedisServer, free_port


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """The server's end of a connection, and the client's (which waits 0.2 s at most)."""
    server, client = socket.socketpair()
    client.settimeout(0.2)
    with server, client:
        yield server, client


def answers_sent_in_pieces(pair: tuple[socket.socket, socket.socket], data: bytes, count: int,
                           piece: int) -> list[Any]:
    """What ``read_answers`` makes of ``data`` when the server sends ``piece`` bytes at a time."""
    server, client = pair

    def send() -> None:
        for start in range(0, len(data), piece):
            server.sendall(data[start : start + piece])

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return read_answers(client, count)
    finally:
        sender.join()


PUSH = b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"  # RESP3: sent unasked


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_answers_come_whole_in_order_without_the_push_messages_around_them(
    pair: tuple[socket.socket, socket.socket], piece: int
) -> None:
    data = PUSH + b"*2\r\n$15\r\n1700000000000-0\r\n:3\r\n" + PUSH + b"-NOSCRIPT No script\r\n" + PUSH
    first, second = answers_sent_in_pieces(pair, data, 2, piece)
    assert first == [b"1700000000000-0", b"3"]
    assert isinstance(second, redis.exceptions.NoScriptError)  # returned, not raised


def test_an_answer_nobody_asked_for_a_closed_connection_and_silence_are_errors(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    server.sendall(b"+OK\r\n+OK\r\n")
    with pytest.raises(redis.ConnectionError, match="more replies than commands"):
        read_answers(client, 1)
    with pytest.raises(TimeoutError):
        read_answers(client, 1)
    server.close()
    with pytest.raises(redis.ConnectionError, match="closed"):
        read_answers(client, 1)


def test_pack_writes_what_redis_reads(redis_server: RedisServer) -> None:
    pool = redis.ConnectionPool(port=redis_server.port)
    calls = DirectCalls(pool)
    try:
        text = "é\r\n✓ x"
        assert calls.send([pack(["SET", "packed", text]), pack([b"APPEND", b"packed", 42])]) == [
            b"OK", str(len((text + "42").encode())).encode(),
        ]
        with redis_server.client() as client:
            assert client.get("packed") == (text + "42").encode()
    finally:
        calls.close()


def test_each_command_gets_its_own_reply_or_error_and_the_connection_serves_on(
    redis_server: RedisServer,
) -> None:
    pool = redis.ConnectionPool(port=redis_server.port, protocol=3)
    client = redis.Redis(connection_pool=pool)
    calls = DirectCalls(pool)
    try:
        client.set("text", "abc")
        replies = calls.send([
            pack(["INCR", "text"]),
            pack(["EVALSHA", "0" * 40, 0]),
            pack(["ECHO", "after"]),
        ])
        assert replies is not None
        incr, evalsha, echo = replies
        assert isinstance(incr, redis.ResponseError) and "not an integer" in str(incr)
        assert isinstance(evalsha, redis.exceptions.NoScriptError)
        assert echo == b"after"
        assert calls.send([pack(["GET", "text"])]) == [b"abc"]  # still in step
    finally:
        calls.close()
        pool.disconnect()


def test_a_late_answer_is_never_taken_for_the_next_commands(redis_server: RedisServer) -> None:
    """After a timeout the connection is closed: Redis answers the old command to nobody."""
    pool = redis.ConnectionPool(port=redis_server.port, socket_timeout=0.3)
    calls = DirectCalls(pool)
    assert redis_server.process is not None
    pid = redis_server.process.pid
    try:
        assert calls.send([pack(["ECHO", "warm"])]) == [b"warm"]
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(redis.TimeoutError, match="socket_timeout"):
                calls.send([pack(["ECHO", "first"])])
        finally:
            os.kill(pid, signal.SIGCONT)
        assert calls.send([pack(["ECHO", "second"])]) == [b"second"]
    finally:
        calls.close()


def test_the_connection_is_its_own_made_with_the_urls_settings_and_closed_by_close(
    redis_server: RedisServer,
) -> None:
    pool = redis.ConnectionPool.from_url(redis_server.url.replace("/0", "/3") + "?client_name=pub")
    calls = DirectCalls(pool)
    with redis_server.client() as admin:
        assert calls.send([pack(["SET", "where", "db 3"]), pack(["CLIENT", "GETNAME"])]) == [
            b"OK", b"pub",
        ]
        assert admin.execute_command("SELECT", 3) and admin.get("where") == b"db 3"
        assert pool._created_connections == 0  # none of the pool's
        assert [entry["name"] for entry in admin.client_list()].count("pub") == 1
        calls.close()
        assert [entry["name"] for entry in admin.client_list()].count("pub") == 0
        assert calls.send([pack(["ECHO", "again"])]) == [b"again"]  # a new one
        calls.close()


def test_a_connection_redis_closed_since_its_last_use_is_replaced_at_once(
    redis_server: RedisServer,
) -> None:
    """No check before each use: the call is sent again on a new connection, which the
    history script's identities make safe (a publish is stored once)."""
    client = redis.Redis(port=redis_server.port)
    history = History(client)
    assert history._direct is not None
    try:
        history.publish("replaced", '{"data":"one"}', 10, 60, "first")
        [killed] = history._direct.send([pack(["CLIENT", "ID"])]) or []
        client.client_kill_filter(_id=killed.decode())
        position, receivers = history.publish("replaced", '{"data":"two"}', 10, 60, "second")
        assert position is not None and receivers == 0
        [replacement] = history._direct.send([pack(["CLIENT", "ID"])]) or []
        assert replacement != killed
        stored = [event for _, event in history.after("replaced", (0, 0))[0]]
        assert [json.loads(event)["data"] for event in stored] == ["one", "two"]
    finally:
        history.close()
        client.close()


def test_the_embedded_broker_publishes_through_redis_py() -> None:
    client: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    assert DirectCalls(client.connection_pool).send([pack(["PING"])]) is None
    history = History(client)
    assert history.publish("news", '{"data":"x"}', 10, 60, "one")[1] == 0
    published = history.publish_many(["a", "b"], '{"data":"y"}', 10, 60, "two")
    assert published == [(format_position(history.newest(name)), 0) for name in ("a", "b")]
    assert history._direct is None  # found out once, not at every publish


@dataclass
class GuardedRedis(RedisServer):
    """A redis-server that wants a password, on a Unix socket as well as its port."""

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password="s3cret")


def test_publishes_reach_a_redis_on_a_unix_socket_that_wants_a_password(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    server = GuardedRedis(free_port(), ["--save", "", "--requirepass", "s3cret", "--unixsocket", str(path)])
    server.start()
    url = f"unix://{path}?db=2&password=s3cret"
    try:
        assert Publisher(url).publish("through the socket", channel="guarded") == 0
        events, _, _ = history_for(url).after("guarded", ORIGIN)
        assert [json.loads(event)["data"] for _, event in events] == ["through the socket"]
        assert history_for(url)._direct is not None  # sent the direct way
    finally:
        registry.close_all()
        server.stop()
