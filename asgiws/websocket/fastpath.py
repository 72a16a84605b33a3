"""The common frame in one call: `parse_messages`, `receive_text`, `small_text_frame`; and `Tally`.

Most reads carry whole small unfragmented messages. `parse_messages` takes
every such frame at the start of a read (header, unmasking, strict UTF-8
decode for text) and stops at the first frame that is anything else, which
`ServerConnection._parse` then parses in full, errors included. The messages
it completes are built by the caller's message types: `receive_text` and
`receive_bytes` build the ASGI `websocket.receive` message itself, so a read's
messages reach the app's queue without a Python call each. `small_text_frame`
is the most common frame out (an echo, a fan-out's to each subscriber) in one
allocation. Each comes from the optional C helper (`_speedups`) when it is
built, else from the pure-Python twin below; both have the same signature and
are tested against each other.

`Tally` holds what crossed one connection's codec (messages and bytes each
way, for the metrics and the close's log line): the two fast paths count into
it in C, so the common echo pays no Python statement per counter (bench/
echo_instructions.py: the counters cost 6.7% of a 64-byte echo's
instructions when the session counted with Python `+=`, 0.2% now).

`MessageQueue` is the session's queue of messages for the app, which
parse_messages appends to: collections.deque's interface (the pure-Python
twin is deque itself) at a fraction of an empty deque's 760 bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from asgiws.types import Message
from asgiws.websocket.mask import apply_mask

__all__ = [
    "MessageQueue",
    "MessageQueueLike",
    "PyTally",
    "Sink",
    "Tally",
    "parse_messages",
    "py_parse_messages",
    "py_receive_bytes",
    "py_receive_text",
    "py_small_text_frame",
    "receive_bytes",
    "receive_text",
    "small_text_frame",
]



class Sink(Protocol):
    """Where completed messages go: a list, or the session's MessageQueue (its queue for the app)."""

    def append(self, item: Any, /) -> None: ...


class MessageQueueLike(Protocol):
    """MessageQueue or collections.deque: one connection's messages waiting for the app, oldest first."""

    def append(self, item: Message, /) -> None: ...
    def popleft(self) -> Message: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> Message: ...
    def __iter__(self) -> Iterator[Message]: ...


class PyTally:
    """Messages and bytes each way through one connection's codec (the C helper's Tally, in Python)."""

    __slots__ = ("bytes_received", "bytes_sent", "messages_received", "messages_sent")

    def __init__(self) -> None:
        self.messages_received = 0
        self.messages_sent = 0
        self.bytes_received = 0  # the frames read, headers included
        self.bytes_sent = 0


class TallyLike(Protocol):
    """Tally or PyTally: what the codec counts into, and the metrics registry reads."""

    messages_received: int
    messages_sent: int
    bytes_received: int  # on the wire after the handshake: frame headers and compressed payloads
    bytes_sent: int


# (data, pos, events, max_size, text_type, binary_type, tally) -> offset of the first frame not taken
ParseMessages = Callable[[bytes, int, Sink, int, Callable[[str], Any], Callable[[bytes], Any], Any], int]


def py_parse_messages(data: bytes, pos: int, events: Sink, max_size: int,
                      text_type: Callable[[str], Any], binary_type: Callable[[bytes], Any],
                      tally: TallyLike | None = None) -> int:
    """Append `text_type(str)` / `binary_type(bytes)` for each whole message frame at `data[pos:]`.

    `events` is a list or anything with an `append` method (the session's MessageQueue, or a deque). With a
    `tally`, the frames taken are counted in it (messages and bytes received).

    Takes frames with FIN set, no RSV bit, opcode TEXT or BINARY, masked, a
    length up to `max_size` and the whole payload in `data` (text: valid
    UTF-8); returns the offset of the first frame that is not one of them
    (or `len(data)`). Never raises for bad input: that frame is left to the
    caller. Raises ValueError if `pos` is outside `data`.
    """
    end = len(data)
    if not 0 <= pos <= end:
        raise ValueError("pos outside data")
    append = events.append
    first = pos
    taken = 0
    try:
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
                    append(text_type(payload.decode()))
                except UnicodeDecodeError:
                    break  # the caller parses this frame again and fails it (1007)
            else:
                append(binary_type(payload))
            pos = stop
            taken += 1
    finally:  # the frames appended count, also when a later append raised
        if tally is not None:
            tally.messages_received += taken
            tally.bytes_received += pos - first
    return pos


def py_receive_text(text: str) -> dict[str, Any]:
    """The ASGI message of a text message: {"type": "websocket.receive", "text": text}."""
    return {"type": "websocket.receive", "text": text}


def py_receive_bytes(data: bytes) -> dict[str, Any]:
    """The ASGI message of a binary message: {"type": "websocket.receive", "bytes": data}."""
    return {"type": "websocket.receive", "bytes": data}


def py_small_text_frame(text: str, tally: TallyLike | None = None) -> bytes | None:
    """The server's frame of a text message up to 125 bytes of UTF-8, else None.

    5.2: FIN set, opcode 0x1 (text), no mask, the length in the second byte.
    Raises UnicodeEncodeError for a str with lone surrogates (as str.encode).
    A frame made is counted in `tally`, if given, as one message sent.
    """
    if len(text) > 125:
        return None
    payload = text.encode()
    length = len(payload)
    if length > 125:
        return None
    if tally is not None:
        tally.messages_sent += 1
        tally.bytes_sent += length + 2
    return bytes((0x81, length)) + payload


Tally: Callable[[], TallyLike]
# The C helper's MessageQueue is collections.deque's interface in 48 bytes and a small array, where
# an empty deque is 760 bytes (see _speedups.c); parse_messages appends to it without a method call.
MessageQueue: Callable[[list[Any]], MessageQueueLike]
parse_messages: ParseMessages
receive_text: Callable[[str], dict[str, Any]]
receive_bytes: Callable[[bytes], dict[str, Any]]
small_text_frame: Callable[[str, Any], bytes | None]
try:
    from asgiws.websocket._speedups import (
        MessageQueue,
        Tally,
        parse_messages,
        receive_bytes,
        receive_text,
        small_text_frame,
    )
except ImportError:
    Tally = PyTally
    MessageQueue = deque
    parse_messages = py_parse_messages
    receive_text = py_receive_text
    receive_bytes = py_receive_bytes
    small_text_frame = py_small_text_frame
