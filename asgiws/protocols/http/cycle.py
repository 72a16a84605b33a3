"""One HTTP request and its response: the ASGI receive/send pair and the response's framing."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from asgiws.exceptions import ClientDisconnected
from asgiws.logging import log_access
from asgiws.metrics import METRICS
from asgiws.protocols.response import NO_BODY_STATUS, AppHead, app_head
from asgiws.types import ASGIApp, Message, Scope

if TYPE_CHECKING:
    from asgiws.config import Config
    from asgiws.protocols.common import ServerState

__all__ = ["HttpConnection", "RequestCycle"]

logger = logging.getLogger("asgiws.error")

# A body shorter than this (bytes) is copied behind its head for one write; a
# longer one is written after it without the copy.
_JOIN_BODY_BELOW = 65536


class HttpConnection(Protocol):
    """What a RequestCycle uses of the connection it serves (protocol.py's HttpProtocol).

    Written here so that cycle.py imports nothing from protocol.py, which
    imports this module (head.py makes the cycles, protocol.py runs them).
    """

    transport: asyncio.Transport
    config: Config
    loop: asyncio.AbstractEventLoop
    app: ASGIApp
    server_state: ServerState
    cycle: RequestCycle | None  # the request being served

    def concurrency_exceeded(self) -> bool: ...
    def on_response_complete(self, keep_alive: bool) -> None: ...
    def default_fields(self, app_names: frozenset[bytes]) -> bytes: ...
    def _update_reading(self) -> None: ...
    def _close(self) -> None: ...
    def _error_response(self, status: int, reason: str, *, keep_alive: bool, body: bool) -> list[bytes]: ...
    def _client_text(self) -> str: ...


class RequestCycle:
    """One request and its response; the ASGI receive/send pair lives here."""

    # One is made per request: slots make it smaller and its ~20 fields faster to set.
    __slots__ = (
        "protocol", "transport", "scope", "keep_alive", "expect_100", "body", "buffered",
        "content_length", "body_received", "more_body", "disconnected", "response_started",
        "response_complete", "chunked", "expected_length", "sent_length", "status", "_waiter",
        "_write_paused", "_drain", "is_head", "_head", "started_at", "_task",
    )

    def __init__(self, protocol: HttpConnection, scope: Scope, *, keep_alive: bool) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = False
        # Body pieces as httptools made them (each a bytes object of its own), so
        # one piece goes to the app as it is and several are joined once.
        self.body: list[bytes] = []
        self.buffered = 0  # bytes in `body`
        self.content_length: int | None = None  # declared by the request, None if chunked
        self.body_received = 0
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.expected_length: int | None = None
        self.sent_length = 0
        self.status = 0
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.is_head = scope["method"] == "HEAD"
        # The app's response head from http.response.start until the first body message writes it.
        self._head: AppHead | None = None
        self._task: asyncio.Task[None] | None = None  # the app's, once start() made it
        # For asgiws_http_request_duration_seconds; not loop.time(), which uvloop caches per loop tick.
        self.started_at = time.monotonic()

    def body_owed(self) -> int:
        """Bytes of a Content-Length body not parsed yet; 0 when chunked or complete."""
        if self.content_length is None:
            return 0
        return self.content_length - self.body_received

    # -- fed by the protocol -----------------------------------------------------------

    def feed_body(self, body: bytes) -> None:
        if self.response_complete:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > self.protocol.config.http_read_high_water:
            self.protocol._update_reading()
        self._wake()

    def end_body(self) -> None:
        self.more_body = False
        self._wake()

    def on_disconnect(self) -> None:
        self.disconnected = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- running the app -----------------------------------------------------------------

    def start(self) -> None:
        protocol = self.protocol
        protocol.cycle = self
        if protocol.config.limit_concurrency is not None and protocol.concurrency_exceeded():
            logger.warning("Exceeded concurrency limit.")
            self.keep_alive = False
            self._simple(503, "Service Unavailable")
            return
        # The task runs from the next loop iteration: self._task is set before run_asgi reads it.
        self._task = protocol.loop.create_task(self.run_asgi(protocol.app))
        protocol.server_state.tasks.add(self._task)

    async def run_asgi(self, app: ASGIApp) -> None:
        """Run the app on this request; the task leaves server_state.tasks as it ends.

        Removed here rather than by a done callback: that was one more loop
        callback per request. (A task cancelled before it first ran never gets
        here; only shutdown cancels, and it no longer waits on the set then.)
        """
        try:
            try:
                await app(self.scope, self.receive, self.send)
            except ClientDisconnected:
                pass
            except asyncio.CancelledError:
                # Shutdown ran out of time: drop the connection, nothing to log.
                if not self.response_complete:
                    self.protocol._close()
                raise
            except BaseException as exc:
                logger.error("Exception in ASGI application", exc_info=exc)
                if not self.response_started or self._head is not None:
                    # Nothing of the app's response is written yet (its head waits for the first body).
                    self._simple(500, "Internal Server Error")
                elif not self.response_complete:
                    self.keep_alive = False
                    self.protocol._close()
                if not isinstance(exc, Exception):
                    raise
            else:
                if not self.response_started and not self.disconnected:
                    logger.error("ASGI callable returned without starting response.")
                    self._simple(500, "Internal Server Error")
                elif not self.response_complete and not self.disconnected:
                    logger.error("ASGI callable returned without completing response.")
                    self.keep_alive = False
                    self.protocol._close()
        finally:
            self.protocol.server_state.tasks.discard(self._task)

    def _simple(self, status: int, reason: str) -> None:
        """A server-made response (500, 503) in place of the app's."""
        self.response_started = True
        self.status = status
        if not self.transport.is_closing():
            response = self.protocol._error_response(
                status, reason, keep_alive=self.keep_alive, body=not self.is_head
            )
            self.transport.writelines(response)
        self._log()
        self._complete()

    def _complete(self) -> None:
        self.response_complete = True
        self.body.clear()
        self.buffered = 0
        self._wake()
        if self.more_body and self.keep_alive:
            # The rest of the request body is still to be read and thrown away.
            self.protocol._update_reading()
        self.protocol.on_response_complete(self.keep_alive)

    def _log(self) -> None:
        METRICS.count_http(self.status, time.monotonic() - self.started_at)
        if self.protocol.config.access_log:
            scope = self.scope
            path = scope["path"]
            if scope["query_string"]:
                path += "?" + scope["query_string"].decode("latin-1")
            log_access(scope["client"], scope["method"], path, scope["http_version"], self.status)

    # -- ASGI receive ------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.expect_100:
            self.expect_100 = False
            if not self.response_started and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.disconnected and not self.response_complete and self.more_body and not self.body:
            self._waiter = self.protocol.loop.create_future()
            await self._waiter
            self._waiter = None
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pieces = self.body
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        message = {"type": "http.request", "body": body, "more_body": self.more_body}
        pieces.clear()
        self.buffered = 0
        self.protocol._update_reading()
        return message

    # -- ASGI send -----------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        kind = message["type"]
        if kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            # Written synchronously; a coroutine is made only when the app has to wait.
            if self._body(message):
                await self._wait_writable()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _start(self, message: Message) -> None:
        if self.response_started:
            raise RuntimeError("response already started")
        status = message["status"]
        head = app_head(status, message.get("headers", ()))
        self.expected_length = head.content_length
        self.chunked = head.chunked
        if head.close:
            self.keep_alive = False
        self.response_started = True
        self.status = status
        self._head = head
        self.expect_100 = False

    def _finish_head(self, head: AppHead, body: bytes, more_body: bool) -> list[bytes]:
        """The pieces of the response head, framed for the first body message (`body`, `more_body`)."""
        parts = [head.lines, self.protocol.default_fields(head.names)]
        if self.status in NO_BODY_STATUS:
            self.chunked = False
        elif self.expected_length is None and not self.chunked:
            if not more_body and not self.is_head:
                self.expected_length = len(body)
                parts.append(b"content-length: %d\r\n" % len(body))
            elif not self.is_head:
                if self.scope["http_version"] == "1.1":
                    self.chunked = True
                else:
                    self.keep_alive = False  # HTTP/1.0: the close marks the end
        if self.chunked and not self.is_head:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif self.chunked:
            self.chunked = False
        if not self.keep_alive:
            if b"connection" not in head.names:
                parts.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._log()
        return parts

    def _body(self, message: Message) -> bool:
        """Write one http.response.body message; True when the app should wait for drain."""
        if not self.response_started:
            raise RuntimeError("response body sent before http.response.start")
        if self.response_complete:
            raise RuntimeError("response already complete")
        body = message.get("body", b"")
        if type(body) is not bytes:
            body = bytes(body)
        more_body = bool(message.get("more_body", False))
        expected = self.expected_length
        if expected is not None and self.sent_length + len(body) > expected and self._has_body():
            self._refuse_longer_body(len(body), expected)
        parts: list[bytes] | None = None
        if self._head is not None:
            parts = self._finish_head(self._head, body, more_body)
            self._head = None
        transport = self.transport
        if self.is_head or self.status in NO_BODY_STATUS:
            if parts is not None:
                transport.write(b"".join(parts))
        elif self.chunked:
            if parts is None:
                parts = []
            if body:
                parts.append(b"%x\r\n%s\r\n" % (len(body), body))
            if not more_body:
                parts.append(b"0\r\n\r\n")
            transport.writelines(parts)
        else:
            self.sent_length += len(body)
            if parts is None:
                transport.write(body)
            elif len(body) < _JOIN_BODY_BELOW:
                # One write of head and body: one send() and, on loopback, one segment.
                parts.append(body)
                transport.write(b"".join(parts))
            else:
                parts = [b"".join(parts), body]
                transport.writelines(parts)
            if not more_body and self.expected_length is not None and self.sent_length < self.expected_length:
                self._end_short_body()
        if not more_body:
            self._complete()
            return False
        return self._write_paused and not self.disconnected

    def _has_body(self) -> bool:
        return not self.is_head and self.status not in NO_BODY_STATUS

    def _refuse_longer_body(self, size: int, expected: int) -> None:
        """The app sends past its Content-Length: nothing of this message is written.

        Raises RuntimeError (the app may still send what fits); the client
        would read the excess as the start of the next response.
        """
        message = (f"response body longer than Content-Length: {self.sent_length} bytes sent, "
                   f"{size} more would pass the {expected} declared")
        logger.error("%s - %s; not written", self.protocol._client_text(), message)
        raise RuntimeError(message)

    def _end_short_body(self) -> None:
        """The app ended a body short of its Content-Length: close after the bytes sent.

        RFC 9112 6.3: "If a valid Content-Length header field is present
        without Transfer-Encoding, its decimal value defines the expected
        message body length in octets": the client would take the next
        response's bytes for the rest of this body, so closing is the only way
        left to end this one.
        """
        logger.error(
            "%s - response body shorter than Content-Length: %d of %d bytes sent; closing the connection",
            self.protocol._client_text(), self.sent_length, self.expected_length,
        )
        self.keep_alive = False

    async def _wait_writable(self) -> None:
        """Wait until the transport drains below its low-water mark (or the client leaves)."""
        self._drain = self.protocol.loop.create_future()
        await self._drain
        self._drain = None
