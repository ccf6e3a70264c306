"""Names on Redis: the pub/sub channel, history key and presence keys of an app's channel.

Redis keys live in a DB, but pub/sub ignores DB numbers: two apps on one
Redis server would receive each other's events. So an app on a DB other
than 0, or with ``SSE_NAMESPACE`` set, publishes and subscribes on prefixed
pub/sub channels (``"<namespace>:db<N>:<channel>"``, each part only when
set), and a namespace also prefixes its keys (``"sse:<namespace>:..."``).
An app on DB 0 without a namespace uses the plain channel name, as both
earlier ``flask_sse`` libraries did, so other publishers keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

#: What a namespace may look like: it goes into channel and key names.
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def hash_tag(name: str) -> str:
    """What Redis Cluster hashes of ``name``: its ``{tag}`` if it has one, else all of it."""
    start = name.find("{")
    if start >= 0:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name[start + 1 : end]
    return name


@dataclass(frozen=True)
class Names:
    """How one app's channels are named on its Redis server."""

    namespace: str = ""
    db: int = 0
    #: Redis Cluster: a prefixed channel keeps its slot (its name becomes the hash tag)
    sharded: bool = False

    @cached_property  # read for every message the hub receives
    def channel_prefix(self) -> str:
        parts = [self.namespace] if self.namespace else []
        if self.db:
            parts.append(f"db{self.db}")
        return "".join(part + ":" for part in parts)

    @cached_property
    def key_prefix(self) -> str:
        return f"sse:{self.namespace}:" if self.namespace else "sse:"

    def channel(self, name: str) -> str:
        """The Redis pub/sub channel of SSE channel ``name``: what other publishers PUBLISH to."""
        prefix = self.channel_prefix
        if not prefix:
            return name
        if self.sharded and hash_tag(name) == name:
            return prefix + "{" + name + "}"
        return prefix + name

    def from_channel(self, redis_channel: str) -> str | None:
        """The SSE channel of a Redis pub/sub channel, or ``None`` if it is not this app's."""
        prefix = self.channel_prefix
        if not redis_channel.startswith(prefix):
            return None
        name = redis_channel[len(prefix) :]
        if prefix and self.sharded and name.startswith("{") and name.endswith("}"):
            inner = name[1:-1]
            if hash_tag(inner) == inner:
                return inner
        return name

    def history_key(self, channel: str) -> str:
        """The stream of ``channel``, in the same Redis Cluster slot as the channel itself."""
        return self._channel_key("history", channel)

    def published_key(self, channel: str) -> str:
        """The identities of ``channel``'s recent publishes (a sorted set), in its slot too."""
        return self._channel_key("published", channel)

    def _channel_key(self, kind: str, channel: str) -> str:
        """A key of ``channel`` that hashes like the channel name.

        A channel with a hash tag of its own (``"user{42}"``) keeps it; any
        other is wrapped in one.
        """
        if hash_tag(channel) != channel:
            return f"{self.key_prefix}{kind}:{channel}"
        return f"{self.key_prefix}{kind}:{{{channel}}}"

    def channel_of_key(self, key: str) -> str:
        """The channel of a history key (the inverse of :meth:`history_key`)."""
        name = key[len(self.key_prefix + "history:") :]
        if name.startswith("{") and name.endswith("}") and hash_tag(name[1:-1]) == name[1:-1]:
            return name[1:-1]
        return name

    @property
    def presence_registry(self) -> str:
        return f"{self.key_prefix}presence"
