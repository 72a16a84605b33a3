"""HTTP/1.1 against a real asgiws server: httpx for the ordinary, raw sockets for the rest."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time

import httpx
import pytest

from asgiws.config import HTTP_READ_SIZE
from asgiws.exceptions import ClientDisconnected
from rawhttp import RawClient


async def hello(scope, receive, send):
    assert scope["type"] == "http"
    body = b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def make_echo_scope():
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app, scopes


def test_scope_fields_and_default_headers(run_server):
    app, scopes = make_echo_scope()
    with run_server(app) as server:
        response = httpx.get(server.url("/caf%C3%A9/a%2Fb?x=1&y=%20"), headers={"X-Thing": "Value"})
    assert response.status_code == 200
    assert response.headers["server"] == "asgiws"
    assert "date" in response.headers
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/a/b"
    assert scope["raw_path"] == b"/caf%C3%A9/a%2Fb"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == ""
    assert (b"x-thing", b"Value") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)


def test_root_path_prefixes_path(run_server):
    app, scopes = make_echo_scope()
    with run_server(app, root_path="/api") as server:
        httpx.get(server.url("/items"))
    assert scopes[0]["root_path"] == "/api"
    assert scopes[0]["path"] == "/api/items"
    assert scopes[0]["raw_path"] == b"/api/items"


def test_keep_alive_reuses_one_connection(run_server):
    with run_server(hello) as server:
        client = RawClient(server.port)
        for _ in range(3):
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = client.read_response()
            assert response.status == 200
            assert response.body == b"hello"
            assert response.headers["content-length"] == "5"
        assert server.server_state.connections.__len__() == 1


def test_idle_keep_alive_connection_closed_after_timeout(run_server):
    with run_server(hello, timeout_keep_alive=0.2) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200
        client.sock.settimeout(5)
        assert client.is_closed()


def test_pipelined_requests_answered_in_order(run_server):
    async def app(scope, receive, send):
        # Earlier requests finish later: order must still hold.
        delay = {"/1": 0.05, "/2": 0.0, "/3": 0.02}[scope["path"]]
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert [client.read_response().body for _ in range(3)] == [b"/1", b"/2", b"/3"]


def test_pipeline_flood_beyond_limit_waits_and_is_answered_in_order(run_server):
    # Past max_pipelined_requests the rest of the read waits unparsed (reading paused).
    with run_server(hello, max_pipelined_requests=2) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 6)
        statuses = [client.read_response().status for _ in range(6)]
        assert statuses == [200] * 6
        client.sock.settimeout(0.5)
        assert not client.is_closed()


def test_chunked_request_body_streamed_to_app(run_server):
    app, _ = make_echo_scope()
    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        assert client.read_response().body == b"hello world"


def test_large_body_with_flow_control(run_server):
    app, _ = make_echo_scope()
    payload = b"x" * (1024 * 1024)
    with run_server(app, http_read_high_water=16 * 1024) as server:
        response = httpx.post(server.url(), content=payload)
    assert response.content == payload


def test_1_mib_body_round_trips_intact_at_default_flow_control(run_server):
    # Random bytes: a lost, repeated or reordered body piece changes the echo.
    app, _ = make_echo_scope()
    payload = os.urandom(1024 * 1024)
    with run_server(app) as server:
        response = httpx.post(server.url(), content=payload)
    assert response.content == payload


def test_pipelined_bodies_holding_crlf_crlf_are_not_taken_for_heads(run_server):
    # Bodies are parsed in pieces that skip Content-Length bytes unscanned: a body
    # that looks like request heads must stay body, before and after other requests.
    app, _ = make_echo_scope()
    fake_heads = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    chunk = b"%x\r\n%s\r\n" % (len(fake_heads), fake_heads)
    requests = (
        b"\r\n\r\n"  # empty lines before a request line are skipped (RFC 9112 2.2)
        + b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(fake_heads), fake_heads)
        + b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % chunk
        + b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(requests)
        bodies = [client.read_response().body for _ in range(3)]
    assert bodies == [fake_heads, fake_heads, b""]


@pytest.mark.parametrize("piece", [997, 65536, 1 << 20])
def test_bodies_longer_than_a_read_pipelined_with_other_requests_each_end_at_their_length(run_server, piece):
    # Bodies longer than a read (and pieces httptools parses unscanned for heads): each must end
    # where its length says, however the client's writes cut it, and the requests after it (a
    # GET, a chunked body, a body that looks like heads) parse as they would alone.
    import hashlib

    seen = []

    async def app(scope, receive, send):
        digest = hashlib.sha256()
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": digest.hexdigest().encode()})

    fake_heads = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" * 3000  # 111 KB
    bodies = {"/a": os.urandom(70 * 1024), "/b": os.urandom(1300 * 1024), "/fake": fake_heads,
              "/c": os.urandom(64 * 1024), "/last": os.urandom(300 * 1024)}
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(fake_heads), fake_heads)
    requests = b"".join(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        + (b"GET /get HTTP/1.1\r\nHost: x\r\n\r\n" if path == "/b" else b"")
        + (b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
           if path == "/fake" else b"")
        for path, body in bodies.items())
    expected = [hashlib.sha256(bodies["/a"]).hexdigest(), hashlib.sha256(bodies["/b"]).hexdigest(),
                hashlib.sha256(b"").hexdigest(), hashlib.sha256(fake_heads).hexdigest(),
                hashlib.sha256(fake_heads).hexdigest(), hashlib.sha256(bodies["/c"]).hexdigest(),
                hashlib.sha256(bodies["/last"]).hexdigest()]
    with run_server(app) as server:
        client = RawClient(server.port, timeout=30)

        def upload():
            for start in range(0, len(requests), piece):
                client.send(requests[start:start + piece])

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        answers = [client.read_response().body.decode() for _ in expected]
        sender.join(10)
    assert answers == expected
    assert seen == ["/a", "/b", "/get", "/fake", "/chunked", "/c", "/last"]


def test_slow_app_pauses_reading_and_bounds_buffered_body(run_server):
    # The app reads nothing until told: the server must stop reading at the high
    # water mark (plus the one read in hand), not take the whole upload into memory.
    high_water = 64 * 1024
    release = asyncio.Event()
    piece = b"x" * (1024 * 1024)
    total = 64 * len(piece)  # more than the kernel's socket buffers hold (tcp_rmem max is often 32 MiB)

    async def app(scope, receive, send):
        await release.wait()
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % size})

    def state(server):
        return [(p._reading_paused, p.cycle.buffered if p.cycle else 0) for p in server.server_state.connections]

    with run_server(app, http_read_high_water=high_water) as server:
        client = RawClient(server.port, timeout=30)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)

        def upload():
            for _ in range(total // len(piece)):
                client.send(piece)

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        deadline = time.monotonic() + 10
        current = server.call(lambda: state(server))
        while not (current and current[0][0]) and time.monotonic() < deadline:
            time.sleep(0.01)
            current = server.call(lambda: state(server))
        [(paused, buffered)] = current
        assert paused
        # Past the high water mark by at most the one read that crossed it.
        assert high_water < buffered <= high_water + HTTP_READ_SIZE
        assert sender.is_alive()  # the rest of the upload waits in the kernel, not in the server
        server.loop.call_soon_threadsafe(release.set)
        response = client.read_response()
        sender.join(10)
    assert response.body == b"%d" % total


def test_streaming_response_is_chunked(run_server):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"bc", b""):
            await send({"type": "http.response.body", "body": part, "more_body": part != b""})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response()
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.body == b"abc"


def test_streaming_to_a_client_that_does_not_read_waits_with_bounded_write_buffer(run_server):
    # send() must wait while the transport is over its high-water mark, then
    # carry on when the client reads: the whole body arrives, the server never
    # held more than the mark plus one chunk.
    chunk = b"y" * (256 * 1024)
    count = 64

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(count):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def buffered(server):
        return max((c.transport.get_write_buffer_size() for c in server.server_state.connections), default=0)

    with run_server(app) as server:
        client = RawClient(server.port, timeout=10)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # the client reads nothing; the app should be waiting in send()
        held = server.call(lambda: buffered(server))
        response = client.read_response()
    assert held <= 64 * 1024 + len(chunk) + 64, held
    assert response.body == chunk * count


def test_100_continue_sent_only_when_app_receives(run_server):
    gate = threading.Event()

    async def app(scope, receive, send):
        while not gate.is_set():
            await asyncio.sleep(0.01)
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.sock.settimeout(0.3)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        with pytest.raises(socket.timeout):
            client.read_until(b"\r\n\r\n")
        gate.set()
        client.sock.settimeout(5)
        assert client.read_response().status == 100
        client.send(b"body")
        response = client.read_response()
        assert response.status == 200
        assert response.body == b"body"


def test_no_100_continue_when_app_answers_without_reading(run_server):
    with run_server(hello) as server:
        client = RawClient(server.port)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert client.read_response().status == 200


def test_head_sends_headers_but_no_body(run_server):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = client.read_response(head_request=True)
        assert head.headers["content-length"] == "5"
        # The next response starts right after the head: no body bytes were sent.
        assert client.read_response().body == b"hello"


def test_http10_closes_unless_keep_alive(run_server):
    async def app(scope, receive, send):
        assert scope["http_version"] == "1.0"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        response = client.read_response()
        assert response.body == b"ab"
        assert "transfer-encoding" not in response.headers
        assert client.is_closed()

        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = client.read_response()
        assert response.body == b"ab" or response.headers.get("connection") == "close"


def test_http10_keep_alive_with_known_length(run_server):
    with run_server(hello) as server:
        client = RawClient(server.port)
        for _ in range(2):
            client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = client.read_response()
            assert response.headers["connection"] == "keep-alive"
            assert response.body == b"hello"


def test_app_sees_disconnect_when_client_goes_away(run_server):
    received = []
    done = threading.Event()

    async def app(scope, receive, send):
        received.append(await receive())
        received.append(await receive())
        done.set()

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        time.sleep(0.1)
        client.close()
        assert done.wait(5)
    assert received[0] == {"type": "http.request", "body": b"12345", "more_body": True}
    assert received[1] == {"type": "http.disconnect"}


def test_app_exception_before_start_is_500_and_logged(run_server, caplog):
    async def app(scope, receive, send):
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        response = httpx.get(server.url())
    assert response.status_code == 500
    assert "boom" in caplog.text and "Traceback" in caplog.text


def test_app_exception_after_start_closes_connection(run_server):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 200")
        assert client.is_closed()
        assert b"0\r\n\r\n" not in client.buffer


def test_app_returning_without_response_is_500(run_server):
    async def app(scope, receive, send):
        return None

    with run_server(app) as server:
        assert httpx.get(server.url()).status_code == 500


def test_header_with_crlf_is_500_and_not_written(run_server, caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-evil", b"a\r\nSet-Cookie: owned=1")]})
        await send({"type": "http.response.body", "body": b""})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response()
    assert response.status == 500
    assert b"owned" not in response.raw_head
    assert "invalid response header" in caplog.text


@pytest.mark.parametrize("name", [b"x y", b"a:b", b"", b"x\r\ny"])
def test_header_name_that_is_not_a_token_is_500_and_not_written(run_server, caplog, name):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(name, b"1")]})
        await send({"type": "http.response.body", "body": b"app body"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response()
    assert response.status == 500
    assert response.body == b"Internal Server Error\n"
    assert b"\r\n" + name + b": 1\r\n" not in response.raw_head
    assert f"invalid response header {name!r}: the name is not an RFC 9110 token" in caplog.text


@pytest.mark.parametrize("status", [700, 99, 1000, 0, -200, "200", True, 200.0, None])
def test_status_outside_100_to_599_is_500_and_logged_never_written(run_server, caplog, status):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"app body"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        first = client.read_response()
        second = client.read_response()  # the connection still serves the next request
    for response in (first, second):
        assert response.raw_head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert response.body == b"Internal Server Error\n"
    assert f"invalid HTTP status {status!r}: expected a three-digit code from 100 to 599" in caplog.text


def test_valid_statuses_without_a_phrase_are_written(run_server):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response()
    assert response.raw_head.startswith(b"HTTP/1.1 599 \r\n")
    assert response.body == b"x"


def test_send_after_disconnect_raises_the_one_client_disconnected(run_server):
    raised = []
    done = threading.Event()

    async def app(scope, receive, send):
        while (await receive())["type"] != "http.disconnect":
            pass
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except OSError as exc:
            raised.append(exc)
        done.set()

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        time.sleep(0.1)
        client.close()
        assert done.wait(5)
    assert type(raised[0]) is ClientDisconnected


@pytest.mark.parametrize("version", [b"2.0", b"0.9", b"3.0", b"9.9", b"0.0"])
def test_major_version_other_than_1_is_505_and_closed(run_server, caplog, version):
    app, scopes = make_echo_scope()
    with caplog.at_level(logging.INFO, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET / HTTP/" + version + b"\r\nHost: x\r\n\r\n"
                    b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 200  # the request before it is answered first
        response = client.read_response()
        assert client.is_closed()
    assert response.raw_head.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert response.headers["connection"] == "close"
    assert response.body == b"HTTP/%s is not supported\n" % version
    assert [scope["path"] for scope in scopes] == ["/before"]
    assert f"bad request: HTTP/{version.decode()} is not supported" in caplog.text


@pytest.mark.parametrize("version", [b"1.2", b"1.7", b"1.9"])
def test_higher_1_x_minor_version_is_served_as_1_1(run_server, version):
    app, scopes = make_echo_scope()
    with run_server(app) as server:
        client = RawClient(server.port)
        # Keep-alive by default and pipelining, as for 1.1 (RFC 9110 2.5).
        client.send((b"POST / HTTP/" + version + b"\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi") * 2)
        responses = [client.read_response(), client.read_response()]
    assert [(response.status, response.body) for response in responses] == [(200, b"hi"), (200, b"hi")]
    assert "connection" not in responses[0].headers
    assert [scope["http_version"] for scope in scopes] == ["1.1", "1.1"]


def test_http_1_x_without_host_is_400_like_1_1(run_server):
    with run_server(hello) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.5\r\n\r\n")
        assert client.read_response().status == 400


def test_http_1_0_scope_says_1_0(run_server):
    app, scopes = make_echo_scope()
    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        assert client.read_response().status == 200
    assert scopes[0]["http_version"] == "1.0"


def test_websocket_upgrade_over_http_2_0_syntax_is_505(run_server):
    app, scopes = make_echo_scope()
    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/2.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert client.read_response().status == 505
        assert client.is_closed()
    assert scopes == []


def content_length_app(declared, pieces, refused):
    """Declares Content-Length `declared` and sends `pieces`; a RuntimeError is noted in `refused`."""

    async def app(scope, receive, send):
        if scope["path"] != "/liar":
            await hello(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(declared).encode())]})
        for index, piece in enumerate(pieces):
            try:
                await send({"type": "http.response.body", "body": piece, "more_body": index < len(pieces) - 1})
            except RuntimeError as exc:
                refused.append(str(exc))

    return app


PIPELINED = b"GET /liar HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("pieces", [[b"12345"], [b"123", b"45"], [b""]])
def test_body_shorter_than_content_length_is_logged_and_closes_after_the_bytes_sent(run_server, caplog, pieces):
    app = content_length_app(10, pieces, [])
    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(PIPELINED)
        head = client.read_until(b"\r\n\r\n")
        assert client.is_closed()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 10\r\n" in head
    # The bytes sent, then the end of the stream: the next request's answer is not glued on.
    assert client.buffer == b"".join(pieces)
    sent = len(b"".join(pieces))
    assert f"response body shorter than Content-Length: {sent} of 10 bytes sent; closing the connection" \
        in caplog.text


def test_body_longer_than_content_length_is_refused_to_the_app_and_logged(run_server, caplog):
    refused = []
    app = content_length_app(5, [b"12", b"3456", b"345"], refused)
    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(PIPELINED)
        first = client.read_response()
        second = client.read_response()  # the stream is still framed: the next answer follows
    assert (first.status, first.body) == (200, b"12345")
    assert (second.status, second.body) == (200, b"hello")
    message = "response body longer than Content-Length: 2 bytes sent, 4 more would pass the 5 declared"
    assert refused == [message]
    assert f"{message}; not written" in caplog.text


def test_body_longer_than_content_length_in_the_first_message_is_500_when_the_app_fails(run_server, caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"too long"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response()
    assert response.status == 500
    assert b"too long" not in response.body
    assert "response body longer than Content-Length: 0 bytes sent, 8 more would pass the 2 declared" \
        in caplog.text


@pytest.mark.parametrize("value", [b"-1", b"abc", b"1 2", b""])
def test_content_length_that_is_not_a_length_is_500(run_server, caplog, value):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", value)]})
        await send({"type": "http.response.body", "body": b"x"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = client.read_response()
    assert response.status == 500
    assert f"invalid response header b'content-length': {value!r} is not a length" in caplog.text


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
])
def test_malformed_request_is_400_and_closed(run_server, request_bytes):
    with run_server(hello) as server:
        client = RawClient(server.port)
        client.send(request_bytes)
        response = client.read_response()
        assert response.status == 400
        assert response.body.startswith(b"Invalid HTTP request")
        assert client.is_closed()


def test_long_request_line_is_414(run_server):
    with run_server(hello, max_request_line_size=100) as server:
        client = RawClient(server.port)
        client.send(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_response().status == 414


def test_large_header_block_is_431(run_server):
    with run_server(hello, max_header_size=1000) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        assert client.read_response().status == 431


def test_too_many_header_fields_is_431(run_server):
    with run_server(hello, max_header_count=5) as server:
        client = RawClient(server.port)
        headers = b"".join(b"X-%d: 1\r\n" % i for i in range(10))
        client.send(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
        assert client.read_response().status == 431


def test_endless_header_stream_is_431_before_it_ends(run_server):
    with run_server(hello, max_header_size=1000, max_request_line_size=100) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nX-Big: ")
        for _ in range(40):
            time.sleep(0.01)  # separate reads: the bound is checked per read, before the header ends
            try:
                client.send(b"a" * 500)
            except OSError:
                break
        assert client.read_response().status == 431


def test_body_over_limit_is_413(run_server):
    app, _ = make_echo_scope()
    with run_server(app, limit_request_body=10) as server:
        assert httpx.post(server.url(), content=b"x" * 11).status_code == 413
        assert httpx.post(server.url(), content=b"x" * 10).status_code == 200
        client = RawClient(server.port)
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
        assert client.read_response().status == 413


def test_limit_concurrency_answers_503(run_server):
    release = threading.Event()

    async def app(scope, receive, send):
        while not release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with run_server(app, limit_concurrency=1) as server:
        first = RawClient(server.port)
        first.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        second = RawClient(server.port)
        second.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert second.read_response().status == 503
        release.set()
        assert first.read_response().status == 200


def test_finished_app_tasks_leave_the_concurrency_count(run_server):
    # Each request's task counts against --limit-concurrency while it runs and
    # leaves the count as it ends, by return or by exception: 20 in a row on one
    # connection, under a limit of 2 (the connection is one), are never refused.
    async def app(scope, receive, send):
        if scope["query_string"] == b"fail":
            raise ValueError("the app fails")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with run_server(app, limit_concurrency=2) as server:
        client = RawClient(server.port)
        statuses = []
        for n in range(20):
            client.send(b"GET /?%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"fail" if n % 2 else b"ok"))
            statuses.append(client.read_response().status)
    assert statuses == [200, 500] * 10


def test_limit_connections_per_ip_answers_503(run_server):
    with run_server(hello, limit_connections_per_ip=1) as server:
        first = RawClient(server.port)
        first.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.read_response().status == 200
        second = RawClient(server.port)
        assert second.read_response().status == 503
        first.close()
        time.sleep(0.1)
        third = RawClient(server.port)
        third.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert third.read_response().status == 200


def test_slow_request_head_dropped_after_timeout_handshake(run_server):
    with run_server(hello, timeout_handshake=0.2, timeout_keep_alive=30) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert client.is_closed()


def test_slowloris_head_trickled_past_timeout_handshake_is_dropped(run_server):
    # Every piece comes well within the timeout, the head as a whole does not:
    # reads of the same head must not move its deadline.
    with run_server(hello, timeout_handshake=0.3, timeout_keep_alive=30) as server:
        client = RawClient(server.port, timeout=1.0)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(20):
                time.sleep(0.1)
                client.send(b"X-Trickle-%d: y\r\n" % i)
            client.send(b"\r\n")
        except OSError:
            pass  # dropped while trickling
        assert client.is_closed()
        assert b"HTTP/1.1 200" not in client.buffer


def test_proxy_headers_from_trusted_peer(run_server):
    app, scopes = make_echo_scope()
    with run_server(app, forwarded_allow_ips="127.0.0.1", forwarded_host=True) as server:
        httpx.get(server.url(), headers={
            "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7, 127.0.0.1",
            "X-Forwarded-Host": "example.com:8443",
        })
    assert scopes[0]["scheme"] == "https"
    assert scopes[0]["client"] == ("203.0.113.7", 0)
    assert scopes[0]["server"] == ("example.com", 8443)


def test_proxy_headers_trusted_by_network(run_server):
    app, scopes = make_echo_scope()
    with run_server(app, forwarded_allow_ips="10.0.0.0/8, 127.0.0.0/8") as server:
        httpx.get(server.url(), headers={"X-Forwarded-For": "198.51.100.1"})
    assert scopes[0]["client"] == ("198.51.100.1", 0)


def test_proxy_headers_ignored_from_untrusted_peer(run_server):
    app, scopes = make_echo_scope()
    with run_server(app, forwarded_allow_ips="10.1.2.3") as server:
        httpx.get(server.url(), headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
    assert scopes[0]["scheme"] == "http"
    assert scopes[0]["client"][0] == "127.0.0.1"


def test_custom_headers_and_no_server_header(run_server):
    with run_server(hello, headers=("X-Powered-By: tests", "Server: custom"), date_header=False) as server:
        response = httpx.get(server.url())
    assert response.headers["x-powered-by"] == "tests"
    assert response.headers.get_list("server") == ["custom"]
    assert "date" not in response.headers
    with run_server(hello, server_header=False) as server:
        assert "server" not in httpx.get(server.url()).headers


def test_lifespan_state_is_copied_into_scope(run_server):
    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(scope["state"])
        scope["state"]["mutated"] = True
        await hello(scope, receive, send)

    with run_server(app, lifespan="on") as server:
        httpx.get(server.url())
        httpx.get(server.url())
    assert seen[0]["db"] == "connected"
    assert "mutated" not in seen[1] or seen[1] is not seen[0]
    assert seen[1]["db"] == "connected"


def test_graceful_shutdown_finishes_in_flight_request(run_server):
    started = threading.Event()

    async def app(scope, receive, send):
        started.set()
        await asyncio.sleep(0.3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(5)
        server.server.should_exit = True
        response = client.read_response()
        assert response.body == b"finished"
        assert response.headers["connection"] == "close"


def test_graceful_shutdown_cancels_after_timeout(run_server):
    cancelled = threading.Event()

    async def app(scope, receive, send):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with run_server(app, timeout_graceful_shutdown=0.2) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        server.server.should_exit = True
    assert cancelled.wait(5)


def test_access_log_escapes_control_characters(run_server, caplog):
    with caplog.at_level(logging.INFO, logger="asgiws.access"):
        with run_server(hello) as server:
            client = RawClient(server.port)
            client.send(b"GET /a%0Ab HTTP/1.1\r\nHost: x\r\n\r\n")
            client.read_response()
    assert '"GET /a\\x0ab HTTP/1.1" 200' in caplog.text


def test_limit_max_requests_stops_the_server(run_server):
    with run_server(hello, limit_max_requests=2) as server:
        httpx.get(server.url())
        httpx.get(server.url())
        deadline = time.monotonic() + 5
        while not server.server.should_exit and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.server.should_exit
