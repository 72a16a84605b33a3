"""Large outgoing messages sent as fragments (RFC 6455 5.4), compressed as one deflate stream (RFC 7692 7.2.1)."""

from __future__ import annotations

import os
import zlib

import pytest

from asgiws.websocket import ConnectionClosedError, Opcode, ServerConnection
from tests.websocket.codec_helpers import agreed_deflate, client_frame, parse_server_frames, server_connection

RSV1 = 0x40
TAIL = b"\x00\x00\xff\xff"
COMPRESSIBLE = ('{"type": "chat", "text": "héllo wörld ✓ 🎉"}' * 3000)  # multi-byte code points


def deflate_conn(no_context_takeover: bool = False) -> ServerConnection:
    extension = agreed_deflate(server_max_window_bits=12, client_max_window_bits=15,
                                  server_no_context_takeover=no_context_takeover,
                                  client_no_context_takeover=False)
    return server_connection(extensions=[extension])


def steps(conn: ServerConnection, data: str | bytes, fragment_size: int) -> list[list[tuple[int, bool, int, bytes]]]:
    """The frames each generator step queued."""
    out = []
    for _ in conn.send_fragments(data, fragment_size):
        out.append(parse_server_frames(conn.data_to_send()))
    return out


def reassemble(frames: list[tuple[int, bool, int, bytes]], decompressor=None) -> tuple[int, bytes]:
    """The message's opcode and payload; checks the fragmentation rules on the way."""
    opcode, _, rsv, _ = frames[0]
    assert opcode in (Opcode.TEXT, Opcode.BINARY)
    assert [f[0] for f in frames[1:]] == [Opcode.CONTINUATION] * (len(frames) - 1)
    assert [f[1] for f in frames] == [False] * (len(frames) - 1) + [True]
    assert all(f[2] == 0 for f in frames[1:]), "RSV1 only on the first frame (RFC 7692 6.1)"
    payload = b"".join(f[3] for f in frames)
    if rsv & RSV1:
        payload = decompressor.decompress(payload + TAIL)
    return opcode, payload


@pytest.mark.parametrize("data", [COMPRESSIBLE, COMPRESSIBLE.encode(), os.urandom(50_000), "", b""])
def test_fragmented_message_round_trips_uncompressed(data):
    conn = server_connection()
    per_step = steps(conn, data, 7_000)
    assert all(len(frames) == 1 for frames in per_step), "one frame per step"
    frames = [f for step in per_step for f in step]
    assert len(frames) == max(1, -(-len(data) // 7_000))
    assert all(f[2] == 0 for f in frames)
    opcode, payload = reassemble(frames)
    expected = data.encode() if isinstance(data, str) else data
    assert (opcode, payload) == (Opcode.TEXT if isinstance(data, str) else Opcode.BINARY, expected)


@pytest.mark.parametrize("data", [COMPRESSIBLE, COMPRESSIBLE.encode(), os.urandom(50_000)])
def test_fragmented_message_is_one_deflate_stream_with_rsv1_on_first_frame_only(data):
    conn = deflate_conn()
    frames = [f for step in steps(conn, data, 10_000) for f in step]
    assert len(frames) > 2
    assert frames[0][2] == RSV1
    _, payload = reassemble(frames, zlib.decompressobj(wbits=-12))
    assert payload == (data.encode() if isinstance(data, str) else data)
    # The trailing 00 00 ff ff is removed once, at the end of the message.
    assert not frames[-1][3].endswith(TAIL)


@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_context_takeover_rule_holds_across_fragmented_and_whole_messages(no_context_takeover):
    conn = deflate_conn(no_context_takeover)
    decompressor = zlib.decompressobj(wbits=-12)
    for round_ in range(3):
        frames = [f for step in steps(conn, COMPRESSIBLE, 20_000) for f in step]
        _, payload = reassemble(frames, decompressor)
        assert payload == COMPRESSIBLE.encode()
        conn.send_text(COMPRESSIBLE[:5000])
        ((opcode, fin, rsv, data),) = parse_server_frames(conn.data_to_send())
        assert (opcode, fin, rsv) == (Opcode.TEXT, True, RSV1)
        if no_context_takeover:
            # Each message must inflate with a fresh decompressor.
            assert zlib.decompressobj(wbits=-12).decompress(data + TAIL) == COMPRESSIBLE[:5000].encode()
        else:
            assert decompressor.decompress(data + TAIL) == COMPRESSIBLE[:5000].encode()
        if no_context_takeover:
            decompressor = zlib.decompressobj(wbits=-12)


def test_ping_answered_between_fragments_is_a_whole_control_frame():
    conn = deflate_conn()
    gen = conn.send_fragments(COMPRESSIBLE, 30_000)
    next(gen)
    first = parse_server_frames(conn.data_to_send())
    conn.receive_data(client_frame(Opcode.PING, b"p"))
    rest = []
    for _ in gen:
        rest += parse_server_frames(conn.data_to_send())
    assert parse_server_frames(conn.data_to_send()) == []
    pong = [f for f in rest if f[0] == Opcode.PONG]
    assert pong == [(Opcode.PONG, True, 0, b"p")]  # 5.4: control frames may be injected
    _, payload = reassemble(first + [f for f in rest if f[0] != Opcode.PONG], zlib.decompressobj(wbits=-12))
    assert payload == COMPRESSIBLE.encode()


def test_fragment_step_after_close_raises():
    conn = server_connection()
    gen = conn.send_fragments(b"x" * 100, 10)
    next(gen)
    conn.send_close()
    with pytest.raises(ConnectionClosedError):
        next(gen)
