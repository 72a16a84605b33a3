"""Test an app against the real asgiws server, with real clients over real sockets.

    from asgiws.testing import serve

    async def test_echo():                      # under pytest with anyio or pytest-asyncio
        async with serve(app) as server:        # lifespan startup has run; port is free
            response = await server.http.get("/health")
            async with server.websocket("/ws") as ws:
                await ws.send_text("hi")
                assert await ws.receive_text() == "hi"
            assert ws.close_code == 1000

`serve()` runs the server on the test's own event loop, on 127.0.0.1 and a
port the kernel picks, with the app's lifespan (startup before it yields,
shutdown when the block ends; a failed startup raises `StartupError`).
Everything only a server gives is there: `asgiws.broadcast`, close codes,
limits, permessage-deflate, the access log. `serve_workers()` runs several
servers on the loop that share the loop's broadcast broker, the way workers
share one Redis; `serve_in_thread()` runs `serve()` on a loop of its own for
synchronous tests with blocking clients.

The clients need the `testing` extra (`pip install 'asgiws[testing]'`): httpx
for HTTP and the websockets library for WebSocket, a client written apart from
this server's codec, so that a misreading of RFC 6455 shared by both ends
cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from asgiws.config import Config
from asgiws.server import Server, StartupError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "LiveServer",
    "StartupError",
    "WebSocketClient",
    "WebSocketClosed",
    "WebSocketRejected",
    "serve",
    "serve_in_thread",
    "serve_workers",
]

# Seconds a server may take to listen (lifespan startup included) before the
# test fails: far above the ~10 ms it takes, because test machines are shared.
START_TIMEOUT = 30.0
# Seconds past --timeout-graceful-shutdown that shutdown (lifespan shutdown
# included) may take before the server task is cancelled.
STOP_MARGIN = 10.0
# Seconds a client call waits for the server (a handshake, a message, a close)
# unless told otherwise: a test that waits for something that never comes
# fails with TimeoutError instead of hanging.
CLIENT_TIMEOUT = 10.0
# How often the start-up wait looks at Server.started, in seconds.
_START_POLL_INTERVAL = 0.005

T = TypeVar("T")

_MISSING_EXTRA = "asgiws.testing's clients need the testing extra: pip install 'asgiws[testing]'"


class WebSocketClosed(Exception):
    """The server closed the WebSocket: `code` and `reason` are what its close frame said.

    `code` is 1006 (and `reason` empty) when the connection ended without a close frame.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the server closed the WebSocket: {code} {reason!r}".rstrip())
        self.code = code
        self.reason = reason


class WebSocketRejected(Exception):
    """The server answered the opening handshake with an HTTP response instead of 101."""

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"WebSocket handshake rejected with HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers
        self.body = body


class WebSocketClient:
    """One open WebSocket to the server under test (from `LiveServer.websocket`).

    Every receive waits at most `timeout` seconds (TimeoutError past it) and
    raises WebSocketClosed once the server has closed; `close_code` and
    `close_reason` then hold what the server's close frame said.
    """

    def __init__(self, connection: Any, timeout: float) -> None:
        self._connection = connection
        self.timeout = timeout

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server accepted, or None."""
        return self._connection.subprotocol  # type: ignore[no-any-return]

    @property
    def response_headers(self) -> dict[str, str]:
        """The headers of the server's 101 response, names lower-cased."""
        return {name.lower(): value for name, value in self._connection.response.headers.raw_items()}

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame; 1006 if it closed without one; None while open."""
        received = self._connection.protocol.close_rcvd
        if received is not None:
            return int(received.code)
        return self._connection.protocol.close_code  # type: ignore[no-any-return]

    @property
    def close_reason(self) -> str | None:
        """The reason of the server's close frame ('' without one); None while open."""
        received = self._connection.protocol.close_rcvd
        if received is not None:
            return str(received.reason)
        return self._connection.protocol.close_reason  # type: ignore[no-any-return]

    async def send_text(self, data: str) -> None:
        await self._send(data, str)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(bytes(data), bytes)

    async def send_json(self, data: Any) -> None:
        """Send `data` as one text message of JSON."""
        await self._send(json.dumps(data), str)

    async def receive(self, timeout: float | None = None) -> str | bytes:
        """The next message: str for a text message, bytes for a binary one.

        Raises WebSocketClosed when the server has closed, TimeoutError after
        `timeout` seconds (default: the client's timeout) without a message.
        """
        from websockets.exceptions import ConnectionClosed

        try:
            message: str | bytes = await _within(
                self.timeout if timeout is None else timeout, "a message", self._connection.recv()
            )
        except ConnectionClosed:
            raise self._closed() from None
        return message

    async def receive_text(self, timeout: float | None = None) -> str:
        """The next message, which must be text (TypeError for a binary one); see receive()."""
        message = await self.receive(timeout)
        if not isinstance(message, str):
            raise TypeError(f"expected a text message, received {len(message)} bytes of binary")
        return message

    async def receive_bytes(self, timeout: float | None = None) -> bytes:
        """The next message, which must be binary (TypeError for a text one); see receive()."""
        message = await self.receive(timeout)
        if not isinstance(message, bytes):
            raise TypeError(f"expected a binary message, received text {message[:60]!r}")
        return message

    async def receive_json(self, timeout: float | None = None) -> Any:
        """The next message (text or binary) parsed as JSON; json.JSONDecodeError when it is not."""
        return json.loads(await self.receive(timeout))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake and wait (bounded by the timeout) for the server's answer."""
        await _within(self.timeout, "the close handshake", self._connection.close(code, reason))

    async def wait_closed(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait until the server closes (messages still unread are dropped); its (code, reason).

        Raises TimeoutError after `timeout` seconds (default: the client's timeout).
        """
        await _within(self.timeout if timeout is None else timeout, "the server to close",
                      self._connection.wait_closed())
        closed = self._closed()
        return closed.code, closed.reason

    async def _send(self, data: str | bytes, kind: type) -> None:
        from websockets.exceptions import ConnectionClosed

        if not isinstance(data, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(data).__name__}")
        try:
            await _within(self.timeout, "the send to be written", self._connection.send(data))
        except ConnectionClosed:
            raise self._closed() from None

    def _closed(self) -> WebSocketClosed:
        code = self.close_code
        return WebSocketClosed(1006 if code is None else code, self.close_reason or "")


class LiveServer:
    """A running asgiws server (what `serve()` yields).

    `port` is the bound port, `url(path, scheme)` a URL on it, `http` an
    httpx.AsyncClient with that base URL, `websocket(path)` opens a
    WebSocketClient. `server` is the asgiws Server itself: its `server_state`
    (connections, tasks) and `config` are there to look at.
    """

    def __init__(self, server: Server, task: asyncio.Task[None], client_timeout: float) -> None:
        self.server = server
        self.config = server.config
        self.server_state = server.server_state
        self.host = "127.0.0.1"
        self.port: int = server.port or 0
        self.loop = task.get_loop()
        self.client_timeout = client_timeout
        self._task = task
        self._http: httpx.AsyncClient | None = None

    def url(self, path: str = "/", scheme: str = "http") -> str:
        """`scheme://127.0.0.1:port` + path; scheme 'ws' for WebSocket URLs."""
        return f"{scheme}://{self.host}:{self.port}{path}"

    @property
    def http(self) -> httpx.AsyncClient:
        """An httpx.AsyncClient on this server (relative URLs work), closed when serve() ends."""
        if self._http is None:
            try:
                import httpx
            except ImportError:
                raise RuntimeError(_MISSING_EXTRA) from None
            self._http = httpx.AsyncClient(base_url=self.url(""), timeout=self.client_timeout)
        return self._http

    @contextlib.asynccontextmanager
    async def websocket(
        self,
        path: str = "/",
        *,
        subprotocols: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        compression: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[WebSocketClient]:
        """Open a WebSocket to `path`; closed (1000) on exit unless the server closed it first.

        `compression` offers permessage-deflate as browsers do. Raises
        WebSocketRejected when the server answers the handshake with HTTP
        (403, 404 ...), TimeoutError when it does not answer within `timeout`.
        """
        try:
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus
        except ImportError:
            raise RuntimeError(_MISSING_EXTRA) from None
        wait = self.client_timeout if timeout is None else timeout
        try:
            connection = await connect(
                self.url(path, "ws"),
                subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
                additional_headers=dict(headers or {}),
                compression="deflate" if compression else None,
                # The app under test is trusted: its messages are never too big,
                # and the server's own keep-alive pings are answered anyway.
                max_size=None,
                ping_interval=None,
                open_timeout=wait,
                close_timeout=wait,
            )
        except InvalidStatus as exc:
            response = exc.response
            headers = {name.lower(): value for name, value in response.headers.raw_items()}
            raise WebSocketRejected(response.status_code, headers, bytes(response.body or b"")) from None
        client = WebSocketClient(connection, wait)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw, blocking TCP socket to the server (for bytes no client library sends)."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def call(self, func: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run `func` on the server's loop from another thread and return its result."""

        async def run() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    async def _close_clients(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


@contextlib.asynccontextmanager
async def serve(
    app: Any,
    *,
    start_timeout: float = START_TIMEOUT,
    client_timeout: float = CLIENT_TIMEOUT,
    **config: Any,
) -> AsyncIterator[LiveServer]:
    """Run asgiws on the running event loop, on 127.0.0.1 and a free port, until the block ends.

    `app` is the ASGI app (or an import string); `config` takes any Config
    field (`ws_max_size=1024`, `broadcast_url="redis://..."`, `lifespan="off"`).
    On entry the server listens and the app's lifespan startup is complete;
    on exit connections are closed as on SIGTERM and lifespan shutdown runs.

    Raises StartupError (the server's one-line reason: the app's startup
    failure message, a bad setting, an unreachable module) when it does not
    start, TimeoutError when it takes more than `start_timeout` seconds.
    """
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
    options.update(config)
    server = Server(Config(app=app, **options))
    # The test runner keeps Ctrl-C: a server on the main thread would take SIGINT.
    server.handled_signals = ()
    task = asyncio.ensure_future(server.serve())
    try:
        await _within(start_timeout, "the server to start", _started(server, task))
    except BaseException:
        await _stop(server, task)
        raise
    if not server.started:
        await task
        raise StartupError(server.error or "the server stopped during start-up")
    live = LiveServer(server, task, client_timeout)
    try:
        yield live
    finally:
        await live._close_clients()
        await _stop(server, task)


@contextlib.asynccontextmanager
async def serve_workers(app: Any, count: int = 2, **config: Any) -> AsyncIterator[list[LiveServer]]:
    """Run `count` servers of `app` on the running loop, each on its own port, like workers.

    They share the loop's broadcast broker (in-process, or Redis with
    `broadcast_url=`), so a message published through one reaches the
    subscribers of all. Each runs its own lifespan. Takes serve()'s arguments;
    raises what serve() raises.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve(app, **config)) for _ in range(count)]


@contextlib.contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[LiveServer]:
    """serve() on an event loop of its own in a thread, for synchronous tests with blocking clients.

    The loop is uvloop unless `loop="asyncio"`. Takes and raises what serve()
    does; use `LiveServer.call()` to look at server state from the test's thread.
    """
    loop = _new_event_loop(config.get("loop", "auto"))
    started: Future[LiveServer] = Future()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with serve(app, **config) as live:
                started.set_result(live)
                stopping = asyncio.ensure_future(stop.wait())
                # Also returns when the test stops the server itself (server.should_exit).
                await asyncio.wait({stopping, live._task}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                raise

    thread = threading.Thread(target=_run_loop, args=(loop, main()), name="asgiws-test-server", daemon=True)
    thread.start()
    live = started.result(config.get("start_timeout", START_TIMEOUT) + STOP_MARGIN)
    try:
        yield live
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended between the check and the call
                loop.call_soon_threadsafe(stop.set)
        grace = live.config.timeout_graceful_shutdown  # None: no bound (uvicorn's default)
        thread.join(None if grace is None else grace + 2 * STOP_MARGIN)


def _run_loop(loop: asyncio.AbstractEventLoop, main: Any) -> None:
    try:
        loop.run_until_complete(main)
    finally:
        loop.close()


def _new_event_loop(setting: str) -> asyncio.AbstractEventLoop:
    if setting != "asyncio":
        try:
            import uvloop
        except ImportError:
            if setting == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def _started(server: Server, task: asyncio.Task[None]) -> None:
    # Server has no start-up event to wait on; it sets `started` once listening.
    while not server.started and not task.done():
        await asyncio.sleep(_START_POLL_INTERVAL)


async def _stop(server: Server, task: asyncio.Task[None]) -> None:
    """Shut the server down as on SIGTERM; cancel it if that takes longer than it should."""
    server.should_exit = True
    try:
        grace = server.config.timeout_graceful_shutdown  # None: no bound (uvicorn's default)
        await asyncio.wait_for(asyncio.shield(task), None if grace is None else grace + STOP_MARGIN)
    except asyncio.TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _within(seconds: float, what: str, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`; TimeoutError('waited N s for <what>') when it takes longer than `seconds`."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:  # not yet the builtin TimeoutError on Python 3.10
        raise TimeoutError(f"waited {seconds:g} s for {what}") from None
