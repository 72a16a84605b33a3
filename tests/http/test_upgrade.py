"""The WebSocket hand-off: a parsed request and its trailing bytes go to the ws side."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types

import pytest

from rawhttp import RawClient

UPGRADE = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class FakeWebSocketProtocol(asyncio.Protocol):
    """Records what take_over received and answers with a marker."""

    taken: list[dict] = []

    def __init__(self, *, config, server_state, app, loop):
        self.server_state = server_state

    def take_over(self, transport, scope, method, trailing_data):
        previous = transport.get_protocol()
        transport.set_protocol(self)
        self.server_state.hand_over(previous, self)
        self.transport = transport
        self.received = bytearray(trailing_data)
        FakeWebSocketProtocol.taken.append({"scope": scope, "method": method, "trailing": trailing_data})
        transport.write(b"TAKEN:" + trailing_data)

    def data_received(self, data):
        self.transport.write(b"MORE:" + data)

    def shutdown(self, close_code):
        self.transport.close()

    def connection_lost(self, exc):
        self.server_state.remove_connection(self, None)


@pytest.fixture
def fake_ws(monkeypatch):
    module = types.ModuleType("asgiws.protocols.websocket")
    module.WebSocketProtocol = FakeWebSocketProtocol
    monkeypatch.setitem(sys.modules, "asgiws.protocols.websocket", module)
    FakeWebSocketProtocol.taken = []
    return FakeWebSocketProtocol


async def http_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["type"].encode()})


def recv_until(client, marker):
    deadline = time.monotonic() + 5
    while marker not in client.buffer and time.monotonic() < deadline:
        client._fill()
    return client.buffer


def test_upgrade_handed_off_with_scope_and_trailing_bytes(run_server, fake_ws):
    with run_server(http_app, root_path="/r") as server:
        client = RawClient(server.port)
        client.send(UPGRADE + b"\x81\x05early")
        assert recv_until(client, b"early").endswith(b"TAKEN:\x81\x05early")
        client.send(b"later")
        assert recv_until(client, b"MORE:later").endswith(b"MORE:later")
    taken = fake_ws.taken[0]
    scope = taken["scope"]
    assert taken["method"] == "GET"
    assert taken["trailing"] == b"\x81\x05early"
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert "method" not in scope
    assert scope["path"] == "/r/chat"
    assert scope["query_string"] == b"room=1"
    assert scope["root_path"] == "/r"
    assert (b"upgrade", b"WebSocket") in scope["headers"]


def test_upgrade_from_trusted_proxy_gets_wss_scheme_and_forwarded_client(run_server, fake_ws):
    forwarded = UPGRADE.replace(
        b"Host: x\r\n", b"Host: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.7\r\n"
    )
    with run_server(http_app) as server:
        client = RawClient(server.port)
        client.send(forwarded)
        assert recv_until(client, b"TAKEN:") == b"TAKEN:"
    scope = fake_ws.taken[0]["scope"]
    assert scope["scheme"] == "wss"
    assert scope["client"] == ("203.0.113.7", 0)


def test_upgrade_behind_pipelined_request_waits_its_turn(run_server, fake_ws):
    with run_server(http_app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + UPGRADE)
        assert client.read_response().body == b"http"
        assert recv_until(client, b"TAKEN:") == b"TAKEN:"


def test_h2c_upgrade_is_served_as_http(run_server, fake_ws):
    with run_server(http_app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        assert client.read_response().body == b"http"
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().body == b"http"
    assert fake_ws.taken == []


def test_upgrade_over_concurrency_limit_is_503(run_server, fake_ws):
    release = threading.Event()

    async def slow(scope, receive, send):
        while not release.is_set():
            await asyncio.sleep(0.01)
        await http_app(scope, receive, send)

    with run_server(slow, limit_concurrency=1) as server:
        busy = RawClient(server.port)
        busy.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        client = RawClient(server.port)
        client.send(UPGRADE)
        assert client.read_response().status == 503
        release.set()
        assert busy.read_response().status == 200
    assert fake_ws.taken == []


def test_upgrade_without_websocket_support_is_501(run_server, monkeypatch):
    monkeypatch.setitem(sys.modules, "asgiws.protocols.websocket", None)
    with run_server(http_app) as server:
        client = RawClient(server.port)
        client.send(UPGRADE)
        assert client.read_response().status == 501
