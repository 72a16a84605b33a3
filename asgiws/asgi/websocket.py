"""One ASGI WebSocket session, sans I/O: the lifecycle from the upgrade request to the closed stream.

The session owns the codec connection (`ServerConnection`), the messages the
app has not read yet, the disconnect message and the close code. Its contract
follows websockets' core:

- bytes in: `receive_data(data)`, `receive_eof()`, `connection_lost()`;
  `payload_received(nbytes)` for a large frame read in place;
- the app's side: `messages` (a MessageQueue the protocol pops directly on the hot
  path), `next_message()` (None: wait), `send_handlers[type](message)` and
  `refuse(message)` (raising the ASGI RuntimeError or `ClientDisconnected`),
  `app_finished(outcome)`;
- the server's side: `shutdown(code)`, `ping(now)`, `on_timeout(now)`,
  `deadline()` (or `close_deadline()` and `pong_deadline()` apart), and
  `abandon(code, reason)` for a client that stopped reading;
- bytes out: `data_to_send()`, whose last item may be `SEND_EOF` ("close TCP
  now") or `SEND_HALF_CLOSE` ("no more bytes from us; keep reading").

States are data (`State`), transitions are tables keyed by (state, app message
type), (state, codec event type) and (state, what happened), and everything
that happens on entering a state is in `_enter()`.

Errors reach the app in order: a close or protocol failure that arrives behind
messages the app has not read yet waits (CLOSING_REMOTE) and takes effect when
the app reaches it, or after ws_close_timeout if it stops reading.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from asgiws.config import WS_FRAGMENT_SIZE, Config
from asgiws.exceptions import ClientDisconnected
from asgiws.metrics import APP_DENIED, BAD_REQUEST, METRICS, ORIGIN, RATE, VERSION
from asgiws.protocols.origins import origin_allowed
from asgiws.protocols.response import denial_head, error_response, format_fields
from asgiws.types import Message, Scope
from asgiws.websocket import (
    CloseCode,
    CloseReceived,
    ConnectionClosedError,
    Event,
    HandshakeError,
    PerMessageDeflateFactory,
    Pong,
    ProtocolFailure,
    ServerConnection,
    UpgradeRequest,
    accept_response,
    negotiate_extensions,
    validate_upgrade_request,
)
from asgiws.websocket.fastpath import MessageQueue, MessageQueueLike, Tally, receive_bytes, receive_text

__all__ = ["SEND_EOF", "SEND_HALF_CLOSE", "SEND_IN_FRAGMENTS", "State", "WebSocketSession"]

logger = logging.getLogger("asgiws.error")
trace_logger = logging.getLogger("asgiws.trace")
# asgiws.logging.TRACE_LOG_LEVEL, not imported: that module formats for terminals
# (click), and this one stays free of I/O and CLI libraries (the layering test).
TRACE_LOG_LEVEL = 5

# Writers of the access lines, given by the caller (asgiws.logging's log_access
# and log_websocket_close): client, method, path, HTTP version, status; and
# client, path, code, who closed, duration, messages/bytes in, messages/bytes out.
LogAccess = Callable[[Any, str, str, str, int], None]
LogClose = Callable[[Any, str, int, str, float, int, int, int, int], None]


class _Marker(bytes):
    """A chunk of output that is an instruction, told apart by identity (never by value)."""


# The last item of data_to_send(): close the TCP connection now.
SEND_EOF = _Marker()
# The last item of data_to_send(): shut down our side (write EOF) and keep reading.
SEND_HALF_CLOSE = _Marker()
# Returned by the websocket.send handler: the message is too large for one
# frame; the caller sends it with send_fragments(), one frame per loop step.
SEND_IN_FRAGMENTS = _Marker()


class State(enum.Enum):
    CONNECTING = "waiting for websocket.accept"
    REJECTING = "sending a denial response"
    OPEN = "open"
    CLOSING_LOCAL = "our close frame sent, waiting for the client's close or EOF"
    CLOSING_REMOTE = "the client's close or failure received, behind messages the app has not read"
    CLOSED = "closed"


_CONNECTING = State.CONNECTING
_OPEN = State.OPEN
_CLOSING_LOCAL = State.CLOSING_LOCAL
_CLOSING_REMOTE = State.CLOSING_REMOTE
_CLOSED = State.CLOSED

# What the app may send in each state: message type -> handler method name.
# A handler returns None (output waits in data_to_send()), a frame to write
# now, or SEND_IN_FRAGMENTS.
APP_TRANSITIONS: dict[State, dict[str, str]] = {
    State.CONNECTING: {
        "websocket.accept": "_app_accept",
        "websocket.close": "_app_close_before_accept",
        "websocket.http.response.start": "_app_response_start",
    },
    State.REJECTING: {"websocket.http.response.body": "_app_response_body"},
    State.OPEN: {"websocket.send": "_app_send", "websocket.close": "_app_close"},
    # Sends are still allowed: the app may be answering the messages it is reading.
    State.CLOSING_REMOTE: {"websocket.send": "_app_send", "websocket.close": "_app_close"},
    # 5.5.1: after sending a Close frame, "the endpoint MUST NOT send any further data frames".
    State.CLOSING_LOCAL: {"websocket.close": "_app_close_again"},
    State.CLOSED: {},
}
# Refused with ClientDisconnected rather than as an ASGI usage error ("*": every type).
_DISCONNECTED: dict[State, frozenset[str]] = {
    State.CLOSING_LOCAL: frozenset({"websocket.send"}),
    State.CLOSED: frozenset({"*"}),
}

# A data message from the codec: the codec builds the app's websocket.receive
# message itself (ServerConnection's message types, fastpath.receive_text and
# receive_bytes), so its event type is the dict's.
_RECEIVED = dict

# What a codec event does in each state: event type -> handler method name.
_IGNORE_ALL: dict[type[Any], str] = {
    kind: "_ignore" for kind in (_RECEIVED, Pong, CloseReceived, ProtocolFailure)
}
EVENT_TRANSITIONS: dict[State, dict[type[Any], str]] = {
    State.CONNECTING: _IGNORE_ALL,
    State.REJECTING: _IGNORE_ALL,
    State.OPEN: {
        _RECEIVED: "_on_message",
        Pong: "_on_pong",
        CloseReceived: "_on_peer_close",
        ProtocolFailure: "_on_failure",
    },
    State.CLOSING_LOCAL: {
        _RECEIVED: "_on_message_after_close",
        Pong: "_on_pong",
        CloseReceived: "_on_close_answered",
        ProtocolFailure: "_on_failure_after_close",
    },
    # The codec parses nothing after a close or a failure.
    State.CLOSING_REMOTE: _IGNORE_ALL,
    State.CLOSED: _IGNORE_ALL,
}

# The client's EOF (or the transport lost) in each state.
EOF_TRANSITIONS: dict[State, str] = {
    State.CONNECTING: "_lost",
    State.REJECTING: "_lost",
    State.OPEN: "_lost",
    State.CLOSING_REMOTE: "_lost_behind_messages",
    State.CLOSING_LOCAL: "_close_done",
    State.CLOSED: "_nothing",
}

# The close deadline (ws_close_timeout) passed in each closing state.
CLOSE_TIMEOUT_TRANSITIONS: dict[State, str] = {
    State.CLOSING_LOCAL: "_close_done",
    State.CLOSING_REMOTE: "_apply_pending_close",
}

# Graceful shutdown in each state.
SHUTDOWN_TRANSITIONS: dict[State, str] = {
    State.CONNECTING: "_shutdown_before_accept",
    # A denial response under way is let finish (the server's graceful timeout bounds it).
    State.REJECTING: "_nothing_with",
    State.OPEN: "_shutdown_open",
    State.CLOSING_REMOTE: "_shutdown_open",
    State.CLOSING_LOCAL: "_nothing_with",
    State.CLOSED: "_nothing_with",
}

# The app task ended ("returned", "raised" or "cancelled") in each state.
APP_END_TRANSITIONS: dict[State, str] = {
    State.CONNECTING: "_end_before_accept",
    State.REJECTING: "_end_mid_response",
    State.OPEN: "_end_open",
    State.CLOSING_REMOTE: "_end_open",
    State.CLOSING_LOCAL: "_nothing_with",
    State.CLOSED: "_nothing_with",
}
# The close code when the app ends with the connection open (README: "app returns
# without closing: close 1000", "app raises after accept: close 1011").
_APP_END_CODES = {
    "returned": CloseCode.NORMAL_CLOSURE,
    "raised": CloseCode.INTERNAL_ERROR,
    "cancelled": CloseCode.GOING_AWAY,
}


def _encode_header(name: bytes | str, value: bytes | str) -> tuple[bytes, bytes]:
    return (
        name.encode("latin-1") if isinstance(name, str) else name,
        value.encode("latin-1") if isinstance(value, str) else value,
    )


# Heartbeat ping payloads (4 bytes each, see WebSocketSession.ping).
_PING_NUMBERS = itertools.count()

AppHandler = Callable[["WebSocketSession", Message], "bytes | None"]
EventHandler = Callable[["WebSocketSession", Any], None]



def server_deflate_factory(config: Config) -> PerMessageDeflateFactory:
    """The server's permessage-deflate offer answer from --ws-deflate-* (the codec has no defaults)."""
    return PerMessageDeflateFactory(
        window_bits=config.ws_deflate_window_bits,
        memory_level=config.ws_deflate_memory_level,
        min_size=config.ws_deflate_min_size,
        server_no_context_takeover=config.ws_deflate_server_no_context_takeover,
    )

class WebSocketSession:
    """The ASGI lifecycle of one WebSocket, from the upgrade request on; no I/O.

    `clock()` returns the time in seconds (the event loop's `time`); it dates
    deadlines and the connection's duration, and feeds the message-rate bucket.
    `default_headers` go on every response (Server, --header); `log_access`
    and `log_close` write the access lines (see LogAccess, LogClose).
    A request that fails the opening handshake is answered at once: the
    session starts CLOSED with the response in `data_to_send()`, and the app
    is not to be called.
    """

    __slots__ = (
        "_clock",
        "_close_deadline",
        "_default_headers",
        "_early_input",
        "_message_rate",
        "_out",
        "_pending_close",
        "_ping_payload",
        "_ping_sent_at",
        "_plain_reads",
        "_pong_deadline",
        "_request",
        "_response_chunked",
        "_response_status",
        "_tokens",
        "_tokens_time",
        "_write_access_line",
        "_write_close_line",
        "can_send",
        "closed_by",
        "config",
        "conn",
        "disconnect",
        "event_handlers",
        "messages",
        "opened_at",
        "scope",
        "send_handlers",
        "state",
        "tally",
        "writing_paused",
    )

    def __init__(self, config: Config, scope: Scope, method: str, *, default_headers: list[tuple[bytes, bytes]],
                 clock: Callable[[], float], log_access: LogAccess, log_close: LogClose) -> None:
        self.config = config
        self.scope = scope
        self.conn: ServerConnection | None = None  # created on accept
        # Messages for the app, in order; websocket.connect is the first.
        self.messages: MessageQueueLike = MessageQueue([{"type": "websocket.connect"}])
        self.disconnect: Message | None = None  # what receive() returns once the connection is over
        # The current state's row of APP_TRANSITIONS, as functions: handler(session, message).
        self.send_handlers: dict[str, AppHandler] = {}
        self.event_handlers: dict[type[Any], EventHandler] = {}
        self.can_send = False  # True while data frames may go out (broadcast deliveries check it)
        # OPEN without a message rate: receive_data takes data messages inline.
        self._plain_reads = False
        self.writing_paused = False  # set by the transport side: no frame is written past a backlog
        # "client", "server", "app" or "timeout": who began the close (for the access line).
        self.closed_by = "client"
        self.opened_at: float | None = None
        # Counters for the access line and metrics: whole messages, and bytes on the wire
        # after the handshake (frame headers included).
        # Messages and bytes each way on the wire after the handshake: counted by the codec (in C on
        # the common frames), read by the metrics and the close's log line.
        self.tally = Tally()
        self._clock = clock
        self._default_headers = default_headers
        self._write_access_line = log_access
        self._write_close_line = log_close
        self._request: UpgradeRequest | None = None
        # Input before accept (a client may pipeline frames behind its request).
        self._early_input = bytearray()
        self._out: list[bytes] = []  # responses and instructions, after the codec's output
        # The client's close or failure, waiting behind messages the app has not read.
        self._pending_close: CloseReceived | ProtocolFailure | None = None
        self._close_deadline: float | None = None
        self._pong_deadline: float | None = None
        self._ping_payload = b""
        self._ping_sent_at: float | None = None  # for asgiws_websocket_ping_rtt_seconds
        self._response_chunked = False
        self._response_status = 0
        self._message_rate = config.ws_max_message_rate
        # --ws-max-message-rate token bucket.
        self._tokens = float(config.ws_max_message_burst)
        self._tokens_time = 0.0
        self.state = _CONNECTING
        self._enter(_CONNECTING)
        try:
            self._request = validate_upgrade_request(method, scope["http_version"], scope["headers"])
        except HandshakeError as exc:
            logger.info("Rejected WebSocket upgrade from %s: %s", self._client_text(), exc.reason)
            METRICS.ws_rejected[VERSION if exc.status == 426 else BAD_REQUEST] += 1
            self._reject(exc.status, exc.reason, exc.headers)
            return
        if not origin_allowed(self._request.origin, config.ws_allowed_origins):
            logger.warning("Rejected WebSocket upgrade from %s: origin %r is not allowed",
                           self._client_text(), self._request.origin)
            METRICS.ws_rejected[ORIGIN] += 1
            self._reject(403, "Origin not allowed", [])
            return
        scope["subprotocols"] = self._request.subprotocols
        scope.setdefault("extensions", {})["websocket.http.response"] = {}

    # -- bytes in ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[bytes]:
        """Parse `data`; return what to write now (as `data_to_send()`).

        New messages for the app are appended to `messages`. An unexpected
        exception in the codec or an extension closes with 1011 (logged,
        no details to the client); nothing raises.
        """
        conn = self.conn
        if conn is None:
            if self.state is _CONNECTING:
                self._early_input += data
            return []
        # The common read (open, no message rate): the codec appends the app's
        # messages to its queue itself (no Python call per message), and the
        # events left are pongs, then maybe a close or failure behind them.
        # Otherwise each message is an event for this state's handler.
        queue = self.messages if self._plain_reads else None
        try:
            events = conn.receive_data(data, queue)
        except Exception as exc:  # noqa: BLE001  (our bug, not the client's: 1011, see _codec_crashed)
            events = self._codec_crashed(exc)
        for event in events:
            self.event_handlers[type(event)](self, event)  # the current state's: an event may change it
        chunks = conn.data_to_send()  # pongs, or the close frame
        if self._out:
            chunks = self._take_out(chunks)
        return chunks

    def payload_received(self, nbytes: int) -> None:
        """`nbytes` of a large frame were read into `conn.payload_buffer()`."""
        conn = self.conn
        assert conn is not None
        try:
            conn.payload_received(nbytes)
        except Exception as exc:  # noqa: BLE001  (our bug, not the client's: 1011, see _codec_crashed)
            for event in self._codec_crashed(exc):
                self.event_handlers[type(event)](self, event)

    def receive_eof(self) -> None:
        """The client closed its side of TCP: nothing more will arrive."""
        if self.conn is not None:
            self.conn.receive_eof()
        getattr(self, EOF_TRANSITIONS[self.state])()

    def connection_lost(self) -> None:
        """The transport is gone (closed by either side)."""
        self.receive_eof()

    def _codec_crashed(self, exc: Exception) -> list[Event]:
        # As websockets' Protocol.parse: an unexpected error is our bug, not
        # the client's: 1011 without the details, which go to the log.
        logger.error("Unexpected error in the WebSocket codec for %s; closing with 1011",
                     self._client_text(), exc_info=exc)
        assert self.conn is not None
        self.conn.receive_eof()  # its state is unknown now: parse nothing more
        return [ProtocolFailure(CloseCode.INTERNAL_ERROR, "")]

    # -- codec events ----------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if self._message_rate is not None and not self._take_token():
            METRICS.ws_rejected[RATE] += 1
            self._on_failure(ProtocolFailure(CloseCode.POLICY_VIOLATION, "message rate limit exceeded"))
            return
        self.messages.append(message)

    def _take_token(self) -> bool:
        rate = self._message_rate
        assert rate is not None
        now = self._clock()
        burst = float(self.config.ws_max_message_burst)
        self._tokens = min(burst, self._tokens + (now - self._tokens_time) * rate)
        self._tokens_time = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _on_message_after_close(self, message: Message) -> None:
        """Dropped: 7.1.1 asks us to keep reading until the client's close, and the app,
        which closed (or was closed), gets no more messages (the codec has counted it)."""

    def _on_pong(self, event: Pong) -> None:
        # 5.5.3: a Pong in response to a Ping carries its payload; unsolicited
        # pongs are allowed and simply ignored.
        if self._ping_sent_at is not None and event.payload == self._ping_payload:
            METRICS.ws_ping_rtt.observe(self._clock() - self._ping_sent_at)
            self._ping_sent_at = None
        if self._pong_deadline is not None and event.payload == self._ping_payload:
            self._pong_deadline = None

    def _on_peer_close(self, event: CloseReceived) -> None:
        self._trace_close("<", event.code, event.reason)
        self.closed_by = "client"
        if self.messages:
            self._pending_close = event
            self._enter(_CLOSING_REMOTE)
        else:
            self._answer_close(event)

    def _on_failure(self, event: ProtocolFailure) -> None:
        self.closed_by = "server"
        if self.messages:
            self._pending_close = event
            self._enter(_CLOSING_REMOTE)
        else:
            self._fail(event)

    def _on_close_answered(self, event: CloseReceived) -> None:
        # Our close has been answered. 7.1.1: the server closes the TCP
        # connection first; the app already has its disconnect message.
        self._trace_close("<", event.code, event.reason)
        self._enter(_CLOSED)

    def _on_failure_after_close(self, event: ProtocolFailure) -> None:
        # Our close frame is out; nothing the client sends matters now.
        self._enter(_CLOSED)

    def _ignore(self, event: Event | Message) -> None:
        pass

    def _answer_close(self, event: CloseReceived) -> None:
        # 5.5.1: the endpoint MUST send a Close frame in response, typically
        # echoing the status code it received (1005 means there was none).
        code = event.code if event.code != CloseCode.NO_STATUS_RCVD else CloseCode.NORMAL_CLOSURE
        self._send_close(code, "")
        self._set_disconnect(event.code, event.reason)
        # 7.1.1: the handshake is complete; the server closes TCP first.
        self._enter(_CLOSED)

    def _fail(self, event: ProtocolFailure) -> None:
        """Close for a failure, and stop writing: the client may still be sending (RFC 6455 7.1.1, 7.1.7).

        Closing TCP now would leave its input unread, and the kernel answers
        unread input with a RST that can destroy our close frame before the
        client reads it. So: our close frame, then EOF from our side, and
        read (discarding) until the client's EOF or ws_close_timeout.
        """
        if event.code != CloseCode.INTERNAL_ERROR:  # logged where it happened
            logger.info("WebSocket protocol error from %s: %d %s", self._client_text(), event.code, event.reason)
        self._send_close(event.code, event.reason)
        self._set_disconnect(event.code, event.reason)
        self._emit(SEND_HALF_CLOSE)
        self._enter(_CLOSING_LOCAL)

    def _apply_pending_close(self) -> None:
        """The app reached the client's close or failure (or stopped reading for ws_close_timeout)."""
        pending = self._pending_close
        assert pending is not None
        self._pending_close = None
        if type(pending) is CloseReceived:
            self._answer_close(pending)
        else:
            assert isinstance(pending, ProtocolFailure)
            self._fail(pending)

    # -- EOF and timeouts ------------------------------------------------------------------------

    def _lost(self) -> None:
        if self.state is _OPEN:
            self.closed_by = "client"
        self._enter(_CLOSED)

    def _lost_behind_messages(self) -> None:
        pending = self._pending_close
        assert pending is not None
        self._set_disconnect(pending.code, pending.reason)
        self._enter(_CLOSED)

    def _close_done(self) -> None:
        self._enter(_CLOSED)

    def _nothing(self) -> None:
        pass

    def _nothing_with(self, *arguments: object) -> None:
        pass

    def ping(self, now: float) -> None:
        """Send a heartbeat ping (OPEN only); a pong is due by `now + ws_ping_timeout`."""
        if self.state is not _OPEN:
            return
        assert self.conn is not None
        # A worker-wide count, not os.urandom: the payload only has to tell this ping's pong
        # from the last one's, which needs no system call per ping (19,000 idle connections
        # send 950 pings a second).
        self._ping_payload = (next(_PING_NUMBERS) & 0xFFFFFFFF).to_bytes(4, "big")
        self.conn.send_ping(self._ping_payload)
        # The round trip is timed from the clock, not from `now`: the wheel passes its slot's
        # time, which may be a hair after the clock when the loop wakes early.
        self._ping_sent_at = self._clock()
        timeout = self.config.ws_ping_timeout
        if timeout and self._pong_deadline is None:
            self._pong_deadline = now + timeout

    def deadline(self) -> float | None:
        """When on_timeout() must next be called (the clock's seconds), or None."""
        close, pong = self._close_deadline, self._pong_deadline
        if close is None:
            return pong
        if pong is None:
            return close
        return min(close, pong)

    def pong_deadline(self) -> float | None:
        """When the pong to the last heartbeat ping is due (ws_ping_timeout after it), or None."""
        return self._pong_deadline

    def close_deadline(self) -> float | None:
        """When a closing state gives up waiting (ws_close_timeout after entering it), or None."""
        return self._close_deadline

    def on_timeout(self, now: float) -> None:
        """Act on every deadline that `now` has passed."""
        pong = self._pong_deadline
        if pong is not None and now >= pong:
            self._pong_deadline = None
            if self.state is _OPEN or self.state is _CLOSING_REMOTE:
                logger.info("WebSocket client %s did not answer a ping in time; closing", self._client_text())
                self.closed_by = "timeout"
                self._send_close(CloseCode.INTERNAL_ERROR, "")
                self._set_disconnect(CloseCode.INTERNAL_ERROR, "")
                # The client is not answering: waiting for its close would be in vain.
                self._enter(_CLOSED)
        close = self._close_deadline
        if close is not None and now >= close:
            self._close_deadline = None
            getattr(self, CLOSE_TIMEOUT_TRANSITIONS[self.state])()

    # -- the app's side ------------------------------------------------------------------------

    def next_message(self) -> Message | None:
        """The next message for the app's receive(), or None: wait for input.

        Reaching the end of the unread messages applies the client's close or
        failure that waited behind them.
        """
        if self.messages:
            return self.messages.popleft()
        if self.state is _CLOSING_REMOTE:
            self._apply_pending_close()
        return self.disconnect

    def refuse(self, message: Message) -> NoReturn:
        """Raise for an app message the current state has no handler for.

        ClientDisconnected once the connection is closing or closed, else
        RuntimeError naming what the state expects (an ASGI usage error).
        """
        kind = message["type"]
        refused = _DISCONNECTED.get(self.state, frozenset())
        if kind in refused or "*" in refused:
            raise ClientDisconnected(f"WebSocket is closed; cannot send {kind!r}")
        expected = " or ".join(repr(name) for name in APP_TRANSITIONS[self.state])
        raise RuntimeError(f"Expected ASGI message {expected} but got {kind!r}")

    def app_send(self, message: Message) -> bytes | None:
        """Handle one app message: its handler's result, or raise as refuse()."""
        handler = self.send_handlers.get(message["type"])
        if handler is None:
            self.refuse(message)
        return handler(self, message)

    def app_finished(self, outcome: str) -> None:
        """The app task ended: "returned", "raised" (logged by the caller) or "cancelled"."""
        getattr(self, APP_END_TRANSITIONS[self.state])(outcome)

    def _end_before_accept(self, outcome: str) -> None:
        if outcome == "returned":
            logger.error("ASGI callable returned without accepting or closing the WebSocket")
        self._reject(500, "Internal Server Error", [])

    def _end_mid_response(self, outcome: str) -> None:
        # The denial response is cut short: closing the connection is the only end it can have.
        self._enter(_CLOSED)

    def _end_open(self, outcome: str) -> None:
        self._close(_APP_END_CODES[outcome], "", "app")

    def _app_send(self, message: Message) -> bytes | None:
        """websocket.send: the frame to write now, or None (queued), or SEND_IN_FRAGMENTS.

        A plain method, not a coroutine: the common case needs no coroutine
        object of its own. Raises RuntimeError for a message with neither
        text nor bytes, ClientDisconnected if an extension fails.
        """
        conn = self.conn
        assert conn is not None
        text = message.get("text")
        if text is not None:
            if not self.writing_paused:
                frame = conn.text_frame(text)
                if frame is not None:
                    return frame
            if len(text) > WS_FRAGMENT_SIZE:
                return SEND_IN_FRAGMENTS
            try:
                conn.send_text(text)
            except Exception as exc:  # noqa: BLE001  (our bug, not the client's: 1011, see _codec_crashed)
                self._encoder_crashed(exc)
        else:
            data = message.get("bytes")
            if data is None:
                raise RuntimeError("Expected 'bytes' or 'text' in 'websocket.send', got neither")
            if len(data) > WS_FRAGMENT_SIZE:
                return SEND_IN_FRAGMENTS
            try:
                conn.send_binary(data)
            except Exception as exc:  # noqa: BLE001  (our bug, not the client's: 1011, see _codec_crashed)
                self._encoder_crashed(exc)
        return None

    def send_fragments(self, message: Message) -> Iterator[None]:
        """Queue a large websocket.send as frames of WS_FRAGMENT_SIZE, one per step.

        Raises ClientDisconnected at a step once the connection can no longer
        send (closed, or our close frame went out meanwhile).
        """
        conn = self.conn
        assert conn is not None
        data: str | bytes = message["text"] if message.get("text") is not None else message["bytes"]
        steps = conn.send_fragments(data, WS_FRAGMENT_SIZE)
        while True:
            if not self.can_send:
                raise ClientDisconnected("WebSocket closed while sending 'websocket.send'")
            try:
                next(steps)
            except StopIteration:
                return
            except ConnectionClosedError:
                raise ClientDisconnected("WebSocket closed while sending 'websocket.send'") from None
            except Exception as exc:  # noqa: BLE001  (our bug, not the client's: 1011, see _codec_crashed)
                self._encoder_crashed(exc)
            yield

    def _encoder_crashed(self, exc: Exception) -> NoReturn:
        logger.error("Unexpected error in the WebSocket codec for %s; closing with 1011",
                     self._client_text(), exc_info=exc)
        self.closed_by = "server"
        self._fail(ProtocolFailure(CloseCode.INTERNAL_ERROR, ""))
        raise ClientDisconnected("WebSocket closed: the server failed to encode 'websocket.send'")

    def _app_close(self, message: Message) -> None:
        self._close(message.get("code", CloseCode.NORMAL_CLOSURE), message.get("reason") or "", "app")

    def _app_close_again(self, message: Message) -> None:
        pass  # our close frame is already out

    def _close(self, code: int, reason: str, closed_by: str) -> None:
        """Begin the closing handshake from our side (OPEN or CLOSING_REMOTE); ValueError for a bad code."""
        self._send_close(code, reason)
        self.closed_by = closed_by
        self._set_disconnect(code, reason)
        pending, self._pending_close = self._pending_close, None
        if type(pending) is CloseReceived:
            self._enter(_CLOSED)  # both close frames are out
            return
        if pending is not None:
            self._emit(SEND_HALF_CLOSE)  # the client's stream is broken: as _fail
        self._enter(_CLOSING_LOCAL)

    # -- accepting ---------------------------------------------------------------------------------

    def _app_accept(self, message: Message) -> None:
        request = self._request
        assert request is not None
        subprotocol = message.get("subprotocol")
        headers = list(self._default_headers)
        headers.extend(_encode_header(name, value) for name, value in message.get("headers") or ())
        extensions_header, extensions = self._negotiate_extensions(request)
        try:
            response = accept_response(
                request, subprotocol=subprotocol, extensions_header=extensions_header, headers=headers
            )
        except ValueError as exc:
            raise RuntimeError(f"Invalid websocket.accept: {exc}") from None
        trace = self._trace if trace_logger.isEnabledFor(TRACE_LOG_LEVEL) else None
        self.conn = ServerConnection(max_size=self.config.ws_max_size, extensions=extensions, trace=trace,
                                     text_message=receive_text, binary_message=receive_bytes, tally=self.tally)
        messages = self.messages
        if messages and messages[0]["type"] == "websocket.connect":
            # An app may accept without reading websocket.connect (accept answers it):
            # it must not count as an unread message that holds up a client's close.
            messages.popleft()
        self._out.append(response)
        self.opened_at = self._clock()
        METRICS.websocket_opened(self)
        self._log_access(101)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("WebSocket %s %s accepted: subprotocol=%s, extensions=%s, origin=%s",
                         self._client_text(), self._path(), subprotocol,
                         extensions_header.decode("latin-1") if extensions_header else None, request.origin)
        self._enter(_OPEN)
        if self._early_input:
            early, self._early_input = bytes(self._early_input), bytearray()
            self._out = self.receive_data(early)

    def _negotiate_extensions(self, request: UpgradeRequest) -> tuple[bytes | None, list[Any]]:
        config = self.config
        if not config.ws_per_message_deflate or not request.extension_header_values:
            return None, []
        return negotiate_extensions(request.extension_header_values, [server_deflate_factory(config)])

    # -- rejecting the upgrade with an HTTP response ------------------------------------------------

    def _app_close_before_accept(self, message: Message) -> None:
        # ASGI spec: websocket.close before accept means the server answers 403.
        METRICS.ws_rejected[APP_DENIED] += 1
        self._reject(403, "", [])

    def _app_response_start(self, message: Message) -> None:
        METRICS.ws_rejected[APP_DENIED] += 1  # the Websocket Denial Response extension
        status = message["status"]
        head, self._response_chunked = denial_head(
            status, message.get("headers") or (), self._default_headers, date=self.config.date_header
        )
        self._out.append(head)
        self._response_status = status
        self._enter(State.REJECTING)

    def _app_response_body(self, message: Message) -> None:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        out = self._out
        if self._response_chunked:
            if body:
                out += [b"%x\r\n" % len(body), body, b"\r\n"]
            if not more:
                out.append(b"0\r\n\r\n")
        elif body:
            out.append(body)
        if not more:
            self._log_access(self._response_status)
            self._enter(_CLOSED)

    def _reject(self, status: int, reason: str, headers: list[tuple[bytes, bytes]],
                code: int = CloseCode.ABNORMAL_CLOSURE) -> None:
        defaults = self._default_headers
        self._out += error_response(status, reason, defaults, format_fields(defaults),
                                    date=self.config.date_header, fields=headers)
        self._log_access(status)
        self._set_disconnect(code, None if code == CloseCode.ABNORMAL_CLOSURE else "")
        self._enter(_CLOSED)

    # -- shutdown and slow clients ------------------------------------------------------------------

    def shutdown(self, code: int, reason: str = "") -> None:
        """The server closes (not the app): graceful shutdown with `code` (1001, 1012), or a
        broadcast feed this connection can no longer follow (1012 and a reason); not yet
        accepted: 503."""
        getattr(self, SHUTDOWN_TRANSITIONS[self.state])(code, reason)

    def _shutdown_before_accept(self, code: int, reason: str) -> None:
        logger.info("Refused WebSocket %s from %s: server shutting down", self._path(), self._client_text())
        self._reject(503, "Server shutting down", [], code)

    def _shutdown_open(self, code: int, reason: str) -> None:
        self._close(code, reason, "server")

    def abandon(self, code: int, reason: str) -> None:
        """The connection is dropped without a close frame (a client not reading: 1008)."""
        METRICS.ws_slow_consumer_drops += 1
        self.closed_by = "server"
        self._set_disconnect(code, reason)
        self._enter(_CLOSED)

    # -- bytes out ------------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Chunks to write, in order; the last may be SEND_EOF or SEND_HALF_CLOSE. Clears them."""
        conn = self.conn
        chunks = conn.data_to_send() if conn is not None else []
        if self._out:
            return self._take_out(chunks)
        return chunks

    def _take_out(self, later: list[bytes]) -> list[bytes]:
        out, self._out = self._out, []
        out += later
        return out

    def _emit(self, chunk: bytes) -> None:
        """Queue `chunk` after everything the codec has produced so far."""
        conn = self.conn
        if conn is not None:
            self._out += conn.data_to_send()
        self._out.append(chunk)

    def _send_close(self, code: int, reason: str) -> None:
        assert self.conn is not None
        self.conn.send_close(code, reason)
        self._trace_close(">", code, reason)

    def _set_disconnect(self, code: int, reason: str | None) -> None:
        """The disconnect message, set once; no reason where no close frame gave one (1006)."""
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code}
            if reason is not None:
                self.disconnect["reason"] = reason

    # -- the one place a state is entered -----------------------------------------------------------

    def _enter(self, state: State) -> None:
        previous = self.state
        self.state = state
        self.send_handlers = _APP_HANDLERS[state]
        self.event_handlers = _EVENT_HANDLERS[state]
        self.can_send = state is _OPEN or state is _CLOSING_REMOTE
        self._plain_reads = state is _OPEN and self._message_rate is None
        if state is _CLOSING_LOCAL or state is _CLOSING_REMOTE:
            self._close_deadline = self._clock() + self.config.ws_close_timeout
        elif state is _CLOSED:
            self._close_deadline = self._pong_deadline = None
            self._pending_close = None
            self._early_input = bytearray()
            self._set_disconnect(CloseCode.ABNORMAL_CLOSURE, None)
            self._emit(SEND_EOF)
            if self.opened_at is not None:
                code = self.disconnect["code"] if self.disconnect else CloseCode.ABNORMAL_CLOSURE
                METRICS.websocket_closed(self, code, self.closed_by)
                self._log_close()
        if previous is not state and logger.isEnabledFor(logging.DEBUG):
            logger.debug("WebSocket %s: %s -> %s", self._client_text(), previous.name, state.name)

    # -- logging ------------------------------------------------------------------------------------

    def _client_text(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "unknown client"

    def _path(self) -> str:
        path: str = self.scope.get("path", "")
        query = self.scope.get("query_string", b"")
        if query:
            path += "?" + query.decode("latin-1")
        return path

    def _log_access(self, status: int) -> None:
        METRICS.count_http(status, None)  # the handshake's response; its duration is not a request's
        if self.config.access_log:
            self._write_access_line(self.scope.get("client"), "GET", self._path(),
                                    self.scope.get("http_version", "1.1"), status)

    def _log_close(self) -> None:
        if not self.config.access_log:
            return
        assert self.disconnect is not None and self.opened_at is not None
        self._write_close_line(
            self.scope.get("client"), self._path(), self.disconnect["code"], self.closed_by,
            self._clock() - self.opened_at, self.tally.messages_received, self.tally.bytes_received,
            self.tally.messages_sent, self.tally.bytes_sent,
        )

    def _trace(self, direction: str, opcode: Any, fin: bool, rsv: int, masked: bool, length: int) -> None:
        trace_logger.log(
            TRACE_LOG_LEVEL, "%s %s %s fin=%d rsv=%s mask=%d len=%d",
            self._client_text(), direction, getattr(opcode, "name", opcode), fin,
            format(rsv >> 4, "03b"), masked, length,  # RSV1..RSV3 as bits: "100" is RSV1
        )

    def _trace_close(self, direction: str, code: int, reason: str) -> None:
        if trace_logger.isEnabledFor(TRACE_LOG_LEVEL):
            trace_logger.log(TRACE_LOG_LEVEL, "%s %s CLOSE code=%d reason=%r",
                             self._client_text(), direction, code, reason)


# APP_TRANSITIONS and EVENT_TRANSITIONS with the method names resolved once:
# entering a state allocates nothing (a WebSocket's life enters three states or
# more), and an event costs one dict lookup by its type, not a lookup keyed by
# the State (Enum.__hash__ is a Python function) and a getattr by name.
_APP_HANDLERS: dict[State, dict[str, AppHandler]] = {
    state: {name: getattr(WebSocketSession, method) for name, method in row.items()}
    for state, row in APP_TRANSITIONS.items()
}
_EVENT_HANDLERS: dict[State, dict[type[Any], EventHandler]] = {
    state: {kind: getattr(WebSocketSession, method) for kind, method in row.items()}
    for state, row in EVENT_TRANSITIONS.items()
}
