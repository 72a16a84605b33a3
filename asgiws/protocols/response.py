"""Every response head the server writes: HTTP responses, WebSocket denials, error answers.

One writer with one set of checks (`asgiws.headers`: names are RFC 9110 tokens,
values free of CR, LF and NUL, a status from 100 to 599), shared with the
codec's `101 Switching Protocols` (`asgiws.websocket.handshake.accept_response`).
Nothing here does I/O: each function returns the bytes to write.

A field or status the app gets wrong raises RuntimeError before a byte is
written, so the app's error becomes a 500 (or the app may still send a valid
response instead).
"""

from __future__ import annotations

import http
import time
from collections.abc import Iterable
from typing import Any
from email.utils import formatdate

from asgiws.config import Config
from asgiws.headers import field_error, field_line
from asgiws.headers import status_line as _format_status_line

__all__ = [
    "NO_BODY_STATUS",
    "STATUS_LINES",
    "AppHead",
    "add_default_fields",
    "app_field_line",
    "app_head",
    "build_default_headers",
    "date_line",
    "denial_head",
    "error_response",
    "format_fields",
    "status_line",
]


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""  # RFC 9112 4: the reason-phrase may be empty


# Every valid status line, made once: the lookup is also the range check.
STATUS_LINES: dict[int, bytes] = {
    status: _format_status_line(status, _phrase(status)) for status in range(100, 600)
}

# Statuses whose response has no body (RFC 9110 6.4.1): 1xx, 204, 304.
NO_BODY_STATUS = frozenset({204, 304}) | frozenset(range(100, 200))

# (second, whole "date: ...\r\n" line): recomputed at most once per second.
_date_cache: tuple[int, bytes] = (0, b"")


def status_line(status: object) -> bytes:
    """b"HTTP/1.1 200 OK\\r\\n" for an ASGI status.

    Raises RuntimeError unless `status` is an int from 100 to 599 (RFC 9110 15:
    "a three-digit integer code"): `700` would go out as `HTTP/1.1 700 `.
    """
    line = STATUS_LINES.get(status) if type(status) is int else None
    if line is None:
        raise RuntimeError(f"invalid HTTP status {status!r}: expected a three-digit code from 100 to 599")
    return line


def app_field_line(name: bytes, value: bytes) -> bytes:
    """One field line of an app's response; RuntimeError (naming the field) if it is invalid."""
    try:
        return field_line(name, value)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None


class AppHead:
    """What an app's `http.response.start` says, checked and formatted: made once per distinct message.

    `lines` is the status line and the app's field lines, less a
    `Transfer-Encoding: chunked` (the server writes the framing fields itself,
    exactly once); `names` the lowercased names of the fields kept.
    """

    __slots__ = ("lines", "names", "content_length", "chunked", "close")

    def __init__(self, lines: bytes, names: frozenset[bytes], content_length: int | None, chunked: bool,
                 close: bool) -> None:
        self.lines = lines
        self.names = names
        self.content_length = content_length  # the app's Content-Length, None if it gave none
        self.chunked = chunked  # the app asked for Transfer-Encoding: chunked
        self.close = close  # the app sent Connection: close


# AppHead by (status, headers) as the app gave them: most apps send a few shapes
# of head (the hello world's is the same every time), and a hit skips the lowering,
# the two regular expressions and the formatting of every field. Distinct heads
# kept at most; a per-request value (a Set-Cookie, an ETag) makes a new one per
# response, and once full the table is emptied and refilled.
_APP_HEADS: dict[tuple[int, tuple[Any, ...]], AppHead] = {}
_APP_HEADS_MAX = 1024
# A head longer than this (bytes) is not kept: the table holds at most ~2 MiB of heads and their keys.
_APP_HEAD_MAX_CACHED = 1024


def app_head(status: object, headers: Iterable[Any]) -> AppHead:
    """The checked head of `http.response.start` with `status` and `headers` (name, value pairs of bytes).

    Raises RuntimeError for a status `status_line` refuses, a field
    `app_field_line` refuses, or a Content-Length that is not a decimal
    length (nothing is written then, so the app's error becomes a 500).
    """
    fields = headers if type(headers) is tuple else tuple(headers)
    if type(status) is not int:
        # Not a key: 200.0 and True hash like 200 and 1, and must still be refused.
        return _make_app_head(status, fields)
    key = (status, fields)
    try:
        head = _APP_HEADS.get(key)
    except TypeError:  # a field given as a list, or a bytearray: not hashable, checked every time
        return _make_app_head(status, fields)
    if head is None:
        head = _make_app_head(status, fields)
        if len(head.lines) <= _APP_HEAD_MAX_CACHED:
            if len(_APP_HEADS) >= _APP_HEADS_MAX:
                _APP_HEADS.clear()
            _APP_HEADS[key] = head
    return head


def _make_app_head(status: object, fields: tuple[Any, ...]) -> AppHead:
    lines = [status_line(status)]
    names: set[bytes] = set()
    content_length: int | None = None
    chunked = close = False
    for raw_name, raw_value in fields:  # ASGI: an iterable of [name, value] pairs
        name = bytes(raw_name).lower()
        value = bytes(raw_value)
        line = app_field_line(name, value)
        if name == b"content-length":
            if not value.isdigit():
                raise RuntimeError(f"invalid response header {name!r}: {value!r} is not a length")
            content_length = int(value)
        elif name == b"transfer-encoding":
            if value.lower() == b"chunked":
                chunked = True
                continue  # the server writes it, exactly once
        elif name == b"connection" and b"close" in value.lower():
            close = True
        names.add(name)
        lines.append(line)
    return AppHead(b"".join(lines), frozenset(names), content_length, chunked, close)


def date_line() -> bytes:
    """The Date field line of a response, formatted at most once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, b"date: %s\r\n" % formatdate(now, usegmt=True).encode("latin-1"))
    return _date_cache[1]


def build_default_headers(config: Config) -> list[tuple[bytes, bytes]]:
    """Server field and --header values, encoded and checked once per server.

    Raises ValueError for a --header without a colon, or one whose name is not
    a token or whose value holds CR, LF or NUL.
    """
    headers: list[tuple[bytes, bytes]] = []
    custom: list[tuple[bytes, bytes]] = []
    for item in config.headers:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"invalid --header {item!r}: expected NAME:VALUE")
        field = (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
        error = field_error(*field)
        if error is not None:
            raise ValueError(f"invalid --header {item!r}: {error}")
        custom.append(field)
    if config.server_header and not any(name == b"server" for name, _ in custom):
        headers.append((b"server", b"asgiws"))
    return headers + custom


def format_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The lines of fields already checked (the defaults): formatted once per connection."""
    return [b"%s: %s\r\n" % (name, value) for name, value in fields]


def add_default_fields(lines: list[bytes], defaults: list[tuple[bytes, bytes]], formatted: list[bytes],
                       app_names: set[bytes] | frozenset[bytes], *, date: bool) -> None:
    """Append the Server, --header and Date lines, less those the app sent itself.

    `formatted` is `format_fields(defaults)`, made once by the caller.
    """
    if app_names and any(name in app_names for name, _ in defaults):
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in defaults if name not in app_names)
    else:
        lines.extend(formatted)
    if date and b"date" not in app_names:
        lines.append(date_line())


def error_response(status: int, reason: str, defaults: list[tuple[bytes, bytes]], formatted: list[bytes], *,
                   date: bool, keep_alive: bool = False, body: bool = True,
                   fields: Iterable[tuple[bytes, bytes]] = ()) -> list[bytes]:
    """A response the server makes itself (400, 500, 503 ...): the reason as a text/plain body.

    `fields` are extra server-made fields (a 426's Sec-WebSocket-Version);
    `body=False` answers a HEAD request (Content-Length, but no body).
    """
    payload = reason.encode("utf-8") + b"\n" if reason else b""
    lines = [
        STATUS_LINES[status],
        *format_fields(fields),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(payload),
    ]
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    add_default_fields(lines, defaults, formatted, frozenset(), date=date)
    lines.append(b"\r\n")
    if body and payload:
        lines.append(payload)
    return lines


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode("latin-1") if isinstance(text, str) else bytes(text)


def denial_head(status: object, headers: Iterable[tuple[bytes | str, bytes | str]],
                defaults: list[tuple[bytes, bytes]], *, date: bool) -> tuple[bytes, bool]:
    """The head of a WebSocket denial response (`websocket.http.response.start`), and whether it is chunked.

    The body is chunked unless the app gave a Content-Length; the connection
    closes after it (the client asked for a WebSocket, not for keep-alive).
    Raises RuntimeError for a status or field `status_line` / `app_field_line` refuses.
    """
    lines = [status_line(status)]
    app_names: set[bytes] = set()
    for raw_name, raw_value in headers:
        name = _as_bytes(raw_name).lower()
        value = _as_bytes(raw_value)
        line = app_field_line(name, value)
        if name in (b"transfer-encoding", b"connection"):
            continue  # the framing below is the server's to write, exactly once
        app_names.add(name)
        lines.append(line)
    chunked = b"content-length" not in app_names and status not in NO_BODY_STATUS
    add_default_fields(lines, defaults, format_fields(defaults), app_names, date=date)
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines), chunked
