"""A message framed once and written to many connections.

Compression and shared frames: permessage-deflate with context takeover (the
RFC 7692 default, and what browsers ask for) keeps one LZ77 window per
connection, on both ends. A frame compressed once cannot be written to such a
connection: its bytes would refer to a window the client's inflater does not
hold, and compressing it with that connection's own compressor costs one
zlib pass per subscriber, which is what shared delivery is meant to avoid. So
those connections get the shared *uncompressed* frame: RFC 7692 section 6 lets
a sender leave any message uncompressed (RSV1 clear), and an uncompressed
message leaves both windows untouched. Connections that agreed on
server_no_context_takeover (--ws-deflate-server-no-context-takeover, or the
client's offer) start every message from an empty window, so one compressed
frame per (window bits, memory level) is valid for all of them and is made
once, on first need.
"""

from __future__ import annotations

from collections.abc import Sequence

from asgiws.websocket.extensions import Extension
from asgiws.websocket.frames import RSV1, Opcode, frame_header
from asgiws.websocket.permessage_deflate import PerMessageDeflate, compress_message

__all__ = ["PreparedMessage"]

# Below this many payload bytes, header and payload go out as one chunk
# (one small copy beats a writelines of two buffers).
_JOIN_LIMIT = 4096


def _chunks(opcode: int, payload: bytes, rsv: int = 0) -> list[bytes]:
    header = frame_header(opcode, len(payload), True, rsv)
    if len(payload) <= _JOIN_LIMIT:
        return [header + payload]
    return [header, payload]


class PreparedMessage:
    """One text or binary message, framed for server-to-client delivery.

    `chunks_for(extensions)` returns the bytes to write to a connection that
    negotiated `extensions`; the result is shared and must not be modified.
    """

    __slots__ = ("_compressed", "opcode", "payload", "plain")

    def __init__(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self.opcode = Opcode.TEXT
            self.payload = data.encode("utf-8")
        else:
            self.opcode = Opcode.BINARY
            self.payload = bytes(data)
        self.plain = _chunks(self.opcode, self.payload)
        self._compressed: dict[tuple[int, int], list[bytes]] = {}

    def chunks_for(self, extensions: Sequence[Extension]) -> list[bytes]:
        if not extensions:
            return self.plain
        deflate = extensions[0]
        if (
            type(deflate) is not PerMessageDeflate
            or not deflate.server_no_context_takeover
            or len(self.payload) < deflate.min_size
        ):
            return self.plain
        key = (deflate.server_max_window_bits, deflate.memory_level)
        chunks = self._compressed.get(key)
        if chunks is None:
            chunks = self._compressed[key] = self._compress(*key)
        return chunks

    def _compress(self, window_bits: int, memory_level: int) -> list[bytes]:
        # The stream PerMessageDeflate.encode makes with a fresh compressor.
        return _chunks(self.opcode, compress_message(self.payload, window_bits, memory_level), RSV1)
