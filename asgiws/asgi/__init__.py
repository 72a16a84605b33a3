"""The ASGI side of a connection, sans I/O: sessions that turn codec events into ASGI messages.

No asyncio here (a test checks, as for `asgiws.websocket`): `asgiws.protocols`
moves bytes, timers and flow control between a session and its transport.
"""

from __future__ import annotations
