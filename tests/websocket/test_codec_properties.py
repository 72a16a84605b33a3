"""Property tests: serialize-then-parse is the identity; arbitrary input never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from asgiws.websocket import (
    BinaryMessage,
    CloseReceived,
    Opcode,
    Pong,
    ProtocolFailure,
    TextMessage,
    negotiate_extensions,
)
from asgiws.websocket.frames import is_valid_close_code
from tests.websocket.codec_helpers import client_frame, deflate_factory, server_connection

messages = st.one_of(
    st.builds(TextMessage, st.text(max_size=300)),
    st.builds(BinaryMessage, st.binary(max_size=300)),
    st.builds(Pong, st.binary(max_size=125)),
)


def to_frames(event: object, fragments: int, mask: bytes) -> bytes:
    if isinstance(event, Pong):
        return client_frame(Opcode.PONG, event.payload, mask=mask)
    if isinstance(event, TextMessage):
        opcode, payload = Opcode.TEXT, event.data.encode()
    else:
        opcode, payload = Opcode.BINARY, event.data
    size = max(1, -(-len(payload) // fragments))
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    return b"".join(
        client_frame(opcode if i == 0 else Opcode.CONTINUATION, piece, fin=i == len(pieces) - 1, mask=mask)
        for i, piece in enumerate(pieces)
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(messages, st.integers(1, 4), st.binary(min_size=4, max_size=4)), max_size=8),
       st.lists(st.integers(0, 3000), max_size=5))
def test_client_frames_parse_back_to_their_messages(items: list, cuts: list[int]) -> None:
    data = b"".join(to_frames(event, fragments, mask) for event, fragments, mask in items)
    conn = server_connection()
    events = []
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        events += conn.receive_data(data[start:cut])
        start = max(start, cut)
    events += conn.receive_data(data[start:])
    assert events == [event for event, _, _ in items]
    # The codec's tally: every byte read (however the reads cut the frames), every data message.
    assert conn.tally.bytes_received == len(data)
    assert conn.tally.messages_received == sum(not isinstance(event, Pong) for event, _, _ in items)


def parse_unmasked(data: bytes) -> list[tuple[int, bytes]]:
    """Re-mask server frames as a client would, then parse them with the codec's own parser."""
    conn = server_connection()
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        length, pos = b1 & 0x7F, pos + 2
        if length >= 126:
            width = 2 if length == 126 else 8
            length, pos = int.from_bytes(data[pos : pos + width], "big"), pos + width
        frames.append((b0 & 0x0F, data[pos : pos + length]))
        for event in conn.receive_data(client_frame(b0 & 0x0F, data[pos : pos + length], fin=bool(b0 & 0x80))):
            assert not isinstance(event, ProtocolFailure)
        pos += length
    return frames


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=70000 // 8)), max_size=6))
def test_serialized_messages_parse_back(payloads: list) -> None:
    conn = server_connection()
    written = b""
    for payload in payloads:
        if isinstance(payload, str):
            # A short text may be framed at once (the echo's path), else queued: both are counted.
            frame = conn.text_frame(payload)
            if frame is not None:
                written += frame
                continue
            conn.send_text(payload)
        else:
            conn.send_binary(payload)
        written += b"".join(conn.data_to_send())
    frames = parse_unmasked(written)
    assert (conn.tally.messages_sent, conn.tally.bytes_sent) == (len(payloads), len(written))
    expected = [(Opcode.TEXT, p.encode()) if isinstance(p, str) else (Opcode.BINARY, p) for p in payloads]
    assert frames == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=600), min_size=1, max_size=6))
def test_deflate_round_trip_through_the_codec(payloads: list[bytes]) -> None:
    _, server_side = negotiate_extensions([b"permessage-deflate"], [deflate_factory(min_size=0)])
    _, client_side = negotiate_extensions([b"permessage-deflate"], [deflate_factory(min_size=0)])
    sender = server_connection(extensions=server_side)
    receiver = server_connection(extensions=client_side)
    for payload in payloads:
        sender.send_binary(payload)
        (frame,) = parse_raw(b"".join(sender.data_to_send()))
        b0, body = frame
        events = receiver.receive_data(client_frame(b0 & 0x0F, body, rsv=b0 & 0x70))
        assert events == [BinaryMessage(payload)]


def parse_raw(data: bytes) -> list[tuple[int, bytes]]:
    length, pos = data[1] & 0x7F, 2
    if length >= 126:
        width = 2 if length == 126 else 8
        length, pos = int.from_bytes(data[2 : 2 + width], "big"), 2 + width
    assert pos + length == len(data)
    return [(data[0], data[pos:])]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10), st.booleans())
def test_arbitrary_bytes_give_events_or_one_failure_never_an_exception(chunks: list[bytes], deflate: bool) -> None:
    extensions = []
    if deflate:
        _, extensions = negotiate_extensions([b"permessage-deflate"], [deflate_factory()])
    conn = server_connection(max_size=4096, extensions=extensions)
    events = []
    for chunk in chunks:
        # Give arbitrary bytes a chance to be masked frames.
        events += conn.receive_data(chunk[:1] + bytes([chunk[1] | 0x80]) + chunk[2:] if len(chunk) > 1 else chunk)
    events += conn.receive_eof()
    conn.data_to_send()
    for index, event in enumerate(events):
        assert isinstance(event, (TextMessage, BinaryMessage, Pong, CloseReceived, ProtocolFailure))
        if isinstance(event, (CloseReceived, ProtocolFailure)):
            assert index == len(events) - 1
        if isinstance(event, ProtocolFailure):
            assert event.code in (1002, 1007, 1009)
        if isinstance(event, CloseReceived):
            assert event.code == 1005 or is_valid_close_code(event.code)
