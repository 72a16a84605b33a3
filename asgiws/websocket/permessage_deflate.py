"""RFC 7692 permessage-deflate, server side."""

from __future__ import annotations

import re
import zlib

from asgiws.websocket.extensions import Extension, Params, ServerExtensionFactory
from asgiws.websocket.frames import RSV1, CloseCode, ProtocolError

__all__ = ["PerMessageDeflate", "PerMessageDeflateFactory", "compress_message", "new_compressor"]

# 7.2.1: the sender removes these 4 octets from the end of each message; the
# receiver appends them back before inflating.
_TAIL = b"\x00\x00\xff\xff"

# 7.1.2.1: "a decimal integer value without leading zeros between 8 to 15".
_WINDOW_BITS_RE = re.compile(r"[1-9][0-9]?")
_PARAM_NAMES = frozenset(
    ("server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits")
)


def _zlib_bits(bits: int) -> int:
    # zlib rejects an 8-bit window for raw deflate (it silently means 9 for
    # zlib streams), so an agreed 8 is run as 9; inflating with a bigger
    # window than the peer's is always safe.
    return max(bits, 9)


def new_compressor(window_bits: int, memory_level: int) -> zlib._Compress:
    """A raw deflate compressor for a server_max_window_bits window and a zlib memory level (1..9)."""
    return zlib.compressobj(wbits=-_zlib_bits(window_bits), memLevel=memory_level)


def _end_message(compressor: zlib._Compress, out: bytes) -> bytes:
    """`out` plus the flushed end of the message, less the 4 octets 7.2.1 removes."""
    out += compressor.flush(zlib.Z_SYNC_FLUSH)
    # 7.2.1: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail end".
    return out[:-4] if out.endswith(_TAIL) else out


def compress_message(data: bytes, window_bits: int, memory_level: int) -> bytes:
    """One whole message compressed from an empty window (what no context takeover sends)."""
    compressor = new_compressor(window_bits, memory_level)
    return _end_message(compressor, compressor.compress(data))


class PerMessageDeflate(Extension):
    """One connection's permessage-deflate state (compressor and decompressor made lazily).

    `memory_level` (zlib's, 1..9) and `min_size` (bytes; smaller messages go
    uncompressed) are the config's ws_deflate_* values, passed in: no default here.
    """

    name = "permessage-deflate"
    rsv_mask = RSV1

    def __init__(
        self,
        *,
        server_max_window_bits: int,
        client_max_window_bits: int,
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        memory_level: int,
        min_size: int,
    ) -> None:
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.memory_level = memory_level
        self.min_size = min_size
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def begin_message(self, opcode: int, rsv: int) -> bool:
        return bool(rsv & RSV1)

    def decode(self, data: bytes, *, end: bool, max_length: int) -> bytes:
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(wbits=-_zlib_bits(self.client_max_window_bits))
        if end:
            data = data + _TAIL
        try:
            # Bounded: never inflate more than the message may still hold (+1
            # to tell "exactly at the limit" from "over it").
            out = decompressor.decompress(data, max_length)
        except zlib.error as exc:
            raise ProtocolError(CloseCode.INVALID_DATA, f"invalid compressed data: {exc}") from None
        if len(out) >= max_length:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big after decompression")
        if end and self.client_no_context_takeover:
            self._decompressor = None
        return out

    def encode(self, opcode: int, data: bytes) -> tuple[int, bytes]:
        if len(data) < self.min_size:
            return 0, data
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = new_compressor(self.server_max_window_bits, self.memory_level)
        out = _end_message(compressor, compressor.compress(data))
        if self.server_no_context_takeover:
            self._compressor = None
        return RSV1, out

    def encode_fragment(self, data: bytes, *, first: bool, end: bool) -> tuple[int, bytes]:
        # 7.2.1: the message is one deflate stream cut across its frames; it
        # is flushed, and its 00 00 ff ff removed, only at the message's end.
        # Fragmented messages are large, so min_size does not apply.
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = new_compressor(self.server_max_window_bits, self.memory_level)
        out = compressor.compress(data)
        if end:
            out = _end_message(compressor, out)
            if self.server_no_context_takeover:
                self._compressor = None
        # 6.1: RSV1 on the first frame only.
        return (RSV1 if first else 0), out


def _parse_offer(params: Params) -> dict[str, int | bool | None] | None:
    """The offer's parameters checked (7.1), or None when it must be declined."""
    seen: dict[str, int | bool | None] = {}
    for key, value in params:
        if key not in _PARAM_NAMES or key in seen:
            return None
        if key.endswith("no_context_takeover"):
            if value is not None:
                return None
            seen[key] = True
        elif value is None:
            # client_max_window_bits may come without a value; the server one may not.
            if key == "server_max_window_bits":
                return None
            seen[key] = None
        else:
            if not _WINDOW_BITS_RE.fullmatch(value) or not 8 <= int(value) <= 15:
                return None
            seen[key] = int(value)
    return seen


class PerMessageDeflateFactory(ServerExtensionFactory):
    """Server settings for permessage-deflate (the config's ws_deflate_* values).

    `window_bits` bounds both directions' LZ77 window where the offer lets
    the server choose; `min_size` is in bytes. Every parameter is the config's
    ws_deflate_* value, with no default here (the config holds each, once).
    Raises ValueError for window_bits outside 8..15.
    """

    name = "permessage-deflate"

    def __init__(
        self,
        *,
        window_bits: int,
        memory_level: int,
        min_size: int,
        server_no_context_takeover: bool,
    ) -> None:
        if not 8 <= window_bits <= 15:
            raise ValueError("window_bits must be between 8 and 15")
        self.window_bits = window_bits
        self.memory_level = memory_level
        self.min_size = min_size
        self.server_no_context_takeover = server_no_context_takeover

    def negotiate(self, offers: list[Params]) -> tuple[str, Extension] | None:
        for params in offers:
            offer = _parse_offer(params)
            if offer is not None:
                return self._accept(offer)
        return None

    def _accept(self, offer: dict[str, int | bool | None]) -> tuple[str, Extension]:
        response: list[str] = []
        server_no_context_takeover = self.server_no_context_takeover or "server_no_context_takeover" in offer
        if server_no_context_takeover:
            response.append("server_no_context_takeover")
        # Accepting client_no_context_takeover lets us drop the inflater between messages.
        client_no_context_takeover = "client_no_context_takeover" in offer
        if client_no_context_takeover:
            response.append("client_no_context_takeover")
        requested = offer.get("server_max_window_bits")
        server_bits = min(self.window_bits, requested) if isinstance(requested, int) else self.window_bits
        # 7.1.2.1: the server may declare a smaller window than the offer asked for.
        if server_bits < 15:
            response.append(f"server_max_window_bits={server_bits}")
        client_bits = 15
        if "client_max_window_bits" in offer:
            # 7.1.2.2: only an offer with this parameter lets us limit the client's window.
            offered = offer["client_max_window_bits"]
            client_bits = min(self.window_bits, offered) if isinstance(offered, int) else self.window_bits
            response.append(f"client_max_window_bits={client_bits}")
        extension = PerMessageDeflate(
            server_max_window_bits=server_bits,
            client_max_window_bits=client_bits,
            server_no_context_takeover=server_no_context_takeover,
            client_no_context_takeover=client_no_context_takeover,
            memory_level=self.memory_level,
            min_size=self.min_size,
        )
        return "; ".join(response), extension
