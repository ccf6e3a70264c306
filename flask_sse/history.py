"""Per-channel history in Redis Streams, for resuming after any reconnect.

Every publish appends the event to its channel's stream and publishes it in
one Lua script, so an event is never in one without the other. The SSE
``id`` of an event is its stream entry id (``"<ms>-<seq>"``): its position.
The script picks the id from the server's clock to the microsecond (``seq``
counts nanoseconds within the millisecond), so positions on different
channels also sort in publish order, and a client resuming several channels
gets their events interleaved as they were published.

Each entry also records the id of the entry before it (``p``). When a client
resumes from position P, the first entry after P must name P as its
predecessor; if it names another, entries between were trimmed (or expired)
and the client is told there is a gap.
"""

from __future__ import annotations

import re
import time
from typing import Any

import redis

from .naming import Names

#: A position in a channel's history: the stream entry id as (ms, seq).
Position = tuple[int, int]
#: Where a channel's history starts: before every entry.
ORIGIN: Position = (0, 0)

#: How far ahead of this machine's clock a position on a channel without
#: history may be before it counts as made up (clocks of servers differ).
FUTURE_SLACK_MS = 60_000

_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})")

_APPEND_AND_PUBLISH = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local seq = (now[2] % 1000) * 1000
local previous = '0-0'
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then
  previous = newest[1][1]
  local dash = string.find(previous, '-', 1, true)
  local last_ms = tonumber(string.sub(previous, 1, dash - 1))
  local last_seq = tonumber(string.sub(previous, dash + 1))
  if last_ms > ms or (last_ms == ms and last_seq >= seq) then
    ms = last_ms
    seq = last_seq + 1
  end
end
local id = string.format('%.0f-%.0f', ms, seq)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id, 'p', previous, 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local receivers = redis.call(ARGV[5], ARGV[1], '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2))
return {id, receivers}
"""


def parse_position(text: object) -> Position | None:
    """``"1700000000000-3"`` as ``(1700000000000, 3)``; anything else ``None``."""
    if isinstance(text, str):
        match = _POSITION.fullmatch(text)
        if match:
            return int(match[1]), int(match[2])
    return None


def format_position(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def with_position(payload: bytes, position: bytes) -> bytes:
    """A stored payload (a JSON object without ``id``) with its ``id`` put first."""
    return b'{"id":"' + position + b'",' + payload[1:]


class History:
    """Appends to and reads from the channels' streams through one client.

    ``names`` says which keys and pub/sub channels are this app's.
    """

    def __init__(self, client: redis.Redis, names: Names | None = None) -> None:
        self._client = client
        self.names = names = names or Names()
        self._append_and_publish = client.register_script(_APPEND_AND_PUBLISH)
        #: SPUBLISH on a cluster (sharded pub/sub), PUBLISH otherwise
        self.publish_command = "SPUBLISH" if names.sharded else "PUBLISH"

    def publish(self, channel: str, payload: str, maxlen: int, ttl: int) -> tuple[str, int]:
        """Append and publish atomically; return the position and the receivers.

        ``payload`` is a JSON object without an ``id``: the position becomes it.
        """
        if not payload.startswith("{"):
            raise ValueError(f"a history payload must be a JSON object, got {payload[:40]!r}")
        position, receivers = self._append_and_publish(
            keys=[self.names.history_key(channel)],
            args=[self.names.channel(channel), payload, maxlen, ttl, self.publish_command],
        )
        return position.decode(), int(receivers)

    def publish_live(self, channel: str, payload: str) -> int:
        """Publish without history (``SSE_HISTORY = 0``); return the receivers."""
        redis_channel = self.names.channel(channel)
        if self.names.sharded:
            return int(self._client.spublish(redis_channel, payload))
        return int(self._client.publish(redis_channel, payload))

    def lengths(self) -> dict[str, int]:
        """Every channel that has a history, and its length (SCAN: for tools, not requests)."""
        lengths = {}
        pattern = self.names.key_prefix + "history:*"
        for key in self._client.scan_iter(match=pattern, count=1000):
            channel = self.names.channel_of_key(key.decode("utf-8", "replace"))
            lengths[channel] = int(self._client.xlen(key))
        return lengths

    def newest(self, channel: str) -> Position:
        """The position of the channel's newest entry (``ORIGIN`` if none)."""
        entries: Any = self._client.xrevrange(self.names.history_key(channel), count=1)
        return parse_position(entries[0][0].decode()) if entries else ORIGIN  # type: ignore[return-value]

    def after(
        self, channel: str, position: Position
    ) -> tuple[list[tuple[Position, bytes]], bool, Position]:
        """Every stored event after ``position``, oldest first; whether some are lost; the newest.

        Events are payloads as published (with their ``id``). The flag is true
        when entries after ``position`` were trimmed, or the whole stream
        expired and a new one began, or ``position`` is ahead of everything
        history holds (history was lost: a restart without persistence, a
        failover that lost writes; or the id is made up), in which case no
        event comes with it and the caller starts again from the newest
        position. A stream that expired with nothing published since cannot
        be told from one that never existed: only a position more than
        ``FUTURE_SLACK_MS`` ahead of this machine's clock is a gap there.
        """
        key = self.names.history_key(channel)
        with self._client.pipeline(transaction=False) as pipe:
            pipe.xrange(key, min="(" + format_position(position))
            pipe.xrevrange(key, count=1)
            entries, newest_entries = pipe.execute()
        newest = parse_position(newest_entries[0][0].decode()) if newest_entries else None
        if not entries:
            if newest is None:
                return [], position[0] > time.time() * 1000 + FUTURE_SLACK_MS, ORIGIN
            return [], position > newest, newest
        events = []
        for entry_id, fields in entries:
            parsed = parse_position(entry_id.decode())
            assert parsed is not None
            events.append((parsed, with_position(fields[b"d"], entry_id)))
        predecessor = parse_position(entries[0][1].get(b"p", b"").decode())
        return events, predecessor != position, events[-1][0]
