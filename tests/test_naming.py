"""Names on Redis: prefixes for DB numbers and namespaces, and cluster slots kept."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from flask_sse.naming import Names


@pytest.mark.parametrize(
    ("names", "channel", "on_redis"),
    [
        (Names(), "news", "news"),  # as both earlier libraries: other publishers keep working
        (Names(db=4), "news", "db4:news"),
        (Names("shop"), "news", "shop:news"),
        (Names("shop", 4), "news", "shop:db4:news"),
        (Names("shop", sharded=True), "news", "shop:{news}"),
        (Names("shop", sharded=True), "user{42}", "shop:user{42}"),
    ],
)
def test_pub_sub_channels(names: Names, channel: str, on_redis: str) -> None:
    assert names.channel(channel) == on_redis
    assert names.from_channel(on_redis) == channel
    if names.sharded:
        assert key_slot(on_redis.encode()) == key_slot(channel.encode())
        assert key_slot(names.history_key(channel).encode()) == key_slot(channel.encode())


def test_channels_of_other_apps_are_not_ours() -> None:
    assert Names("shop").from_channel("blog:news") is None
    assert Names(db=4).from_channel("news") is None


def test_keys_carry_the_namespace_only() -> None:
    assert Names().history_key("news") == "sse:history:{news}"
    assert Names("shop", 4).history_key("news") == "sse:shop:history:{news}"
    assert Names("shop").channel_of_key("sse:shop:history:{news}") == "news"
    assert Names("shop").presence_registry == "sse:shop:presence"
