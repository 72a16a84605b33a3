"""HTTP/1.1 on httptools: one `HttpProtocol` per TCP connection (intake, pipelining, timers, upgrade).

Requests are parsed by httptools (strict, except that any one-digit version
parses: head.py answers it), or, for a request of the common shape, by the C
helper's parse_head in one call (head.py), and served one at a time; pipelined requests wait
in `pipeline` with reading paused. A request carrying `Upgrade: websocket` is
handed, parsed, to the WebSocket protocol together with the bytes that
followed its head.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from asgiws.config import Config
from asgiws.logging import TRACE_LOG_LEVEL
from asgiws.metrics import LIMIT, METRICS, PER_IP
from asgiws.protocols.common import ServerState
from asgiws.protocols.http.cycle import HttpConnection, RequestCycle
from asgiws.protocols.http.head import WHOLE_REQUESTS, Abort, HeadCallbacks, new_parser
from asgiws.protocols.response import add_default_fields, date_line, error_response, format_fields
from asgiws.protocols.utils import TrustedProxies, get_local_addr, get_remote_addr, is_ssl, peer_name
from asgiws.types import ASGIApp, Scope

__all__ = ["HttpProtocol"]

logger = logging.getLogger("asgiws.error")

# Bytes handed to httptools at once without looking for request heads in them
# (the end of a read, a piece of a chunked body): a request is at least ~18
# bytes, so one slice adds at most ~56 requests past the pipeline bound.
_PARSE_SLICE = 1024
# Empty lines before a request line, which httptools skips (RFC 9112 2.2 allows it).
_EMPTY_LINES = re.compile(rb"[\r\n]*")

# What an upgraded HttpProtocol's parser becomes: one shared parser with no
# protocol behind it (see HttpProtocol._release_after_upgrade).
_RELEASED_PARSER = httptools.HttpRequestParser(None)
_NO_PIPELINE: deque[Callable[[], None]] = deque(maxlen=0)


class HttpProtocol(HeadCallbacks, asyncio.BufferedProtocol):
    """One client connection speaking HTTP/1.x.

    The httptools callbacks are HeadCallbacks' (head.py), on this same object:
    httptools calls them straight, with no call in between.
    """

    # One per connection, and after an upgrade uvloop's transport keeps this
    # object alive through its cached get_buffer/buffer_updated bound methods
    # for as long as the WebSocket lasts: slots keep it small (no __dict__).
    # The head's own fields are HeadCallbacks' slots.
    __slots__ = (
        "config", "server_state", "app", "loop", "trusted", "parser", "transport", "client", "server",
        "client_ip", "scheme", "pipeline", "cycle", "_closing", "_upgraded", "_reading_paused",
        "_timer", "_deadline", "_backlog", "_default_lines", "_default_block", "_default_names", "_proxy_trusted",
        "_raw_root_path",
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
        self.parser = new_parser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.client_ip: str | None = None
        self.scheme = "http"
        # Requests parsed but waiting for the one in flight (pipelining).
        self.pipeline: deque[Callable[[], None]] = deque()
        self.cycle: RequestCycle | None = None  # the request being served
        self._closing = False
        self._upgraded = False
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time the idle/head timeout ends
        self._init_head()
        self._backlog = b""  # received but not parsed: the pipeline was full
        # The default fields' lines, their block and names: made by _formatted_defaults on first use.
        self._default_lines: list[bytes] | None = None
        self._default_block = b""
        self._default_names: frozenset[bytes] = frozenset()

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
            METRICS.ws_rejected[PER_IP] += 1  # HTTP or WebSocket: refused before a request says which
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
        # _receive's steps written out: this runs once per read, most often once per request.
        if self._closing or self._upgraded:
            return
        if self._backlog:
            self._backlog += self.server_state.read_buffer[:nbytes]
            return
        data = self.server_state.read_buffer
        if WHOLE_REQUESTS and self.cycle is None and not self._in_head and self._parsing is None:
            # An idle connection's read (no request in flight, so none waits in the
            # pipeline): most often one whole request, served without _parse's loop.
            offset = self.read_whole_request(data, 0, nbytes)
            if offset != nbytes:
                self._parse(data, nbytes, max(offset, 0), declined=0 if offset < 0 else -1)
            return
        self._parse(data, nbytes)

    def _receive(self, data: bytes | bytearray, size: int) -> None:
        """Parse data[:size], just read (or given back after an h2c upgrade or a PROXY header)."""
        if self._closing or self._upgraded:
            return
        if self._backlog:
            # A read that was already on its way when reading paused.
            self._backlog += data[:size]
            return
        self._parse(data, size)

    def _parse(self, data: bytes | bytearray, size: int, offset: int = 0, *, declined: int = -1) -> None:
        """Feed httptools data[offset:size] piece by piece; stop and keep the rest once the pipeline is full.

        Each request that starts between requests goes to read_whole_request
        first, unless it starts at `declined`, where it was declined already.

        One read can hold thousands of pipelined requests: parsing it whole would
        queue them all. Between pieces (`_piece_end`) the queue is checked, so it
        holds at most max_pipelined_requests plus what one piece can complete, and
        the rest of the read waits (reading paused) until answers drain the queue.

        Then the head timer starts if a head began in data and is not complete.
        It starts here rather than in on_message_begin: most heads end in the
        read that began them, and the timer would be set for nothing. It is not
        moved by later reads of the same head (a slowloris client gains nothing).
        """
        self._head_began = False
        view = memoryview(data)[:size]  # pieces are fed as views, not copied
        config = self.config
        while offset < size and not self._closing and not self._upgraded:
            if len(self.pipeline) >= config.max_pipelined_requests:
                self._backlog = bytes(view[offset:])
                self._update_reading()
                break
            if WHOLE_REQUESTS and not self._in_head and self._parsing is None and offset != declined:
                # Between requests: a whole request of the common shape is read in one call, up
                # to `size` (one request is read, so the pipeline's bound holds) and before the
                # piece's end is looked for, which only httptools's feed needs.
                taken = self.read_whole_request(data, offset, size)
                if taken >= 0:
                    offset = taken
                    continue
            # A short read is one piece: _piece_end's first answer, without the call.
            end = size if size - offset <= _PARSE_SLICE else self._piece_end(data, offset, size)
            if self._in_head:
                # Raw bytes of an unfinished head (httptools buffers a partial field
                # whole): bounded here, before the field ends, to the piece.
                self._head_bytes += end - offset
                if self._head_bytes > config.max_request_line_size + config.max_header_size:
                    self._fail(431, "Request header fields too large")
                    break
            if not self._feed(view, offset, end):
                break
            offset = end
        if self._head_began and self._in_head and not self._closing:
            self._set_timer(config.timeout_handshake)

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
            abort = self._abort or (exc.__context__ if isinstance(exc.__context__, Abort) else None)
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
            self.parser = new_parser(self)
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
            METRICS.ws_rejected[LIMIT] += 1
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
        METRICS.count_http(status, None)  # not timed: no request was parsed (or it broke a limit)
        if not self.transport.is_closing():
            self.transport.writelines(self._error_response(status, reason, keep_alive=False, body=True))
        self._close()

    def _error_response(self, status: int, reason: str, *, keep_alive: bool, body: bool) -> list[bytes]:
        defaults = self.server_state.default_headers
        return error_response(status, reason, defaults, self._formatted_defaults(),
                              date=self.config.date_header, keep_alive=keep_alive, body=body)

    def _formatted_defaults(self) -> list[bytes]:
        # The lines formatted once per connection serve every response.
        if self._default_lines is None:
            self._default_lines = format_fields(self.server_state.default_headers)
            self._default_block = b"".join(self._default_lines)
            self._default_names = frozenset(name for name, _ in self.server_state.default_headers)
            if self.config.date_header:
                self._default_names |= {b"date"}
        return self._default_lines

    def default_fields(self, app_names: frozenset[bytes]) -> bytes:
        """The Server, --header and Date lines of a response, less those the app sent itself."""
        self._formatted_defaults()
        if app_names.isdisjoint(self._default_names):
            # Nearly every response: the block made once per connection, and the Date line.
            return self._default_block + date_line() if self.config.date_header else self._default_block
        lines: list[bytes] = []
        add_default_fields(lines, self.server_state.default_headers, self._formatted_defaults(), app_names,
                           date=self.config.date_header)
        return b"".join(lines)

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


if TYPE_CHECKING:
    # mypy checks here that HttpProtocol is what a RequestCycle expects of its connection.
    _CONNECTION: type[HttpConnection] = HttpProtocol


def _skip_empty_lines(data: bytes | bytearray, offset: int, size: int) -> int:
    """The offset past the CR and LF bytes that start at `offset` (before `size`)."""
    match = _EMPTY_LINES.match(data, offset, size)
    return match.end() if match else offset


def _parse_error_reason(exc: Exception) -> str:
    text = str(exc).strip() or "Invalid HTTP request"
    return "Invalid HTTP request: " + text[:100]
