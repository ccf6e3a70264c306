"""Private channels: signed, time-limited tokens that name the channels they open.

A channel whose name starts with ``SSE_PRIVATE_PREFIX`` is streamed only to a
request whose ``token`` parameter was minted by :func:`mint` for it. Tokens
are signed with the app's ``SECRET_KEY`` (itsdangerous, salted for this use
only, so no other signed value of the app can pass for one) and carry their
own expiry, so ``expires_in`` can differ from token to token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from itsdangerous import BadSignature, URLSafeSerializer

#: Keeps these signatures apart from every other use of the app's SECRET_KEY.
SALT = "flask-sse.private-channels"


class AccessDenied(Exception):
    """The request may not open a private channel; the message says why."""


def _serializer(secret_key: object) -> URLSafeSerializer:
    if not secret_key or not isinstance(secret_key, str | bytes):
        raise RuntimeError(
            "Private channels need app.config['SECRET_KEY'] to sign their tokens: "
            "set it to a long random value (for example secrets.token_hex(32))."
        )
    return URLSafeSerializer(secret_key, salt=SALT)


def mint(secret_key: object, channels: Iterable[str], expires_in: float) -> str:
    """A token that opens ``channels`` for ``expires_in`` seconds."""
    if expires_in <= 0:
        raise ValueError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
    names = sorted(set(channels))
    if not names:
        raise ValueError("a token must name at least one channel")
    return _serializer(secret_key).dumps({"c": names, "e": int(time.time() + expires_in)})


def check(secret_key: object, token: str | None, private: Iterable[str]) -> None:
    """Raise :class:`AccessDenied` unless ``token`` opens every channel in ``private``."""
    wanted = sorted(set(private))
    if not wanted:
        return
    if not token:
        raise AccessDenied(
            f"Channel {wanted[0]!r} is private: open it with a token from "
            "sse.token_for(...) (or the URL from sse.stream_url(...))."
        )
    try:
        serializer = _serializer(secret_key)
    except RuntimeError as error:
        raise AccessDenied("Private channels are not set up on this server.") from error
    try:
        claims = serializer.loads(token)
    except BadSignature:
        raise AccessDenied(
            "The token is not valid: it was altered or signed with another key."
        ) from None
    if not isinstance(claims, dict) or not isinstance(claims.get("c"), list):
        raise AccessDenied("The token is not valid for channels.")
    if not isinstance(claims.get("e"), int) or claims["e"] < time.time():
        raise AccessDenied("The token has expired: get a new one from the page that gave it.")
    missing = [channel for channel in wanted if channel not in claims["c"]]
    if missing:
        raise AccessDenied(f"The token does not open channel {missing[0]!r}.")
