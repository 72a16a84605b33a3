"""An app that tells the client who the server thinks it is."""

from __future__ import annotations

import json
from typing import Any


def _identity(scope: dict[str, Any]) -> bytes:
    identity = {"client": scope["client"], "server": scope["server"], "scheme": scope["scheme"]}
    return json.dumps(identity).encode()


async def whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """HTTP: 200 with {"client", "server", "scheme"} as JSON. WebSocket: the same as one text
    message after accept, then close 1000."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": _identity(scope)})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": _identity(scope).decode()})
        await send({"type": "websocket.close", "code": 1000})
