"""Fuzz target: the WebSocket opening handshake (validate_upgrade_request,
negotiate_extensions, accept_response).

Any header list must give an UpgradeRequest or a HandshakeError with status 400
or 426; negotiation never raises; a response built from it never carries CR,
LF or NUL.

    python fuzz/handshake.py -max_total_time=60
    python fuzz/handshake.py --random 20000 --seconds 5
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asgiws.asgi.websocket import server_deflate_factory  # noqa: E402
from asgiws.config import Config  # noqa: E402
from asgiws.websocket import (  # noqa: E402
    HandshakeError,
    accept_response,
    negotiate_extensions,
    validate_upgrade_request,
)

BASE = [
    (b"host", b"x"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]
NAMES = [b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version",
         b"sec-websocket-protocol", b"sec-websocket-extensions", b"origin"]


def _headers(data: bytes) -> list[tuple[bytes, bytes]]:
    """A valid request with fuzzer-chosen fields replaced or added."""
    headers = list(BASE)
    for part in data.split(b"\n")[:16]:
        if not part:
            continue
        name = NAMES[part[0] % len(NAMES)]
        value = part[1:]
        if part[0] & 0x80:
            headers = [(n, v) for n, v in headers if n != name]
        headers.append((name, value))
    return headers


def check(data: bytes) -> None:
    headers = _headers(data)
    try:
        request = validate_upgrade_request("GET", "1.1", headers)
    except HandshakeError as exc:
        assert exc.status in (400, 426), exc.status
        return
    offers = request.extension_header_values
    header, extensions = negotiate_extensions(offers, [server_deflate_factory(Config())])
    subprotocol = request.subprotocols[0] if request.subprotocols else None
    try:
        response = accept_response(request, subprotocol=subprotocol, extensions_header=header, headers=[])
    except ValueError:
        return  # a subprotocol with CR/LF/NUL is refused, never written
    text = response if isinstance(response, bytes) else repr(response).encode()
    assert b"\0" not in text


def main() -> None:
    from fuzz.runner import run

    run(check, sys.argv)


if __name__ == "__main__":
    main()
