"""The WebSocket session without sockets: one test per row of the README's
"WebSocket behaviour" table and per close path, each asserting the state, the
messages the app gets and the bytes that go out (RFC 6455 numbers in names)."""

from __future__ import annotations

import logging
import struct
from typing import Any

import pytest

from asgiws.asgi.websocket import (
    SEND_EOF,
    SEND_HALF_CLOSE,
    SEND_IN_FRAGMENTS,
    State,
    WebSocketSession,
)
from asgiws.config import WS_FRAGMENT_SIZE, Config
from asgiws.exceptions import ClientDisconnected
from asgiws.logging import TRACE_LOG_LEVEL, log_access, log_websocket_close
from asgiws.metrics import METRICS
from asgiws.websocket import Opcode
from tests.rawws import DEFAULT_KEY
from tests.wire import client_frame

ACCEPT = {"type": "websocket.accept"}
CONNECT = {"type": "websocket.connect"}


class Clock:
    """The session's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def request_headers(**overrides: bytes | None) -> list[tuple[bytes, bytes]]:
    headers = {
        b"host": b"example.com",
        b"upgrade": b"websocket",
        b"connection": b"Upgrade",
        b"sec-websocket-key": DEFAULT_KEY.encode(),
        b"sec-websocket-version": b"13",
    }
    for name, value in overrides.items():
        key = name.replace("_", "-").encode()
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return list(headers.items())


def make_session(clock: Clock | None = None, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
                 **config: Any) -> WebSocketSession:
    config.setdefault("ws_per_message_deflate", False)
    scope: dict[str, Any] = {
        "type": "websocket", "http_version": "1.1", "path": "/chat", "query_string": b"",
        "client": ("127.0.0.1", 50000), "headers": headers if headers is not None else request_headers(),
    }
    return WebSocketSession(Config(app="x:y", **config), scope, method, default_headers=[(b"server", b"asgiws")],
                            clock=clock or Clock(), log_access=log_access, log_close=log_websocket_close)


def opened(clock: Clock | None = None, **config: Any) -> WebSocketSession:
    session = make_session(clock, **config)
    assert session.next_message() == CONNECT
    assert session.app_send(ACCEPT) is None
    out = session.data_to_send()
    assert out[0].startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert session.state is State.OPEN
    return session


def parse_server_frames(chunks: list[bytes]) -> list[tuple[int, bytes]]:
    """(opcode, payload) of unmasked server frames."""
    data = b"".join(chunks)
    frames, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "5.1: server frames are not masked"
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        frames.append((b0 & 0x0F, data[pos : pos + length]))
        pos += length
    return frames


# What receive_data() returned for each session, not yet looked at by frames_out().
_written: dict[int, list[bytes]] = {}


def feed(session: WebSocketSession, data: bytes) -> None:
    """receive_data(), keeping what it says to write for frames_out()."""
    _written.setdefault(id(session), []).extend(session.receive_data(data))


def frames_out(session: WebSocketSession) -> tuple[list[tuple[int, bytes]], bytes | None]:
    """(opcode, payload) of every frame going out, and the end marker if any."""
    chunks = _written.pop(id(session), []) + session.data_to_send()
    for chunk in chunks[:-1]:
        assert chunk is not SEND_EOF and chunk is not SEND_HALF_CLOSE, "an end marker is always last"
    marker = None
    if chunks and (chunks[-1] is SEND_EOF or chunks[-1] is SEND_HALF_CLOSE):
        marker = chunks.pop()
    return parse_server_frames(chunks), marker


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return client_frame(Opcode.CLOSE, struct.pack("!H", code) + reason)


def text(data: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": data}


def disconnect(code: int, reason: str | None = "") -> dict[str, Any]:
    message: dict[str, Any] = {"type": "websocket.disconnect", "code": code}
    if reason is not None:
        message["reason"] = reason
    return message


def status_of(chunks: list[bytes]) -> int:
    return int(chunks[0].split(b" ", 2)[1])


# -- the opening handshake (README rows 1-3, 5-7) ---------------------------------------------


@pytest.mark.parametrize("headers, status", [
    (request_headers(sec_websocket_key=b"c2hvcnQ="), 400),
    (request_headers(upgrade=None), 400),
    (request_headers(sec_websocket_version=b"8"), 426),
])
def test_bad_upgrade_is_answered_without_the_app(headers: list[tuple[bytes, bytes]], status: int) -> None:
    session = make_session(headers=headers)
    assert session.state is State.CLOSED
    out = session.data_to_send()
    assert status_of(out) == status and out[-1] is SEND_EOF
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in b"".join(out[:-1])


def test_origin_not_allowed_is_403_without_the_app() -> None:
    session = make_session(headers=request_headers(origin=b"https://evil.test"),
                           ws_allowed_origins=("https://app.example.com",))
    assert session.state is State.CLOSED
    assert status_of(session.data_to_send()) == 403


def test_app_close_before_accept_is_403() -> None:
    session = make_session()
    session.app_send({"type": "websocket.close"})
    out = session.data_to_send()
    assert session.state is State.CLOSED and status_of(out) == 403 and out[-1] is SEND_EOF


def test_denial_response_goes_out_chunked_then_closes() -> None:
    session = make_session()
    session.app_send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"token")]})
    assert session.state is State.REJECTING
    session.app_send({"type": "websocket.http.response.body", "body": b"who are ", "more_body": True})
    session.app_send({"type": "websocket.http.response.body", "body": b"you?"})
    out = session.data_to_send()
    assert status_of(out) == 401 and out[-1] is SEND_EOF
    assert b"".join(out[1:-1]) == b"8\r\nwho are \r\n4\r\nyou?\r\n0\r\n\r\n"
    assert session.state is State.CLOSED


@pytest.mark.parametrize("outcome", ["raised", "returned"])
def test_app_ending_before_accept_is_500(outcome: str) -> None:
    session = make_session()
    session.app_finished(outcome)
    out = session.data_to_send()
    assert status_of(out) == 500 and out[-1] is SEND_EOF


def test_send_before_accept_is_an_asgi_error_naming_what_was_expected() -> None:
    session = make_session()
    with pytest.raises(RuntimeError, match="Expected ASGI message 'websocket.accept' or 'websocket.close' or "
                                           "'websocket.http.response.start' but got 'websocket.send'"):
        session.app_send({"type": "websocket.send", "text": "hi"})


def test_frames_pipelined_behind_the_request_wait_for_accept() -> None:
    session = make_session()
    assert session.receive_data(client_frame(Opcode.TEXT, b"early")) == []
    session.app_send(ACCEPT)
    out = session.data_to_send()
    assert out[0].startswith(b"HTTP/1.1 101")
    assert list(session.messages) == [text("early")]  # accept answered websocket.connect


# -- after accept (README rows 8-15) ------------------------------------------------------------


def test_echo_round_trip_counts_messages_and_bytes() -> None:
    session = opened()
    incoming = client_frame(Opcode.TEXT, b"hello")
    feed(session, incoming)
    assert frames_out(session) == ([], None)
    assert session.next_message() == text("hello")
    frame = session.app_send({"type": "websocket.send", "text": "hello"})
    assert frame == b"\x81\x05hello"  # written at once: nothing was queued
    assert (session.tally.messages_received, session.tally.bytes_received) == (1, len(incoming))
    assert (session.tally.messages_sent, session.tally.bytes_sent) == (1, 7)


def test_large_send_is_left_to_fragments_one_frame_per_step() -> None:
    session = opened()
    message = {"type": "websocket.send", "bytes": b"z" * (WS_FRAGMENT_SIZE + 1)}
    assert session.app_send(message) is SEND_IN_FRAGMENTS
    steps = 0
    for _ in session.send_fragments(message):
        steps += 1
    frames, _ = frames_out(session)
    assert steps == 2 and [opcode for opcode, _ in frames] == [Opcode.BINARY, Opcode.CONTINUATION]


def test_app_raising_after_accept_closes_1011_and_waits_for_the_client() -> None:
    session = opened()
    session.app_finished("raised")
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 1011))], None)
    assert session.state is State.CLOSING_LOCAL
    feed(session, close_frame(1011))
    assert frames_out(session) == ([], SEND_EOF)
    assert session.state is State.CLOSED


def test_app_returning_without_closing_closes_1000() -> None:
    session = opened()
    session.app_finished("returned")
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 1000))], None)


@pytest.mark.parametrize("data, code", [
    (client_frame(Opcode.TEXT, b"hi", masked=False), 1002),
    (client_frame(0x3, b"reserved opcode"), 1002),
    (client_frame(Opcode.TEXT, b"ok \xff\xfe"), 1007),
])
def test_protocol_error_closes_then_half_closes_and_reads_to_eof(data: bytes, code: int) -> None:
    session = opened()
    feed(session, data)
    frames, marker = frames_out(session)
    assert frames[0][0] == Opcode.CLOSE and struct.unpack("!H", frames[0][1][:2]) == (code,)
    # 7.1.1: no RST over unread input: our side ends, the client's is read until its EOF.
    assert marker is SEND_HALF_CLOSE and session.state is State.CLOSING_LOCAL
    assert session.next_message()["code"] == code
    feed(session, client_frame(Opcode.TEXT, b"still streaming"))
    assert frames_out(session) == ([], None)
    session.receive_eof()
    assert frames_out(session) == ([], SEND_EOF) and session.state is State.CLOSED


def test_message_over_max_size_fails_1009_from_the_header_alone() -> None:
    session = opened(ws_max_size=1000)
    feed(session, client_frame(Opcode.TEXT, b"", length=2000)[:8])
    frames, marker = frames_out(session)
    assert frames == [(Opcode.CLOSE, struct.pack("!H", 1009) + b"message over 1000 bytes")]
    assert marker is SEND_HALF_CLOSE


def test_failure_close_gives_up_on_the_client_after_close_timeout() -> None:
    clock = Clock()
    session = opened(clock, ws_max_size=10, ws_close_timeout=2.0)
    feed(session, client_frame(Opcode.BINARY, b"x" * 11))
    assert session.close_deadline() == clock.now + 2.0
    frames_out(session)
    session.on_timeout(clock.now + 1.0)
    assert session.state is State.CLOSING_LOCAL
    session.on_timeout(clock.now + 2.0)
    assert frames_out(session) == ([], SEND_EOF) and session.state is State.CLOSED


def test_messages_before_a_protocol_error_are_delivered_first() -> None:
    session = opened()
    feed(session, client_frame(Opcode.TEXT, b"one") + client_frame(Opcode.TEXT, b"two")
                         + client_frame(0x3, b"bad"))
    assert session.state is State.CLOSING_REMOTE
    assert frames_out(session) == ([], None)  # no close before the app has read "one" and "two"
    assert session.next_message() == text("one")
    assert session.app_send({"type": "websocket.send", "text": "one"}) is not None  # echoes still go out
    assert session.next_message() == text("two")
    assert session.next_message() == disconnect(1002, "reserved opcode 0x3")
    frames, marker = frames_out(session)
    assert frames[0][0] == Opcode.CLOSE and marker is SEND_HALF_CLOSE


def test_unread_messages_before_an_error_wait_at_most_close_timeout() -> None:
    clock = Clock()
    session = opened(clock, ws_close_timeout=1.5)
    feed(session, client_frame(Opcode.TEXT, b"one") + client_frame(Opcode.TEXT, b"\xff"))
    session.on_timeout(clock.now + 1.5)
    frames, marker = frames_out(session)
    assert frames[0][1][:2] == struct.pack("!H", 1007) and marker is SEND_HALF_CLOSE
    assert session.next_message() == text("one")  # still delivered, then the disconnect
    assert session.next_message()["code"] == 1007


def test_message_rate_over_the_burst_closes_1008() -> None:
    session = opened(ws_max_message_rate=5.0, ws_max_message_burst=3)
    feed(session, b"".join(client_frame(Opcode.TEXT, b"m") for _ in range(10)))
    assert [session.next_message() for _ in range(3)] == [text("m")] * 3
    assert session.next_message() == disconnect(1008, "message rate limit exceeded")


def test_client_not_reading_is_abandoned_1008_without_a_close_frame() -> None:
    session = opened()
    session.abandon(1008, "send queue full")
    assert frames_out(session) == ([], SEND_EOF)
    assert session.next_message() == disconnect(1008, "send queue full")


def test_ping_unanswered_within_ping_timeout_closes_1011_at_once() -> None:
    clock = Clock()
    session = opened(clock, ws_ping_timeout=3.0)
    session.ping(clock.now)
    frames, _ = frames_out(session)
    assert frames[0][0] == Opcode.PING
    assert session.deadline() == clock.now + 3.0
    session.on_timeout(clock.now + 3.0)
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 1011))], SEND_EOF)
    assert session.closed_by == "timeout"


def test_pong_with_the_ping_payload_clears_the_deadline() -> None:
    clock = Clock()
    session = opened(clock, ws_ping_timeout=3.0)
    session.ping(clock.now)
    (_, payload), = frames_out(session)[0]
    feed(session, client_frame(Opcode.PONG, b"other"))
    assert session.deadline() is not None  # 5.5.3: an unsolicited pong is ignored
    feed(session, client_frame(Opcode.PONG, payload))
    assert session.deadline() is None
    session.on_timeout(clock.now + 10)
    assert session.state is State.OPEN


def test_ping_round_trip_is_timed_on_the_clock_even_when_the_slot_time_is_ahead_of_it() -> None:
    # The ping wheel passes its slot's time, which may be a hair after the clock (the loop
    # woke early): a pong answered at once must not read as a negative round trip.
    clock = Clock()
    session = opened(clock, ws_ping_timeout=3.0)
    rtt = METRICS.ws_ping_rtt
    count, total = sum(rtt.counts), rtt.sum
    session.ping(clock.now + 0.0004)
    (_, payload), = frames_out(session)[0]
    clock.now += 0.0001
    feed(session, client_frame(Opcode.PONG, payload))
    assert sum(rtt.counts) == count + 1
    assert rtt.sum - total == pytest.approx(0.0001)


@pytest.mark.parametrize("code", [1001, 1012])
def test_shutdown_closes_open_connection_with_its_code(code: int) -> None:
    session = opened()
    session.shutdown(code)
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", code))], None)
    assert session.next_message() == disconnect(code)
    assert session.closed_by == "server"


def test_shutdown_with_a_reason_sends_it_and_the_app_sees_it() -> None:
    # A broadcast channel the worker can no longer follow closes its subscribers this way.
    session = opened()
    session.shutdown(1012, "broadcast messages missed")
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 1012) + b"broadcast messages missed")], None)
    assert session.next_message() == disconnect(1012, "broadcast messages missed")
    assert session.closed_by == "server"
    session.shutdown(1001)  # closing already: nothing more
    assert frames_out(session) == ([], None)


def test_shutdown_before_accept_answers_503_and_disconnects_the_app() -> None:
    session = make_session()
    assert session.next_message() == CONNECT
    session.shutdown(1001)
    out = session.data_to_send()
    assert status_of(out) == 503 and out[-1] is SEND_EOF
    assert session.next_message() == disconnect(1001)
    with pytest.raises(ClientDisconnected):
        session.app_send(ACCEPT)


def test_send_after_the_client_left_raises_client_disconnected() -> None:
    session = opened()
    session.receive_eof()
    assert session.next_message() == disconnect(1006, None)
    with pytest.raises(ClientDisconnected) as info:
        session.app_send({"type": "websocket.send", "text": "too late"})
    assert isinstance(info.value, OSError)


# -- close paths --------------------------------------------------------------------------------


def test_client_close_is_answered_at_once_when_nothing_is_unread() -> None:
    session = opened()
    feed(session, close_frame(4100, b"bye"))
    # 5.5.1 echo of the code; 7.1.1: the server closes TCP first.
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 4100))], SEND_EOF)
    assert session.state is State.CLOSED
    assert session.next_message() == disconnect(4100, "bye")


def test_client_close_is_answered_at_once_for_an_app_that_only_sends() -> None:
    session = make_session()
    session.app_send(ACCEPT)  # without reading websocket.connect first
    session.data_to_send()
    session.app_send({"type": "websocket.send", "text": "tick"})
    feed(session, client_frame(Opcode.CLOSE))
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 1000))], SEND_EOF)  # 1005 -> 1000


def test_client_close_behind_unread_messages_waits_for_the_app() -> None:
    session = opened()
    feed(session, client_frame(Opcode.TEXT, b"last words") + close_frame(1000))
    assert session.state is State.CLOSING_REMOTE and frames_out(session) == ([], None)
    assert session.next_message() == text("last words")
    session.app_send({"type": "websocket.send", "text": "heard you"})
    assert session.next_message() == disconnect(1000)
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 1000))], SEND_EOF)


def test_app_close_then_client_answer_closes_tcp() -> None:
    session = opened()
    session.app_send({"type": "websocket.close", "code": 4001, "reason": "room full"})
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 4001) + b"room full")], None)
    assert session.state is State.CLOSING_LOCAL
    with pytest.raises(ClientDisconnected):
        session.app_send({"type": "websocket.send", "text": "no more"})
    session.app_send({"type": "websocket.close"})  # a second close is a no-op
    feed(session, client_frame(Opcode.TEXT, b"in flight") + close_frame(4001))
    assert frames_out(session) == ([], SEND_EOF) and session.state is State.CLOSED
    assert session.next_message() == disconnect(4001, "room full")


def test_app_close_unanswered_is_dropped_after_close_timeout() -> None:
    clock = Clock()
    session = opened(clock, ws_close_timeout=0.3)
    session.app_send({"type": "websocket.close"})
    session.data_to_send()
    session.on_timeout(clock.now + 0.3)
    assert frames_out(session) == ([], SEND_EOF)


def test_app_close_while_a_client_close_waits_completes_the_handshake() -> None:
    session = opened()
    feed(session, client_frame(Opcode.TEXT, b"x") + close_frame(1000))
    session.app_send({"type": "websocket.close", "code": 1000})
    assert frames_out(session) == ([(Opcode.CLOSE, struct.pack("!H", 1000))], SEND_EOF)


def test_eof_without_close_is_1006_after_unread_messages() -> None:
    session = opened()
    feed(session, client_frame(Opcode.TEXT, b"one"))
    session.receive_eof()
    assert frames_out(session) == ([], SEND_EOF)
    assert session.next_message() == text("one")
    assert session.next_message() == disconnect(1006, None)


def test_unexpected_codec_exception_closes_1011_and_logs(caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    session = opened()
    assert session.conn is not None

    def broken(self: Any, data: bytes, messages: Any = None) -> list[Any]:
        raise ZeroDivisionError("codec bug")

    monkeypatch.setattr(type(session.conn), "receive_data", broken)  # the codec has slots: on its class
    with caplog.at_level(logging.ERROR, logger="asgiws.error"):
        feed(session, b"anything")
    frames, marker = frames_out(session)
    assert frames == [(Opcode.CLOSE, struct.pack("!H", 1011))]  # no details to the client
    assert marker is SEND_HALF_CLOSE
    assert "Unexpected error in the WebSocket codec" in caplog.text and "codec bug" in caplog.text


def test_unexpected_extension_exception_on_send_closes_1011(monkeypatch: pytest.MonkeyPatch) -> None:
    session = opened()
    assert session.conn is not None

    def broken(self: Any, data: str) -> None:
        raise ValueError("deflate bug")

    monkeypatch.setattr(type(session.conn), "send_text", broken)  # the codec has slots: on its class
    session.writing_paused = True  # not the one-frame fast path
    with pytest.raises(ClientDisconnected):
        session.app_send({"type": "websocket.send", "text": "x"})
    frames, marker = frames_out(session)
    assert frames == [(Opcode.CLOSE, struct.pack("!H", 1011))] and marker is SEND_HALF_CLOSE


def test_close_line_in_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    session = opened(clock)
    feed(session, client_frame(Opcode.TEXT, b"hi"))
    assert session.next_message() == text("hi")
    session.app_send({"type": "websocket.send", "text": "hi"})
    clock.now += 2.5
    with caplog.at_level(logging.INFO, logger="asgiws.access"):
        feed(session, close_frame(1000))
    assert [r.getMessage() for r in caplog.records if r.name == "asgiws.access"] == [
        '127.0.0.1:50000 - "WebSocket /chat" closed 1000 by client after 2.500s, in: 1 msg 16 B, out: 1 msg 8 B'
    ]


def test_the_trace_level_is_the_one_asgiws_logging_registers() -> None:
    from asgiws.asgi import websocket

    assert websocket.TRACE_LOG_LEVEL == TRACE_LOG_LEVEL


def test_access_lines_redact_credentials_in_the_query_string(caplog: pytest.LogCaptureFixture) -> None:
    session = make_session()
    session.scope["query_string"] = b"token=s3cret&room=1"
    with caplog.at_level(logging.INFO, logger="asgiws.access"):
        session.app_send(ACCEPT)
        feed(session, close_frame(1000))
    lines = [r.getMessage() for r in caplog.records if r.name == "asgiws.access"]
    assert len(lines) == 2 and all("/chat?token=[redacted]&room=1" in line for line in lines), lines
    assert "s3cret" not in caplog.text
