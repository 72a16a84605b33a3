"""Offsets, subscriptions and envelopes: what both brokers hand to apps.

An offset names one message of one channel: ``EPOCH:MS-SEQ``. SEQ counts the
channel's messages from 1 (0: none yet), MS is the publish time in
milliseconds (Redis' clock with Redis, never going back within a channel), and
EPOCH is a random name given to the channel's history when it was created.
A history that is lost and made again (Redis restarted empty, an in-process
server restarted, a channel idle past its metadata lifetime) gets a new epoch,
so an old offset can never be mistaken for a position in the new one. Apps
treat offsets as opaque strings: store the last one, hand it back as `since`.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["History", "Offset", "Subscription", "envelope_text", "new_epoch", "parse_offset"]

# What history() returns: (offset, data), oldest first.
History = list[tuple[str, str | bytes]]


class Offset(NamedTuple):
    epoch: str
    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.ms}-{self.seq}"

    @property
    def stream_id(self) -> str:
        """The Redis stream entry ID of this message (MS-SEQ)."""
        return f"{self.ms}-{self.seq}"


def parse_offset(text: str | bytes | None) -> Offset | None:
    """The Offset that `text` names, or None when it is not one (never raises: clients send anything)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    epoch, colon, stream_id = text.partition(":")
    ms, dash, seq = stream_id.partition("-")
    if not (colon and dash and epoch and ms.isdigit() and seq.isdigit()) or len(text) > 64:
        return None
    return Offset(epoch, int(ms), int(seq))


def new_epoch() -> str:
    """A fresh epoch name: 8 random hex digits (a clash needs ~65,000 histories of one channel)."""
    return os.urandom(4).hex()


@dataclass(frozen=True)
class Subscription:
    """What `Broadcast.subscribe` returns.

    `offset`: the channel's latest offset when the subscription started (every
    message after it is delivered live). `recovered`: True when `since` was
    given and every message after it was delivered, in order, before the live
    ones; False when history no longer covers `since` (trimmed, expired, or a
    new epoch) or when no `since` was given. `replayed`: how many messages came
    from history.
    """

    channel: str
    offset: str
    recovered: bool
    replayed: int = 0


def envelope_text(channel: str, offset: str, data: str | bytes) -> str:
    """The JSON text frame of an `envelope=True` delivery: {"channel", "offset", "data"}.

    Binary data goes as "data_base64" (JSON has no bytes).
    """
    message: dict[str, Any] = {"channel": channel, "offset": offset}
    if isinstance(data, str):
        message["data"] = data
    else:
        message["data_base64"] = base64.b64encode(data).decode("ascii")
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))
