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

Every publish carries an identity, and the script remembers the identities
of the channel's recent publishes (a sorted set beside the stream, as many
as history keeps, or ``REMEMBERED_WITHOUT_HISTORY``). A publish whose
identity is already there is a repeat: a retry of a publish that timed out
but ran when Redis woke up. It is neither stored nor published again.
"""

from __future__ import annotations

import re
import time
from typing import Any

import redis

from .batching import Batcher
from .commands import DirectCalls, pack
from .naming import Names

#: A position in a channel's history: the stream entry id as (ms, seq).
Position = tuple[int, int]
#: Where a channel's history starts: before every entry.
ORIGIN: Position = (0, 0)

#: How far ahead of this machine's clock a position on a channel without
#: history may be before it counts as made up (clocks of servers differ).
FUTURE_SLACK_MS = 60_000

_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})")

#: How many publish identities a channel remembers when it keeps no history.
REMEMBERED_WITHOUT_HISTORY = 1000

# KEYS: the channel's history (a stream), the identities of its recent publishes.
# ARGV: the pub/sub channel, the payload, the events kept (0: no history), the
# seconds an idle channel's keys live, PUBLISH or SPUBLISH, the identity, how
# many identities to remember.
# Returns {position or '', receivers}: {'', 0} for a repeat.
_APPEND_AND_PUBLISH = """
if redis.call('ZSCORE', KEYS[2], ARGV[6]) then
  return {'', 0}
end
local now = redis.call('TIME')
local order = now[1] * 1000000 + now[2]
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
if last and tonumber(last) >= order then
  order = tonumber(last) + 1
end
redis.call('ZADD', KEYS[2], string.format('%.0f', order), ARGV[6])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[7]))
redis.call('EXPIRE', KEYS[2], ARGV[4])
if ARGV[3] == '0' then
  return {'', redis.call(ARGV[5], ARGV[1], ARGV[2])}
end
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


def _check_payload(payload: str) -> None:
    if not payload.startswith("{"):
        raise ValueError(f"a history payload must be a JSON object, got {payload[:40]!r}")


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
        #: the script's calls, sent without redis-py's command path on a connection of
        #: their own (``commands.py``); None on a cluster, or once the pool's connections
        #: turn out to have no socket
        self._direct: DirectCalls | None = None
        if not isinstance(client, redis.cluster.RedisCluster):
            self._direct = DirectCalls(client.connection_pool)
        #: single-channel publishes, sent together when they meet (``batching.py``)
        self._publishes: Batcher[tuple[list[str], list[Any]], list[Any]] = Batcher(self._send)
        #: SPUBLISH on a cluster (sharded pub/sub), PUBLISH otherwise
        self.publish_command = "SPUBLISH" if names.sharded else "PUBLISH"

    def close(self) -> None:
        """Close the publishing connection of its own, if it has one."""
        if self._direct is not None:
            self._direct.close()

    def publish(
        self, channel: str, payload: str, maxlen: int, ttl: int, identity: str
    ) -> tuple[str | None, int]:
        """Append and publish atomically, once per ``identity``; return position and receivers.

        ``payload`` is a JSON object. With history (``maxlen`` > 0) it has no
        ``id``: the position becomes it. With ``maxlen`` 0 it is only
        published, as it is, and the position is ``None``. A repeated
        ``identity`` does nothing and returns ``(None, 0)``.
        """
        _check_payload(payload)
        call = self._script_call(channel, payload, maxlen, ttl, identity)
        position, receivers = self._publishes.call(call)
        return position.decode() or None, int(receivers)

    def publish_many(
        self, channels: list[str], payload: str, maxlen: int, ttl: int, identity: str
    ) -> list[tuple[str | None, int]]:
        """:meth:`publish` on each of ``channels``, in one round trip per Redis server.

        One pipeline of the script's calls, not a transaction: each channel's
        append and publish is atomic, and the identity makes sending the
        whole pipeline again (after an uncertain error) store each once.
        """
        _check_payload(payload)
        calls = [self._script_call(channel, payload, maxlen, ttl, identity) for channel in channels]
        published = []
        for result in self._send(calls):
            if isinstance(result, Exception):
                raise result
            position, receivers = result
            published.append((position.decode() or None, int(receivers)))
        return published

    def _send(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[Any] | Exception]:
        """The script's calls (publishes that met, or one on many channels) in one round trip
        per Redis server.

        Each gets its own result or error. A server that has not run the
        script yet (once per server, or after SCRIPT FLUSH or a restart)
        answers NOSCRIPT: it is loaded and the whole batch sent again; the
        calls that ran the first time see a repeat of their identity then.
        """
        results = self._send_once(calls)
        if any(isinstance(result, redis.exceptions.NoScriptError) for result in results):
            self._client.script_load(_APPEND_AND_PUBLISH)
            results = self._send_once(calls)
        return results

    def _send_once(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[Any] | Exception]:
        """:meth:`_send` without its NOSCRIPT retry: through :class:`DirectCalls` where it
        can be used, else one alone through redis-py's script object, several in a pipeline."""
        if self._direct is not None:
            sha = self._append_and_publish.sha
            commands = [pack(["EVALSHA", sha, len(keys), *keys, *args]) for keys, args in calls]
            results = self._direct.send(commands)
            if results is not None:
                return results
            self._direct = None  # the embedded broker: no socket to write to
        if len(calls) == 1:
            keys, args = calls[0]
            return [self._append_and_publish(keys, args)]
        return self._pipelined(calls, raise_on_error=False)

    def _pipelined(
        self, calls: list[tuple[list[str], list[Any]]], raise_on_error: bool = True
    ) -> list[Any]:
        """EVALSHA for each channel in one pipeline (without redis-py's SCRIPT EXISTS first).

        Through ``execute_command``: a cluster's pipeline refuses its ``evalsha()``
        method. On a cluster each call names the master of its channel's slot
        (one channel's keys share a slot), or redis-py would ask a server
        which keys each call has first, a round trip per channel; a call that
        meets a moved slot is sent again by redis-py to the new owner.
        """
        sha = self._append_and_publish.sha
        client: Any = self._client
        cluster = isinstance(client, redis.cluster.RedisCluster)
        with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                target = {"target_nodes": client.get_node_from_key(keys[0])} if cluster else {}
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args, **target)
            return pipe.execute(raise_on_error=raise_on_error)  # type: ignore[no-any-return]

    def _script_call(
        self, channel: str, payload: str, maxlen: int, ttl: int, identity: str
    ) -> tuple[list[str], list[Any]]:
        """The script's keys and arguments for one channel."""
        keys = [self.names.history_key(channel), self.names.published_key(channel)]
        args = [
            self.names.channel(channel), payload, maxlen, ttl, self.publish_command,
            identity, maxlen or REMEMBERED_WITHOUT_HISTORY,
        ]
        return keys, args

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
