"""One server-sent event: its WHATWG wire form and its Redis payload.

No Flask and no Redis here: this is the part every byte a browser sees goes
through, so it is kept pure and tested with tables of exact bytes.
"""

from __future__ import annotations

import json
import json.scanner
import logging
import math
import re
from typing import Any

logger = logging.getLogger("flask_sse")

#: Line ends the WHATWG parser recognises; nothing else (not U+2028, not
#: U+0085) may split data, so ``str.splitlines`` is not used.
_LINE_END = re.compile(r"\r\n|\r|\n")
#: Characters that would end a field early or make a browser drop the ``id``.
_FIELD_BREAKERS = re.compile(r"[\r\n\x00]")

EventId = str | int


class Message:
    """One event, as ``sse.publish()`` and ``send_event()`` describe it.

    ``str(Message("foo", type="example", id=5, retry=500))`` is
    ``"event:example\\ndata:foo\\nid:5\\nretry:500\\n\\n"``: the field order
    and the missing space after the colon are the established form. A value
    that itself starts with a space gets one more, because the browser strips
    exactly one.

    ``data`` that is not ``str`` is sent as JSON. ``type`` and ``id`` may not
    contain CR, LF or NUL (they would start a new field or make the browser
    drop the id): such a value raises ``ValueError`` here, at publish time.
    ``retry`` is a non-negative number of milliseconds.
    """

    __slots__ = ("data", "type", "id", "retry")

    def __init__(
        self,
        data: Any,
        type: str | None = None,
        id: EventId | None = None,
        retry: int | None = None,
    ) -> None:
        self.data = data
        self.type = _checked_field("type", type, allow_int=False)
        self.id = _checked_field("id", id, allow_int=True)
        if retry is not None and not _is_non_negative_int(retry):
            raise ValueError(
                f"retry must be a non-negative int of milliseconds, got {retry!r}"
            )
        self.retry = retry

    def to_dict(self) -> dict[str, Any]:
        """The Redis payload: ``data`` always, the other keys when set."""
        payload: dict[str, Any] = {"data": self.data}
        if self.type is not None:
            payload["type"] = self.type
        if self.id is not None:
            payload["id"] = self.id
        if self.retry is not None:
            payload["retry"] = self.retry
        return payload

    def __str__(self) -> str:
        data = self.data if isinstance(self.data, str) else json.dumps(self.data)
        lines = [_field("data", line) for line in _LINE_END.split(data)]
        if self.type:
            lines.insert(0, _field("event", self.type))
        if self.id is not None:
            lines.append(_field("id", str(self.id)))
        if self.retry is not None:
            lines.append(f"retry:{self.retry}")
        return "\n".join(lines) + "\n\n"

    def encode(self) -> bytes:
        """The wire form as UTF-8; a lone surrogate becomes U+FFFD."""
        text = str(self)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return text.encode("utf-16", "surrogatepass").decode(
                "utf-16", "replace"
            ).encode("utf-8")

    def __repr__(self) -> str:
        extra = "".join(
            f", {key}={value!r}"
            for key, value in (("type", self.type), ("id", self.id), ("retry", self.retry))
            if value is not None
        )
        return f"{type(self).__name__}({self.data!r}{extra})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, type(self))
            and self.data == other.data
            and self.type == other.type
            and self.id == other.id
            and self.retry == other.retry
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_payload(cls, payload: bytes | str) -> Message | None:
        """Decode what a publisher wrote to Redis, or ``None`` if unusable.

        Accepts the JSON object ``{"data": ..., "type": ..., "id": ...,
        "retry": ...}`` and the original library's ``[event, data]`` array.
        Anyone can ``PUBLISH``, so nothing here is trusted: CR, LF and NUL are
        removed from ``type`` and ``id``, a bad ``retry`` is dropped, and a
        payload of another shape is logged and skipped.
        """
        try:
            decoded = json.loads(payload)
        except (ValueError, RecursionError):
            logger.warning("Skipped a Redis message that is not JSON: %.200r", payload)
            return None
        if isinstance(decoded, list) and len(decoded) == 2:
            event, data = decoded
            return cls(data, type=_sanitised_text(event))
        if isinstance(decoded, dict) and "data" in decoded:
            retry = decoded.get("retry")
            return cls(
                decoded["data"],
                type=_sanitised_text(decoded.get("type")),
                id=_sanitised_id(decoded.get("id")),
                retry=retry if _is_non_negative_int(retry) else None,
            )
        logger.warning(
            "Skipped a Redis message that is neither {\"data\": ...} nor "
            "[event, data]: %.200r",
            payload,
        )
        return None


#: The JSON decoder's own scanner: one C call for a payload, without the
#: Python layers of ``json.loads`` around it (see :func:`plain_wire_form`).
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def plain_wire_form(payload: bytes) -> tuple[bytes, str | None] | None:
    """The wire form and ``id`` of the most common payload, or ``None`` for any other.

    The hub decodes every message it reads, and for the payloads this
    package itself publishes (a JSON object of ``data`` on one line, maybe a
    string ``id`` and a ``type``, no ``retry``) this makes exactly the bytes
    ``Message.from_payload(payload).encode()`` would, with a fraction of the
    work: no :class:`Message`, no checks that cannot fail. Anything else
    (other keys, several lines, a field to sanitise, text that needs
    repair) returns ``None``, and the caller takes the general way.
    """
    try:
        text = payload.decode()
        decoded, end = _scan_json(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
        return None
    if end != len(text) or type(decoded) is not dict or "data" not in decoded:
        return None
    event_id, event_type = decoded.get("id"), decoded.get("type")
    if len(decoded) != 1 + (event_id is not None) + (event_type is not None):
        return None  # a retry, another key, or a field set to null
    data = decoded["data"]
    if type(data) is not str:
        data = json.dumps(data)  # one line: JSON escapes its line ends
    elif "\n" in data or "\r" in data:
        return None
    if data.startswith(" ") or not (_as_is(event_type) and _as_is(event_id)):
        return None
    wire = f"data:{data}\n"
    if event_type:  # Message writes no event line for an empty type either
        wire = f"event:{event_type}\n{wire}"
    if event_id is not None:
        wire += f"id:{event_id}\n"
    try:
        return (wire + "\n").encode(), event_id
    except UnicodeEncodeError:  # a lone surrogate: Message.encode repairs it
        return None


def _as_is(value: object) -> bool:
    """Whether a ``type`` or ``id`` from Redis is absent or goes on the wire as it is."""
    return value is None or (
        type(value) is str and not value.startswith(" ") and not _FIELD_BREAKERS.search(value)
    )


def non_finite_path(data: Any, path: str = "data") -> str | None:
    """Where ``data`` holds a NaN or infinite float, or ``None``.

    JSON has no such numbers: Python writes ``NaN``/``Infinity``, which the
    browser's ``JSON.parse`` rejects, so the event would reach nobody.
    """
    if isinstance(data, float):
        return None if math.isfinite(data) else path
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = non_finite_path(value, f"{path}[{key!r}]")
        if found:
            return found
    return None


def _field(name: str, value: str) -> str:
    if value.startswith(" "):
        return f"{name}: {value}"
    return f"{name}:{value}"


def _is_non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked_field(name: str, value: Any, *, allow_int: bool) -> Any:
    if value is None:
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        expected = "a str or an int" if allow_int else "a str"
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if _FIELD_BREAKERS.search(value):
        raise ValueError(
            f"{name} must not contain CR, LF or NUL (they would start a new "
            f"SSE field), got {value!r}"
        )
    return value


def _sanitised_text(value: object) -> str | None:
    """A ``type`` or ``id`` from Redis made safe for the wire, or ``None``."""
    if isinstance(value, str):
        return _FIELD_BREAKERS.sub("", value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _sanitised_id(value: object) -> EventId | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _sanitised_text(value)


def read_wire(text: str) -> list[Message]:
    """The events of a piece of event stream written by :meth:`Message.encode`.

    For tools that show a stream (``flask sse listen --format json``, the test
    helpers): each complete event, with the ``type`` and ``id`` written in it;
    comments and the opening ``retry:``/``id:`` lines make no event.
    """
    messages = []
    for block in text.split("\n\n")[:-1]:  # the last piece is not complete yet
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            name, colon, value = line.partition(":")
            if not name or not colon:
                continue  # a comment, or a blank line
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        if "data" in fields:
            messages.append(
                Message(
                    "\n".join(fields["data"]),
                    type=fields.get("event", [None])[-1],
                    id=fields.get("id", [None])[-1],
                )
            )
    return messages
