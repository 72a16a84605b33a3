"""RFC 6455 section 5 vocabulary: opcodes, close codes, frame headers, errors."""

from __future__ import annotations

import enum
import struct

__all__ = [
    "RSV1",
    "RSV2",
    "RSV3",
    "CloseCode",
    "ConnectionClosedError",
    "Opcode",
    "ProtocolError",
    "close_payload",
    "frame_header",
    "is_valid_close_code",
]

# 5.2: RSV1, RSV2, RSV3 bits of the first header byte.
RSV1 = 0x40
RSV2 = 0x20
RSV3 = 0x10

# 5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    """5.2: frame opcodes; 0x3-0x7 and 0xB-0xF are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """7.4.1 status codes, plus the IANA-registered 1012-1015."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


# 7.4.1/7.4.2: codes a peer may put on the wire. 1004 is reserved, and 1005,
# 1006 and 1015 "MUST NOT be set as a status code in a Close control frame".
_VALID_WIRE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def is_valid_close_code(code: int) -> bool:
    """Whether `code` may appear in a close frame (3000-4999 are for libraries and apps)."""
    return code in _VALID_WIRE_CODES or 3000 <= code <= 4999


class ProtocolError(Exception):
    """A peer error, carrying the close code that is its consequence."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ConnectionClosedError(RuntimeError):
    """Raised when sending a data frame (or ping) after our close frame was sent."""


_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def frame_header(opcode: int, length: int, fin: bool = True, rsv: int = 0) -> bytes:
    """The unmasked (server-to-client, 5.1) header of a frame carrying `length` bytes."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    if length < 126:
        return bytes((b0, length))
    if length < 65536:
        return _pack_short(b0, 126, length)
    return _pack_long(b0, 127, length)


def close_payload(code: int, reason: str) -> bytes:
    """The payload of a close frame; empty for 1005 ("no status"), reason cut to fit 125 bytes.

    Raises ValueError for a code that may not be sent.
    """
    if code == CloseCode.NO_STATUS_RCVD:
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        # Cut at a character boundary so the peer can still decode it.
        encoded = encoded[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + encoded
