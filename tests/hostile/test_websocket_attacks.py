"""Hostile WebSocket clients against a real server (issue 7), over raw sockets.

Named after the attack each test defends against. Already covered in
tests/ws/test_asgi_websocket.py and not repeated: version 8 -> 426, bad keys ->
400, unmasked frame 1002, invalid UTF-8 1007, 1009 from the header alone, a
64-bit length with its top bit set 1002, pings never answered 1011, close never
answered, origins 403, rate 1008, app raising before/after accept (500/1011).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest

from tests.hostile.apps import ws_echo as echo_app
from tests.hostile.memory import ServerProcess, open_fds
from tests.rawws import RawWebSocket, handshake_request
from tests.wire import RSV1, RSV2, RSV3, Opcode, client_frame, close_payload

# Hostile clients rarely answer the server's close frame and never need its
# keep-alive pings: wait 0.5 s for a close, not 5 s, and send no pings (pings
# are tested on their own in tests/ws).
pytestmark = pytest.mark.server_defaults(ws_close_timeout=0.5, ws_ping_interval=None)


def open_raw(server, extra: str = "") -> RawWebSocket:
    ws = RawWebSocket(server.port, request=handshake_request(extra=extra))
    assert ws.status == 101
    return ws


# RFC 6455 "MUST _Fail the WebSocket Connection_" cases, with the close code
# the server sends (7.4.1): 1002 protocol error, 1007 inconsistent data.
MUST_FAIL = {
    # 5.2: RSV bits MUST be 0 unless an extension defining them was negotiated.
    "rsv1_without_extension": (client_frame(Opcode.TEXT, b"x", rsv=RSV1), 1002),
    "rsv2_set": (client_frame(Opcode.TEXT, b"x", rsv=RSV2), 1002),
    "rsv3_set": (client_frame(Opcode.TEXT, b"x", rsv=RSV3), 1002),
    # 5.2: reserved opcodes.
    "reserved_data_opcode_3": (client_frame(0x3, b""), 1002),
    "reserved_data_opcode_7": (client_frame(0x7, b""), 1002),
    "reserved_control_opcode_b": (client_frame(0xB, b""), 1002),
    "reserved_control_opcode_f": (client_frame(0xF, b""), 1002),
    # 5.5: control frames MUST have a payload of 125 bytes or less and MUST NOT be fragmented.
    "ping_payload_over_125": (client_frame(Opcode.PING, b"x" * 126), 1002),
    "close_payload_over_125": (client_frame(Opcode.CLOSE, close_payload(1000, b"x" * 124)), 1002),
    "fragmented_ping": (client_frame(Opcode.PING, b"x", fin=False), 1002),
    # 5.4: a continuation with nothing to continue; a new message inside a fragmented one.
    "continuation_without_start": (client_frame(Opcode.CONTINUATION, b"x"), 1002),
    "text_inside_fragmented_message": (client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"), 1002),
    # 5.1: client frames MUST be masked.
    "unmasked_close": (client_frame(Opcode.CLOSE, close_payload(1000), masked=False), 1002),
    # 5.5.1: a close body, if present, starts with a 2-byte code.
    "close_payload_of_one_byte": (client_frame(Opcode.CLOSE, b"\x03"), 1002),
    # 7.4.1/7.4.2: codes never sent on the wire, or unassigned.
    "close_code_999": (client_frame(Opcode.CLOSE, close_payload(999)), 1002),
    "close_code_1004": (client_frame(Opcode.CLOSE, close_payload(1004)), 1002),
    "close_code_1005": (client_frame(Opcode.CLOSE, close_payload(1005)), 1002),
    "close_code_1006": (client_frame(Opcode.CLOSE, close_payload(1006)), 1002),
    "close_code_1015": (client_frame(Opcode.CLOSE, close_payload(1015)), 1002),
    "close_code_1100": (client_frame(Opcode.CLOSE, close_payload(1100)), 1002),
    "close_code_5000": (client_frame(Opcode.CLOSE, close_payload(5000)), 1002),
    # 8.1: text (and close reasons) MUST be valid UTF-8.
    "invalid_utf8_in_close_reason": (client_frame(Opcode.CLOSE, close_payload(1000, b"\xff")), 1007),
    "invalid_utf8_split_over_fragments": (client_frame(Opcode.TEXT, b"\xce", fin=False) + client_frame(Opcode.CONTINUATION, b"\xff"), 1007),
    "surrogate_in_text": (client_frame(Opcode.TEXT, b"\xed\xa0\x80"), 1007),
    "overlong_utf8_in_text": (client_frame(Opcode.TEXT, b"\xc0\xaf"), 1007),
    "truncated_utf8_at_message_end": (client_frame(Opcode.TEXT, b"ok\xe2\x82"), 1007),
}


@pytest.mark.parametrize("data,code", MUST_FAIL.values(), ids=MUST_FAIL.keys())
def test_rfc6455_must_fail_case_closes_with_its_code(run_server, data, code):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(data)
        assert ws.read_close()[0] == code
        assert ws.at_eof()


def test_rsv1_on_control_frame_with_deflate_negotiated_is_1002(run_server):
    # RFC 7692 6: RSV1 is for the first frame of a data message only.
    with run_server(echo_app) as server:
        ws = open_raw(server, "Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert "permessage-deflate" in ws.headers.get("sec-websocket-extensions", "")
        ws.send(client_frame(Opcode.PING, b"x", rsv=RSV1))
        assert ws.read_close()[0] == 1002


def test_2_pow_63_length_is_closed_at_once_without_waiting_for_payload(run_server):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        start = time.monotonic()
        ws.send(bytes([0x82, 0xFF]) + struct.pack("!Q", (1 << 63) - 1) + b"mask")
        code, _ = ws.read_close()
        assert code == 1009  # a legal length, far over ws_max_size
        assert ws.at_eof(2)
        assert time.monotonic() - start < 1.5


def test_fragments_summing_over_limit_are_1009(run_server):
    with run_server(echo_app, ws_max_size=1000) as server:
        ws = open_raw(server)
        ws.send(client_frame(Opcode.BINARY, b"a" * 600, fin=False))
        ws.send(client_frame(Opcode.CONTINUATION, b"a" * 600)[:8])
        assert ws.read_close()[0] == 1009


def test_two_keys_get_400(run_server):
    with run_server(echo_app) as server:
        ws = RawWebSocket(server.port, request=handshake_request(extra="Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
        assert ws.status == 400


HEADER_BOMBS = {
    "protocol_list_60_kib": "Sec-WebSocket-Protocol: " + "a," * 30_000 + "a",
    "protocol_non_ascii": "Sec-WebSocket-Protocol: ch\xe9t",
    "protocol_empty_items": "Sec-WebSocket-Protocol: " + "," * 60_000,
    "extensions_60_kib": "Sec-WebSocket-Extensions: " + "permessage-deflate; client_max_window_bits," * 1400,
    "extension_params_60_kib": "Sec-WebSocket-Extensions: permessage-deflate" + "; x" * 20_000,
    "extensions_non_ascii": "Sec-WebSocket-Extensions: permessage-d\xe9flate",
    "extension_unterminated_quote": "Sec-WebSocket-Extensions: permessage-deflate; a=\"" + "b" * 60_000,
}


@pytest.mark.parametrize("header", HEADER_BOMBS.values(), ids=HEADER_BOMBS.keys())
def test_huge_or_non_ascii_negotiation_header_is_400_in_linear_time(run_server, header):
    called = []

    async def app(scope, receive, send):
        called.append(scope)
        await echo_app(scope, receive, send)

    with run_server(app) as server:
        request = handshake_request(extra=header + "\r\n").replace("\xe9".encode(), b"\xe9")
        start = time.monotonic()
        ws = RawWebSocket(server.port, request=request)
        elapsed = time.monotonic() - start
        assert ws.status == 400
        # Quadratic parsing of 60 KiB would take seconds; linear takes a millisecond.
        assert elapsed < 0.25, elapsed
    assert called == []


def _send_until_stalled(sock: socket.socket, data: bytes, limit: int, stall: float) -> int:
    """Send `data` repeatedly up to `limit` bytes; stop once the server stops reading for `stall` s."""
    sock.settimeout(stall)
    sent = 0
    view = memoryview(data)
    while sent < limit:
        try:
            sent += sock.send(view[sent % len(data):])
        except (socket.timeout, BlockingIOError):
            break
    return sent


def test_ping_flood_from_client_that_never_reads_pauses_reading_and_memory_stays_flat():
    with ServerProcess("tests.hostile.apps:hello", "--ws-ping-interval", "0") as server:
        ping = client_frame(Opcode.PING, b"p" * 125) * 512  # 67 KiB of pings per block
        # Warm up with one flood (allocator, code paths), measure a second one.
        idle_fds = server.fds
        warm = RawWebSocket(server.port)
        warm.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _send_until_stalled(warm.sock, ping, 50 * 1000 * 1000, stall=1.0)
        warm.close()
        # The baseline only once the server has dropped the warm-up connection
        # and what its unread pongs held: measured earlier, that memory's release
        # fell inside the measured flood and hid (or faked) growth.
        deadline = time.monotonic() + 10
        while server.fds > idle_fds and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.fds == idle_fds
        time.sleep(0.2)
        before = server.rss
        ws = RawWebSocket(server.port)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = _send_until_stalled(ws.sock, ping, 50 * 1000 * 1000, stall=1.0)
        after = server.rss
        print(f"ping flood: sent {sent} bytes before the server stopped reading; RSS {before} -> {after}")
        # Reading paused: the kernel buffers fill and the client cannot push 50 MB.
        assert sent < 50 * 1000 * 1000, sent
        assert after - before < 1024 * 1024, (before, after, sent)
        ws.close()
        warm.close()


def test_slow_consumer_makes_send_wait_and_memory_stays_bounded(run_server):
    progress: list[int] = []
    block = b"x" * 65536
    count = 1000  # 64 MiB if nothing waited

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        for i in range(count):
            await send({"type": "websocket.send", "bytes": block})
            progress.append(i)
        await receive()

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        time.sleep(0.5)  # not reading
        stalled_at = len(progress)
        buffered = server.call(
            lambda: max((c.transport.get_write_buffer_size() for c in server.server_state.connections), default=0))
        # send waited: only the kernel's socket buffers (a few MiB on loopback) are ahead of it.
        assert stalled_at < count // 2, stalled_at
        assert buffered <= 2 * len(block) + 65536, buffered
        for _ in range(count):
            assert ws.read_frame() == (Opcode.BINARY, True, block)
        assert len(progress) == count


def test_send_queue_overflow_on_a_client_that_does_not_read_closes_1008(run_server):
    disconnects: list[dict] = []
    # Under WS_FRAGMENT_SIZE: each is one write. (Larger messages go out in
    # fragments and concurrent sends wait behind them, so nothing piles up.)
    big = b"x" * (512 * 1024)

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        # Concurrent sends write onto a backlog the client is not draining.
        senders = [asyncio.ensure_future(send({"type": "websocket.send", "bytes": big})) for _ in range(16)]
        await asyncio.gather(*senders, return_exceptions=True)
        disconnects.append(await receive())

    with run_server(app, ws_max_send_queue=1024 * 1024) as server:
        ws = RawWebSocket(server.port)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deadline = time.monotonic() + 5
        while not disconnects and time.monotonic() < deadline:
            time.sleep(0.02)
        assert disconnects and disconnects[0]["code"] == 1008
        assert server.call(lambda: len(server.server_state.connections)) == 0
        ws.close()


def test_one_large_message_on_a_drained_transport_is_not_cut_off(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": b"y" * (8 * 1024 * 1024)})
        await receive()

    with run_server(app, ws_max_send_queue=1024 * 1024) as server:
        ws = RawWebSocket(server.port)
        opcode, fin, payload = ws.read_frame()
        while not fin:  # large messages may go out as fragments
            _, fin, more = ws.read_frame()
            payload += more
        assert opcode == Opcode.BINARY and len(payload) == 8 * 1024 * 1024


def test_app_that_never_calls_receive_pauses_reading_at_max_queue(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(30)

    # The app outlives the test: shutdown cancels it after a short graceful timeout.
    with run_server(app, ws_max_queue=8, timeout_graceful_shutdown=0.3) as server:
        ws = RawWebSocket(server.port)
        message = client_frame(Opcode.BINARY, b"z" * 1000)
        sent = _send_until_stalled(ws.sock, message * 64, 20 * 1000 * 1000, stall=0.5)
        assert sent < 20 * 1000 * 1000  # the server stopped reading
        state = server.call(lambda: [(len(c.session.messages), c._reading_paused)
                                     for c in server.server_state.connections if hasattr(c, "session")])
        # Paused once the queue reaches ws_max_queue; the frames of the read in hand are still queued.
        [(queued, paused)] = state
        assert paused
        assert 8 <= queued <= 8 + 262144 // len(message), queued
        ws.close()


def test_no_task_transport_or_fd_left_after_10000_connect_close_cycles(run_server):
    async def app(scope, receive, send):
        await receive()
        if scope["path"] == "/raise":
            raise RuntimeError("boom")
        await echo_app_after_connect(receive, send)

    async def echo_app_after_connect(receive, send):
        await send({"type": "websocket.accept"})
        message = await receive()
        if message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})
            await receive()

    with run_server(app, access_log=False) as server:
        baseline_fds = open_fds()
        kinds = [b"echo", b"drop", b"raise", b"abort"]
        deadline = time.monotonic() + 25
        cycles = 0
        while cycles < 10_000 and time.monotonic() < deadline:
            kind = kinds[cycles % 4]
            path = "/raise" if kind == b"raise" else "/"
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if kind == b"abort":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(handshake_request(path))
            if kind == b"echo":
                sock.sendall(client_frame(Opcode.TEXT, b"hi") + client_frame(Opcode.CLOSE, close_payload(1000)))
                while sock.recv(65536):
                    pass
            elif kind == b"raise":
                while sock.recv(65536):
                    pass
            sock.close()
            cycles += 1
        time.sleep(1.0)  # close timeouts (0.5 s) run out
        state = server.call(lambda: (len(server.server_state.tasks), len(server.server_state.connections)))
        assert cycles >= 2_000, cycles
        assert state == (0, 0), (cycles, state)
        assert open_fds() <= baseline_fds + 2, (baseline_fds, open_fds())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("payload_size", [0, 200_000], ids=["no-message", "large-binary-read-in-place"])
def test_closed_connections_are_freed_at_once_not_left_to_the_cyclic_gc(run_server, loop, payload_size):
    # Each connection holds zlib state (tens of KiB): a reference cycle through
    # the scope kept it until a full GC pass, and RSS grew with churn. The
    # transport also caches the bound get_buffer/buffer_updated of buffered
    # protocols it had before (the HTTP protocol, the large-frame reader):
    # those must not hold the connection, nor the HTTP parser, either.
    import gc

    from asgiws.protocols.http import HttpProtocol
    from asgiws.protocols.websocket import WebSocketProtocol

    def alive():
        objects = gc.get_objects()
        return (sum(type(o) is WebSocketProtocol for o in objects),
                sum(type(o) is HttpProtocol for o in objects))

    payload = os.urandom(payload_size)
    with run_server(echo_app, loop=loop) as server:
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                ws = RawWebSocket(server.port, request=handshake_request(
                    extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
                if payload:
                    ws.send(client_frame(Opcode.BINARY, payload))
                    assert ws.read_frame()[0] == Opcode.BINARY  # compressed: the raw client does not inflate
                ws.send(client_frame(Opcode.CLOSE, close_payload(1000)))
                ws.read_close()
                ws.at_eof()
                ws.close()
            time.sleep(0.2)
            counts = server.call(alive)
        finally:
            gc.enable()
        assert counts == (0, 0)
