"""Redis memory that history takes: per channel, and per stored event.

``python -m bench.history_memory`` starts its own redis-server on a loopback
port, publishes through ``Publisher`` (as apps do) and prints what Redis's
``MEMORY USAGE`` reports for each channel's keys: its history stream and the
idempotency keys of its recent publishes. The figures feed the sizing
section of the docs (``docs/scaling.md``).
"""

from __future__ import annotations

import redis

from bench.servers import redis_server
from flask_sse import Publisher
from flask_sse.naming import Names

#: Sizes of the published ``data`` (a string of this many characters).
DATA_SIZES = (20, 300, 2000)
#: Events per channel: the default ``SSE_HISTORY``.
EVENTS = 1000


def used_by(client: redis.Redis, names: Names, channel: str) -> int:
    """Bytes of the channel's keys: its history and its publishes' idempotency keys."""
    keys = (names.history_key(channel), names.published_key(channel))
    return sum(client.memory_usage(key, samples=0) or 0 for key in keys)


def measure(client: redis.Redis, publisher: Publisher, names: Names) -> list[str]:
    lines = []
    publisher.publish("x", type="update", channel="one-event")
    single = used_by(client, names, "one-event")
    lines.append(f"one channel with one event: {single:,} bytes")
    for size in DATA_SIZES:
        channel = f"data-{size}"
        for _ in range(EVENTS):
            publisher.publish("x" * size, type="update", channel=channel)
        used = used_by(client, names, channel)
        per_event = (used - single) / (EVENTS - 1)
        lines.append(
            f"{EVENTS} events of {size}-character data: {used:,} bytes, "
            f"{per_event:,.0f} per event ({per_event - size:,.0f} beyond the data)"
        )
    return lines


def main() -> None:
    with redis_server() as (redis_url, client):
        publisher = Publisher(redis_url)
        print("\n".join(measure(client, publisher, Names("", 0, sharded=False))))


if __name__ == "__main__":
    main()
