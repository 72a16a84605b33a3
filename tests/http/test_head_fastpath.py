"""parse_head (the C helper _head.c) against httptools: the same request, the same scope, the same answer.

Every request here is served twice by an HttpProtocol on a recording
transport: once as the server runs (parse_head takes the requests of the
common shape) and once with it off, so that httptools parses every request. The
scopes the app sees, the bytes written back and whether the connection closed
must be the same; and the fast path must have taken the requests it is meant
for, or the comparison would prove nothing.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
import uvloop

from asgiws.config import Config
from asgiws.protocols.common import ServerState
from asgiws.protocols.http import HttpProtocol, build_default_headers
from asgiws.protocols.http import head as head_module
from asgiws.protocols.http import protocol as protocol_module
from asgiws.protocols.utils import FORWARDED_FIELDS
from bench.http_cpu import FakeTransport

parse_head = head_module.parse_head


def test_the_helper_is_built():
    # CI builds the C helpers; a missing one would leave this file comparing httptools with itself.
    assert head_module.WHOLE_REQUESTS, "asgiws.protocols.http._head is not built"


class _Recording(FakeTransport):
    """bench/http_cpu.py's transport, keeping the bytes written as well as their count."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: Any) -> None:
        super().write(data)
        self.data += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)


def _comparable(scope: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in scope.items() if key not in ("state", "extensions")}


async def _serve(data: bytes, fast: bool, config: Config) -> tuple[list[dict[str, Any]], bytes, bool, int]:
    """Feed `data` as one read; the scopes seen, the bytes written, closed, heads parse_head took."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(_comparable(scope))
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d %s" % (len(body), body[:20])})

    taken = 0
    real = head_module.parse_head

    def counting(*args: Any) -> Any:
        nonlocal taken
        head = real(*args)  # type: ignore[misc]
        taken += head is not None
        return head

    state = ServerState()
    state.default_headers = build_default_headers(config)
    protocol_module.WHOLE_REQUESTS = fast  # type: ignore[misc]
    head_module.parse_head = counting
    try:
        loop = asyncio.get_running_loop()
        protocol = HttpProtocol(config=config, server_state=state, app=app, loop=loop)
        transport = _Recording()
        protocol.connection_made(transport)
        state.read_buffer[: len(data)] = data
        protocol.buffer_updated(len(data))
        for _ in range(20):  # every pipelined request's task runs and answers
            await asyncio.sleep(0)
        protocol.connection_lost(None)
    finally:
        protocol_module.WHOLE_REQUESTS = True  # type: ignore[misc]
        head_module.parse_head = real
    return scopes, bytes(transport.data), transport.closing, taken


def _both(data: bytes, **config: Any) -> tuple[Any, int]:
    """Serve `data` both ways; assert the outcomes are equal and return one, and the heads taken."""
    # --ws none: an upgrade request is then served as HTTP, here on a transport that cannot change hands.
    settings = Config(app=None, access_log=False, date_header=False, ws="none", **config)

    async def run() -> tuple[Any, Any]:
        return await _serve(data, True, settings), await _serve(data, False, settings)

    fast, slow = uvloop.run(run())
    assert fast[:3] == slow[:3], data
    assert slow[3] == 0
    return fast[:3], fast[3]


COMMON = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
    b"GET /caf%C3%A9/a%2Fb?x=1&y=%20 HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n",
    b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /items/7 HTTP/1.1\r\nhOsT: x\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n",
    b"OPTIONS /x HTTP/1.1\r\nHost: x\r\nOrigin: https://example.com\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PATCH /p HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /?a=1?b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a? HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET //double HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: CLOSE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:x\r\nX-Empty:\r\nX-Blank: \r\nX-Tabs:\t a \t\r\nX-Trailing: v  \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a  b\r\nX: !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n!#$%&'*+-.^_`|~09AZaz: token name\r\n\r\n",
    b"GET /a;b@c:d!$&'()*+,=-._~\"<>\\^`{|} HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Port: 443\r\n\r\n",
    b'POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"name":"a"}',
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: x\r\ncontent-length: 007\r\n\r\nabcdefg",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\r\n",
]

# Heads parse_head leaves to httptools (which accepts or refuses them as before).
DECLINED = [
    b"GET / HTTP/1.1\r\n\r\n",  # no Host: 400
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two: 400
    b"GET / HTTP/1.0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabc",  # not all there
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",  # 400
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 \r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3,3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1234567890123456789\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: \x80\xff\r\n\r\n",  # obs-text
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",  # 400
    b"GET / HTTP/1.1\r\nHost: x\r\nX : a\r\n\r\n",  # 400
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",  # obs-fold: 400
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\nX: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/0.9\r\nHost: x\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # an empty line first
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # not complete
    b"GET / HTTP/1.1\r\nHost: x\r\n\r",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("data", COMMON)
def test_common_heads_are_taken_and_served_as_httptools_serves_them(data):
    (scopes, written, closed), taken = _both(data)
    assert taken == 1
    assert len(scopes) == 1 and written.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize("data", DECLINED)
def test_other_heads_are_left_to_httptools(data):
    _, taken = _both(data)
    assert taken == 0


def test_pipelined_heads_each_taken_in_turn():
    requests = [b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(5)]
    post = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz"
    chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    (scopes, written, closed), taken = _both(b"".join(requests[:2]) + post + b"".join(requests[2:]) + chunked)
    assert [scope["path"] for scope in scopes] == ["/0", "/1", "/b", "/2", "/3", "/4", "/c"]
    assert taken == 6 and not closed
    assert written.count(b"HTTP/1.1 200 OK") == 7 and b"4 wxyz" in written and written.endswith(b"3 abc")
    # A declined request is fed to httptools with the rest of a short read, which it parses too.
    (scopes, written, closed), taken = _both(b"".join(requests[:2]) + chunked + b"".join(requests[2:]))
    assert [scope["path"] for scope in scopes] == ["/0", "/1", "/c", "/2", "/3", "/4"]
    assert taken == 2 and not closed


def test_limits_send_the_head_to_httptools_for_its_answer():
    # Each head over a limit by one is declined, and httptools's path answers 414 or 431.
    limits = {"max_request_line_size": 20, "max_header_size": 40, "max_header_count": 2}
    at_limit = [
        b"GET /" + b"a" * 19 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 26 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n\r\n",
    ]
    over = [
        (b"GET /" + b"a" * 20 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 27 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\nY: 2\r\n\r\n", b"431"),
    ]
    for data in at_limit:
        (scopes, _, _), taken = _both(data, **limits)
        assert taken == 1 and len(scopes) == 1, data
    for data, status in over:
        (scopes, written, closed), taken = _both(data, **limits)
        assert taken == 0 and not scopes and written.startswith(b"HTTP/1.1 " + status) and closed, data


def test_a_body_over_the_limit_is_left_to_httptools_for_its_413():
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    (scopes, written, closed), taken = _both(data, limit_request_body=4)
    assert taken == 0 and not scopes and written.startswith(b"HTTP/1.1 413") and closed
    (scopes, written, closed), taken = _both(data, limit_request_body=5)
    assert taken == 1 and written.endswith(b"5 hello")


def test_every_target_byte_matches_httptools():
    # In the path and in the query, each byte from 0x21 to 0x7e.
    for byte in range(0x21, 0x7F):
        for target in (b"/a%cb" % byte, b"/a?b%cc" % byte):
            _both(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")


def test_every_field_byte_matches_httptools():
    for byte in range(256):
        _both(b"GET / HTTP/1.1\r\nHost: x\r\nX-%c: v\r\n\r\n" % byte)
        _both(b"GET / HTTP/1.1\r\nHost: x\r\nX: a%cb\r\n\r\n" % byte)
        _both(b"GET / HTTP/1.1\r\nHost: x\r\nX: %cb\r\n\r\n" % byte)


def test_forwarded_flag_covers_every_field_the_rewrite_reads():
    assert all(name.startswith(b"x-forwarded-") for name in FORWARDED_FIELDS)
    assert parse_head is not None
    head = parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: y\r\n\r\n", 0, 48, 100, 100, 10, -1)
    assert head is not None and head[6] is True


def test_parse_head_result_and_bounds():
    assert parse_head is not None
    data = b"junkGET /p?q HTTP/1.0\r\nHOST: x\r\nConnection: keep-alive\r\n\r\nGET"
    head = parse_head(data, 4, len(data), 100, 100, 10, -1)
    assert head == (len(data) - 3, "GET", b"/p", b"q", "1.0",
                    [(b"host", b"x"), (b"connection", b"keep-alive")], False, True, None, b"")
    assert parse_head(bytearray(data), 4, len(data) - 4, 100, 100, 10, -1) is None  # the end is before the head's
    with pytest.raises(ValueError):
        parse_head(data, 4, len(data) + 1, 100, 100, 10, -1)
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET"
    head = parse_head(post, 0, len(post), 100, 100, 10, 5)
    assert head is not None and head[0] == len(post) - 3 and head[8:] == (5, b"hello")
    assert parse_head(post, 0, len(post) - 4, 100, 100, 10, -1) is None  # a byte of the body is missing
    assert parse_head(post, 0, len(post), 100, 100, 10, 4) is None  # over --limit-request-body
    with pytest.raises(TypeError):
        parse_head(data, 4)  # type: ignore[call-arg]


def _mutations(seed: int, count: int) -> list[bytes]:
    """Heads of the common shape with a byte or two inserted, replaced or removed."""
    rng = random.Random(seed)
    alphabet = b" \t\r\n:;,/?#%\"\\\x00\x7f\x80\xffAz09-_."
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(COMMON))
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data.insert(at, rng.choice(alphabet))
            elif action == 1:
                data[at] = rng.choice(alphabet)
            else:
                del data[at]
        out.append(bytes(data))
    return out


def test_mutated_heads_match_httptools():
    # Bytes a client gets wrong, anywhere in a head: whether parse_head takes or declines
    # each, the outcome must be httptools's. Seeded, so that a failure repeats.
    taken = 0
    for data in _mutations(seed=18, count=3000):
        taken += _both(data)[1]
    assert 300 < taken < 2700  # both ways were exercised


def test_server_answers_through_the_fast_path(run_server):
    # The same shortcut in a running server: a pipelined burst over a real socket.
    import socket

    async def hello(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    with run_server(hello) as server:
        response = httpx.post(server.url("/json"), json={"name": "asgiws"})
        assert response.status_code == 200 and response.text == "/json"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(50)))
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < 50 or not received.endswith(b"/r49"):
                chunk = sock.recv(65536)
                assert chunk, received[-200:]
                received += chunk
    bodies = [part.split(b"HTTP/1.1")[0] for part in received.split(b"\r\n\r\n")[1:]]
    assert bodies == [b"/r%d" % n for n in range(50)]
