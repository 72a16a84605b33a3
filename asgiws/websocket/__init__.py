"""Sans-I/O WebSocket codec: RFC 6455 framing and handshake, RFC 7692 permessage-deflate.

Takes bytes and returns events and bytes; never imports asyncio (a test checks).
"""

from __future__ import annotations

from asgiws.websocket.connection import ServerConnection, Trace
from asgiws.websocket.events import BinaryMessage, CloseReceived, Event, Pong, ProtocolFailure, TextMessage
from asgiws.websocket.extensions import Extension, ServerExtensionFactory, negotiate_extensions
from asgiws.websocket.frames import CloseCode, ConnectionClosedError, Opcode, ProtocolError
from asgiws.websocket.handshake import (
    HandshakeError,
    UpgradeRequest,
    accept_key,
    accept_response,
    validate_upgrade_request,
)
from asgiws.websocket.permessage_deflate import PerMessageDeflate, PerMessageDeflateFactory

__all__ = [
    "BinaryMessage",
    "CloseCode",
    "CloseReceived",
    "ConnectionClosedError",
    "Event",
    "Extension",
    "HandshakeError",
    "Opcode",
    "PerMessageDeflate",
    "PerMessageDeflateFactory",
    "Pong",
    "ProtocolError",
    "ProtocolFailure",
    "ServerConnection",
    "ServerExtensionFactory",
    "TextMessage",
    "Trace",
    "UpgradeRequest",
    "accept_key",
    "accept_response",
    "negotiate_extensions",
    "validate_upgrade_request",
]
