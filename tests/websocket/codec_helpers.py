"""Codec objects built with the config's defaults, and a feeder that splits input at every offset.

Client frames come from tests/wire.py (`client_frame`, `MASK`), re-exported here.
"""

from __future__ import annotations

import struct
from typing import Any

from asgiws.config import Config
from asgiws.websocket import (
    Event,
    Extension,
    PerMessageDeflate,
    PerMessageDeflateFactory,
    ServerConnection,
    Trace,
)
from tests.wire import MASK, client_frame

__all__ = [
    "DEFAULTS", "MASK", "agreed_deflate", "client_frame", "deflate_factory", "feed", "feed_every_way",
    "parse_server_frames", "server_connection",
]

# The codec takes every setting explicitly (the config holds each default once):
# tests build it through these helpers, with the config's defaults.
DEFAULTS = Config()



def server_connection(*, max_size: int = DEFAULTS.ws_max_size, extensions: list[Extension] | None = None,
                      trace: Trace | None = None) -> ServerConnection:
    """A ServerConnection with the config's ws_max_size unless given."""
    return ServerConnection(max_size=max_size, extensions=extensions, trace=trace)


def deflate_factory(**overrides: Any) -> PerMessageDeflateFactory:
    """The server's permessage-deflate settings: the config's ws_deflate_* defaults, less `overrides`."""
    settings: dict[str, Any] = {
        "window_bits": DEFAULTS.ws_deflate_window_bits,
        "memory_level": DEFAULTS.ws_deflate_memory_level,
        "min_size": DEFAULTS.ws_deflate_min_size,
        "server_no_context_takeover": DEFAULTS.ws_deflate_server_no_context_takeover,
    }
    settings.update(overrides)
    return PerMessageDeflateFactory(**settings)


def agreed_deflate(*, server_max_window_bits: int, client_max_window_bits: int,
                   server_no_context_takeover: bool, client_no_context_takeover: bool,
                   memory_level: int = DEFAULTS.ws_deflate_memory_level,
                   min_size: int = DEFAULTS.ws_deflate_min_size) -> PerMessageDeflate:
    """An agreed permessage-deflate, with the config's memory level and minimum size unless given."""
    return PerMessageDeflate(
        server_max_window_bits=server_max_window_bits, client_max_window_bits=client_max_window_bits,
        server_no_context_takeover=server_no_context_takeover,
        client_no_context_takeover=client_no_context_takeover, memory_level=memory_level, min_size=min_size,
    )


def feed(data: bytes, split: int | None = None, **kwargs: object) -> tuple[ServerConnection, list[Event]]:
    """Feed `data` to a new connection, whole or in two parts cut at `split`."""
    conn = server_connection(**kwargs)  # type: ignore[arg-type]
    if split is None:
        return conn, conn.receive_data(data)
    return conn, conn.receive_data(data[:split]) + conn.receive_data(data[split:])


def feed_every_way(data: bytes, **kwargs: object) -> list[Event]:
    """Events from `data` fed whole, split at each offset, and byte by byte; asserts they agree."""
    _, whole = feed(data, **kwargs)
    for split in range(1, len(data)):
        _, events = feed(data, split, **kwargs)
        assert events == whole, f"split at {split}"
    conn = server_connection(**kwargs)  # type: ignore[arg-type]
    bytewise: list[Event] = []
    for index in range(len(data)):
        bytewise += conn.receive_data(data[index : index + 1])
    assert bytewise == whole
    return whole


def parse_server_frames(chunks: list[bytes]) -> list[tuple[int, bool, int, bytes]]:
    """(opcode, fin, rsv, payload) of unmasked server frames."""
    data = b"".join(chunks)
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frames must not be masked"
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        frames.append((b0 & 0x0F, bool(b0 & 0x80), b0 & 0x70, data[pos : pos + length]))
        pos += length
    return frames
