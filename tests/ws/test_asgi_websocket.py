"""The ASGI websocket protocol against a real server, with a real client
library (websockets) and with raw sockets for what real clients will not send."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgiws.exceptions import ClientDisconnected
from examples.hello import websocket_echo
from tests.rawws import RawWebSocket, handshake_request
from tests.wire import Opcode, client_frame, close_payload

# Raw clients here rarely answer the server's close frame: do not wait 5 s for each.
pytestmark = pytest.mark.server_defaults(ws_close_timeout=0.5)


async def echo_app(scope, receive, send):
    assert scope["type"] == "websocket"
    await websocket_echo(receive, send)


def url(server, path="/"):
    return f"ws://127.0.0.1:{server.port}{path}"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


# -- the happy path, with a real client ---------------------------------------------------


def test_echo_text_and_binary_with_websockets_client(run_server):
    async def main(server):
        async with connect(url(server), compression=None) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff" * 1000)
            assert await ws.recv() == b"\x00\xff" * 1000
            big = "x" * 300_000
            await ws.send(big)
            assert await ws.recv() == big

    with run_server(echo_app) as server:
        run(main(server))


def test_scope_carries_websocket_fields(run_server):
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)
        await receive()
        await send({"type": "websocket.close"})

    async def main(server):
        with pytest.raises(InvalidStatus):
            async with connect(url(server, "/chat/r%C3%A9?x=1"), subprotocols=["a", "b"]):
                pass

    with run_server(app) as server:
        run(main(server))
    assert seen["type"] == "websocket"
    assert seen["asgi"]["version"] == "3.0"
    assert seen["path"] == "/chat/ré"
    assert seen["raw_path"] == b"/chat/r%C3%A9"
    assert seen["query_string"] == b"x=1"
    assert seen["scheme"] == "ws"
    assert seen["subprotocols"] == ["a", "b"]
    assert "websocket.http.response" in seen["extensions"]
    assert seen["client"][0] == "127.0.0.1"


def test_accept_with_subprotocol_and_headers(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "b", "headers": [(b"x-room", b"42")]})
        await send({"type": "websocket.close", "code": 1000})

    async def main(server):
        async with connect(url(server), subprotocols=["a", "b"]) as ws:
            assert ws.subprotocol == "b"
            assert ws.response.headers["x-room"] == "42"

    with run_server(app) as server:
        run(main(server))


def test_subprotocol_not_offered_is_an_app_error_500(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "nope"})

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status == 500


def test_app_close_code_and_reason_reach_the_client(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "room full"})

    async def main(server):
        async with connect(url(server)) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 4001
            assert info.value.rcvd.reason == "room full"

    with run_server(app) as server:
        run(main(server))


def test_client_close_reaches_app_as_disconnect_with_code(run_server):
    received: list[dict] = []
    done = asyncio.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        received.append(await receive())

    async def main(server):
        async with connect(url(server)) as ws:
            await ws.close(code=4100, reason="bye")

    with run_server(app) as server:
        run(main(server))
    del done
    assert received == [{"type": "websocket.disconnect", "code": 4100, "reason": "bye"}]


def test_send_after_disconnect_raises_oserror(run_server):
    errors: list[BaseException] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            errors.append(exc)

    async def main(server):
        async with connect(url(server)) as ws:
            await ws.close()
        await asyncio.sleep(0.2)

    with run_server(app) as server:
        run(main(server))
    assert len(errors) == 1


def test_close_before_accept_is_403(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close"})

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status == 403


def test_denial_response_extension(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"who are ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"you?"})

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status == 401
        assert ws.headers["transfer-encoding"] == "chunked"
        body = ws.read_body()
        assert b"who are " in body and b"you?" in body and body.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("name", [b"x y", b"a:b", b"x\r\ny"])
def test_accept_with_header_name_that_is_not_a_token_is_500_and_not_written(run_server, caplog, name):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept", "headers": [(name, b"1")]})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status_line == "HTTP/1.1 500 Internal Server Error"
        assert ws.read_body() == b"Internal Server Error\n"
        assert b"\r\n" + name + b": 1\r\n" not in ws.buffer
    assert f"Invalid websocket.accept: invalid response header {name!r}: the name is not an RFC 9110 token" \
        in caplog.text


@pytest.mark.parametrize("name", [b"x y", b"a:b", b"x\r\ny", "x y"])
def test_denial_with_header_name_that_is_not_a_token_is_500_and_not_written(run_server, caplog, name):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": [(name, b"1")]})
        await send({"type": "websocket.http.response.body", "body": b"denied"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status_line == "HTTP/1.1 500 Internal Server Error"
        assert ws.read_body() == b"Internal Server Error\n"
    encoded = name.encode() if isinstance(name, str) else name
    assert f"invalid response header {encoded!r}: the name is not an RFC 9110 token" in caplog.text


def test_denial_with_header_value_holding_crlf_is_500_and_not_written(run_server, caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"x-evil", b"a\r\nSet-Cookie: owned=1")]})
        await send({"type": "websocket.http.response.body", "body": b"denied"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status == 500
        assert b"owned" not in ws.read_body()
    assert "invalid response header b'x-evil': the value" in caplog.text


@pytest.mark.parametrize("status", [700, 99, "401", None])
def test_denial_with_status_outside_100_to_599_is_500_and_logged_never_written(run_server, caplog, status):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": status, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"denied"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status_line == "HTTP/1.1 500 Internal Server Error"
        assert ws.read_body() == b"Internal Server Error\n"
    assert f"invalid HTTP status {status!r}: expected a three-digit code from 100 to 599" in caplog.text


def test_denial_head_carries_server_and_date_once(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403,
                    "headers": [("Content-Length", "6"), ("server", "mine")]})
        await send({"type": "websocket.http.response.body", "body": b"denied"})

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status_line == "HTTP/1.1 403 Forbidden"
        assert ws.headers["server"] == "mine"
        assert "date" in ws.headers and ws.headers["connection"] == "close"
        assert "transfer-encoding" not in ws.headers
        assert ws.read_body() == b"denied"


def test_send_after_close_raises_the_one_client_disconnected(run_server):
    raised = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        try:
            await send({"type": "websocket.send", "text": "late"})
        except OSError as exc:
            raised.append(exc)

    async def main(server):
        async with connect(url(server), compression=None) as ws:
            await ws.close()
        for _ in range(100):
            if raised:
                break
            await asyncio.sleep(0.05)

    with run_server(app) as server:
        run(main(server))
    assert type(raised[0]) is ClientDisconnected


def test_app_exception_before_accept_is_500(run_server):
    async def app(scope, receive, send):
        raise ValueError("boom")

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status == 500


def test_app_exception_after_accept_closes_1011(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        raise ValueError("boom")

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.status == 101
        assert ws.read_close() == (1011, "")
        assert ws.at_eof()


def test_app_returning_without_close_closes_1000(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})

    with run_server(app) as server:
        ws = RawWebSocket(server.port)
        assert ws.read_close() == (1000, "")


def test_send_before_accept_is_a_clear_runtime_error(run_server, caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.send", "text": "hi"})

    with caplog.at_level(logging.ERROR):
        with run_server(app) as server:
            ws = RawWebSocket(server.port)
            assert ws.status == 500
    assert "Expected ASGI message 'websocket.accept'" in caplog.text
    assert "but got 'websocket.send'" in caplog.text


# -- the opening handshake ----------------------------------------------------------------


def test_sec_websocket_accept_matches_rfc_example(run_server):
    with run_server(echo_app) as server:
        ws = RawWebSocket(server.port, request=handshake_request(key="dGhlIHNhbXBsZSBub25jZQ=="))
        assert ws.status == 101
        assert ws.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert ws.headers["upgrade"].lower() == "websocket"


def test_version_8_gets_426_with_supported_version(run_server):
    with run_server(echo_app) as server:
        ws = RawWebSocket(server.port, request=handshake_request(version="8"))
        assert ws.status == 426
        assert ws.headers["sec-websocket-version"] == "13"
        ws.read_body()
        assert ws.at_eof()


@pytest.mark.parametrize("key", ["c2hvcnQ=", "not base64!!", "MTIzNDU2Nzg5MDEy", "", "A" * 24,
                                 "AAAAAAAAAAAAAAAAAAAAAA=", "dGhlIHNhbXBsZSBub25jZQ==x",
                                 "dGhlIHNhbXBsZSBub25jZQ==\x00"])
def test_bad_sec_websocket_key_gets_400_and_app_is_not_called(run_server, key):
    called = []

    async def app(scope, receive, send):
        called.append(scope)

    with run_server(app) as server:
        ws = RawWebSocket(server.port, request=handshake_request(key=key))
        assert ws.status == 400
    assert called == []


def test_frames_pipelined_behind_the_request_are_not_lost(run_server):
    with run_server(echo_app) as server:
        request = handshake_request() + client_frame(Opcode.TEXT, b"early")
        ws = RawWebSocket(server.port, request=request)
        assert ws.status == 101
        assert ws.read_frame() == (Opcode.TEXT, True, b"early")


# -- frames and close codes, raw ----------------------------------------------------------


def open_raw(server) -> RawWebSocket:
    ws = RawWebSocket(server.port)
    assert ws.status == 101
    return ws


def test_ping_is_answered_with_same_payload(run_server):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(client_frame(Opcode.PING, b"are you there"))
        assert ws.read_frame() == (Opcode.PONG, True, b"are you there")


def test_server_closes_1002_on_unmasked_client_frame(run_server):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(client_frame(Opcode.TEXT, b"hi", masked=False))
        assert ws.read_close()[0] == 1002
        assert ws.at_eof()


def test_server_closes_1007_on_invalid_utf8_text(run_server):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(client_frame(Opcode.TEXT, b"ok \xff\xfe"))
        assert ws.read_close()[0] == 1007


def test_server_closes_1009_on_oversized_text_from_header_alone(run_server):
    with run_server(echo_app, ws_max_size=1000) as server:
        ws = open_raw(server)
        # Only the header is sent: the server must not wait for 2000 bytes.
        ws.send(client_frame(Opcode.TEXT, b"", length=2000)[:8])
        assert ws.read_close()[0] == 1009


def test_messages_before_a_protocol_error_are_delivered_first(run_server):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(client_frame(Opcode.TEXT, b"one") + client_frame(Opcode.TEXT, b"two") + client_frame(0x3, b"reserved opcode"))
        assert ws.read_frame() == (Opcode.TEXT, True, b"one")
        assert ws.read_frame() == (Opcode.TEXT, True, b"two")
        assert ws.read_close()[0] == 1002


def test_client_close_is_echoed_and_server_closes_tcp(run_server):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(client_frame(Opcode.CLOSE, close_payload(1000, b"done")))
        assert ws.read_close()[0] == 1000
        assert ws.at_eof()


def test_fragmented_message_with_interleaved_ping(run_server):
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(client_frame(Opcode.TEXT, b"frag", fin=False) + client_frame(Opcode.PING, b"p") + client_frame(0x0, b"mented"))
        assert ws.read_frame() == (Opcode.PONG, True, b"p")
        assert ws.read_frame() == (Opcode.TEXT, True, b"fragmented")


# -- heartbeat and close timeout ----------------------------------------------------------


def test_client_that_never_answers_pings_is_closed_1011(run_server):
    with run_server(echo_app, ws_ping_interval=0.2, ws_ping_timeout=0.3) as server:
        ws = open_raw(server)
        opcode, _, _ = ws.read_frame()
        assert opcode == Opcode.PING
        assert ws.read_close()[0] == 1011
        assert ws.at_eof()


@pytest.mark.parametrize(("interval", "timeout"), [(1.0, 0.4), (0.3, 0.8)], ids=["timeout-first", "ping-first"])
def test_missing_pong_closes_1011_at_its_deadline_within_a_tick_never_before(run_server, interval, timeout):
    # The pong deadline lives in the worker's ping wheel (tick: a twentieth of the interval): shorter
    # than the interval, it must not wait for the next ping; longer, the next pings go out meanwhile.
    with run_server(echo_app, ws_ping_interval=interval, ws_ping_timeout=timeout) as server:
        ws = open_raw(server)
        opcode, _, _ = ws.read_frame()
        assert opcode == Opcode.PING
        pinged = time.monotonic()
        pings = 0
        while True:
            opcode, _, payload = ws.read_frame()
            if opcode != Opcode.PING:
                break
            pings += 1  # not answered either
        assert opcode == Opcode.CLOSE and int.from_bytes(payload[:2], "big") == 1011
        waited = time.monotonic() - pinged
        assert timeout - 0.02 <= waited <= timeout + interval / 20 + 0.5, waited
        assert pings == int(timeout // interval)  # the pings due before the deadline, and no more


def test_client_answering_pings_stays_connected(run_server):
    async def main(server):
        async with connect(url(server), ping_interval=None) as ws:
            await asyncio.sleep(1.0)  # several server pings, answered by the client library
            await ws.send("still here")
            assert await ws.recv() == "still here"

    with run_server(echo_app, ws_ping_interval=0.1, ws_ping_timeout=0.3) as server:
        run(main(server))


def test_client_that_never_answers_close_is_dropped_after_close_timeout(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        await asyncio.sleep(10)

    # The app outlives the test: shutdown cancels it after a short graceful timeout.
    with run_server(app, ws_close_timeout=0.3, timeout_graceful_shutdown=0.3) as server:
        ws = open_raw(server)
        assert ws.read_close()[0] == 1000
        assert ws.at_eof(timeout=3)


# -- server-wide behaviour ----------------------------------------------------------------


def test_trace_logs_one_line_per_frame_each_way(run_server, caplog):
    with caplog.at_level(5, logger="asgiws.trace"):
        with run_server(echo_app, log_level="trace") as server:
            ws = open_raw(server)
            ws.send(client_frame(Opcode.TEXT, b"hello"))
            assert ws.read_frame() == (Opcode.TEXT, True, b"hello")
            ws.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "asgiws.trace"]
    assert any("<" in line and "TEXT" in line and "len=5" in line and "mask=1" in line for line in lines)
    assert any(">" in line and "TEXT" in line and "len=5" in line and "mask=0" in line for line in lines)


def test_upgrade_gets_an_access_log_line(run_server, caplog):
    with caplog.at_level(logging.INFO, logger="asgiws.access"):
        with run_server(echo_app) as server:
            ws = open_raw(server)
            ws.close()
    assert any("101" in r.getMessage() and "GET /" in r.getMessage() for r in caplog.records)


def test_allowed_origins_rejects_other_origin_with_403(run_server):
    called = []

    async def app(scope, receive, send):
        called.append(1)
        await echo_app(scope, receive, send)

    with run_server(app, ws_allowed_origins=("https://*.example.com",)) as server:
        bad = RawWebSocket(server.port, request=handshake_request(extra="Origin: https://evil.test\r\n"))
        assert bad.status == 403
        good = RawWebSocket(server.port, request=handshake_request(extra="Origin: https://app.example.com\r\n"))
        assert good.status == 101
    assert called == [1]


def test_message_rate_limit_closes_1008(run_server):
    with run_server(echo_app, ws_max_message_rate=5, ws_max_message_burst=3) as server:
        ws = open_raw(server)
        ws.send(b"".join(client_frame(Opcode.TEXT, b"m") for _ in range(10)))
        assert ws.read_close()[0] == 1008


def test_json_round_trip_with_many_concurrent_clients(run_server):
    async def client(server, n):
        async with connect(url(server)) as ws:
            for i in range(20):
                await ws.send(json.dumps({"client": n, "seq": i}))
                assert json.loads(await ws.recv()) == {"client": n, "seq": i}

    async def main(server):
        await asyncio.gather(*(client(server, n) for n in range(30)))

    with run_server(echo_app) as server:
        run(main(server))


def test_64_bit_length_with_top_bit_set_is_closed_1002(run_server):
    # 5.2: "the most significant bit MUST be 0": a protocol error, not a size one.
    with run_server(echo_app) as server:
        ws = open_raw(server)
        ws.send(bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + b"\0\0\0\0")
        assert ws.read_close()[0] == 1002


def test_server_shutdown_sends_1001_to_open_websockets(run_server):
    disconnects: list[dict] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        disconnects.append(await receive())

    with run_server(app) as server:
        sockets = [open_raw(server) for _ in range(5)]
        server.call(lambda: setattr(server.server, "should_exit", True))
        for ws in sockets:
            assert ws.read_close()[0] == 1001
    assert [d["code"] for d in disconnects] == [1001] * 5


def test_no_websocket_task_or_socket_left_after_many_cycles(run_server):
    with run_server(echo_app) as server:
        for _ in range(200):
            ws = open_raw(server)
            ws.send(client_frame(Opcode.TEXT, b"x") + client_frame(Opcode.CLOSE, close_payload(1000)))
            assert ws.read_frame() == (Opcode.TEXT, True, b"x")
            assert ws.read_close()[0] == 1000
            ws.close()
        probe = socket.create_connection(("127.0.0.1", server.port))
        probe.close()


def test_server_closes_tcp_as_soon_as_its_close_is_answered(run_server):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000})

    with run_server(app, ws_close_timeout=30) as server:
        ws = open_raw(server)
        assert ws.read_close()[0] == 4000
        ws.send(client_frame(Opcode.CLOSE, close_payload(4000)))
        # 7.1.1: the server closes TCP once the handshake is done, not after the 30 s timeout.
        assert ws.at_eof(timeout=2)


def test_concurrent_sends_never_interleave_with_a_fragmented_message(run_server):
    big = b"z" * (3 * 1024 * 1024)  # over the fragment size: goes out in several frames

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.gather(
            send({"type": "websocket.send", "bytes": big}),
            *(send({"type": "websocket.send", "text": f"small {i}"}) for i in range(5)),
        )
        await send({"type": "websocket.close"})

    with run_server(app) as server:
        ws = open_raw(server)
        messages, fragments = [], []
        while True:
            opcode, fin, payload = ws.read_frame()
            if opcode == Opcode.CLOSE:
                break
            if fragments and opcode != 0x0:
                raise AssertionError(f"opcode {opcode} inside a fragmented message")
            fragments.append(payload)
            if fin:
                messages.append(b"".join(fragments))
                fragments = []
    assert big in messages
    assert sorted(m for m in messages if m != big) == [f"small {i}".encode() for i in range(5)]
