"""Redis Cluster: sharded pub/sub across every master, resume, and failover (real parts)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from flask_sse import Publisher

from .conftest import Gunicorn, RedisCluster
from .sse_client import open_stream, wait_for
from .test_integration import redis_ports_of

pytestmark = pytest.mark.integration

Start = Callable[..., Gunicorn]


def channels_on_every_master(cluster: RedisCluster, per_master: int) -> dict[str, str]:
    """Channel name -> the master that owns its slot, ``per_master`` on each."""
    client = cluster.client()
    chosen: dict[str, str] = {}
    counts: dict[str, int] = {}
    number = 0
    while len(chosen) < 3 * per_master:
        name = f"room-{number}"
        master = client.nodes_manager.get_node_from_slot(key_slot(name.encode())).name
        if counts.get(master, 0) < per_master:
            chosen[name] = master
            counts[master] = counts.get(master, 0) + 1
        number += 1
    client.close()
    return chosen


def test_delivery_and_resume_across_every_master(gunicorn: Start, redis_cluster: RedisCluster) -> None:
    channels = channels_on_every_master(redis_cluster, per_master=2)
    server = gunicorn(redis_cluster.url)
    singles = {name: open_stream(server, f"channel={name}") for name in channels}
    everything = "&".join(f"channel={name}" for name in channels)
    together = open_stream(server, everything)
    publisher = Publisher(redis_cluster.url)
    for name in channels:
        assert publisher.publish(f"to {name}", channel=name) == 1  # one process listens per shard
    for name, stream in singles.items():
        assert stream.next_event().data == f"to {name}"
    seen = together.events(len(channels))
    assert sorted(event.data for event in seen) == sorted(f"to {name}" for name in channels)
    together.close()
    for name in channels:
        publisher.publish(f"again {name}", channel=name)
    resumed = open_stream(server, everything, last_event_id=seen[-1].last_event_id)
    assert sorted(event.data for event in resumed.events(len(channels))) == sorted(
        f"again {name}" for name in channels
    )
    pid = server.worker_pid
    held = {
        node.port: len(redis_ports_of(pid, node.port)) for node in redis_cluster.servers
    }
    masters = {int(address.rsplit(":", 1)[1]) for address in channels.values()}
    assert all(held[port] >= 1 for port in masters)  # a pub/sub link to every shard it needs
    assert sum(held.values()) <= 2 * len(masters)  # and a command connection at most, each
    print(f"cluster: the worker holds {sum(held.values())} Redis connections over {len(masters)} masters")
    resumed.close()
    for stream in singles.values():
        stream.close()


@pytest.mark.parametrize("fault", ["CLUSTER FAILOVER", "SIGKILL the master"])
def test_failover_with_continuous_publishing_loses_nothing(
    gunicorn: Start, redis_cluster: RedisCluster, fault: str
) -> None:
    channels = channels_on_every_master(redis_cluster, per_master=2)
    server = gunicorn(redis_cluster.url)
    received: dict[str, list[list[str]]] = {name: [] for name in channels}
    errors: list[BaseException] = []

    def client(name: str) -> None:
        try:
            stream = open_stream(server, f"channel={name}")
            data: list[str] = []
            received[name].append(data)
            while not data or data[-1] != "end":
                data.append(stream.next_event().data)
            stream.close()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    threads = [threading.Thread(target=client, args=(name,), daemon=True) for name in channels for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: all(len(lists) == 3 for lists in received.values()), what="clients subscribed")
    victim_master = next(iter(channels.values()))
    nodes = redis_cluster.nodes()
    victim_id = next(node["id"] for node in nodes if node["addr"] == victim_master)
    replica_port = next(
        int(node["addr"].rsplit(":", 1)[1]) for node in nodes if node["master"] == victim_id
    )
    publisher = Publisher(redis_cluster.url)
    accepted: dict[str, list[str]] = {name: [] for name in channels}
    refused = 0
    names = list(channels)
    for number in range(300):
        name = names[number % len(names)]
        if number == 100 and fault == "CLUSTER FAILOVER":  # promote the first channel's replica
            with redis.Redis(port=replica_port) as replica:
                replica.execute_command("CLUSTER FAILOVER")
        elif number == 100:  # the master dies; the cluster promotes its replica
            victim = next(node for node in redis_cluster.servers if f"127.0.0.1:{node.port}" == victim_master)
            assert victim.process is not None
            victim.process.kill()
        for attempt in range(200):
            data = f"{number}:{attempt}"
            try:
                publisher.publish(data, channel=name)
            except redis.RedisError:
                refused += 1
                time.sleep(0.05)  # the publisher's own retry pause during the failover
                continue
            accepted[name].append(data)
            break
        time.sleep(0.005)
    wait_for(lambda: any(node["addr"] == f"127.0.0.1:{replica_port}" and "master" in node["flags"]
                         for node in redis_cluster.nodes()), what="the replica to be master")
    for name in names:
        publisher.publish("end", channel=name)
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    lost = duplicated = resets = 0
    for name, lists in received.items():
        for got in lists:
            resets += sum(item.startswith('{"channel"') for item in got)
            events = [item for item in got[:-1] if not item.startswith('{"channel"')]
            lost += len(set(accepted[name]) - set(events))
            duplicated += len(events) - len(set(events))
            numbers = [int(item.split(":")[0]) for item in events]
            assert numbers == sorted(numbers)
    print(f"cluster, {fault}: 300 events, {refused} publishes refused while failing over, "
          f"{len(threads)} clients: {lost} lost, {duplicated} twice, {resets} reset events")
    # A killed master could take the last entries its replica had not received
    # yet (asynchronous replication): clients would then get a reset event.
    # With the replicas in sync, as here, nothing is lost and history stays whole.
    assert (lost, duplicated, resets) == (0, 0, 0)


def test_one_publish_on_channels_of_every_master(
    gunicorn: Start, redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call on channels of three masters: each stream gets it once; one round trip each."""
    channels = channels_on_every_master(redis_cluster, per_master=3)
    server = gunicorn(redis_cluster.url)
    streams = {name: open_stream(server, f"channel={name}") for name in channels}
    publisher = Publisher(redis_cluster.url)
    # a cluster that has not run the script yet: NOSCRIPT on every master, loaded, sent again
    assert publisher.publish("first", channel=list(channels)) == len(channels)
    sent: list[int] = []
    send: Callable[..., None] = redis.connection.Connection.send_packed_command

    def counting(self: redis.connection.Connection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    assert publisher.publish("second", channel=list(channels)) == len(channels)
    assert len(sent) == 3  # one round trip per master
    monkeypatch.undo()
    # a master hands its slots to its replica: the publisher's map of slots is out of date
    nodes = redis_cluster.nodes()
    moved_master = next(iter(channels.values()))
    master_id = next(node["id"] for node in nodes if node["addr"] == moved_master)
    replica = next(node["addr"] for node in nodes if node["master"] == master_id)
    with redis.Redis(port=int(replica.rsplit(":", 1)[1])) as promoted:
        promoted.execute_command("CLUSTER FAILOVER")
    wait_for(lambda: any(node["addr"] == replica and "master" in node["flags"]
                         for node in redis_cluster.nodes()), what="the replica to be master")
    publisher.publish("third", channel=list(channels))
    for name, stream in streams.items():
        events = stream.events(3)
        assert [event.data for event in events] == ["first", "second", "third"], name
        assert len({event.last_event_id for event in events}) == 3
        stream.close()
