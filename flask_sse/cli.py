"""``flask sse ...``: publish, listen and look at counts from the command line.

The commands belong to each server-sent events blueprint's click group (for
the ready-made ``sse``: ``flask sse publish``, ``flask sse listen``,
``flask sse stats``), and run with the app's configuration.
"""

from __future__ import annotations

import json
from typing import Any

import click
import redis
from flask import current_app
from flask.cli import with_appcontext

from . import presence
from .config import channel_problem
from .event_ids import parse_last_event_id
from .hub import HubUnavailable
from .message import read_wire
from .registry import history_for, is_cluster, redis_client
from .state import SSEState, app_state
from .stream import listen


def _state() -> SSEState:
    try:
        state = app_state("flask sse", current_app._get_current_object())  # type: ignore[attr-defined]
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    url = state.config.redis_url
    if url.startswith("memory://"):
        click.echo(
            f"Warning: SSE_REDIS_URL is {url!r}, the embedded broker inside this command's "
            "own process: no server's streams see what it publishes or counts. Set "
            "SSE_REDIS_URL (or REDIS_URL) to the Redis server your app uses.",
            err=True,
        )
    return state


def _unreachable(doing: str, redis_url: str, error: Exception) -> click.ClickException:
    return click.ClickException(
        f"Cannot {doing}: Redis at {redis_url} is unreachable ({error}). "
        "Check SSE_REDIS_URL, and that the Redis server is running."
    )


@click.command("publish")
@with_appcontext
@click.argument("channel")
@click.argument("data")
@click.option("--type", "event_type", help="The event type (the browser's addEventListener name).")
@click.option("--json", "as_json", is_flag=True, help="Parse DATA as JSON.")
@click.option("--id", "event_id", help="The event's id (with history on, its position is used).")
@click.option(
    "--retry", type=click.IntRange(min=0), help="The browser's reconnection delay, in ms."
)
@click.option(
    "--idempotency-key",
    help="Names this publish: publishing again with the same key does nothing (safe retries).",
)
def publish_command(
    channel: str, data: str, event_type: str | None, as_json: bool, event_id: str | None,
    retry: int | None, idempotency_key: str | None,
) -> None:
    """Publish DATA on CHANNEL."""
    value: Any = data
    if as_json:
        try:
            value = json.loads(data)
        except ValueError as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="DATA") from None
    state = _state()
    try:
        receivers = state.publisher.publish(
            value, type=event_type, id=event_id, retry=retry, channel=channel,
            idempotency_key=idempotency_key,
        )
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    except redis.RedisError as error:
        raise _unreachable("publish", state.config.redis_url, error) from None
    click.echo(f"Published on {channel!r}: {receivers} process(es) listening.")


@click.command("listen")
@with_appcontext
@click.argument("channels", nargs=-1, required=True)
@click.option(
    "--last-event-id",
    help="Replay what history holds after this id first: one position per channel, "
    "comma-separated, or one position for every channel (positions are times, so "
    "'1763683200000-0' means everything since then).",
)
@click.option(
    "--format", "output", type=click.Choice(["sse", "json"]), default="sse", show_default=True,
    help="The wire form, or one JSON object per event that names its channel.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
def listen_command(
    channels: tuple[str, ...], last_event_id: str | None, output: str, count: int | None
) -> None:
    """Print the events of CHANNELS as they arrive, until Ctrl-C."""
    config = _state().config
    channels = tuple(dict.fromkeys(channels))
    for channel in channels:
        problem = channel_problem(channel, cluster=is_cluster(config.redis_url))
        if problem:
            raise click.BadParameter(problem, param_hint="CHANNELS")
    resume = None
    if last_event_id and config.history:
        if "," not in last_event_id:  # one position for every channel
            last_event_id = ",".join([last_event_id] * len(channels))
        try:
            resume = parse_last_event_id(last_event_id, channels)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--last-event-id") from None
    try:
        hub, subscription, opening, events = listen(config, channels, resume)
    except HubUnavailable as error:
        raise click.ClickException(f"Cannot listen: {error}.") from None
    if output == "sse" and opening is not None:
        click.echo(f"id:{opening}\n")
    seen = 0
    try:
        for channel, chunk in events:
            text = chunk.decode()
            if output == "sse":
                click.echo(text, nl=False)
            for message in read_wire(text) if output == "json" else ():
                click.echo(json.dumps({"channel": channel, **message.to_dict()}))
            seen += 1
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    except redis.RedisError as error:
        raise _unreachable("read history", config.redis_url, error) from None
    finally:
        events.close()
        hub.unsubscribe(subscription)


@click.command("stats")
@with_appcontext
def stats_command() -> None:
    """Open streams per channel (all workers and machines) and history lengths."""
    config = _state().config
    redis_url = config.redis_url
    try:
        history = history_for(redis_url, config.namespace)
        counts = presence.totals(redis_client(redis_url), history.names)
        lengths = history.lengths()
    except redis.RedisError as error:
        raise _unreachable("read the counts", redis_url, error) from None
    channels = sorted(set(counts) | set(lengths))
    if not channels:
        click.echo("No open streams and no history.")
        return
    width = max(len("channel"), *(len(channel) for channel in channels))
    click.echo(f"{'channel':<{width}}  {'streams':>8}  {'history':>8}")
    for channel in channels:
        click.echo(f"{channel:<{width}}  {counts.get(channel, 0):>8}  {lengths.get(channel, 0):>8}")
