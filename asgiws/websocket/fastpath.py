"""The common frame, whole, in one call: `parse_messages`.

Most reads carry whole small unfragmented messages. `parse_messages` takes
every such frame at the start of a read (header, unmasking, strict UTF-8
decode for text) and stops at the first frame that is anything else, which
`ServerConnection._parse` then parses in full, errors included. It comes from
the optional C helper (`_speedups`) when it is built, else from the pure-Python
twin below; both have the same signature and are tested against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiws.websocket.mask import apply_mask

__all__ = ["parse_messages", "py_parse_messages"]

# (data, pos, events, max_size, text_type, binary_type) -> offset of the first frame not taken
ParseMessages = Callable[[bytes, int, list[Any], int, Callable[[str], Any], Callable[[bytes], Any]], int]


def py_parse_messages(data: bytes, pos: int, events: list[Any], max_size: int,
                      text_type: Callable[[str], Any], binary_type: Callable[[bytes], Any]) -> int:
    """Append `text_type(str)` / `binary_type(bytes)` for each whole message frame at `data[pos:]`.

    Takes frames with FIN set, no RSV bit, opcode TEXT or BINARY, masked, a
    length up to `max_size` and the whole payload in `data` (text: valid
    UTF-8); returns the offset of the first frame that is not one of them
    (or `len(data)`). Never raises for bad input: that frame is left to the
    caller. Raises ValueError if `pos` is outside `data`.
    """
    end = len(data)
    if not 0 <= pos <= end:
        raise ValueError("pos outside data")
    while end - pos >= 6:
        b0 = data[pos]
        b1 = data[pos + 1]
        if (b0 != 0x81 and b0 != 0x82) or not b1 & 0x80:
            break
        length = b1 & 0x7F
        start = pos + 6
        if length == 126:
            start = pos + 8
            if end < start:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
        elif length == 127:
            start = pos + 14
            if end < start:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        if length > max_size or end - start < length:
            break
        stop = start + length
        payload = apply_mask(memoryview(data)[start:stop], data[start - 4 : start])
        if b0 == 0x81:
            try:
                events.append(text_type(payload.decode()))
            except UnicodeDecodeError:
                break  # the caller parses this frame again and fails it (1007)
        else:
            events.append(binary_type(payload))
        pos = stop
    return pos


parse_messages: ParseMessages
try:
    from asgiws.websocket._speedups import parse_messages
except ImportError:
    parse_messages = py_parse_messages
