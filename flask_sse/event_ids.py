"""The ``Last-Event-ID`` of a stream: one history position per channel.

A stream on several channels sends one position per channel, comma-separated
in the order of its ``channel`` parameters (``"1700000000000-0,0-0"``): short,
bounded by ``SSE_MAX_CHANNELS``, and enough to resume every channel. A client
may leave a part empty to start that channel from now (``"1700000000000-0,"``):
how the JavaScript client adds a channel without losing the others' place.
Pure: no Flask, no Redis.
"""

from __future__ import annotations

from .history import Position, format_position, parse_position

#: Longest text one channel's position takes in an id.
_POSITION_LENGTH = 41


def parse_last_event_id(text: str, channels: tuple[str, ...]) -> dict[str, Position]:
    """The per-channel positions of a ``Last-Event-ID``; ``ValueError`` says what is wrong.

    An empty part means "from now" for its channel and leaves it out of the
    result: ``"1700000000000-3,"`` resumes the first of two channels and
    starts the second where it is. A client changing its channels sends that
    form (the ids this server sends never have empty parts).
    """
    if len(text) > _POSITION_LENGTH * len(channels):
        raise ValueError(
            f"Last-Event-ID is {len(text)} characters long: longer than any id this stream sends."
        )
    parts = text.split(",")
    if len(parts) != len(channels):
        raise ValueError(
            f"Last-Event-ID has {len(parts)} positions but the stream has {len(channels)} "
            "channels: resume with the same channel parameters, in the same order."
        )
    positions = {}
    for channel, part in zip(channels, parts, strict=True):
        if not part:
            continue  # this channel starts from now
        position = parse_position(part)
        if position is None:
            raise ValueError(
                f"Last-Event-ID {text[:100]!r} is not an id this stream sent: expected "
                "'<milliseconds>-<sequence>' for each channel, or nothing for a channel "
                "that starts from now, separated by commas."
            )
        positions[channel] = position
    return positions


def format_last_event_id(channels: tuple[str, ...], positions: dict[str, Position]) -> str:
    return ",".join(format_position(positions[channel]) for channel in channels)
