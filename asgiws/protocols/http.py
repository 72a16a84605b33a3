"""HTTP/1.1 on httptools: one `HttpProtocol` per TCP connection.

Requests are parsed by httptools (strict: no leniency flags) and served one at
a time; pipelined requests wait in `pipeline` with reading paused. A request
carrying `Upgrade: websocket` is handed, parsed, to the WebSocket protocol
together with the bytes that followed its head.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Callable
from urllib.parse import unquote

import httptools

from asgiws.config import Config
from asgiws.exceptions import ClientDisconnected
from asgiws.logging import TRACE_LOG_LEVEL, log_access
from asgiws.metrics import METRICS
from asgiws.protocols.common import ServerState
from asgiws.protocols.response import (
    NO_BODY_STATUS,
    add_default_fields,
    app_field_line,
    build_default_headers,
    error_response,
    format_fields,
    status_line,
)
from asgiws.protocols.utils import (
    FORWARDED_FIELDS,
    TrustedProxies,
    rewrite_from_forwarded,
    get_local_addr,
    get_remote_addr,
    is_ssl,
    peer_name,
)
from asgiws.types import ASGIApp, Message, Scope

# build_default_headers lives in protocols/response.py; server.py imports it from here.
__all__ = ["HttpProtocol", "RequestCycle", "build_default_headers"]

logger = logging.getLogger("asgiws.error")

# Bytes handed to httptools at once without looking for request heads in them
# (the end of a read, a piece of a chunked body): a request is at least ~18
# bytes, so one slice adds at most ~56 requests past the pipeline bound.
_PARSE_SLICE = 1024
# Empty lines before a request line, which httptools skips (RFC 9112 2.2 allows it).
_EMPTY_LINES = re.compile(rb"[\r\n]*")
_NO_NAMES: set[bytes] = set()  # never added to: the app set no response fields yet


class _Abort(Exception):
    """Raised inside a parser callback: answer `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# What an upgraded HttpProtocol's parser becomes: one shared parser with no
# protocol behind it (see HttpProtocol._release_after_upgrade).
_RELEASED_PARSER = httptools.HttpRequestParser(None)
_NO_PIPELINE: deque[Callable[[], None]] = deque(maxlen=0)


class HttpProtocol(asyncio.BufferedProtocol):
    """One client connection speaking HTTP/1.x."""

    # One per connection, and after an upgrade uvloop's transport keeps this
    # object alive through its cached get_buffer/buffer_updated bound methods
    # for as long as the WebSocket lasts: slots keep it small (no __dict__).
    __slots__ = (
        "config", "server_state", "app", "loop", "trusted", "parser", "transport", "client", "server",
        "client_ip", "scheme", "pipeline", "cycle", "_parsing", "_closing", "_upgraded", "_reading_paused",
        "_timer", "_deadline", "_url", "_headers", "_head_size", "_hosts", "_content_length", "_expect_100",
        "_wants_websocket", "_forwarded", "_head_bytes", "_in_head", "_head_began", "_ws_upgrade", "_abort",
        "_backlog", "_default_lines", "_proxy_trusted", "_raw_root_path",
    )

    def __init__(
        self,
        *,
        config: Config,
        server_state: ServerState,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop | None = None,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app = app
        self.loop = loop or asyncio.get_event_loop()
        self.trusted = trusted_proxies or TrustedProxies(config.forwarded_allow_ips)
        self._raw_root_path = config.root_path.encode("utf-8")
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.client_ip: str | None = None
        self.scheme = "http"
        # Requests parsed but waiting for the one in flight (pipelining).
        self.pipeline: deque[Callable[[], None]] = deque()
        self.cycle: RequestCycle | None = None  # the request being served
        self._parsing: RequestCycle | None = None  # the request whose body is arriving
        self._closing = False
        self._upgraded = False
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time the idle/head timeout ends
        # Per-request head accounting (limits checked before httptools finishes).
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        # What the head's fields say, noted as they arrive (_HEAD_NOTES), so the
        # head is not searched again field by field for each question.
        self._hosts = 0
        self._content_length: int | None = None
        self._expect_100 = False
        self._wants_websocket = False
        self._forwarded = False  # an X-Forwarded-* field is present
        self._head_bytes = 0
        self._in_head = False
        self._head_began = False
        self._ws_upgrade: tuple[Scope, str] | None = None
        self._abort: _Abort | None = None
        self._backlog = b""  # received but not parsed: the pipeline was full
        self._default_lines: list[bytes] | None = None  # see _add_default_header_lines

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = get_remote_addr(transport)
        peer = client[0] if client is not None else peer_name(transport)
        self.connection_made_as(transport, client, get_local_addr(transport), peer)

    def connection_made_as(
        self,
        transport: asyncio.BaseTransport,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        peer: str | None,
        *,
        tls: bool = False,
    ) -> None:
        """Start serving `transport` for `client` connected to `server`.

        `peer` is what --forwarded-allow-ips is matched against (see
        utils.peer_name). asgiws.protocols.proxy calls this with the addresses a
        PROXY protocol header named, once it has read the header, and `tls` when
        the header says the client spoke TLS to the proxy.
        """
        self.transport = transport  # type: ignore[assignment]
        self.client = client
        self.server = server
        self.client_ip = client[0] if client else None
        # The peer does not change: whether its X-Forwarded-* fields count is decided once.
        self._proxy_trusted = self.config.proxy_headers and self.trusted.trusts_peer(peer)
        self.scheme = "https" if tls or is_ssl(transport) else "http"
        over_limit = self.server_state.over_connection_limit(
            self.client_ip, self.config.limit_connections_per_ip
        )
        self.server_state.add_connection(self, self.client_ip)
        if logger.isEnabledFor(TRACE_LOG_LEVEL):
            logger.log(TRACE_LOG_LEVEL, "%s - HTTP connection made", self._client_text())
        if over_limit:
            logger.warning("Too many connections from %s", self.client_ip)
            self._send_error(503, "Too many connections from this address")
            return
        self._set_timer(self.config.timeout_handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upgraded:
            return
        self._closing = True
        self.server_state.remove_connection(self, self.client_ip)
        self._stop_timer()
        self.pipeline.clear()
        self._backlog = b""
        for cycle in (self.cycle, self._parsing):
            if cycle is not None:
                cycle.on_disconnect()
        if logger.isEnabledFor(TRACE_LOG_LEVEL):
            logger.log(TRACE_LOG_LEVEL, "%s - HTTP connection lost", self._client_text())

    def get_buffer(self, sizehint: int) -> bytearray:
        # Every HTTP connection of the worker reads into the one buffer: each read
        # is parsed before the loop makes the next, and what outlives the parse
        # (body pieces, header fields) httptools copies out. A bytes object per
        # read was one more copy of every upload, allocated and freed per read.
        return self.server_state.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._receive(self.server_state.read_buffer, nbytes)

    def _receive(self, data: bytes | bytearray, size: int) -> None:
        """Parse data[:size], just read (or given back after an h2c upgrade)."""
        if self._closing or self._upgraded:
            return
        if self._backlog:
            # A read that was already on its way when reading paused.
            self._backlog += data[:size]
            return
        self._parse(data, size)

    def _parse(self, data: bytes | bytearray, size: int) -> None:
        """Parse data[:size]; then start the head timer if a head began in it and is not complete.

        The timer starts here rather than in on_message_begin: most heads end in
        the read that began them, and the timer would be set for nothing. It is
        not moved by later reads of the same head (a slowloris client gains nothing).
        """
        self._head_began = False
        self._parse_pieces(data, size)
        if self._head_began and self._in_head and not self._closing:
            self._set_timer(self.config.timeout_handshake)

    def _parse_pieces(self, data: bytes | bytearray, size: int) -> None:
        """Feed httptools data[:size] piece by piece; stop and keep the rest once the pipeline is full.

        One read can hold thousands of pipelined requests: parsing it whole would
        queue them all. Between pieces (`_piece_end`) the queue is checked, so it
        holds at most max_pipelined_requests plus what one piece can complete, and
        the rest of the read waits (reading paused) until answers drain the queue.
        """
        offset = 0
        view = memoryview(data)[:size]  # pieces are fed as views, not copied
        while offset < size and not self._closing and not self._upgraded:
            if len(self.pipeline) >= self.config.max_pipelined_requests:
                self._backlog = bytes(view[offset:])
                self._update_reading()
                return
            end = self._piece_end(data, offset, size)
            if self._in_head:
                # Raw bytes of an unfinished head (httptools buffers a partial field
                # whole): bounded here, before the field ends, to the piece.
                self._head_bytes += end - offset
                if self._head_bytes > self.config.max_request_line_size + self.config.max_header_size:
                    self._fail(431, "Request header fields too large")
                    return
            if not self._feed(view, offset, end):
                return
            offset = end

    def _piece_end(self, data: bytes | bytearray, offset: int, size: int) -> int:
        """Where the next piece of data[:size] to parse ends: it completes few request heads.

        Body still owed under Content-Length holds no head, so it goes whole and
        unscanned (scanning a 1 MiB upload for heads took a third of the server's
        time). A head ends at its first CRLF CRLF (httptools rejects bare LF
        line endings), so a piece that stops there completes at most one; the
        empty lines httptools skips before a request line are passed over first,
        or a flood of them would cost one feed per 4 bytes. A chunked body's
        bytes may hold CRLF CRLF anywhere: its pieces are at least a slice long.
        """
        if size - offset <= _PARSE_SLICE:
            return size
        cycle = self._parsing
        if cycle is None:
            head_end = data.find(b"\r\n\r\n", _skip_empty_lines(data, offset, size), size)
            return size if head_end < 0 else head_end + 4
        owed = cycle.body_owed()
        if owed > 0:
            return min(size, offset + owed)
        head_end = data.find(b"\r\n\r\n", offset, size)
        return size if head_end < 0 else min(size, max(head_end + 4, offset + _PARSE_SLICE))

    def _feed(self, view: memoryview, start: int, end: int) -> bool:
        """Parse view[start:end]; False when parsing stops (error, upgrade)."""
        chunk = view if start == 0 and end == len(view) else view[start:end]
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(bytes(view[start + exc.args[0]:]))
            return False
        except httptools.HttpParserCallbackError as exc:
            abort = self._abort or (exc.__context__ if isinstance(exc.__context__, _Abort) else None)
            if abort is None:
                raise
            self._fail(abort.status, abort.reason)
            return False
        except httptools.HttpParserError as exc:
            if self._abort is not None:
                self._fail(self._abort.status, self._abort.reason)
            else:
                self._fail(400, _parse_error_reason(exc))
            return False
        if self._ws_upgrade is not None:
            # Upgrade: websocket without Connection: upgrade: the ws side answers it.
            self._on_upgrade(bytes(view[end:]))
            return False
        return True

    def pause_writing(self) -> None:
        if self.cycle is not None:
            self.cycle.pause_writing()

    def resume_writing(self) -> None:
        if self.cycle is not None:
            self.cycle.resume_writing()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._hosts = 0
        self._content_length = None
        self._expect_100 = False
        self._wants_websocket = False
        self._forwarded = False
        self._head_bytes = 0
        self._in_head = True
        self._head_began = True  # _parse starts the head timer if the head does not end

    def on_url(self, url: bytes) -> None:
        self._url += url
        # The method and " HTTP/1.1" are short: the URL is what makes a line long.
        if len(self._url) > self.config.max_request_line_size:
            raise self._set_abort(414, "Request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.config.max_header_size:
            raise self._set_abort(431, "Request header fields too large")
        if len(self._headers) >= self.config.max_header_count:
            raise self._set_abort(431, "Too many request header fields")
        name = name.lower()
        self._headers.append((name, value))
        note = _HEAD_NOTES.get(name)
        if note is not None:
            note(self, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        scope = self._build_scope()
        if scope is None:
            raise self._set_abort(400, "Invalid request target")
        # RFC 9112 3.2: a server MUST respond 400 to an HTTP/1.1 request without
        # a Host field and to any request with more than one.
        hosts = self._hosts
        if hosts > 1 or (hosts == 0 and scope["http_version"] == "1.1"):
            raise self._set_abort(400, "Invalid HTTP request: missing or repeated Host header")
        if self._forwarded and self._proxy_trusted:
            rewrite_from_forwarded(scope, self.trusted, forwarded_host=self.config.forwarded_host)
        if self._wants_websocket:
            method = scope.pop("method")
            scope["type"] = "websocket"
            scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
            scope["subprotocols"] = []
            self._ws_upgrade = (scope, method)
            return
        self.server_state.total_requests += 1
        cycle = RequestCycle(self, scope, keep_alive=self.parser.should_keep_alive())
        content_length = self._content_length
        limit = self.config.limit_request_body
        if limit is not None and content_length is not None and content_length > limit:
            raise self._set_abort(413, "Request body too large")
        cycle.content_length = content_length
        cycle.expect_100 = self._expect_100 and scope["http_version"] == "1.1"
        self._parsing = cycle
        self._enqueue(cycle.start)

    def on_body(self, body: bytes) -> None:
        cycle = self._parsing
        if cycle is None:
            return
        cycle.body_received += len(body)
        limit = self.config.limit_request_body
        if limit is not None and cycle.body_received > limit:
            raise self._set_abort(413, "Request body too large")
        cycle.feed_body(body)

    def on_message_complete(self) -> None:
        cycle = self._parsing
        self._parsing = None
        if cycle is not None:
            cycle.end_body()
            if self.cycle is None and not self.pipeline and not self._closing:
                # Answered before its body ended: the connection is idle from now.
                self._set_timer(self.config.timeout_keep_alive)

    # -- scope -----------------------------------------------------------------------

    def _build_scope(self) -> Scope | None:
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            if self._url != b"*":
                return None
            raw_path, query = b"*", b""
        else:
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
        root_path = self.config.root_path
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="utf-8", errors="replace")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": self.parser.get_http_version(),
            "method": self.parser.get_method().decode("ascii"),
            "scheme": self.scheme,
            "path": root_path + path,
            "raw_path": self._raw_root_path + raw_path if self._raw_root_path else raw_path,
            "query_string": query,
            "root_path": root_path,
            "headers": self._headers,
            "client": self.client,
            "server": self.server,
            "state": self.server_state.lifespan_state.copy(),
            "extensions": {},
        }

    # -- request scheduling --------------------------------------------------------------

    def _enqueue(self, start: Callable[[], None]) -> None:
        if self.cycle is None and not self.pipeline:
            start()
            return
        self.pipeline.append(start)
        self._update_reading()

    def on_response_complete(self, keep_alive: bool) -> None:
        """Called by the cycle once its last byte is written."""
        self.cycle = None
        if self._closing:
            return
        if not keep_alive:
            self._close()
            return
        if self.pipeline:
            self.pipeline.popleft()()
        if self._backlog and len(self.pipeline) < self.config.max_pipelined_requests and not self._closing:
            backlog, self._backlog = self._backlog, b""
            self._parse(backlog, len(backlog))
        if self._reading_paused or self.pipeline or self._backlog:
            # Otherwise reading runs and nothing asks it to stop (a body past the
            # high-water mark pauses it as it arrives).
            self._update_reading()
        if self.cycle is None and not self._in_head and self._parsing is None and not self._closing:
            self._set_timer(self.config.timeout_keep_alive)

    def _update_reading(self) -> None:
        """Pause while requests queue up or request body waits for the app."""
        buffered = self._parsing.buffered if self._parsing is not None else 0
        pause = bool(self.pipeline) or bool(self._backlog) or buffered > self.config.http_read_high_water
        if pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def concurrency_exceeded(self) -> bool:
        limit = self.config.limit_concurrency
        return limit is not None and (
            len(self.server_state.connections) > limit or len(self.server_state.tasks) >= limit
        )

    # -- upgrade -----------------------------------------------------------------------

    def _on_upgrade(self, trailing: bytes) -> None:
        upgrade = self._ws_upgrade
        self._ws_upgrade = None
        if upgrade is None:
            # h2c and friends are not supported: keep speaking HTTP/1.1.
            self.parser = httptools.HttpRequestParser(self)
            if trailing:
                self._receive(trailing, len(trailing))
            return
        scope, method = upgrade
        # Nothing after an upgrade request is HTTP any more: read again only after the hand-off.
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._enqueue(lambda: self._hand_over(scope, method, trailing))

    def _hand_over(self, scope: Scope, method: str, trailing: bytes) -> None:
        if self.concurrency_exceeded():
            logger.warning("Exceeded concurrency limit: upgrade refused")
            self._send_error(503, "Service Unavailable")
            return
        try:
            from asgiws.protocols.websocket import WebSocketProtocol
        except ImportError:
            logger.warning("WebSocket upgrade requested but WebSocket support is unavailable")
            self._send_error(501, "WebSocket support is not available")
            return
        self._stop_timer()
        self._upgraded = True
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        ws = WebSocketProtocol(config=self.config, server_state=self.server_state, app=self.app, loop=self.loop)
        self.server_state.total_requests += 1
        ws.take_over(self.transport, scope, method=method, trailing_data=trailing)
        self._release_after_upgrade()

    def _release_after_upgrade(self) -> None:
        """Let go of the parser, the transport and the request state.

        uvloop's transport still holds this protocol's bound get_buffer and
        buffer_updated after set_protocol() (they are never called again):
        without this, every WebSocket kept its HTTP parser (~1 KiB) and a
        transport <-> protocol cycle that only the cyclic GC would free.
        """
        self.parser = _RELEASED_PARSER
        self.transport = None  # type: ignore[assignment]
        self.pipeline = _NO_PIPELINE
        self.cycle = self._parsing = None
        self._headers = []
        self._ws_upgrade = None
        self._abort = None
        self._backlog = b""

    # -- errors and closing ------------------------------------------------------------

    def _set_abort(self, status: int, reason: str) -> _Abort:
        self._abort = _Abort(status, reason)
        return self._abort

    def _fail(self, status: int, reason: str) -> None:
        """A malformed or over-limit request: answer it after those before it, then close."""
        if self._closing:
            return
        logger.info("%s - bad request: %s", self._client_text(), reason)
        cycle = self.cycle
        if cycle is not None and cycle is self._parsing:
            # The request in flight broke a limit mid-body: answer in the app's place.
            self._parsing = None
            cycle.keep_alive = False
            if cycle.response_started:
                self._close()
            else:
                cycle._simple(status, reason)
            cycle.on_disconnect()
            return
        if self._parsing is not None:
            self._parsing.on_disconnect()
            self.pipeline = deque(s for s in self.pipeline if getattr(s, "__self__", None) is not self._parsing)
            self._parsing = None
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._enqueue(lambda: self._send_error(status, reason))

    def _send_error(self, status: int, reason: str) -> None:
        METRICS.count_http(status, None)  # no request was parsed to time it from
        if not self.transport.is_closing():
            self.transport.writelines(self._error_response(status, reason, keep_alive=False, body=True))
        self._close()

    def _error_response(self, status: int, reason: str, *, keep_alive: bool, body: bool) -> list[bytes]:
        defaults = self.server_state.default_headers
        return error_response(status, reason, defaults, self._formatted_defaults(), date=self.config.date_header,
                              keep_alive=keep_alive, body=body)

    def _formatted_defaults(self) -> list[bytes]:
        # The lines formatted once per connection serve every response.
        if self._default_lines is None:
            self._default_lines = format_fields(self.server_state.default_headers)
        return self._default_lines

    def _add_default_header_lines(self, lines: list[bytes], app_names: set[bytes]) -> None:
        """Append the Server, --header and Date lines, less those the app sent itself."""
        add_default_fields(lines, self.server_state.default_headers, self._formatted_defaults(), app_names,
                           date=self.config.date_header)

    def _close(self) -> None:
        self._closing = True
        self._stop_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def shutdown(self, close_code: int) -> None:
        """Graceful close: finish the request in flight, close idle connections now."""
        if self.cycle is None:
            self._close()
            return
        self.cycle.keep_alive = False
        self.pipeline.clear()

    # -- timers ------------------------------------------------------------------------

    def _set_timer(self, seconds: float) -> None:
        """Drop the connection `seconds` from now unless a request is being served.

        Called once per request for keep-alive (and for a head that spans
        reads): moving a deadline is one float store, and the one TimerHandle
        is replaced only when the new deadline is earlier than the pending one
        (call_later per request showed up in the profile).
        """
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timeout)

    def _cancel_timer(self) -> None:
        # The handle stays pending; _on_timeout finds no deadline and stops.
        self._deadline = None

    def _stop_timer(self) -> None:
        """Cancel the handle itself: the connection is done with HTTP."""
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closing:
            return
        if deadline > self.loop.time():
            # Moved by later activity: wait for the new deadline.
            self._timer = self.loop.call_at(deadline, self._on_timeout)
            return
        self._deadline = None
        if self.cycle is None and not self.pipeline:
            if logger.isEnabledFor(TRACE_LOG_LEVEL):
                logger.log(TRACE_LOG_LEVEL, "%s - idle or slow client dropped", self._client_text())
            self._close()

    def _client_text(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"


def _skip_empty_lines(data: bytes | bytearray, offset: int, size: int) -> int:
    """The offset past the CR and LF bytes that start at `offset` (before `size`)."""
    match = _EMPTY_LINES.match(data, offset, size)
    return match.end() if match else offset


def _note_host(protocol: HttpProtocol, value: bytes) -> None:
    protocol._hosts += 1


def _note_content_length(protocol: HttpProtocol, value: bytes) -> None:
    if protocol._content_length is None:
        try:
            protocol._content_length = int(value)
        except ValueError:
            pass  # httptools refuses the head as well: not a length


def _note_expect(protocol: HttpProtocol, value: bytes) -> None:
    if value.lower() == b"100-continue":
        protocol._expect_100 = True


def _note_upgrade(protocol: HttpProtocol, value: bytes) -> None:
    # --ws none: as in uvicorn, an upgrade request is then an ordinary HTTP request for the app.
    if protocol.config.ws != "none" and b"websocket" in [token.strip().lower() for token in value.split(b",")]:
        protocol._wants_websocket = True


def _note_forwarded(protocol: HttpProtocol, value: bytes) -> None:
    protocol._forwarded = True


# Request fields the server acts on, by lowercased name: noted once as each arrives.
_HEAD_NOTES: dict[bytes, Callable[[HttpProtocol, bytes], None]] = {
    b"host": _note_host,
    b"content-length": _note_content_length,
    b"expect": _note_expect,
    b"upgrade": _note_upgrade,
    **{name: _note_forwarded for name in FORWARDED_FIELDS},
}


def _parse_error_reason(exc: Exception) -> str:
    text = str(exc).strip() or "Invalid HTTP request"
    return "Invalid HTTP request: " + text[:100]


class RequestCycle:
    """One request and its response; the ASGI receive/send pair lives here."""

    # One is made per request: slots make it smaller and its ~20 fields faster to set.
    __slots__ = (
        "protocol", "transport", "scope", "keep_alive", "expect_100", "body", "buffered",
        "content_length", "body_received", "more_body", "disconnected", "response_started",
        "response_complete", "chunked", "expected_length", "sent_length", "status", "_waiter",
        "_write_paused", "_drain", "is_head", "_lines", "_app_names", "started_at",
    )

    def __init__(self, protocol: HttpProtocol, scope: Scope, *, keep_alive: bool) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = False
        # Body pieces as httptools made them (each a bytes object of its own), so
        # one piece goes to the app as it is and several are joined once.
        self.body: list[bytes] = []
        self.buffered = 0  # bytes in `body`
        self.content_length: int | None = None  # declared by the request, None if chunked
        self.body_received = 0
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.expected_length: int | None = None
        self.sent_length = 0
        self.status = 0
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.is_head = scope["method"] == "HEAD"
        # The response head's lines from http.response.start until the first body
        # message writes them, and the field names the app set in it.
        self._lines: list[bytes] | None = None
        self._app_names: set[bytes] = _NO_NAMES
        self.started_at = time.monotonic()  # for asgiws_http_request_duration_seconds (loop.time() is per tick)

    def body_owed(self) -> int:
        """Bytes of a Content-Length body not parsed yet; 0 when chunked or complete."""
        if self.content_length is None:
            return 0
        return self.content_length - self.body_received

    # -- fed by the protocol -----------------------------------------------------------

    def feed_body(self, body: bytes) -> None:
        if self.response_complete:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > self.protocol.config.http_read_high_water:
            self.protocol._update_reading()
        self._wake()

    def end_body(self) -> None:
        self.more_body = False
        self._wake()

    def on_disconnect(self) -> None:
        self.disconnected = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- running the app -----------------------------------------------------------------

    def start(self) -> None:
        protocol = self.protocol
        protocol.cycle = self
        if protocol.concurrency_exceeded():
            logger.warning("Exceeded concurrency limit.")
            self.keep_alive = False
            self._simple(503, "Service Unavailable")
            return
        task = protocol.loop.create_task(self.run_asgi(protocol.app))
        protocol.server_state.tasks.add(task)
        task.add_done_callback(protocol.server_state.tasks.discard)

    async def run_asgi(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            # Shutdown ran out of time: drop the connection, nothing to log.
            if not self.response_complete:
                self.protocol._close()
            raise
        except BaseException as exc:
            logger.error("Exception in ASGI application", exc_info=exc)
            if not self.response_started:
                self._simple(500, "Internal Server Error")
            elif not self.response_complete:
                self.keep_alive = False
                self.protocol._close()
            if not isinstance(exc, Exception):
                raise
        else:
            if not self.response_started and not self.disconnected:
                logger.error("ASGI callable returned without starting response.")
                self._simple(500, "Internal Server Error")
            elif not self.response_complete and not self.disconnected:
                logger.error("ASGI callable returned without completing response.")
                self.keep_alive = False
                self.protocol._close()

    def _simple(self, status: int, reason: str) -> None:
        """A server-made response (500, 503) in place of the app's."""
        self.response_started = True
        self.status = status
        if not self.transport.is_closing():
            self.transport.writelines(
                self.protocol._error_response(status, reason, keep_alive=self.keep_alive, body=not self.is_head)
            )
        self._log()
        self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        self.body.clear()
        self.buffered = 0
        self._wake()
        if self.more_body and self.keep_alive:
            # The rest of the request body is still to be read and thrown away.
            self.protocol._update_reading()
        self.protocol.on_response_complete(self.keep_alive)

    def _log(self) -> None:
        METRICS.count_http(self.status, time.monotonic() - self.started_at)
        if self.protocol.config.access_log:
            scope = self.scope
            path = scope["path"]
            if scope["query_string"]:
                path += "?" + scope["query_string"].decode("latin-1")
            log_access(scope["client"], scope["method"], path, scope["http_version"], self.status)

    # -- ASGI receive ------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.expect_100:
            self.expect_100 = False
            if not self.response_started and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.disconnected and not self.response_complete and self.more_body and not self.body:
            self._waiter = self.protocol.loop.create_future()
            await self._waiter
            self._waiter = None
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pieces = self.body
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        message = {"type": "http.request", "body": body, "more_body": self.more_body}
        pieces.clear()
        self.buffered = 0
        self.protocol._update_reading()
        return message

    # -- ASGI send -----------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        kind = message["type"]
        if kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            # Written synchronously; a coroutine is made only when the app has to wait.
            if self._body(message):
                await self._wait_writable()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _start(self, message: Message) -> None:
        if self.response_started:
            raise RuntimeError("response already started")
        status = message["status"]
        lines = [status_line(status)]
        app_names: set[bytes] = set()
        for name, value in message.get("headers", ()):
            name = bytes(name).lower()
            value = bytes(value)
            line = app_field_line(name, value)
            if name == b"content-length":
                self.expected_length = int(value)
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    self.chunked = True
                    continue  # added back below, exactly once
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
            app_names.add(name)
            lines.append(line)
        self.protocol._add_default_header_lines(lines, app_names)
        self.response_started = True
        self.status = status
        self._app_names = app_names
        self._lines = lines
        self.expect_100 = False

    def _finish_head(self, lines: list[bytes], body: bytes, more_body: bool) -> bytes:
        no_body = self.status in NO_BODY_STATUS
        if no_body:
            self.chunked = False
        elif self.expected_length is None and not self.chunked:
            if not more_body and not self.is_head:
                self.expected_length = len(body)
                lines.append(b"content-length: %d\r\n" % len(body))
            elif not self.is_head:
                if self.scope["http_version"] == "1.1":
                    self.chunked = True
                else:
                    self.keep_alive = False  # HTTP/1.0: the close marks the end
        if self.chunked and not self.is_head:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif self.chunked:
            self.chunked = False
        if not self.keep_alive:
            if b"connection" not in self._app_names:
                lines.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self._log()
        return b"".join(lines)

    def _body(self, message: Message) -> bool:
        """Write one http.response.body message; True when the app should wait for drain."""
        if not self.response_started:
            raise RuntimeError("response body sent before http.response.start")
        if self.response_complete:
            raise RuntimeError("response already complete")
        body = message.get("body", b"")
        if type(body) is not bytes:
            body = bytes(body)
        more_body = bool(message.get("more_body", False))
        head = b""
        if self._lines is not None:
            head = self._finish_head(self._lines, body, more_body)
            self._lines = None
        transport = self.transport
        if self.is_head or self.status in NO_BODY_STATUS:
            if head:
                transport.write(head)
        elif self.chunked:
            chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            tail = b"0\r\n\r\n" if not more_body else b""
            transport.writelines((head, chunk, tail))
        else:
            self.sent_length += len(body)
            if self.expected_length is not None and self.sent_length > self.expected_length:
                raise RuntimeError("response body longer than Content-Length")
            if head and len(body) < 65536:
                transport.write(head + body)
            else:
                transport.writelines((head, body))
        if not more_body:
            self._complete()
            return False
        return self._write_paused and not self.disconnected

    async def _wait_writable(self) -> None:
        """Wait until the transport drains below its low-water mark (or the client leaves)."""
        self._drain = self.protocol.loop.create_future()
        await self._drain
        self._drain = None
