"""The asyncio side of a WebSocket connection.

The HTTP protocol parses the upgrade request once and hands the transport, the
scope and any bytes that followed the request head to `WebSocketProtocol.take_over`.
From then on this module feeds bytes to the sans-I/O codec (`asgiws.websocket`),
turns its events into ASGI `websocket.receive` / `websocket.disconnect`
messages, turns the app's `websocket.send` / `websocket.close` into frames,
and owns the timers (heartbeat, close handshake) and flow control.

Errors reach the app in order: a close or protocol failure that arrives behind
messages the app has not read yet waits in the queue, and takes effect when the
app reaches it (or after ws_close_timeout, if the app stops reading).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from asgiws.broadcast import SCOPE_EXTENSION, broker_for
from asgiws.broadcast.prepared import PreparedMessage
from asgiws.config import WS_FRAGMENT_SIZE, Config
from asgiws.exceptions import ClientDisconnected
from asgiws.logging import TRACE_LOG_LEVEL, log_access
from asgiws.protocols.common import ServerState
from asgiws.protocols.origins import origin_allowed
from asgiws.protocols.response import denial_head, error_response, format_fields
from asgiws.types import ASGIApp, Message, Scope
from asgiws.websocket import (
    BinaryMessage,
    CloseCode,
    CloseReceived,
    ConnectionClosedError,
    Event,
    HandshakeError,
    PerMessageDeflateFactory,
    Pong,
    ProtocolFailure,
    ServerConnection,
    TextMessage,
    accept_response,
    negotiate_extensions,
    validate_upgrade_request,
)

logger = logging.getLogger("asgiws.error")
trace_logger = logging.getLogger("asgiws.trace")

ASGI_VERSIONS = {"version": "3.0", "spec_version": "2.4"}


# Broadcast frames queued in one loop iteration are joined into one write (one
# system call) up to this many bytes; past it a copy costs more than it saves.
_JOIN_WRITES_LIMIT = 64 * 1024
# Frames the codec produced in one go are joined when each is at most this
# big (a frame's header and payload are already one chunk up to 4 KiB).
_JOIN_CHUNK_LIMIT = 4096


class State(enum.Enum):
    HANDSHAKE = "waiting for websocket.accept"
    RESPONSE = "sending a denial response"
    OPEN = "open"
    CLOSED = "closed"


# What the app may send in each state: message type -> handler method name.
SEND_TABLE: dict[State, dict[str, str]] = {
    State.HANDSHAKE: {
        "websocket.accept": "_send_accept",
        "websocket.close": "_send_close_before_accept",
        "websocket.http.response.start": "_send_response_start",
    },
    State.RESPONSE: {"websocket.http.response.body": "_send_response_body"},
    State.OPEN: {"websocket.send": "_send_data", "websocket.close": "_send_close"},
    State.CLOSED: {},
}


def _encode_header(name: bytes | str, value: bytes | str) -> tuple[bytes, bytes]:
    return (
        name.encode("latin-1") if isinstance(name, str) else name,
        value.encode("latin-1") if isinstance(value, str) else value,
    )


class _PayloadReader(asyncio.BufferedProtocol):
    """On the transport while a large binary frame's payload is read.

    Reads go straight into the bytes object the app will receive
    (`ServerConnection.payload_buffer`): no copy of the payload in Python,
    no read-sized bytes objects. Everything else is the WebSocketProtocol's,
    which is put back on the transport when the frame is complete.
    """

    __slots__ = ("ws",)

    def __init__(self, ws: WebSocketProtocol) -> None:
        self.ws = ws

    def get_buffer(self, sizehint: int) -> memoryview:
        conn = self.ws.conn
        assert conn is not None
        view = conn.payload_buffer()
        # Never None while installed: it is taken off when no longer pending.
        assert view is not None
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self.ws.payload_received(nbytes)

    def eof_received(self) -> bool | None:
        return self.ws.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self.ws.pause_writing()

    def resume_writing(self) -> None:
        self.ws.resume_writing()


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection, from the upgrade request to the closed transport."""

    # One per open WebSocket, idle ones by the thousand: slots instead of a
    # __dict__ save ~1.2 KiB each (the memory benchmark's per-connection figure).
    __slots__ = (
        "config", "server_state", "app", "loop", "transport", "scope", "client_ip", "conn", "task",
        "state", "on_connection_lost", "_early_input", "_request", "_queue", "_waiter", "_connect_delivered",
        "_disconnect_message", "_send_handlers", "_close_timer", "_ping_timer", "_pong_timer",
        "_ping_payload", "_reading_paused", "_writing_paused", "_drain_waiter", "_response_status",
        "_response_chunked", "_shutdown_code", "_max_queue", "_message_rate", "_tokens", "_tokens_time",
        "_fragmented_send", "_held_broadcasts", "_held_bytes",
    )

    def __init__(self, *, config: Config, server_state: ServerState, app: ASGIApp,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.server_state = server_state
        self.app = app
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.scope: Scope = {}
        self.client_ip: str | None = None
        self.conn: ServerConnection | None = None  # created on accept
        self.task: asyncio.Task[None] | None = None

        # Input before accept (a client may pipeline frames behind its request).
        self._early_input = bytearray()
        # Codec events the app has not received yet, and the app waiting for one.
        self._queue: deque[Event] = deque()
        self._waiter: asyncio.Future[Event | None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # Broadcasts that arrive while a fragmented message is being sent (else None).
        self._held_broadcasts: list[PreparedMessage] | None = None
        self._held_bytes = 0
        # Set while a large message goes out in fragments; other sends wait for it.
        self._fragmented_send: asyncio.Future[None] | None = None

        self._connect_delivered = False
        self._disconnect_message: Message | None = None  # set once the connection is over
        self.state = State.HANDSHAKE
        # A handler returns None when it is done, else what to await (see send()).
        self._send_handlers: dict[str, Callable[[Message], Awaitable[None] | None]] = {}
        self._enter(State.HANDSHAKE)
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._ping_payload = b""
        self._request: Any = None
        self._response_status = 0
        self._response_chunked = False
        self._shutdown_code: int | None = None
        # Read on every message: kept here rather than looked up on config.
        self._max_queue = config.ws_max_queue
        self._message_rate = config.ws_max_message_rate
        # --ws-max-message-rate token bucket.
        self._tokens = float(config.ws_max_message_burst)
        self._tokens_time = 0.0
        # Set by the broadcast hub on first subscribe: leaves every channel.
        self.on_connection_lost: Callable[[WebSocketProtocol], None] | None = None

    # -- hand-off from HTTP ----------------------------------------------------------

    def take_over(self, transport: asyncio.Transport, scope: Scope, method: str, trailing_data: bytes) -> None:
        """Adopt an upgraded transport and validate the opening handshake.

        Invalid upgrades are answered here (400, 426 or 403) and the app is
        never called; a valid one starts the app with `websocket.connect` waiting.
        """
        previous = transport.get_protocol()
        self.transport = transport
        transport.set_protocol(self)
        self.server_state.hand_over(previous, self)  # type: ignore[arg-type]
        # The per-IP count is of the address HttpProtocol counted (the TCP peer, or
        # the client a PROXY protocol header named), never X-Forwarded-For's.
        self.client_ip = getattr(previous, "client_ip", None)
        self.scope = scope
        self._early_input += trailing_data
        try:
            self._request = validate_upgrade_request(method, scope["http_version"], scope["headers"])
        except HandshakeError as exc:
            logger.info("Rejected WebSocket upgrade from %s: %s", self._client_text(), exc.reason)
            self._reject(exc.status, exc.reason, exc.headers)
            return
        if not origin_allowed(self._request.origin, self.config.ws_allowed_origins):
            logger.warning("Rejected WebSocket upgrade from %s: origin %r is not allowed",
                           self._client_text(), self._request.origin)
            self._reject(403, "Origin not allowed", [])
            return
        scope["subprotocols"] = self._request.subprotocols
        extensions = scope.setdefault("extensions", {})
        extensions["websocket.http.response"] = {}
        broker = broker_for(self.loop)
        if broker is not None:
            extensions[SCOPE_EXTENSION] = {"broker": broker, "connection": self}
        self.task = self.loop.create_task(self._run_app())
        self.server_state.tasks.add(self.task)
        self.task.add_done_callback(self.server_state.tasks.discard)
        self.task.add_done_callback(self._release_scope)

    def _release_scope(self, task: asyncio.Task[None]) -> None:
        # The scope's broadcast entry points back at this protocol: a reference
        # cycle that only the cyclic GC would free, late, with the codec's zlib
        # state (tens of KiB per connection) held until then. The app is done.
        self.scope.get("extensions", {}).pop(SCOPE_EXTENSION, None)

    # -- asyncio.Protocol ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            self._early_input += data
            return
        events = conn.receive_data(data)
        chunks = conn.data_to_send()  # pongs the codec queued
        if chunks:
            self._write_chunks(chunks)
        for event in events:
            self._on_event(event)
        if conn.payload_pending and not self.transport.is_closing():
            # A large binary frame began: read the rest of it in place.
            self.transport.set_protocol(_PayloadReader(self))

    def payload_received(self, nbytes: int) -> None:
        """`nbytes` of a large frame's payload were read in place (see _PayloadReader)."""
        conn = self.conn
        assert conn is not None
        conn.payload_received(nbytes)  # never completes a message: its end comes to data_received
        if not conn.payload_pending:
            self.transport.set_protocol(self)

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            for event in self.conn.receive_eof():
                self._on_event(event)
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.remove_connection(self, self.client_ip)
        if self.on_connection_lost is not None:
            self.on_connection_lost(self)
            self.on_connection_lost = None
        for timer in (self._close_timer, self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        if self._disconnect_message is None:
            self._disconnect_message = {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL_CLOSURE}
        self._enter(State.CLOSED)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_drain_waiter()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading from it too, so that pongs
        # and echoes cannot pile up in the write buffer (ping-flood defence).
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain_waiter()
        if len(self._queue) < self._max_queue:
            self._resume_reading()

    # -- codec events → ASGI -----------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        # Exact type checks: the event classes are final, and this runs per message.
        kind = type(event)
        if kind is Pong:
            assert isinstance(event, Pong)
            self._on_pong(event)
            return
        if (self._message_rate is not None and (kind is TextMessage or kind is BinaryMessage)
                and not self._take_token()):
            event = ProtocolFailure(CloseCode.POLICY_VIOLATION, "message rate limit exceeded")
            kind = ProtocolFailure
        if kind is CloseReceived and self.conn is not None and self.conn.close_sent:
            # Our close has been answered. 7.1.1: the server closes the TCP
            # connection first; the app already has its disconnect message.
            self.transport.close()
            return
        queue = self._queue
        waiter = self._waiter
        if waiter is not None and not queue:
            self._waiter = None
            waiter.set_result(event)
            return
        queue.append(event)
        if kind is CloseReceived or kind is ProtocolFailure:
            # The app has earlier messages to read first; give it ws_close_timeout.
            self._arm_close_timer(self._apply_queued_terminal)
        elif len(queue) >= self._max_queue:
            self._pause_reading()

    def _take_token(self) -> bool:
        rate = self._message_rate
        assert rate is not None
        now = self.loop.time()
        self._tokens = min(float(self.config.ws_max_message_burst), self._tokens + (now - self._tokens_time) * rate)
        self._tokens_time = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _to_asgi(self, event: Event) -> Message:
        if type(event) is TextMessage:
            return {"type": "websocket.receive", "text": event.data}
        if type(event) is BinaryMessage:
            return {"type": "websocket.receive", "bytes": event.data}
        assert isinstance(event, (CloseReceived, ProtocolFailure))  # Pong never reaches the queue
        return self._apply_terminal(event)

    def _apply_terminal(self, event: CloseReceived | ProtocolFailure) -> Message:
        """The app has reached a close or failure: answer it and end the connection."""
        conn = self.conn
        assert conn is not None
        if isinstance(event, CloseReceived):
            # 5.5.1: the endpoint MUST send a Close frame in response, typically
            # echoing the status code it received (1005 means there was none).
            code = event.code if event.code != CloseCode.NO_STATUS_RCVD else CloseCode.NORMAL_CLOSURE
            conn.send_close(code, "")
            self._flush()
            if conn.handshake_complete:
                # 7.1.1: the server closes the TCP connection first.
                self.transport.close()
        else:
            logger.info("WebSocket protocol error from %s: %d %s", self._client_text(), event.code, event.reason)
            conn.send_close(event.code, event.reason)
            self._flush()
            self.transport.close()
        if self._disconnect_message is None:
            self._disconnect_message = {"type": "websocket.disconnect", "code": event.code, "reason": event.reason}
        self._enter(State.CLOSED)
        return self._disconnect_message

    def _apply_queued_terminal(self) -> None:
        """The close timeout ran out while the app still had messages to read."""
        self._close_timer = None
        for event in self._queue:
            if type(event) is CloseReceived or type(event) is ProtocolFailure:
                self._apply_terminal(event)
                self.transport.close()
                return

    # -- ASGI receive / send ------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        queue = self._queue
        if queue:
            event = queue.popleft()
            if self._reading_paused and not self._writing_paused and len(queue) < self._max_queue:
                self._resume_reading()
            return self._to_asgi(event)
        if self._disconnect_message is not None:
            return self._disconnect_message
        waiter = self.loop.create_future()
        self._waiter = waiter
        event = await waiter
        if type(event) is TextMessage:  # _to_asgi, inlined for the message an idle app waits for
            return {"type": "websocket.receive", "text": event.data}
        if event is None:  # connection lost while waiting
            return self._disconnected()
        return self._to_asgi(event)

    def _disconnected(self) -> Message:
        """The message every receive() gets once the connection is over."""
        return self._disconnect_message or {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL_CLOSURE}

    async def send(self, message: Message) -> None:
        handler = self._send_handlers.get(message["type"])
        if handler is None:
            if self.state is State.CLOSED:
                raise ClientDisconnected(f"WebSocket is closed; cannot send {message['type']!r}")
            expected = " or ".join(repr(name) for name in SEND_TABLE[self.state])
            raise RuntimeError(f"Expected ASGI message {expected} but got {message['type']!r}")
        # websocket.send returns None once its frame is written (no coroutine
        # per message); the other handlers are coroutines, awaited here.
        waiting = handler(message)
        if waiting is not None:
            await waiting

    def _enter(self, state: State) -> None:
        self.state = state
        self._send_handlers = {name: getattr(self, method) for name, method in SEND_TABLE[state].items()}

    async def _send_accept(self, message: Message) -> None:
        request = self._request
        subprotocol = message.get("subprotocol")
        headers = list(self.server_state.default_headers)
        headers.extend(_encode_header(name, value) for name, value in message.get("headers") or ())
        extensions_header, extensions = self._negotiate_extensions()
        try:
            response = accept_response(
                request, subprotocol=subprotocol, extensions_header=extensions_header, headers=headers
            )
        except ValueError as exc:
            raise RuntimeError(f"Invalid websocket.accept: {exc}") from None
        trace = self._trace if trace_logger.isEnabledFor(TRACE_LOG_LEVEL) else None
        self.conn = ServerConnection(max_size=self.config.ws_max_size, extensions=extensions, trace=trace)
        self._enter(State.OPEN)
        self._log_access(101)
        self.transport.write(response)
        self._schedule_ping()
        if self._shutdown_code is not None:
            self._begin_close(self._shutdown_code, "")
        if self._early_input:
            early, self._early_input = bytes(self._early_input), bytearray()
            self.data_received(early)

    def _negotiate_extensions(self) -> tuple[bytes | None, list[Any]]:
        if not self.config.ws_per_message_deflate or not self._request.extension_header_values:
            return None, []
        factory = PerMessageDeflateFactory(
            window_bits=self.config.ws_deflate_window_bits,
            memory_level=self.config.ws_deflate_memory_level,
            min_size=self.config.ws_deflate_min_size,
            server_no_context_takeover=self.config.ws_deflate_server_no_context_takeover,
        )
        return negotiate_extensions(self._request.extension_header_values, [factory])

    async def _send_close_before_accept(self, message: Message) -> None:
        # ASGI spec: websocket.close before accept means the server answers 403.
        self._reject(403, "", [])

    async def _send_response_start(self, message: Message) -> None:
        status = message["status"]
        head, self._response_chunked = denial_head(status, message.get("headers") or (),
                                                   self.server_state.default_headers, date=self.config.date_header)
        self.transport.write(head)
        self._response_status = status
        self._enter(State.RESPONSE)

    async def _send_response_body(self, message: Message) -> None:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self._response_chunked:
            if body:
                self.transport.writelines([b"%x\r\n" % len(body), body, b"\r\n"])
            if not more:
                self.transport.write(b"0\r\n\r\n")
        elif body:
            self.transport.write(body)
        if not more:
            self._log_access(self._response_status)
            self._finish_rejected()

    def _send_data(self, message: Message) -> Awaitable[None] | None:
        """Write one message's frame now; None, or what to await (drain, fragments, a send in progress).

        Not a coroutine: the common case (the frame goes to a transport that
        is not backed up) needs no coroutine object of its own.
        Raises ClientDisconnected once our close frame is sent or the transport closes.
        """
        conn = self.conn
        assert conn is not None
        if self._fragmented_send is not None:
            return self._send_data_after_fragments(message)
        if conn.close_sent or self.transport.is_closing():
            raise ClientDisconnected("WebSocket is closing; cannot send 'websocket.send'")
        text = message.get("text")
        if text is not None:
            if not self._writing_paused:
                frame = conn.text_frame(text)
                if frame is not None:
                    self.transport.write(frame)  # _write_chunks, when nothing is backed up
                    return None
            if len(text) > WS_FRAGMENT_SIZE:
                return self._send_fragmented(text)
            conn.send_text(text)
        else:
            data = message.get("bytes")
            if data is None:
                raise RuntimeError("Expected 'bytes' or 'text' in 'websocket.send', got neither")
            if len(data) > WS_FRAGMENT_SIZE:
                return self._send_fragmented(data)
            conn.send_binary(data)
        chunks = conn.data_to_send()
        if len(chunks) == 1 and not self._writing_paused:
            self.transport.write(chunks[0])  # _write_chunks, when nothing is backed up
            return None
        self._write_chunks(chunks)
        if self._writing_paused:
            return self._drain()
        return None

    async def _send_data_after_fragments(self, message: Message) -> None:
        while self._fragmented_send is not None:
            # 5.4: another task's fragmented message is going out; no data
            # frame may come between its frames.
            await self._fragmented_send
        waiting = self._send_data(message)
        if waiting is not None:
            await waiting

    async def _send_fragmented(self, data: str | bytes) -> None:
        """A large message one frame per loop step, so its encoding never stalls other connections."""
        assert self.conn is not None
        self._held_broadcasts = []
        self._held_bytes = 0
        done = self._fragmented_send = self.loop.create_future()
        try:
            for _ in self.conn.send_fragments(data, WS_FRAGMENT_SIZE):
                if self.transport.is_closing():
                    raise ClientDisconnected("WebSocket closed while sending 'websocket.send'")
                self._flush()
                if self._writing_paused:
                    await self._drain()
                else:
                    await asyncio.sleep(0)
        except ConnectionClosedError:
            raise ClientDisconnected("WebSocket closed while sending 'websocket.send'") from None
        finally:
            self._fragmented_send = None
            done.set_result(None)
            held, self._held_broadcasts = self._held_broadcasts, None
            if held:
                self.deliver_prepared(held)

    async def _send_close(self, message: Message) -> None:
        code = message.get("code", CloseCode.NORMAL_CLOSURE)
        reason = message.get("reason") or ""
        self._begin_close(code, reason)

    def _begin_close(self, code: int, reason: str) -> None:
        conn = self.conn
        assert conn is not None
        if conn.close_sent:
            return
        conn.send_close(code, reason)
        self._flush()
        if conn.handshake_complete:
            self.transport.close()
        else:
            self._arm_close_timer(self.transport.close)
        if self._disconnect_message is None:
            self._disconnect_message = {"type": "websocket.disconnect", "code": code, "reason": reason}

    # -- the app task ---------------------------------------------------------------------

    async def _run_app(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                self._abort_with(CloseCode.GOING_AWAY)
                raise
            logger.error("Exception in ASGI application", exc_info=exc)
            self._abort_with(CloseCode.INTERNAL_ERROR)
        else:
            if self.state is State.HANDSHAKE:
                logger.error("ASGI callable returned without accepting or closing the WebSocket")
            self._abort_with(CloseCode.NORMAL_CLOSURE)

    def _abort_with(self, close_code: int) -> None:
        """The app is done: close with `close_code` if open, 500 if never accepted."""
        if self.transport.is_closing():
            return
        if self.state is State.HANDSHAKE:
            self._reject(500, "Internal Server Error", [])
            return
        if self.state is State.RESPONSE:
            self._finish_rejected()  # the app raised halfway through a denial response
            return
        if self.conn is None:
            return
        if not self.conn.close_sent:
            self._begin_close(close_code, "")

    # -- rejecting the upgrade with an HTTP response ------------------------------------------

    def _reject(self, status: int, reason: str, headers: list[tuple[bytes, bytes]]) -> None:
        defaults = self.server_state.default_headers
        self.transport.writelines(error_response(status, reason, defaults, format_fields(defaults),
                                                 date=self.config.date_header, fields=headers))
        self._log_access(status)
        self._finish_rejected()

    def _finish_rejected(self) -> None:
        self._disconnect_message = {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL_CLOSURE}
        self._enter(State.CLOSED)
        self.transport.close()

    # -- timers: heartbeat and close handshake ------------------------------------------------

    def _arm_close_timer(self, callback: Callable[[], None]) -> None:
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(self.config.ws_close_timeout, callback)

    def _schedule_ping(self) -> None:
        interval = self.config.ws_ping_interval
        if interval:
            self._ping_timer = self.loop.call_later(interval, self._send_heartbeat)

    def _send_heartbeat(self) -> None:
        conn = self.conn
        if conn is None or conn.close_sent or self.transport.is_closing():
            return
        self._ping_payload = os.urandom(4)
        conn.send_ping(self._ping_payload)
        self._flush()
        timeout = self.config.ws_ping_timeout
        if timeout and self._pong_timer is None:
            self._pong_timer = self.loop.call_later(timeout, self._on_pong_timeout)
        self._schedule_ping()

    def _on_pong(self, event: Pong) -> None:
        # 5.5.3: a Pong in response to a Ping carries its payload; unsolicited
        # pongs are allowed and simply ignored.
        if self._pong_timer is not None and event.payload == self._ping_payload:
            self._pong_timer.cancel()
            self._pong_timer = None

    def _on_pong_timeout(self) -> None:
        self._pong_timer = None
        logger.info("WebSocket client %s did not answer a ping in time; closing", self._client_text())
        self._abort_with(CloseCode.INTERNAL_ERROR)
        self.transport.close()

    # -- shutdown (the Connection contract) --------------------------------------------------

    def shutdown(self, close_code: int) -> None:
        self._shutdown_code = close_code
        if self.conn is not None and not self.conn.close_sent and not self.transport.is_closing():
            self._begin_close(close_code, "")
            self._disconnect_message = {"type": "websocket.disconnect", "code": close_code, "reason": ""}
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                self._waiter = None
                waiter.set_result(None)
        elif self.conn is None and self.task is None:
            self.transport.close()

    # -- writing ------------------------------------------------------------------------------

    def deliver_prepared(self, messages: list[PreparedMessage]) -> bool:
        """Write broadcast messages, framed once for many connections, in one write.

        No app task is involved. Returns False when the connection is not open
        (not accepted yet, or closing); the send-queue bound applies as for
        the app's own sends.
        """
        conn = self.conn
        if conn is None or conn.close_sent or self.transport.is_closing():
            return False
        if self._held_broadcasts is not None:
            # 5.4: no other data frame may come between the frames of the
            # fragmented message being sent; these follow it, and count
            # against the same send-queue bound as bytes already written.
            self._held_broadcasts.extend(messages)
            self._held_bytes += sum(len(message.payload) for message in messages)
            if self._held_bytes + self.transport.get_write_buffer_size() > self.config.ws_max_send_queue:
                self._drop_slow_client()
            return True
        extensions = conn.extensions
        if len(messages) == 1:
            self._write_chunks(messages[0].chunks_for(extensions))
            return True
        chunks = [chunk for message in messages for chunk in message.chunks_for(extensions)]
        if sum(map(len, chunks)) <= _JOIN_WRITES_LIMIT:
            chunks = [b"".join(chunks)]
        self._write_chunks(chunks)
        return True

    def _flush(self) -> None:
        """Write what the codec produced, and enforce the send-queue bound."""
        assert self.conn is not None
        chunks = self.conn.data_to_send()
        if chunks:
            self._write_chunks(chunks)

    def _write_chunks(self, chunks: list[bytes]) -> None:
        # The bound is for bytes piled onto a backlog the client is not
        # draining; one large message written to a drained transport is
        # bounded by ws_max_size and the sender then waits for the drain.
        backlogged = self._writing_paused
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        elif len(chunks) > 2 and max(map(len, chunks)) <= _JOIN_CHUNK_LIMIT:
            # Many small frames from one read (pongs to a burst of pings):
            # one buffer instead of thousands of small objects held by the
            # transport while the client is not reading.
            self.transport.write(b"".join(chunks))
        else:
            self.transport.writelines(chunks)
        if backlogged and self.transport.get_write_buffer_size() > self.config.ws_max_send_queue:
            self._drop_slow_client()

    def _drop_slow_client(self) -> None:
        """Past --ws-max-send-queue: drop the client instead of buffering without bound.

        No close frame: it would queue behind the backlog the client is not
        reading. The app sees 1008 (policy violation).
        """
        if self.transport.is_closing():
            return
        logger.warning("WebSocket client %s is not reading; send queue over %d bytes, closing",
                       self._client_text(), self.config.ws_max_send_queue)
        self._disconnect_message = {"type": "websocket.disconnect", "code": CloseCode.POLICY_VIOLATION,
                                    "reason": "send queue full"}
        self.transport.abort()

    async def _drain(self) -> None:
        """Wait until the client reads again. Every concurrent sender waits on one future."""
        if self.transport.is_closing():
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self.loop.create_future()
        await waiter

    def _wake_drain_waiter(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- logging ------------------------------------------------------------------------------

    def _trace(self, direction: str, opcode: Any, fin: bool, rsv: int, masked: bool, length: int) -> None:
        trace_logger.log(
            TRACE_LOG_LEVEL, "%s %s %s fin=%d rsv=%s mask=%d len=%d",
            self._client_text(), direction, getattr(opcode, "name", opcode), fin,
            format(rsv >> 4, "03b"), masked, length,  # RSV1..RSV3 as bits: "100" is RSV1
        )

    def _client_text(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "unknown client"

    def _log_access(self, status: int) -> None:
        if not self.config.access_log:
            return
        path = self.scope.get("path", "")
        query = self.scope.get("query_string", b"")
        if query:
            path += "?" + query.decode("latin-1")
        log_access(self.scope.get("client"), "GET", path, self.scope.get("http_version", "1.1"), status)
