"""HTTP/1.x on httptools, in three parts along its seams.

- protocol.py: HttpProtocol, the asyncio callbacks, intake, pipelining, timers, the upgrade hand-off;
- head.py: HeadCallbacks (mixed into HttpProtocol), the httptools callbacks, head limits, the scope;
- cycle.py: RequestCycle, one request's ASGI receive/send and its response's framing.

Response heads themselves are written by asgiws.protocols.response.
"""

from __future__ import annotations

from asgiws.protocols.http.cycle import RequestCycle
from asgiws.protocols.http.protocol import HttpProtocol
from asgiws.protocols.response import build_default_headers

# build_default_headers lives in protocols/response.py; server.py imports it from here.
__all__ = ["HttpProtocol", "RequestCycle", "build_default_headers"]
