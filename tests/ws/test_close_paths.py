"""Close paths, shutdown and flow control of the WebSocket session, on real sockets
with the websockets client and raw clients (issue 15 sections 2 and 2b)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from asgiws.protocols.websocket import WebSocketProtocol
from asgiws.websocket.connection import ServerConnection
from tests.rawws import RawWebSocket, handshake_request
from tests.wire import client_frame, close_payload

TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def url(server, path="/"):
    return f"ws://127.0.0.1:{server.port}{path}"


def open_raw(server, path="/") -> RawWebSocket:
    ws = RawWebSocket(server.port, request=handshake_request(path), timeout=10)
    assert ws.status == 101
    return ws


# -- a client's Close is answered at once (RFC 6455 5.5.1) ---------------------------------------


def test_client_close_is_answered_at_once_for_an_app_that_only_sends(run_server):
    outcome: list[str] = []

    async def push_only(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        try:
            while True:
                await send({"type": "websocket.send", "text": "tick"})
                await asyncio.sleep(0.01)
        except OSError as exc:  # ClientDisconnected
            outcome.append(type(exc).__name__)

    async def main(server):
        async with connect(url(server), close_timeout=10) as ws:
            assert await ws.recv() == "tick"
            await ws.close()
            # Our 1000 came back (before: data frames for 5 s, then 1006).
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
            assert ws.close_code == 1000

    with run_server(push_only, ws_close_timeout=30) as server:
        run(main(server))
        deadline = time.monotonic() + 10
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.01)
    assert outcome == ["ClientDisconnected"]


def test_messages_before_a_client_close_reach_the_app_before_the_disconnect(run_server):
    received: list[dict] = []

    async def slow_reader(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0.3)  # the client's messages and close arrive meanwhile
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "websocket.disconnect":
                return

    with run_server(slow_reader) as server:
        ws = open_raw(server)
        ws.send(client_frame(TEXT, b"one") + client_frame(TEXT, b"two") + client_frame(CLOSE, close_payload(4000, b"done")))
        assert ws.read_close() == (4000, "")
        assert ws.at_eof(timeout=10)
    assert received == [
        {"type": "websocket.receive", "text": "one"},
        {"type": "websocket.receive", "text": "two"},
        {"type": "websocket.disconnect", "code": 4000, "reason": "done"},
    ]


# -- shutdown ----------------------------------------------------------------------------------------


def test_shutdown_answers_a_websocket_not_yet_accepted_with_503_and_disconnects_the_app(run_server):
    seen: list[dict] = []

    async def deliberating(scope, receive, send):
        await receive()
        seen.append(await receive())  # never accepts: waits for the next message

    with run_server(deliberating, timeout_graceful_shutdown=30) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(handshake_request())
        time.sleep(0.2)
        server.call(lambda: setattr(server.server, "should_exit", True))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 503 ")
        sock.close()
    assert seen == [{"type": "websocket.disconnect", "code": 1001, "reason": ""}]


def test_shutdown_waits_for_app_tasks_cleaning_up_after_disconnect(run_server):
    events: list[str] = []

    async def cleans_up(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            await asyncio.sleep(0.5)  # work after the response
            events.append("http work done")
            return
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        await asyncio.sleep(0.5)
        events.append("websocket cleanup done")

    with run_server(cleans_up, timeout_graceful_shutdown=20) as server:
        ws = open_raw(server)
        assert httpx.get(server.url("/"), timeout=10).text == "ok"
        server.call(lambda: setattr(server.server, "should_exit", True))
        assert ws.read_close()[0] == 1001
        ws.send(client_frame(CLOSE, close_payload(1001)))
    assert sorted(events) == ["http work done", "websocket cleanup done"]


def test_shutdown_cancels_app_tasks_past_the_graceful_timeout(run_server, caplog):
    events: list[str] = []

    async def stubborn(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), \
            run_server(stubborn, timeout_graceful_shutdown=0.5, ws_close_timeout=0.3) as server:
        ws = open_raw(server)
        server.call(lambda: setattr(server.server, "should_exit", True))
        assert ws.read_close()[0] == 1001
    assert events == ["cancelled"]
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in caplog.text


# -- unexpected errors in the codec ------------------------------------------------------------------


def test_unexpected_codec_exception_closes_1011_with_a_log_line(run_server, monkeypatch, caplog):
    original = ServerConnection.receive_data

    def receive_data(self, data, messages=None):
        received = []  # the session's messages (its websocket.receive dicts), then theirs
        events = original(self, data, received)
        if any(message.get("text") == "boom" for message in received):
            raise MemoryError("extension bug")
        if messages is None:
            return received + events
        for message in received:
            messages.append(message)
        return events

    monkeypatch.setattr(ServerConnection, "receive_data", receive_data)

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app, ws_close_timeout=0.5) as server:
        ws = open_raw(server)
        ws.send(client_frame(TEXT, b"boom"))
        assert ws.read_close() == (1011, "")  # no details to the client
        assert ws.at_eof(timeout=10)
    assert "Unexpected error in the WebSocket codec for 127.0.0.1" in caplog.text
    assert "MemoryError: extension bug" in caplog.text


# -- reading pauses at --ws-max-queue and resumes at a quarter of it ----------------------------------


def test_reading_resumes_only_at_the_low_water_mark(run_server, monkeypatch):
    resumes: list[int] = []
    original = WebSocketProtocol._resume_reading

    def counting_resume(self):
        if self._reading_paused:
            resumes.append(len(self.session.messages))
        original(self)

    monkeypatch.setattr(WebSocketProtocol, "_resume_reading", counting_resume)
    got: list[bytes] = []
    total = 300

    async def slow_app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while len(got) < total:
            message = await receive()
            got.append(message["bytes"])
            await asyncio.sleep(0.001)
        await send({"type": "websocket.close"})

    with run_server(slow_app, ws_max_queue=8) as server:
        ws = open_raw(server)
        ws.send(b"".join(client_frame(BINARY, struct.pack("!I", i) * 250) for i in range(total)))
        assert ws.read_close()[0] == 1000
    assert got == [struct.pack("!I", i) * 250 for i in range(total)]
    assert resumes, "reading never paused"
    assert all(queued <= 8 // 4 for queued in resumes), resumes
    # Between two resumes the queue refilled from <= 2 to >= 8: at most one resume per 6 messages.
    assert len(resumes) <= total // 6 + 1


# -- a failure close reaches a client that is still sending (issue 15 section 2b) ---------------------


def _stream_until_stopped(sock: socket.socket, stop: threading.Event, errors: list[OSError]) -> None:
    chunk = b"\0" * 65536
    try:
        while not stop.is_set():
            sock.sendall(chunk)
    except OSError as exc:
        if not stop.is_set():
            errors.append(exc)  # a RST (or EPIPE): most clients give up here and report 1006


@pytest.mark.parametrize("attempt", range(5))
def test_client_streaming_past_max_size_reads_the_1009_close_every_time(run_server, attempt):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    with run_server(app, ws_max_size=100_000, ws_close_timeout=5) as server:
        ws = open_raw(server)
        # A frame declared at 1 MiB, then its payload streamed nonstop.
        ws.send(client_frame(BINARY, b"", length=1 << 20)[:14])
        stop = threading.Event()
        errors: list[OSError] = []
        sender = threading.Thread(target=_stream_until_stopped, args=(ws.sock, stop, errors), daemon=True)
        sender.start()
        try:
            assert ws.read_close() == (1009, "message over 100000 bytes")
            # The server ended its side (EOF) and still reads what the client sends.
            assert ws.sock.recv(65536) == b""
            time.sleep(0.2)
            assert sender.is_alive() and errors == []
        finally:
            stop.set()
            sender.join(10)
            ws.close()
