"""The opening handshake, server side (RFC 6455 4.2): pure functions over parsed headers."""

from __future__ import annotations

import base64
import binascii
import hashlib

from asgiws.headers import TOKEN, field_line, status_line

__all__ = ["HandshakeError", "UpgradeRequest", "accept_key", "accept_response", "validate_upgrade_request"]

# 1.3: the GUID appended to the client's key before hashing.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Sec-WebSocket-Protocol and -Extensions together: browsers send well under
# 1 KiB; the bound keeps parsing them cheap whatever a client sends.
MAX_NEGOTIATION_HEADER_SIZE = 4096


class HandshakeError(Exception):
    """An upgrade request the server refuses, with the HTTP response to send."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else []


class UpgradeRequest:
    """What the handshake needs from a valid upgrade request."""

    __slots__ = ("extension_header_values", "key", "origin", "subprotocols")

    def __init__(self, key: bytes, subprotocols: list[str], extension_header_values: list[bytes],
                 origin: str | None) -> None:
        self.key = key
        self.subprotocols = subprotocols
        self.extension_header_values = extension_header_values
        self.origin = origin


def _tokens(values: list[bytes]) -> set[bytes]:
    """Lower-cased items of comma-separated header values."""
    return {item.strip().lower() for value in values for item in value.split(b",")}


def validate_upgrade_request(method: str, http_version: str, headers: list[tuple[bytes, bytes]]) -> UpgradeRequest:
    """Check a request against 4.2.1; raise HandshakeError (400, or 426 for a wrong version)."""
    if method != "GET":
        raise HandshakeError(400, f"WebSocket upgrade requires GET, not {method}")
    if http_version != "1.1":
        raise HandshakeError(400, f"WebSocket upgrade requires HTTP/1.1, not {http_version}")
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    if b"websocket" not in _tokens(by_name.get(b"upgrade", [])):
        raise HandshakeError(400, "missing 'Upgrade: websocket' header")
    if b"upgrade" not in _tokens(by_name.get(b"connection", [])):
        raise HandshakeError(400, "missing 'Connection: upgrade' header")
    versions = by_name.get(b"sec-websocket-version", [])
    if [v.strip() for v in versions] != [b"13"]:
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version", [(b"Sec-WebSocket-Version", b"13")])
    keys = by_name.get(b"sec-websocket-key", [])
    if len(keys) != 1:
        raise HandshakeError(400, "expected exactly one Sec-WebSocket-Key header")
    key = keys[0].strip()
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key is not base64 of 16 bytes")
    protocols = by_name.get(b"sec-websocket-protocol", [])
    extensions = by_name.get(b"sec-websocket-extensions", [])
    if sum(map(len, protocols)) + sum(map(len, extensions)) > MAX_NEGOTIATION_HEADER_SIZE:
        raise HandshakeError(400, "Sec-WebSocket-Protocol/Extensions headers too large")
    try:
        protocol_text = [value.decode("ascii") for value in protocols]
        for value in extensions:
            value.decode("ascii")
    except UnicodeDecodeError:
        raise HandshakeError(400, "non-ASCII Sec-WebSocket-Protocol/Extensions header") from None
    subprotocols = [item.strip() for value in protocol_text for item in value.split(",") if item.strip()]
    # 4.1: each subprotocol is a token (RFC 2616 2.2 / RFC 9110 5.6.2), so
    # "a b" or "chat;v=1" is not an offer the app could ever accept.
    for subprotocol in subprotocols:
        if TOKEN.fullmatch(subprotocol.encode("ascii")) is None:
            raise HandshakeError(400, f"invalid subprotocol {subprotocol!r} in Sec-WebSocket-Protocol")
    origins = by_name.get(b"origin")
    origin = origins[0].decode("latin-1") if origins else None
    return UpgradeRequest(key, subprotocols, extensions, origin)


def accept_key(key: bytes) -> bytes:
    """4.2.2: base64 of the SHA-1 of the client's key followed by the GUID."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def accept_response(request: UpgradeRequest, *, subprotocol: str | None, extensions_header: bytes | None,
                    headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole `101 Switching Protocols` response.

    Raises ValueError if `subprotocol` was not offered by the client, or a
    header name is not an RFC 9110 token or a value contains CR, LF or NUL
    (the checks of every response the server writes, `asgiws.headers`).
    """
    lines = [
        status_line(101, b"Switching Protocols"),
        b"Upgrade: websocket\r\n",
        b"Connection: Upgrade\r\n",
        b"Sec-WebSocket-Accept: %s\r\n" % accept_key(request.key),
    ]
    if subprotocol is not None:
        if subprotocol not in request.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        lines.append(field_line(b"Sec-WebSocket-Protocol", subprotocol.encode("ascii")))
    if extensions_header is not None:
        lines.append(field_line(b"Sec-WebSocket-Extensions", extensions_header))
    for name, value in headers:
        lines.append(field_line(name, value))
    lines.append(b"\r\n")
    return b"".join(lines)
