"""The one builder of client frames for every test (RFC 6455 5.2), raw or codec.

`rsv` is given as the bits of the first byte, the codec's own convention:
`RSV1` (0x40, permessage-deflate's bit), `RSV2` (0x20), `RSV3` (0x10).
Opcodes are `Opcode` members. Frames are masked with `MASK` unless told.
"""

from __future__ import annotations

import struct

from asgiws.websocket.frames import RSV1, RSV2, RSV3, Opcode
from asgiws.websocket.mask import py_apply_mask

__all__ = ["MASK", "RSV1", "RSV2", "RSV3", "Opcode", "client_frame", "close_payload"]

MASK = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, mask: bytes = MASK, length: int | None = None) -> bytes:
    """One client frame; `length` declares a length other than the payload's (for lying headers)."""
    declared = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if declared < 126:
        header = bytes((b0, mask_bit | declared))
    elif declared < 65536:
        header = struct.pack("!BBH", b0, mask_bit | 126, declared)
    else:
        header = struct.pack("!BBQ", b0, mask_bit | 127, declared)
    if not masked:
        return header + payload
    # The pure-Python twin, not the C helper the codec tests may be testing.
    return header + mask + py_apply_mask(payload, mask)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """5.5.1: the body of a close frame, a 2-byte code then the reason."""
    return struct.pack("!H", code) + reason
