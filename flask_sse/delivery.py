"""One event as every subscriber of its channel receives it: decoded and encoded once.

The hub makes one :class:`Delivery` per message it reads from Redis (or
replays from history) and hands the same object to every local subscriber,
so the JSON is parsed once and the wire bytes are built once, however many
clients are listening. Pure: no Flask, no Redis, no sockets.
"""

from __future__ import annotations

import logging
import time

from .history import Position, parse_position
from .message import EventId, Message, plain_wire_form

logger = logging.getLogger("flask_sse")


class Delivery:
    """One event of one channel, ready to write.

    ``chunk`` is the event's wire form with the id it was published with;
    ``position`` is that id when it is a history position; ``created`` is
    when the hub received it (``time.monotonic()``).
    """

    __slots__ = (
        "channel", "position", "chunk", "created", "baseline", "framed", "_message", "_payload",
        "_body",
    )

    def __init__(self, channel: str, message: Message) -> None:
        self._start(channel, message.encode(), message.id)
        self._message: Message | None = message
        self._payload = b""

    def _start(self, channel: str, chunk: bytes, event_id: EventId | None) -> None:
        self.channel = channel
        self.chunk = chunk
        self.position = parse_position(event_id)
        self.created = time.monotonic()
        #: for a ``reset`` after history was lost: where the channel starts again
        self.baseline: Position | None = None
        #: ``chunk`` as an HTTP/1.1 chunk, made by the first direct write
        #: (``transport.DirectWriter``) and shared by every other
        self.framed: bytes | None = None
        self._body: bytes | None = None

    @classmethod
    def decode(cls, channel: str, payload: bytes) -> Delivery | None:
        """A payload from Redis, or ``None`` if it is unusable (logged).

        The common payload is encoded straight from its JSON
        (``message.plain_wire_form``), without a :class:`Message` until
        :meth:`body` needs one: this runs for every message the hub reads.
        """
        wire = plain_wire_form(payload)
        if wire is not None:
            delivery = cls.__new__(cls)
            delivery._start(channel, *wire)
            delivery._message = None
            delivery._payload = payload
            return delivery
        try:
            message = Message.from_payload(payload)
            return None if message is None else cls(channel, message)
        except Exception:  # noqa: BLE001 - one bad message must not stop the hub
            logger.exception("Skipped a message on channel %r that cannot be encoded", channel)
            return None

    @classmethod
    def reset(cls, channel: str, baseline: Position | None = None) -> Delivery:
        """The ``reset`` event: history no longer holds all a client missed.

        ``baseline``: the client's position was ahead of all history holds,
        so it starts again from there (given in the event's id).
        """
        delivery = cls(channel, Message({"channel": channel}, type="reset"))
        delivery.baseline = baseline
        return delivery

    def body(self) -> bytes:
        """The wire form without ``id`` and without the final blank line.

        A stream on several channels appends an id of its own (one position
        per channel), so it needs the event without the one it came with.
        """
        if self._body is None:
            message = self._message
            if message is None:  # decoded the short way
                message = self._message = Message.from_payload(self._payload)
                assert message is not None, "plain_wire_form took a payload Message refuses"
            without_id = Message(message.data, type=message.type, retry=message.retry)
            self._body = without_id.encode()[:-1]
        return self._body


def from_history(
    channel: str,
    since: Position,
    events: list[tuple[Position, bytes]],
    gap: bool,
    newest: Position,
) -> list[tuple[Position, Delivery]]:
    """What ``History.after(channel, since)`` returned, as deliveries with their positions.

    A gap comes first as a ``reset`` (at ``since``). With no event at all it
    means ``since`` is ahead of all history holds (history was lost), and the
    reset carries ``newest`` as the channel's new start.
    """
    deliveries = [(since, Delivery.reset(channel, None if events else newest))] if gap else []
    for position, payload in events:
        delivery = Delivery.decode(channel, payload)
        if delivery is not None:
            deliveries.append((position, delivery))
    return deliveries
