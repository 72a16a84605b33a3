"""The asyncio side of a WebSocket connection: transport work only.

The HTTP protocol parses the upgrade request once and hands the transport, the
scope and any bytes that followed the request head to `WebSocketProtocol.take_over`.
Every decision about the connection's lifecycle is the sans-I/O session's
(`asgiws.asgi.websocket.WebSocketSession`); this module feeds it bytes, writes
what it produces (closing the transport when its output says so, in one
place: `_write_out`), arms one timer for its deadlines and one for the
heartbeat, applies flow control both ways, reads large frames in place
(`_PayloadReader`) and writes broadcast messages (`deliver_prepared`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from asgiws.asgi.websocket import SEND_EOF, SEND_HALF_CLOSE, State, WebSocketSession
from asgiws.broadcast import SCOPE_EXTENSION, broker_for
from asgiws.broadcast.prepared import PreparedMessage
from asgiws.config import Config
from asgiws.exceptions import ClientDisconnected
from asgiws.logging import log_access, log_websocket_close
from asgiws.protocols.common import ServerState
from asgiws.protocols.heartbeat import PingWheel
from asgiws.types import ASGIApp, Message, Scope
from asgiws.websocket import CloseCode, ServerConnection

__all__ = ["WebSocketProtocol"]

logger = logging.getLogger("asgiws.error")

_OPEN = State.OPEN

# Broadcast frames queued in one loop iteration are joined into one write (one
# system call) up to this many bytes; past it a copy costs more than it saves.
_JOIN_WRITES_LIMIT = 64 * 1024
# Frames the codec produced in one go are joined when each is at most this
# big (a frame's header and payload are already one chunk up to 4 KiB).
_JOIN_CHUNK_LIMIT = 4096
# What a read after a large frame's payload takes at most (see _PayloadReader): the frame's
# tail (up to 4 KiB) and the next frame's header, with as little of its payload as it can.
_FOLLOWING_READ = 16 * 1024
# What one read into a payload takes at most: the unmask that follows finds it still in the
# core's cache (a 1 MiB read left it to memory: unmasking took 8.2% of a 1 MiB echo's server
# time, 4.4% so, by perf; uvloop's own reads are this size).
_PAYLOAD_READ = 256 * 1024


class _PayloadReader(asyncio.BufferedProtocol):
    """On the transport while large binary frames are read.

    Reads go straight into the bytes object the app will receive
    (`ServerConnection.payload_buffer`): no copy of the payload in Python,
    no read-sized bytes objects. A frame's last few KiB, and what follows,
    come through reads of at most _FOLLOWING_READ bytes into the worker's
    shared buffer, given to data_received. It stays on the transport until
    a read begins a frame that is not large: a client sending large messages
    sends the next one soon (an echo, after its answer), and a whole read by
    data_received (256 KiB) brought that frame's first quarter MiB through
    two copies, the read's bytes object and then its place in the payload.
    A read that only brings the rest of the large frame (its tail, in one
    read or several, as the kernel cut it) begins no frame.
    """

    __slots__ = ("following", "reading_following", "ws")

    def __init__(self, ws: WebSocketProtocol) -> None:
        self.ws = ws
        self.following = memoryview(ws.server_state.read_buffer)[:_FOLLOWING_READ]
        self.reading_following = False  # the read under way is into `following`

    def get_buffer(self, sizehint: int) -> memoryview:
        conn = self.ws.session.conn
        view = conn.payload_buffer() if conn is not None else None
        if view is not None:
            return view[:_PAYLOAD_READ]
        self.reading_following = True
        return self.following

    def buffer_updated(self, nbytes: int) -> None:
        ws = self.ws
        if not self.reading_following:
            ws.payload_received(nbytes)
            return
        self.reading_following = False
        conn = ws.session.conn
        within_frame = conn is not None and conn.frame_remaining >= nbytes
        ws.data_received(bytes(self.following[:nbytes]))
        conn = ws.session.conn
        if not within_frame and (conn is None or not conn.payload_pending):
            ws.read_normally()  # this read began a frame, and not a large one

    def eof_received(self) -> bool | None:
        return self.ws.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self.ws.pause_writing()

    def resume_writing(self) -> None:
        self.ws.resume_writing()


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection's transport, from the upgrade request to the closed transport."""

    # One per open WebSocket, idle ones by the thousand: slots instead of a
    # __dict__ save ~1.2 KiB each (the memory benchmark's per-connection figure).
    __slots__ = (
        "_drain_waiter",
        "_fragmented_send",
        "_held_broadcasts",
        "_held_bytes",
        "_max_queue",
        "_next_ping_at",
        "_ping_slot",
        "_payload_reader",
        "_reading_paused",
        "_resume_queue",
        "_timer",
        "_timer_deadline",
        "_waiter",
        "_writing_paused",
        "app",
        "client_ip",
        "config",
        "loop",
        "on_connection_lost",
        "scope",
        "server_state",
        "session",
        "task",
        "transport",
    )

    def __init__(self, *, config: Config, server_state: ServerState, app: ASGIApp,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.server_state = server_state
        self.app = app
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.scope: Scope = {}
        self.client_ip: str | None = None
        self.session: WebSocketSession = None  # type: ignore[assignment]  # created in take_over
        self.task: asyncio.Task[None] | None = None
        # The app waiting in receive() for a message.
        self._waiter: asyncio.Future[Message] | None = None
        # The one timer for the session's deadlines (close handshake, pong), and when it fires.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._ping_slot: int | None = None  # this connection's slot in the worker's PingWheel
        self._next_ping_at: float | None = None  # loop clock; set when the connection opens
        self._reading_paused = False
        self._writing_paused = False
        self._payload_reader: _PayloadReader | None = None  # on the transport instead of self
        self._drain_waiter: asyncio.Future[None] | None = None
        # Reading pauses when --ws-max-queue messages wait for the app and
        # resumes once a quarter of that is left (hysteresis, as websockets'
        # max_queue high/low water marks): not a pause and a resume per message.
        self._max_queue = config.ws_max_queue
        self._resume_queue = config.ws_max_queue // 4
        # Broadcasts that arrive while a fragmented message is being sent (else None).
        self._held_broadcasts: list[PreparedMessage] | None = None
        self._held_bytes = 0
        # Set while a large message goes out in fragments; other sends wait for it.
        self._fragmented_send: asyncio.Future[None] | None = None
        # Set by the broadcast hub on first subscribe: leaves every channel.
        self.on_connection_lost: Callable[[WebSocketProtocol], None] | None = None

    @property
    def conn(self) -> ServerConnection | None:
        """The codec connection once accepted, else None (what broadcast subscribers check)."""
        return self.session.conn

    # -- hand-off from HTTP ----------------------------------------------------------

    def take_over(self, transport: asyncio.Transport, scope: Scope, method: str, trailing_data: bytes) -> None:
        """Adopt an upgraded transport and validate the opening handshake.

        Invalid upgrades are answered here (400, 426 or 403) and the app is
        never called; a valid one starts the app with `websocket.connect` waiting.
        """
        previous = transport.get_protocol()
        self.transport = transport
        transport.set_protocol(self)
        self.server_state.hand_over(previous, self)  # type: ignore[arg-type]
        # The per-IP count is of the address HttpProtocol counted (the TCP peer, or
        # the client a PROXY protocol header named), never X-Forwarded-For's.
        self.client_ip = getattr(previous, "client_ip", None)
        self.scope = scope
        session = self.session = WebSocketSession(
            self.config, scope, method, default_headers=self.server_state.default_headers, clock=self.loop.time,
            log_access=log_access, log_close=log_websocket_close,
        )
        if session.state is State.CLOSED:  # refused by the handshake checks
            self._sync()
            return
        if trailing_data:
            session.receive_data(trailing_data)  # kept until accept
        broker = broker_for(self.loop)
        if broker is not None:
            scope["extensions"][SCOPE_EXTENSION] = {"broker": broker, "connection": self}
        self.task = self.loop.create_task(self._run_app())
        self.server_state.tasks.add(self.task)
        self.task.add_done_callback(self.server_state.tasks.discard)
        self.task.add_done_callback(self._release_scope)

    def _release_scope(self, task: asyncio.Task[None]) -> None:
        # The scope's broadcast entry points back at this protocol: a reference
        # cycle that only the cyclic GC would free, late, with the codec's zlib
        # state (tens of KiB per connection) held until then. The app is done.
        self.scope.get("extensions", {}).pop(SCOPE_EXTENSION, None)

    # -- asyncio.Protocol ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        session = self.session
        chunks = session.receive_data(data)
        if chunks:
            self._write_out(chunks)
        if session.state is not _OPEN:
            # Closing, closed or not accepted yet: deadlines, a waiting app.
            self._sync()
            return
        messages = session.messages
        if messages:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                self._waiter = None
                waiter.set_result(messages.popleft())
            if len(messages) >= self._max_queue:
                self._pause_reading()
        conn = session.conn
        if conn is not None and conn.payload_pending:
            # A large binary frame began: read the rest of it in place.
            self._read_in_place()

    def _read_in_place(self) -> None:
        if self._payload_reader is None and not self.transport.is_closing():
            self._payload_reader = _PayloadReader(self)
            self.transport.set_protocol(self._payload_reader)

    def read_normally(self) -> None:
        """Take the transport back from the _PayloadReader: reads come to data_received."""
        self._payload_reader = None
        self.transport.set_protocol(self)

    def payload_received(self, nbytes: int) -> None:
        """`nbytes` of a large frame's payload were read in place (see _PayloadReader).

        Never the frame's end: its last bytes, and what follows, come to data_received."""
        session = self.session
        session.payload_received(nbytes)
        if session.state is not _OPEN:
            self._sync()

    def eof_received(self) -> bool | None:
        self.session.receive_eof()
        self._sync()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.remove_connection(self, self.client_ip)
        if self.on_connection_lost is not None:
            self.on_connection_lost(self)
            self.on_connection_lost = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._ping_slot is not None:
            self._ping_wheel().cancel(self, self._ping_slot)
            self._ping_slot = None
        session = self.session
        session.connection_lost()
        session.data_to_send()  # nowhere to write it
        self._wake_waiter()
        self._wake_drain_waiter()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading from it too, so that pongs
        # and echoes cannot pile up in the write buffer (ping-flood defence).
        self._writing_paused = self.session.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = self.session.writing_paused = False
        self._wake_drain_waiter()
        if len(self.session.messages) <= self._resume_queue:
            self._resume_reading()

    # -- the session's output, deadlines and waiting app ---------------------------------

    def _sync(self) -> None:
        """After anything but the hot path: wake the app, write the session's output, re-arm its timer."""
        session = self.session
        if self._waiter is not None:
            self._wake_waiter()  # may apply a close that waited behind messages: before the writes
        chunks = session.data_to_send()
        if chunks:
            self._write_out(chunks)
        # Open, a pong deadline is the ping wheel's (on_heartbeat); closing, the loop timer has both.
        deadline = session.close_deadline() if session.state is _OPEN else session.deadline()
        if deadline != self._timer_deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_deadline = deadline
            self._timer = None if deadline is None else self.loop.call_at(deadline, self._on_timer)
        if session.state is _OPEN:
            if self._ping_slot is None:
                self._schedule_ping()
            conn = session.conn
            if conn is not None and conn.payload_pending:
                self._read_in_place()
            if len(session.messages) >= self._max_queue:
                self._pause_reading()

    def _wake_waiter(self) -> None:
        """Give the app waiting in receive() its next message, if there is one now."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        message = self.session.next_message()
        if message is not None:
            self._waiter = None
            waiter.set_result(message)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self.session.on_timeout(self.loop.time())
        self._sync()

    def _schedule_ping(self) -> None:
        """Take a slot in the wheel: at the next ping, or the pong deadline if that comes first."""
        interval = self.config.ws_ping_interval
        if not interval:
            return
        wheel = self._ping_wheel()
        at = self._next_ping_at
        if at is None:
            at = self._next_ping_at = self.loop.time() + interval
        pong = self.session.pong_deadline()
        self._ping_slot = wheel.schedule(self, at if pong is None or at <= pong else pong)

    def _ping_wheel(self) -> PingWheel:
        """The worker's one timer for every connection's pings (made by its first WebSocket)."""
        wheel = self.server_state.ping_wheel
        if wheel is None:
            assert self.config.ws_ping_interval
            wheel = self.server_state.ping_wheel = PingWheel(self.loop, self.config.ws_ping_interval)
        return wheel

    def on_heartbeat(self, due: float) -> None:
        """The wheel's call: this connection's ping or its pong deadline is due."""
        self._ping_slot = None
        session = self.session
        if session.state is _OPEN:
            now = max(self.loop.time(), due)  # the loop may wake a hair before the slot's time
            pong = session.pong_deadline()
            if pong is not None and now >= pong:
                session.on_timeout(now)  # no pong in time: closes 1011
            else:
                next_ping = self._next_ping_at
                if next_ping is not None and now >= next_ping:
                    session.ping(now)
                    self._next_ping_at = now + self._ping_wheel().interval
        self._sync()  # writes the ping or the close, and takes the next slot while open

    # -- ASGI receive / send ------------------------------------------------------------

    async def receive(self) -> Message:
        session = self.session
        messages = session.messages
        if messages:
            message = messages.popleft()
            if self._reading_paused and not self._writing_paused and len(messages) <= self._resume_queue:
                self._resume_reading()
            return message
        if session.state is not _OPEN:
            # Open with nothing queued, the app waits (the echo's every
            # receive); any other state may have its disconnect message.
            next_message = session.next_message()
            if next_message is not None:
                self._sync()  # reaching the client's close behind messages answered it
                return next_message
        waiter: asyncio.Future[Message] = self.loop.create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None

    async def send(self, message: Message) -> None:
        if self._fragmented_send is not None:
            await self._after_fragments()
        session = self.session
        handler = session.send_handlers.get(message["type"])
        if handler is None:
            session.refuse(message)
        frame = handler(session, message)
        if frame:
            self.transport.write(frame)  # a short text frame, nothing backed up: _write_chunks inlined
        elif frame is None:
            self._sync()
            if self._writing_paused and session.can_send:
                await self._drain()  # a websocket.send queued behind a backlog; not after a close
        else:  # SEND_IN_FRAGMENTS (the markers are empty, so never a frame to write)
            await self._send_fragmented(message)

    async def _after_fragments(self) -> None:
        while self._fragmented_send is not None:
            # 5.4: another task's fragmented message is going out; no data
            # frame may come between its frames.
            await self._fragmented_send

    async def _send_fragmented(self, message: Message) -> None:
        """A large message one frame per loop step, so its encoding never stalls other connections."""
        self._held_broadcasts = []
        self._held_bytes = 0
        done = self._fragmented_send = self.loop.create_future()
        try:
            for _ in self.session.send_fragments(message):
                self._sync()
                if self._writing_paused:
                    await self._drain()
                else:
                    await asyncio.sleep(0)
            self._sync()
        finally:
            self._fragmented_send = None
            done.set_result(None)
            held, self._held_broadcasts = self._held_broadcasts, None
            if held:
                self.deliver_prepared(held)

    # -- the app task ---------------------------------------------------------------------

    async def _run_app(self) -> None:
        outcome = "returned"
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException as exc:
            logger.error("Exception in ASGI application", exc_info=exc)
            outcome = "raised"
        finally:
            self.session.app_finished(outcome)
            if not self.transport.is_closing():
                self._sync()

    # -- shutdown (the Connection contract) --------------------------------------------------

    def shutdown(self, close_code: int, reason: str = "") -> None:
        self.session.shutdown(close_code, reason)
        self._sync()

    # -- writing ------------------------------------------------------------------------------

    def deliver_prepared(self, messages: list[PreparedMessage]) -> bool:
        """Write broadcast messages, framed once for many connections, in one write.

        No app task is involved. Returns False when the connection is not open
        (not accepted yet, or closing); the send-queue bound applies as for
        the app's own sends.
        """
        session = self.session
        if not session.can_send or self.transport.is_closing():
            return False
        if self._held_broadcasts is not None:
            # 5.4: no other data frame may come between the frames of the
            # fragmented message being sent; these follow it, and count
            # against the same send-queue bound as bytes already written.
            self._held_broadcasts.extend(messages)
            self._held_bytes += sum(len(message.payload) for message in messages)
            if self._held_bytes + self.transport.get_write_buffer_size() > self.config.ws_max_send_queue:
                self._drop_slow_client()
            return True
        conn = session.conn
        assert conn is not None
        extensions = conn.extensions
        session.tally.messages_sent += len(messages)
        if len(messages) == 1:
            chunks = messages[0].chunks_for(extensions)
        else:
            chunks = [chunk for message in messages for chunk in message.chunks_for(extensions)]
        size = 0
        for chunk in chunks:
            size += len(chunk)
        session.tally.bytes_sent += size
        if len(chunks) > 1 and size <= _JOIN_WRITES_LIMIT:
            chunks = [b"".join(chunks)]
        self._write_chunks(chunks)
        return True

    def _write_out(self, chunks: list[bytes]) -> None:
        """Write the session's output; its last item may say to end the stream."""
        last = chunks[-1]
        if last is SEND_EOF or last is SEND_HALF_CLOSE:
            del chunks[-1]
            if chunks and not self.transport.is_closing():
                self._write_chunks(chunks)
            if last is SEND_EOF:
                self.transport.close()  # the one place this protocol closes its transport
            elif self.transport.can_write_eof() and not self.transport.is_closing():
                self.transport.write_eof()
            return
        if not self.transport.is_closing():
            self._write_chunks(chunks)

    def _write_chunks(self, chunks: list[bytes]) -> None:
        # The bound is for bytes piled onto a backlog the client is not
        # draining; one large message written to a drained transport is
        # bounded by ws_max_size and the sender then waits for the drain.
        backlogged = self._writing_paused
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        elif len(chunks) > 2 and max(map(len, chunks)) <= _JOIN_CHUNK_LIMIT:
            # Many small frames from one read (pongs to a burst of pings):
            # one buffer instead of thousands of small objects held by the
            # transport while the client is not reading.
            self.transport.write(b"".join(chunks))
        else:
            self.transport.writelines(chunks)
        if backlogged and self.transport.get_write_buffer_size() > self.config.ws_max_send_queue:
            self._drop_slow_client()

    def _drop_slow_client(self) -> None:
        """Past --ws-max-send-queue: drop the client instead of buffering without bound.

        No close frame: it would queue behind the backlog the client is not
        reading. The app sees 1008 (policy violation).
        """
        if self.transport.is_closing():
            return
        logger.warning("WebSocket client %s is not reading; send queue over %d bytes, closing",
                       self.session._client_text(), self.config.ws_max_send_queue)
        self.session.abandon(CloseCode.POLICY_VIOLATION, "send queue full")
        self.session.data_to_send()  # nothing more is written to this client
        self.transport.abort()
        self._wake_waiter()

    async def _drain(self) -> None:
        """Wait until the client reads again. Every concurrent sender waits on one future."""
        if self.transport.is_closing():
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self.loop.create_future()
        await waiter

    def _wake_drain_waiter(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
