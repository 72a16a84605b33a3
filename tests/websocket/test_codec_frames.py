"""Framing, fragmentation, control frames, close and failure rules (RFC 6455 5, 7)."""

from __future__ import annotations

import os
import struct

import pytest

from asgiws.websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosedError,
    Opcode,
    Pong,
    ProtocolFailure,
    TextMessage,
)
from asgiws.websocket import mask as mask_module
from tests.websocket.codec_helpers import (
    MASK,
    agreed_deflate,
    client_frame,
    feed,
    feed_every_way,
    parse_server_frames,
    server_connection,
)

IMPLEMENTATIONS = [pytest.param(mask_module.py_apply_mask, id="python")]
CHUNK_IMPLEMENTATIONS = [pytest.param(mask_module.py_apply_mask_chunks, id="python")]
BUFFER_IMPLEMENTATIONS = [pytest.param(mask_module.PyPayloadBuffer, id="python")]
try:
    from asgiws.websocket._speedups import PayloadBuffer as CPayloadBuffer
    from asgiws.websocket._speedups import apply_mask as c_apply_mask
    from asgiws.websocket._speedups import apply_mask_chunks as c_apply_mask_chunks

    IMPLEMENTATIONS.append(pytest.param(c_apply_mask, id="c"))
    CHUNK_IMPLEMENTATIONS.append(pytest.param(c_apply_mask_chunks, id="c"))
    BUFFER_IMPLEMENTATIONS.append(pytest.param(CPayloadBuffer, id="c"))
except ImportError:  # the test env must build it: fail loudly below
    c_apply_mask = c_apply_mask_chunks = CPayloadBuffer = None


# -- masking -------------------------------------------------------------------


def test_c_speedups_are_built_and_used() -> None:
    assert c_apply_mask is not None, "build with `pip install -e .`"
    assert mask_module.apply_mask is c_apply_mask
    assert mask_module.apply_mask_chunks is c_apply_mask_chunks
    assert mask_module.PayloadBuffer is CPayloadBuffer


@pytest.mark.parametrize("apply_mask", IMPLEMENTATIONS)
# 255-385 and 4101: either side of where the C helper's 32- and 128-byte AVX2 turns begin and end.
@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 125, 255, 256, 257, 287, 288, 383, 384,
                                    385, 1000, 4101, 65537])
def test_mask_implementations_agree_with_a_bytewise_xor(apply_mask, length: int) -> None:
    data = os.urandom(length)
    mask = os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert apply_mask(data, mask) == expected
    assert apply_mask(bytearray(data), mask) == expected
    assert apply_mask(memoryview(data), mask) == expected
    assert apply_mask(expected, mask) == data


@pytest.mark.parametrize("apply_mask", IMPLEMENTATIONS)
def test_mask_of_wrong_length_is_rejected(apply_mask) -> None:
    with pytest.raises(ValueError):
        apply_mask(b"abc", b"abc")


@pytest.mark.parametrize("apply_mask_chunks", CHUNK_IMPLEMENTATIONS)
@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 17, 64, 1000])
def test_chunked_mask_agrees_with_masking_the_joined_payload(apply_mask_chunks, length: int) -> None:
    # The mask phase carries across chunk boundaries at every offset.
    data = os.urandom(length)
    mask = os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert apply_mask_chunks([], mask) == b""
    assert apply_mask_chunks([data], mask) == expected
    for cut in range(length + 1):
        for cut2 in range(cut, min(length, cut + 9) + 1):
            chunks = [data[:cut], memoryview(data)[cut:cut2], bytearray(data[cut2:])]
            assert apply_mask_chunks(chunks, mask) == expected, (cut, cut2)


@pytest.mark.parametrize("apply_mask_chunks", CHUNK_IMPLEMENTATIONS)
def test_chunked_mask_rejects_a_bad_mask_and_non_buffers(apply_mask_chunks) -> None:
    with pytest.raises(ValueError):
        apply_mask_chunks([b"abc"], b"abc")
    with pytest.raises(TypeError):
        apply_mask_chunks([b"abc", "text"], b"abcd")


@pytest.mark.parametrize("payload_buffer", BUFFER_IMPLEMENTATIONS)
@pytest.mark.parametrize("cuts", [
    [0, 1, 2, 3, 4, 9, 17, 18, 100, 150, 203],
    # Runs long enough for the C helper's wide (AVX2) loop, from each mask phase and from
    # addresses that are not a multiple of 32, with their ends in the 8-byte and the byte loops.
    [0, 1, 258, 515, 1024 + 3, 1030, 2047, 4096 + 5, 5000],
])
def test_payload_buffer_filled_and_unmasked_in_pieces_at_every_phase(payload_buffer, cuts: list[int]) -> None:
    data = os.urandom(cuts[-1])
    mask = os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    buffer = payload_buffer(len(data))
    view = buffer.view()
    for start, end in zip(cuts, cuts[1:]):
        view[start:end] = data[start:end]
        buffer.unmask(start, end, mask)
    view.release()
    result = buffer.finish()
    assert type(result) is bytes
    assert result == expected


@pytest.mark.parametrize("payload_buffer", BUFFER_IMPLEMENTATIONS)
def test_payload_buffer_never_publishes_bytes_still_writable_through_a_view(payload_buffer) -> None:
    buffer = payload_buffer(4)
    view = buffer.view()
    view[:] = b"abcd"
    kept = view[1:]  # a reader still holds part of the buffer
    view.release()
    result = buffer.finish()
    kept[0] = ord("X")
    assert result == b"abcd"
    # Spent either way, as when no view is left: the twins agree.
    with pytest.raises(ValueError, match="already finished"):
        buffer.finish()
    with pytest.raises(BufferError):
        buffer.view()
    with pytest.raises(ValueError):
        buffer.unmask(0, 1, b"abcd")
    kept.release()


@pytest.mark.parametrize("payload_buffer", BUFFER_IMPLEMENTATIONS)
def test_payload_buffer_rejects_misuse(payload_buffer) -> None:
    with pytest.raises(ValueError):
        payload_buffer(-1)
    buffer = payload_buffer(8)
    with pytest.raises(ValueError):
        buffer.unmask(0, 4, b"abc")
    with pytest.raises(ValueError):
        buffer.unmask(4, 9, b"abcd")
    with pytest.raises(ValueError):
        buffer.unmask(5, 4, b"abcd")
    assert len(buffer.finish()) == 8  # bytes never written are unspecified (C: not zeroed)
    with pytest.raises(ValueError):
        buffer.finish()
    with pytest.raises(BufferError):
        buffer.view()


# -- parsing valid frames, whole and split at every offset ------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536])
def test_binary_frame_of_each_length_encoding(length: int) -> None:
    payload = os.urandom(length)
    data = client_frame(Opcode.BINARY, payload)
    _, events = feed(data)
    assert events == [BinaryMessage(payload)]
    if length < 200:
        assert feed_every_way(data) == [BinaryMessage(payload)]
    else:
        for split in (1, 2, 3, 4, 5, 8, 9, 14, 15, len(data) // 2, len(data) - 1):
            assert feed(data, split)[1] == [BinaryMessage(payload)]


def test_large_binary_frame_in_many_reads_is_unmasked_whole() -> None:
    # Binary payloads are kept as they arrive and unmasked once at the end of
    # the frame; reads of odd sizes move the mask phase at every boundary.
    payload = os.urandom(300_000)
    data = client_frame(Opcode.BINARY, payload) + client_frame(Opcode.TEXT, b"after")
    for read_size in (1000, 4097, 65536, 100_003):
        conn = server_connection()
        events = []
        for start in range(0, len(data), read_size):
            events += conn.receive_data(data[start : start + read_size])
        assert events == [BinaryMessage(payload), TextMessage("after")], read_size


@pytest.mark.parametrize("read_size", [1, 1000, 65536, 10**6])
def test_large_binary_frame_read_in_place_through_payload_buffer(read_size: int) -> None:
    # What an asyncio.BufferedProtocol does: read into payload_buffer() while
    # payload_pending, everything else through receive_data.
    payloads = [os.urandom(200_000), os.urandom(70_000)]
    data = b"".join(client_frame(Opcode.BINARY, payload) for payload in payloads)
    data += client_frame(Opcode.TEXT, b"after")
    conn = server_connection()
    events = []
    pos = 0
    in_place = 0
    while pos < len(data):
        view = conn.payload_buffer()
        if conn.payload_pending:
            assert view is not None and len(view) > 0
            n = min(len(view), read_size, len(data) - pos)
            view[:n] = data[pos : pos + n]
            del view
            conn.payload_received(n)
            in_place += n
        else:
            assert view is None
            n = min(300, len(data) - pos)  # reads that cut headers and payloads
            events += conn.receive_data(data[pos : pos + n])
        pos += n
    assert events == [BinaryMessage(payloads[0]), BinaryMessage(payloads[1]), TextMessage("after")]
    assert in_place > 200_000


def test_payload_buffer_is_only_for_large_undecoded_binary_frames() -> None:
    conn = server_connection()
    conn.receive_data(client_frame(Opcode.TEXT, b"x" * 100_000)[:100])
    assert not conn.payload_pending and conn.payload_buffer() is None
    conn = server_connection()
    conn.receive_data(client_frame(Opcode.BINARY, b"x" * 60_000)[:100])
    assert not conn.payload_pending
    conn = server_connection()
    conn.receive_data(client_frame(Opcode.BINARY, b"x" * 100_000)[:100])
    assert conn.payload_pending
    with pytest.raises(ValueError):
        conn.payload_received(100_000)


def test_fragmented_binary_message_with_frames_split_across_reads() -> None:
    parts = [os.urandom(n) for n in (5000, 0, 3, 70_000)]
    data = client_frame(Opcode.BINARY, parts[0], fin=False)
    data += client_frame(Opcode.PING, b"between")
    for part in parts[1:-1]:
        data += client_frame(Opcode.CONTINUATION, part, fin=False)
    data += client_frame(Opcode.CONTINUATION, parts[-1])
    for split in (1, 7, 5003, 5010, 5020, len(data) // 2, len(data) - 1):
        conn, events = feed(data, split)
        assert events == [BinaryMessage(b"".join(parts))], split
        assert parse_server_frames(conn.data_to_send()) == [(Opcode.PONG, True, 0, b"between")]


def test_text_frame_split_at_every_offset() -> None:
    text = "héllo wörld ☃ 𝄞"
    assert feed_every_way(client_frame(Opcode.TEXT, text.encode())) == [TextMessage(text)]


def test_several_frames_in_one_read_give_events_in_order() -> None:
    data = (client_frame(Opcode.TEXT, b"one") + client_frame(Opcode.BINARY, b"two")
            + client_frame(Opcode.PONG, b"p") + client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye"))
    assert feed_every_way(data) == [TextMessage("one"), BinaryMessage(b"two"), Pong(b"p"),
                                    CloseReceived(1000, "bye")]


def test_fragmented_message_with_interleaved_pings() -> None:
    data = (client_frame(Opcode.TEXT, b"frag", fin=False)
            + client_frame(Opcode.PING, b"1")
            + client_frame(Opcode.CONTINUATION, b"ment", fin=False)
            + client_frame(Opcode.PONG, b"2")
            + client_frame(Opcode.CONTINUATION, b"", fin=False)
            + client_frame(Opcode.CONTINUATION, "ed ☃".encode()))
    assert feed_every_way(data) == [Pong(b"2"), TextMessage("fragmented ☃")]
    conn, _ = feed(data)
    assert parse_server_frames(conn.data_to_send()) == [(Opcode.PONG, True, 0, b"1")]


def test_fragmented_binary_message() -> None:
    data = client_frame(Opcode.BINARY, b"ab", fin=False) + client_frame(Opcode.CONTINUATION, b"cd")
    assert feed_every_way(data) == [BinaryMessage(b"abcd")]


def test_utf8_character_split_across_fragments() -> None:
    snowman = "☃".encode()
    data = (client_frame(Opcode.TEXT, snowman[:1], fin=False) + client_frame(Opcode.CONTINUATION, snowman[1:2], fin=False)
            + client_frame(Opcode.CONTINUATION, snowman[2:]))
    assert feed_every_way(data) == [TextMessage("☃")]


def test_ping_is_answered_with_same_payload_and_no_event() -> None:
    conn, events = feed(client_frame(Opcode.PING, b"hello"))
    assert events == []
    assert parse_server_frames(conn.data_to_send()) == [(Opcode.PONG, True, 0, b"hello")]
    assert conn.data_to_send() == []


def test_ping_after_close_sent_is_not_answered() -> None:
    conn = server_connection()
    conn.send_close()
    conn.data_to_send()
    assert conn.receive_data(client_frame(Opcode.PING, b"x")) == []
    assert conn.data_to_send() == []


# -- close ---------------------------------------------------------------------------


def test_close_without_payload_reports_1005() -> None:
    conn, events = feed(client_frame(Opcode.CLOSE))
    assert events == [CloseReceived(1005, "")]
    assert conn.close_received and not conn.close_sent
    assert conn.data_to_send() == [], "the codec never answers a close by itself"


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_close_with_valid_code_and_reason(code: int) -> None:
    data = client_frame(Opcode.CLOSE, struct.pack("!H", code) + "raison ☃".encode())
    assert feed_every_way(data) == [CloseReceived(code, "raison ☃")]


def test_input_after_close_is_ignored() -> None:
    conn, events = feed(client_frame(Opcode.CLOSE) + client_frame(Opcode.TEXT, b"late"))
    assert events == [CloseReceived(1005, "")]
    assert conn.receive_data(client_frame(Opcode.TEXT, b"later")) == []


def test_close_handshake_complete_when_both_sides_sent_close() -> None:
    conn, _ = feed(client_frame(Opcode.CLOSE, struct.pack("!H", 1000)))
    assert not conn.handshake_complete
    conn.send_close(1000)
    assert conn.handshake_complete
    assert parse_server_frames(conn.data_to_send()) == [(Opcode.CLOSE, True, 0, b"\x03\xe8")]


def test_send_close_twice_is_a_no_op_and_data_after_close_raises() -> None:
    conn = server_connection()
    conn.send_close(1001, "bye")
    conn.send_close(1000)
    assert parse_server_frames(conn.data_to_send()) == [(Opcode.CLOSE, True, 0, b"\x03\xe9bye")]
    with pytest.raises(ConnectionClosedError):
        conn.send_text("x")
    with pytest.raises(ConnectionClosedError):
        conn.send_binary(b"x")
    with pytest.raises(ConnectionClosedError):
        conn.send_ping()


def test_send_close_1005_sends_empty_payload_and_long_reason_is_cut() -> None:
    conn = server_connection()
    conn.send_close(1005)
    assert parse_server_frames(conn.data_to_send()) == [(Opcode.CLOSE, True, 0, b"")]
    conn = server_connection()
    conn.send_close(1000, "☃" * 100)
    (frame,) = parse_server_frames(conn.data_to_send())
    assert len(frame[3]) <= 125
    frame[3][2:].decode("utf-8")


def test_send_close_with_unsendable_code_raises_value_error() -> None:
    with pytest.raises(ValueError):
        server_connection().send_close(1006)


# -- failure rules, each with its exact close code -----------------------------------------


def assert_fails(data: bytes, code: int, **kwargs: object) -> list:
    events = feed_every_way(data, **kwargs) if len(data) < 400 else feed(data, **kwargs)[1]
    assert isinstance(events[-1], ProtocolFailure), events
    assert events[-1].code == code, events[-1]
    return events


def test_unmasked_client_frame_fails_1002() -> None:
    assert_fails(client_frame(Opcode.TEXT, b"hi", masked=False), 1002)


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00\x07", b"p" * 125])
def test_a_read_of_one_pong_is_its_pong_and_counts_its_bytes(payload: bytes) -> None:
    # The idle connection's every read: taken apart from the general parse (receive_data).
    conn = server_connection()
    frame = client_frame(Opcode.PONG, payload)
    assert conn.receive_data(frame) == [Pong(payload)]
    assert (conn.tally.bytes_received, conn.tally.messages_received) == (len(frame), 0)
    assert conn.receive_data(frame + frame) == [Pong(payload), Pong(payload)]  # the general parse
    assert conn.tally.bytes_received == 3 * len(frame)


def test_unmasked_pong_alone_in_a_read_fails_1002() -> None:
    assert_fails(client_frame(Opcode.PONG, b"abcd", masked=False), 1002)


def test_bytes_shaped_like_a_pong_inside_a_payload_are_payload() -> None:
    # The payload's last 10 bytes, on the wire (a zero mask), are a whole masked pong frame,
    # read on their own: they are the frame's end, not a pong.
    pong_shaped = client_frame(Opcode.PONG, b"abcd")
    payload = b"x" * 20 + pong_shaped
    frame = client_frame(Opcode.BINARY, payload, mask=b"\x00" * 4)
    conn = server_connection()
    assert conn.receive_data(frame[: -len(pong_shaped)]) == []
    assert conn.receive_data(frame[-len(pong_shaped) :]) == [BinaryMessage(payload)]


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_rsv_bits_without_extension_fail_1002(rsv: int) -> None:
    assert_fails(client_frame(Opcode.TEXT, b"hi", rsv=rsv), 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcode_fails_1002(opcode: int) -> None:
    assert_fails(client_frame(opcode, b"x"), 1002)


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frame_payload_over_125_fails_1002(opcode: int) -> None:
    assert_fails(client_frame(opcode, b"\x03\xe8" + b"x" * 124), 1002)


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_fragmented_control_frame_fails_1002(opcode: int) -> None:
    assert_fails(client_frame(opcode, b"", fin=False), 1002)


def test_continuation_without_start_fails_1002() -> None:
    assert_fails(client_frame(Opcode.CONTINUATION, b"x"), 1002)


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_new_data_frame_inside_fragmented_message_fails_1002(opcode: int) -> None:
    assert_fails(client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(opcode, b"b"), 1002)


def test_invalid_utf8_text_fails_1007() -> None:
    assert_fails(client_frame(Opcode.TEXT, b"ok\xff"), 1007)


def test_invalid_utf8_in_a_fragment_fails_1007_before_the_message_ends() -> None:
    data = client_frame(Opcode.TEXT, "κόσμε".encode(), fin=False) + client_frame(
        Opcode.CONTINUATION, b"\xf4\x90\x80\x80", fin=False)
    assert_fails(data, 1007)  # the final fragment never came


def test_invalid_utf8_fails_1007_on_a_partially_received_frame() -> None:
    # Autobahn 6.4.3/6.4.4: only the first bytes of the frame have arrived.
    payload = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited" * 10
    frame = client_frame(Opcode.TEXT, payload)
    bad_end = 6 + len("κόσμε".encode()) + 2  # header + valid text + first bad bytes
    conn = server_connection()
    assert conn.receive_data(frame[: bad_end - 1]) == []
    (failure,) = conn.receive_data(frame[bad_end - 1 : bad_end])
    assert failure == ProtocolFailure(1007, failure.reason)
    assert conn.receive_data(frame[bad_end:]) == []


def test_truncated_utf8_at_message_end_fails_1007() -> None:
    assert_fails(client_frame(Opcode.TEXT, "☃".encode()[:2]), 1007)


def test_close_with_one_byte_payload_fails_1002() -> None:
    assert_fails(client_frame(Opcode.CLOSE, b"\x03"), 1002)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_with_invalid_code_fails_1002(code: int) -> None:
    assert_fails(client_frame(Opcode.CLOSE, struct.pack("!H", code)), 1002)


def test_close_with_invalid_utf8_reason_fails_1007() -> None:
    assert_fails(client_frame(Opcode.CLOSE, b"\x03\xe8\xff\xfe"), 1007)


def test_oversized_text_fails_1009_from_header_alone() -> None:
    header_only = client_frame(Opcode.TEXT, b"", length=1025)[:8]  # 2 + 2 + mask, no payload
    conn = server_connection(max_size=1024)
    assert conn.receive_data(header_only) == [ProtocolFailure(1009, "message over 1024 bytes")]


def test_huge_declared_length_fails_1009_without_payload() -> None:
    header_only = client_frame(Opcode.BINARY, b"", length=2**62)[:14]
    conn = server_connection(max_size=2**20)
    (failure,) = conn.receive_data(header_only)
    assert failure.code == 1009


def test_message_at_max_size_is_accepted() -> None:
    assert feed(client_frame(Opcode.BINARY, b"x" * 1024), max_size=1024)[1] == [BinaryMessage(b"x" * 1024)]


def test_max_size_over_several_fragments_fails_1009() -> None:
    data = (client_frame(Opcode.BINARY, b"x" * 400, fin=False) + client_frame(Opcode.PING, b"")
            + client_frame(Opcode.CONTINUATION, b"x" * 400, fin=False)
            + client_frame(Opcode.CONTINUATION, b"x" * 400))
    _, events = feed(data, max_size=1024)
    assert events == [ProtocolFailure(1009, "message over 1024 bytes")]
    for split in range(1, len(data)):
        assert feed(data, split, max_size=1024)[1] == events


def test_64_bit_length_with_top_bit_set_fails_1002() -> None:
    data = bytes((0x82, 0xFF)) + struct.pack("!Q", 2**63 + 5) + MASK
    assert_fails(data, 1002, max_size=2**64)


def test_messages_before_an_error_are_delivered_first() -> None:
    data = client_frame(Opcode.TEXT, b"first") + client_frame(Opcode.TEXT, b"\xff")
    events = assert_fails(data, 1007)
    assert events[0] == TextMessage("first")


def test_input_after_failure_is_ignored() -> None:
    conn, events = feed(client_frame(Opcode.TEXT, b"x", masked=False))
    assert len(events) == 1
    assert conn.receive_data(client_frame(Opcode.TEXT, b"ok")) == []
    assert conn.data_to_send() == [], "the codec never sends a close by itself"


def test_eof_stops_parsing() -> None:
    conn = server_connection()
    conn.receive_data(client_frame(Opcode.TEXT, b"abc")[:4])
    assert conn.receive_eof() == []
    assert conn.receive_data(b"x") == []


# -- sending -----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_outgoing_binary_is_unmasked_with_right_length(length: int) -> None:
    conn = server_connection()
    payload = os.urandom(length)
    conn.send_binary(payload)
    assert parse_server_frames(conn.data_to_send()) == [(Opcode.BINARY, True, 0, payload)]


def test_large_outgoing_payload_is_not_concatenated_to_its_header() -> None:
    conn = server_connection()
    payload = b"x" * 100_000
    conn.send_binary(payload)
    header, body = conn.data_to_send()
    assert header == b"\x82\x7f" + struct.pack("!Q", 100_000)
    assert body == payload


def test_outgoing_text_ping_pong() -> None:
    conn = server_connection()
    conn.send_text("☃")
    conn.send_ping(b"p")
    conn.send_pong(b"q")
    assert parse_server_frames(conn.data_to_send()) == [
        (Opcode.TEXT, True, 0, "☃".encode()), (Opcode.PING, True, 0, b"p"), (Opcode.PONG, True, 0, b"q")]


@pytest.mark.parametrize("text", ["", "x", "a" * 125, "☃" * 41, "é" * 62 + "x"])
def test_text_frame_is_the_frame_send_text_queues(text: str) -> None:
    queued = server_connection()
    queued.send_text(text)
    conn = server_connection()
    assert conn.text_frame(text) == b"".join(queued.data_to_send())
    assert conn.data_to_send() == []


def test_text_frame_is_none_unless_a_short_frame_can_go_out_now() -> None:
    assert server_connection().text_frame("a" * 126) is None
    assert server_connection().text_frame("☃" * 42) is None  # 126 bytes once encoded
    assert server_connection(trace=lambda *args: None).text_frame("x") is None
    extension = agreed_deflate(server_max_window_bits=15, client_max_window_bits=15,
                                  server_no_context_takeover=False, client_no_context_takeover=False)
    assert server_connection(extensions=[extension]).text_frame("x") is None
    behind_a_pong = server_connection()
    behind_a_pong.receive_data(client_frame(Opcode.PING, b"p"))
    assert behind_a_pong.text_frame("x") is None  # would overtake the pong
    closed = server_connection()
    closed.send_close()
    assert closed.text_frame("x") is None
    with pytest.raises(ConnectionClosedError):
        closed.send_text("x")


def test_oversized_ping_payload_is_rejected() -> None:
    with pytest.raises(ValueError):
        server_connection().send_ping(b"x" * 126)


def test_trace_is_called_once_per_frame_each_way() -> None:
    calls = []
    conn = server_connection(trace=lambda *args: calls.append(args))
    conn.receive_data(client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.PING, b"p")
                      + client_frame(Opcode.CONTINUATION, b"b"))
    conn.send_binary(b"xyz")
    assert calls == [("<", Opcode.TEXT, False, 0, True, 1), ("<", Opcode.PING, True, 0, True, 1),
                     (">", Opcode.PONG, True, 0, False, 1), ("<", Opcode.CONTINUATION, True, 0, True, 1),
                     (">", Opcode.BINARY, True, 0, False, 3)]
