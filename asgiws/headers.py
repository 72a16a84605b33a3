"""RFC 9110 rules for the status line and fields the server writes: free of I/O.

The one set of checks behind every response head: HTTP responses and
WebSocket denials (`asgiws.protocols.response`) and the codec's
`101 Switching Protocols` (`asgiws.websocket.handshake`, which must not import
asyncio, hence this module imports nothing but `re`).
"""

from __future__ import annotations

import re

__all__ = ["TOKEN", "field_error", "field_line", "is_status", "status_line"]

# RFC 9110 5.6.2: token = 1*tchar, the syntax of a field name (5.1) and of a
# subprotocol name (RFC 6455 4.1). Used with fullmatch: "$" would let a name
# end in a newline.
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 5.5: "Field values containing CR, LF, or NUL characters are invalid
# and dangerous" (response splitting).
_BAD_VALUE = re.compile(rb"[\r\n\0]")
# RFC 9110 15: "The status code of a response is a three-digit integer code",
# and only the classes 1xx to 5xx are defined.
_STATUS_RANGE = range(100, 600)


def is_status(status: object) -> bool:
    """True for an int (not a bool) from 100 to 599."""
    return type(status) is int and status in _STATUS_RANGE


def status_line(status: int, phrase: bytes) -> bytes:
    """b"HTTP/1.1 <status> <phrase>\\r\\n".

    Raises ValueError when `status` is not a three-digit code from 100 to 599.
    """
    if not is_status(status):
        raise ValueError(f"invalid status {status!r}: expected a three-digit code from 100 to 599")
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


def field_error(name: bytes, value: bytes) -> str | None:
    """Why (name, value) cannot be written as a response field; None when it can."""
    if TOKEN.fullmatch(name) is None:
        return "the name is not an RFC 9110 token"
    if _BAD_VALUE.search(value) is not None:
        return f"the value {value!r} contains CR, LF or NUL"
    return None


def field_line(name: bytes, value: bytes) -> bytes:
    """b"name: value\\r\\n" for one response field.

    Raises ValueError when `name` is not an RFC 9110 token or `value` holds CR,
    LF or NUL; the message names the field.
    """
    if TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
        raise ValueError(f"invalid response header {name!r}: {field_error(name, value)}")
    return b"%s: %s\r\n" % (name, value)
