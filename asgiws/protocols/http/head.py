"""The httptools callbacks of `HttpProtocol`: the request head, its limits (414, 431, 413, 505) and the scope.

A mixin, so that httptools calls each callback on the protocol object itself
(one C-to-Python call per field, none added); the head's fields are its own
slots. Limits are checked as the bytes arrive, before httptools finishes a
field.

Most requests never reach those callbacks: `parse_head` (the optional C
helper _head.c) reads a whole request of the common shape in one call, and
`read_whole_request` serves it; whatever it declines httptools parses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools

from asgiws.drain import SCOPE_KEY as DRAIN_KEY
from asgiws.protocols.http.cycle import RequestCycle
from asgiws.protocols.utils import FORWARDED_FIELDS, TrustedProxies, rewrite_from_forwarded
from asgiws.types import Scope

if TYPE_CHECKING:
    from asgiws.config import Config
    from asgiws.protocols.common import ServerState

__all__ = ["WHOLE_REQUESTS", "Abort", "HeadCallbacks", "ParsedHead", "new_parser", "parse_head"]

# What parse_head returns: where the request ended, the method, the path and query
# as sent, the version, the fields (names lowercased), whether an X-Forwarded-*
# field is present, whether the connection stays open after the response, the
# Content-Length (None without one) and the body.
ParsedHead = tuple[int, str, bytes, bytes, str, list[tuple[bytes, bytes]], bool, bool, int | None, bytes]


def _no_parse_head(*args: object) -> ParsedHead | None:
    return None


parse_head: Callable[[bytes | bytearray, int, int, int, int, int, int], ParsedHead | None]
try:
    from asgiws.protocols.http._head import parse_head
except ImportError:  # not built: httptools parses every request
    parse_head = _no_parse_head
WHOLE_REQUESTS = parse_head is not _no_parse_head


class Abort(Exception):
    """Raised inside a parser callback: answer `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# The HTTP versions served, by the version a request line gives, and what the
# scope says (ASGI: "1.0" or "1.1"). RFC 9110 2.5: a recipient of a higher
# minor version "SHOULD process the message as if it were in the highest minor
# version within that major version to which the recipient is conformant".
# httptools reads one digit each side of the dot; any major but 1 is a 505.
_HTTP_VERSIONS = {"1.0": "1.0", "1.1": "1.1", **{f"1.{minor}": "1.1" for minor in range(2, 10)}}


def new_parser(protocol: HeadCallbacks) -> httptools.HttpRequestParser:
    """A strict request parser, except that any one-digit version parses (answered 505 unless 1.x)."""
    parser = httptools.HttpRequestParser(protocol)
    # Only the version digits are relaxed (llhttp refuses all but 0.9, 1.0, 1.1
    # and 2.0 with a 400); on_headers_complete decides what each version gets.
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


class HeadCallbacks:
    """on_message_begin ... on_message_complete for httptools, and the per-request head accounting."""

    __slots__ = (
        "_url", "_headers", "_head_size", "_hosts", "_content_length", "_expect_100", "_wants_websocket",
        "_forwarded", "_head_bytes", "_in_head", "_head_began", "_ws_upgrade", "_abort", "_parsing",
    )

    if TYPE_CHECKING:
        # What the callbacks use of the protocol they are mixed into (HttpProtocol).
        config: Config
        server_state: ServerState
        parser: httptools.HttpRequestParser
        trusted: TrustedProxies
        scheme: str
        client: tuple[str, int] | None
        server: tuple[str, int | None] | None
        cycle: RequestCycle | None
        pipeline: deque[Callable[[], None]]
        _closing: bool
        _proxy_trusted: bool
        _raw_root_path: bytes

        def _enqueue(self, start: Callable[[], None]) -> None: ...
        def _set_timer(self, seconds: float) -> None: ...
        def _cancel_timer(self) -> None: ...

    def _init_head(self) -> None:
        """The head's fields before the first request (called by HttpProtocol.__init__)."""
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
        self._abort: Abort | None = None
        self._parsing: RequestCycle | None = None  # the request whose body is arriving

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
        version = _HTTP_VERSIONS.get(self.parser.get_http_version())
        if version is None:
            # RFC 9110 15.6.6: 505 "indicates that the server does not support, or
            # refuses to support, the major version of HTTP that was used".
            raise self._set_abort(505, f"HTTP/{self.parser.get_http_version()} is not supported")
        target = _split_target(self._url)
        if target is None:
            raise self._set_abort(400, "Invalid request target")
        scope = self._scope(self.parser.get_method().decode("ascii"), version, target[0], target[1], self._headers)
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
        cycle = self._new_cycle(scope, self.parser.should_keep_alive())
        content_length = self._content_length
        limit = self.config.limit_request_body
        if limit is not None and content_length is not None and content_length > limit:
            raise self._set_abort(413, "Request body too large")
        cycle.content_length = content_length
        cycle.expect_100 = self._expect_100 and version == "1.1"
        self._parsing = cycle  # until on_message_complete
        self._start_cycle(cycle)

    def read_whole_request(self, data: bytes | bytearray, start: int, end: int) -> int:
        """Serve the request at data[start:end] if parse_head reads it whole: the callbacks' work in one call.

        parse_head takes only requests without an upgrade or anything else
        on_headers_complete would refuse, with their body (if any) all in
        `data`, so the request is complete here. Returns where it ended, or -1
        when parse_head declined it and httptools is to parse it.
        """
        config = self.config
        limit = config.limit_request_body
        head = parse_head(data, start, end, config.max_request_line_size, config.max_header_size,
                          config.max_header_count, -1 if limit is None else limit)
        if head is None:
            return -1
        request_end, method, raw_path, query, version, headers, forwarded, keep_alive, content_length, body = head
        self._cancel_timer()
        scope = self._scope(method, version, raw_path, query, headers)
        if forwarded and self._proxy_trusted:
            rewrite_from_forwarded(scope, self.trusted, forwarded_host=config.forwarded_host)
        cycle = self._new_cycle(scope, keep_alive)
        cycle.more_body = False
        if content_length is not None:
            cycle.content_length = cycle.body_received = content_length
            if body:
                cycle.body.append(body)
                cycle.buffered = content_length
        self._start_cycle(cycle)
        return request_end

    def _new_cycle(self, scope: Scope, keep_alive: bool) -> RequestCycle:
        self.server_state.total_requests += 1
        # HeadCallbacks is only ever HttpProtocol's base: the cycle gets the protocol.
        return RequestCycle(self, scope, keep_alive=keep_alive)  # type: ignore[arg-type]

    def _start_cycle(self, cycle: RequestCycle) -> None:
        if self.cycle is None and not self.pipeline:
            cycle.start()  # _enqueue's first case, without the call and the bound method
        else:
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

    def _scope(
        self, method: str, http_version: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Scope:
        root_path = self.config.root_path
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="utf-8", errors="replace")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": http_version,
            "method": method,
            "scheme": self.scheme,
            "path": root_path + path,
            "raw_path": self._raw_root_path + raw_path if self._raw_root_path else raw_path,
            "query_string": query,
            "root_path": root_path,
            "headers": headers,
            "client": self.client,
            "server": self.server,
            "state": self.server_state.lifespan_state.copy(),
            "extensions": {DRAIN_KEY: self.server_state.drain},
        }

    def _set_abort(self, status: int, reason: str) -> Abort:
        self._abort = Abort(status, reason)
        return self._abort


def _split_target(url: bytes) -> tuple[bytes, bytes] | None:
    """The path and query of a request target, or None when it is not one httptools can parse."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return (b"*", b"") if url == b"*" else None
    return parsed.path or b"/", parsed.query or b""


def _note_host(protocol: HeadCallbacks, value: bytes) -> None:
    protocol._hosts += 1


def _note_content_length(protocol: HeadCallbacks, value: bytes) -> None:
    if protocol._content_length is None:
        try:
            protocol._content_length = int(value)
        except ValueError:
            pass  # httptools refuses the head as well: not a length


def _note_expect(protocol: HeadCallbacks, value: bytes) -> None:
    if value.lower() == b"100-continue":
        protocol._expect_100 = True


def _note_upgrade(protocol: HeadCallbacks, value: bytes) -> None:
    # --ws none: as in uvicorn, an upgrade request is then an ordinary HTTP request for the app.
    if protocol.config.ws != "none" and b"websocket" in [token.strip().lower() for token in value.split(b",")]:
        protocol._wants_websocket = True


def _note_forwarded(protocol: HeadCallbacks, value: bytes) -> None:
    protocol._forwarded = True


# Request fields the server acts on, by lowercased name: noted once as each arrives.
_HEAD_NOTES: dict[bytes, Callable[[HeadCallbacks, bytes], None]] = {
    b"host": _note_host,
    b"content-length": _note_content_length,
    b"expect": _note_expect,
    b"upgrade": _note_upgrade,
    **{name: _note_forwarded for name in FORWARDED_FIELDS},
}
