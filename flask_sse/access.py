"""Private channels: who may open them, by session or by signed token.

A channel whose name starts with ``SSE_PRIVATE_PREFIX`` is streamed only to a
request that the blueprint's ``authorize`` callback allows (same-origin pages:
access follows the user's session, asked again at every reconnect), or whose
``token`` parameter was minted by :func:`mint` for it (cross-origin pages).
Tokens are signed with the app's ``SECRET_KEY`` (itsdangerous, salted for this
use only, so no other signed value of the app can pass for one) and carry
their own expiry, so ``expires_in`` can differ from token to token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from itsdangerous import BadSignature, URLSafeSerializer

#: Keeps these signatures apart from every other use of the app's SECRET_KEY.
SALT = "flask-sse.private-channels"


#: ``authorize(private_channels) -> bool``, called in the stream request's context.
Authorizer = Callable[[tuple[str, ...]], object]


class AccessDenied(Exception):
    """The request may not open a private channel; the message says why."""


def decide(
    secret_key: object,
    token: str | None,
    private: tuple[str, ...],
    authorize: Authorizer | None,
) -> None:
    """Raise :class:`AccessDenied` unless the callback or the token opens ``private``.

    The callback is asked first, so a same-origin page needs no token; a
    request it refuses may still bring a token (a cross-origin page, which
    has no session cookie).
    """
    if not private:
        return
    if authorize is not None:
        answer = authorize(private)
        if answer:
            return
        if not token:
            name = getattr(authorize, "__name__", repr(authorize))
            raise AccessDenied(
                f"Not allowed to open channel {private[0]!r}: the app's authorize callback "
                f"{name}() answered {answer!r} for this session (sign in again, or ask for "
                "a channel of your own)."
            )
    check(secret_key, token, private)


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
    # to the millisecond, so a token lives ``expires_in`` seconds, not up to one less
    expires = round(time.time() + expires_in, 3)
    return _serializer(secret_key).dumps({"c": names, "e": expires})


def check(secret_key: object, token: str | None, private: Iterable[str]) -> None:
    """Raise :class:`AccessDenied` unless ``token`` opens every channel in ``private``."""
    wanted = sorted(set(private))
    if not wanted:
        return
    if not token:
        raise AccessDenied(
            f"Channel {wanted[0]!r} is private: the app allows it with an "
            "@sse.authorize callback (same-origin pages) or a token from "
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
    expires = claims.get("e")
    if not isinstance(expires, int | float) or isinstance(expires, bool) or expires < time.time():
        raise AccessDenied("The token has expired: get a new one from the page that gave it.")
    missing = [channel for channel in wanted if channel not in claims["c"]]
    if missing:
        raise AccessDenied(f"The token does not open channel {missing[0]!r}.")
