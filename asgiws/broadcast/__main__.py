"""`python -m asgiws.broadcast publish URL CHANNEL MESSAGE`: publish from a shell or a cron job.

The message goes into the channel's history and out to every subscriber on
every worker sharing that Redis, exactly as Broadcast.publish() does it (the
same script); the offset is printed. Exit status 1 when Redis cannot take it.
`python -m asgiws.broadcast script` prints that Lua script, for services that
call it themselves (SCRIPT LOAD, then EVALSHA; docs/broadcast.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import click

from asgiws.broadcast.errors import BroadcastUnavailable
from asgiws.config import Config

_FIELDS = {field.name: field for field in dataclasses.fields(Config)}


@click.group()
def main() -> None:
    """asgiws.broadcast from the command line."""


@main.command()
@click.argument("url")
@click.argument("channel")
@click.argument("message")
@click.option("--binary", is_flag=True, help="Publish MESSAGE's UTF-8 bytes as a binary message.")
@click.option("--history-size", type=int, default=_FIELDS["broadcast_history_size"].default,
              show_default=True,
              help="As the server's --broadcast-history-size (trims the channel's history on this publish).")
@click.option("--history-ttl", type=float, default=_FIELDS["broadcast_history_ttl"].default,
              show_default=True,
              help="As the server's --broadcast-history-ttl.")
def publish(url: str, channel: str, message: str, binary: bool, history_size: int,
            history_ttl: float) -> None:
    """Publish MESSAGE to CHANNEL through the Redis at URL; print its offset."""
    try:
        offset = asyncio.run(_publish(url, channel, message.encode() if binary else message,
                                      history_size, history_ttl))
    except (BroadcastUnavailable, RuntimeError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(offset)


@main.command()
def script() -> None:
    """Print the Lua script that publishes (KEYS and ARGV: docs/broadcast.md)."""
    from asgiws.broadcast.redis_broker import PUBLISH_SCRIPT

    click.echo(PUBLISH_SCRIPT.strip())


async def _publish(url: str, channel: str, data: str | bytes, history_size: int, history_ttl: float) -> str:
    from asgiws.broadcast import create_broker

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{url!r} is not a Redis URL (redis://HOST:PORT/DB)")
    broker = create_broker(url, history_size, history_ttl)
    try:
        return await broker.publish(channel, data)
    finally:
        await broker.stop()


if __name__ == "__main__":
    main(prog_name="python -m asgiws.broadcast")
