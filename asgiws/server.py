"""One worker: the event loop's listeners, lifespan and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import random
import signal
import socket
import ssl
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import click

from asgiws import broadcast
from asgiws.broadcast.brokers import MemoryBroker
from asgiws.compat import StartupSettingError, adapt_app, compatibility_notes
from asgiws.config import Config
from asgiws.drain import close_spread_out
from asgiws.fdlimit import OpenFileWatch, log_open_file_limit, raise_open_file_limit
from asgiws.importer import ImportFromStringError, import_from_string
from asgiws.lifespan import LifespanOn
from asgiws.logging import set_redacted_query_params
from asgiws.protocols import proxy as proxy_protocol
from asgiws.protocols.common import ServerState
from asgiws.protocols.http import HttpProtocol, build_default_headers
from asgiws.protocols.tls import tls_factory
from asgiws.protocols.utils import TrustedProxies
from asgiws.protocols.websocket import WebSocketProtocol
from asgiws.sockets import bind_error, bind_sockets, create_ssl_context, tls_error
from asgiws.types import ASGIApp
from asgiws.websocket.frames import CloseCode

logger = logging.getLogger("asgiws.error")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often the drain looks whether every WebSocket has closed before --ws-drain-time is over (s).
DRAIN_POLL_INTERVAL = 0.05

# Exit statuses (README, "Exit status"): 1 the server could not start (bind, TLS, the app's import,
# lifespan startup), 2 a usage error (click), 3 a second SIGINT/SIGTERM cut the shutdown short.
STARTUP_FAILED = 1
FORCED_EXIT = 3


class StartupError(Exception):
    """The server could not start (bind failed, lifespan startup failed); str() is the reason."""


class AppImportError(StartupError):
    """The app's own module raised while being imported; str() is its traceback, from the app's frames."""


# Frames of the machinery between `asgiws APP` and the app's module: not the user's code, so an
# import error's traceback starts below them (uvicorn prints them all, 30 lines before the user's).
_MACHINERY = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(importlib.__file__),
              "<frozen importlib", os.path.dirname(click.__file__))


def app_traceback(exc: BaseException) -> str:
    """The traceback of `exc` without asgiws's, importlib's and click's frames above the app's."""
    frames = traceback.extract_tb(exc.__traceback__)
    machinery = [i for i, frame in enumerate(frames) if frame.filename.startswith(_MACHINERY)]
    keep = frames[machinery[-1] + 1:] if machinery and machinery[-1] + 1 < len(frames) else frames
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(keep)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")


class WorkerLocalBroker(MemoryBroker):
    """The in-process broker of one of N workers: the first publish says, once per worker, that the
    clients of the other workers do not get it. Apps that never publish never see the warning."""

    def __init__(self, workers: int, history_size: int, history_ttl: float) -> None:
        super().__init__(history_size, history_ttl)
        self.workers = workers
        self.warned = False

    async def publish(self, channel: str, data: str | bytes) -> str:
        if not self.warned:
            self.warned = True
            logger.warning(
                "No --broadcast-url: asgiws.broadcast messages only reach the clients of the worker "
                "that published them (%d workers). Use --broadcast-url redis://HOST:PORT to reach all.",
                self.workers,
            )
        return await super().publish(channel, data)


def load_app(config: Config) -> ASGIApp:
    """Import (and with --factory, call) the configured app, then adapt it to ASGI 3 (--interface).

    Raises ImportFromStringError (a missing module or attribute), AppImportError
    (the module raised) or StartupError, each with a message fit to print as it is.
    """
    if config.app_dir and os.path.abspath(config.app_dir) not in sys.path:
        sys.path.insert(0, os.path.abspath(config.app_dir))
    try:
        app = import_from_string(config.app)
    except ImportFromStringError:
        raise
    except Exception as exc:  # noqa: BLE001 (whatever the app's module raises is reported, not hidden)
        raise AppImportError(f"Error importing {config.app!r}:\n{app_traceback(exc)}") from None
    if config.factory:
        try:
            app = app()
        except TypeError as exc:
            raise StartupError(f"error calling the app factory: {exc}") from None
    if app is None or not callable(app):
        raise StartupError(f"{config.app!r} is not an ASGI application")
    try:
        return adapt_app(app, config)
    except StartupSettingError as exc:
        raise StartupError(str(exc)) from None


def load_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context from the ssl_* settings (asgiws.sockets); None without a certificate.

    Raises StartupError naming the file when one is missing or unreadable, the
    key does not match or its password is wrong.
    """
    try:
        return create_ssl_context(config)
    except OSError as exc:  # ssl.SSLError included
        raise StartupError(tls_error(config, exc)) from None


def bind_socket(config: Config) -> socket.socket:
    """A listening socket for host:port, --uds or --fd (asgiws.sockets).

    Raises StartupError (port in use, an address not on this machine, a --uds
    directory that does not exist).
    """
    try:
        [sock] = bind_sockets(config)
    except OSError as exc:
        raise StartupError(bind_error(config, exc)) from None
    return sock


class Server:
    """Serves one Config on the running event loop.

    `await serve()` returns after a graceful shutdown; set `should_exit` (from
    any thread) to request one. `started` becomes True once listening;
    `bound_addresses` then lists (host, port) pairs and `port` the first port.
    `shutdown_close_code` is what WebSockets are closed with (CloseCode.GOING_AWAY;
    a supervisor sets CloseCode.SERVICE_RESTART for restarts). `handled_signals` are caught
    while serving on the main thread (SIGINT, SIGTERM; a second SIGINT forces exit).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server_state = ServerState()
        self.started = False
        self.should_exit = False
        self.force_exit = False
        self.shutdown_close_code: int = CloseCode.GOING_AWAY
        self.exit_code = 0
        self.error: str | None = None
        self.sockets: list[socket.socket] = []
        self.bound_addresses: list[Any] = []  # (host, port) tuples, or paths for UNIX sockets
        self.servers: list[asyncio.AbstractServer] = []
        self.metrics_server: asyncio.AbstractServer | None = None  # --metrics-port without a supervisor
        self.lifespan: LifespanOn | None = None
        self.app: ASGIApp | None = None
        self.broker: broadcast.Broker | None = None
        # Signals serve() handles on the main thread; a supervisor's worker narrows this.
        self.handled_signals: tuple[int, ...] = HANDLED_SIGNALS
        # A supervisor's worker leaves saying start-up errors to the supervisor (said once for N workers).
        self.log_startup_error = True
        self.startup_error_is_fatal = False
        # A supervisor's worker leaves saying an open-file limit too low for the settings to the supervisor.
        self.log_file_limit_shortfall = True
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int | None:
        for address in self.bound_addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        return None

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Run serve() on a new event loop (uvloop with --loop auto when importable).

        The process's event loop policy is left alone: a program that embeds
        the server keeps the loops it had elsewhere.
        Raises ImportError for --loop uvloop without uvloop installed.
        """
        run_event_loop(lambda: self.serve(sockets=sockets), self.config.loop)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Start, serve until should_exit, shut down. On failure sets exit_code and error.

        Start-up checks what can fail without the app first (the app's import,
        TLS files, the address), so a mistake there never starts the app's
        lifespan; a failure after lifespan startup still gives it lifespan.shutdown.
        """
        self._loop = asyncio.get_running_loop()
        with self._capture_signals():
            try:
                await self._startup(sockets)
            except (StartupError, ImportFromStringError) as exc:
                self.error = str(exc)
                # Raised before lifespan startup: the app's code or a setting, the same on every try.
                self.startup_error_is_fatal = self.lifespan is None
                self.exit_code = FORCED_EXIT if self.force_exit else STARTUP_FAILED
                if self.log_startup_error and not self.force_exit:
                    logger.error("%s", exc)
                await self._close_listeners()
                if self.lifespan is not None and not self.lifespan.should_exit and not self.force_exit:
                    await self.lifespan.shutdown()
                await self._stop_broker()
                return
            if not self.should_exit:  # a signal may have come during start-up
                await self._main_loop()
            await self.shutdown()
            if self.force_exit:
                self.exit_code = self.exit_code or FORCED_EXIT
            logger.info("Finished server process [%d]", os.getpid())

    async def _startup(self, sockets: list[socket.socket] | None) -> None:
        config = self.config
        set_redacted_query_params(config.log_redact_query_params)
        log_open_file_limit(raise_open_file_limit(), config.limit_concurrency, config.backlog,
                            say_shortfall=self.log_file_limit_shortfall)
        self.app = load_app(config)
        # After the import, as uvicorn: an app that does not import gets its error alone.
        logger.info("Started server process [%d]", os.getpid())
        for note in compatibility_notes(config):
            level, _, text = note.partition(" ") if note.startswith("WARNING ") else ("INFO", "", note)
            logger.log(logging.getLevelName(level), "%s", text)
        try:
            self.server_state.default_headers = build_default_headers(config)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        ssl_context = load_ssl_context(config)
        self._owns_sockets = sockets is None
        self.sockets = list(sockets) if sockets is not None else [bind_socket(config)]
        await self._start_broker()
        if config.lifespan != "off":
            self.lifespan = LifespanOn(config, self.app, self.server_state.lifespan_state)
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                raise StartupError(f"Application startup failed: {self.lifespan.error}")
            if self.should_exit:  # a signal during lifespan startup: stop without serving
                return
        loop = asyncio.get_running_loop()
        trusted = TrustedProxies(config.forwarded_allow_ips)
        factory = proxy_protocol.connection_factory(config, functools.partial(
            HttpProtocol, config=config, server_state=self.server_state, app=self.app, loop=loop,
            trusted_proxies=trusted,
        ))
        if ssl_context is not None:
            # Our own TLS layer (protocols/tls.py), not create_server(ssl=): no 256 KiB read buffer per
            # connection, and the handshake bounded by --timeout-handshake (the loop's bound is 60 s).
            factory = tls_factory(ssl_context, factory, self.server_state, config.timeout_handshake, loop)
        for sock in self.sockets:
            try:
                server = await loop.create_server(factory, sock=sock, backlog=config.backlog)
            except OSError as exc:
                where = sock.getsockname()
                raise StartupError(f"could not serve on {where!r}: {exc.strerror or exc}") from None
            self.servers.append(server)
            for server_sock in server.sockets:
                self.bound_addresses.append(server_sock.getsockname())
        self._watch_open_files(loop)
        await self._start_metrics()
        scheme = "https" if ssl_context else "http"
        # A worker that took over another slot's listener (SIGTTOU) has two on one address: say it once.
        for address in dict.fromkeys(self.bound_addresses):
            if isinstance(address, tuple):
                host = f"[{address[0]}]" if ":" in address[0] else address[0]
                logger.info("Asgiws running on %s://%s:%d (Press CTRL+C to quit)", scheme, host, address[1])
            else:
                logger.info("Asgiws running on unix socket %s (Press CTRL+C to quit)", address)
        self.started = True

    def _watch_open_files(self, loop: asyncio.AbstractEventLoop) -> None:
        """Log when connections near the open-file limit, and asyncio's EMFILE on accept, rate-limited.

        Called once the listeners exist: the files open then are the baseline beside the connections.
        """
        watch = OpenFileWatch.for_this_process()
        self.server_state.open_files = watch
        self.server_state.watch_files_from = watch.watch_from
        previous = loop.get_exception_handler()

        def fallback(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> object:
            if previous is not None:
                return previous(loop, context)
            loop.default_exception_handler(context)
            return None

        loop.set_exception_handler(lambda loop, context: watch.loop_exception(loop, context, fallback))

    async def _start_metrics(self) -> None:
        """Serve /metrics from this process (a supervisor's workers get no metrics_port: it serves).

        Raises StartupError when the address cannot be bound.
        """
        config = self.config
        if config.metrics_port is None:
            return
        from asgiws.protocols.metrics import MetricsProtocol

        try:
            self.metrics_server = await asyncio.get_running_loop().create_server(
                MetricsProtocol, config.metrics_host, config.metrics_port)
        except OSError as exc:
            raise StartupError(f"Cannot serve metrics on {config.metrics_host}:{config.metrics_port}: "
                               f"{exc.strerror or exc}") from None
        host, port = self.metrics_server.sockets[0].getsockname()[:2]
        logger.info("Metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    async def _start_broker(self) -> None:
        """Start the --broadcast-url broker (in-process without one) and make it the loop's.

        A Redis that is down does not stop start-up: the broker reconnects by itself.
        """
        try:
            config = self.config
            broker = broadcast.create_broker(
                config.broadcast_url, config.broadcast_history_size, config.broadcast_history_ttl
            )
        except (ValueError, RuntimeError) as exc:
            raise StartupError(str(exc)) from None
        if self.config.broadcast_url is None and self.config.workers > 1:
            broker = WorkerLocalBroker(config.workers, config.broadcast_history_size, config.broadcast_history_ttl)
        await broker.start()
        self.broker = broker
        broadcast.install(asyncio.get_running_loop(), broker)

    async def _stop_broker(self) -> None:
        if self.broker is not None:
            broadcast.uninstall(asyncio.get_running_loop())
            await self.broker.stop()
            self.broker = None

    async def _main_loop(self) -> None:
        max_requests = self.config.limit_max_requests
        if max_requests is not None and self.config.limit_max_requests_jitter:
            max_requests += random.randint(0, self.config.limit_max_requests_jitter)
        while not self.should_exit:
            await asyncio.sleep(0.1)
            if max_requests is not None and self.server_state.total_requests >= max_requests:
                logger.warning("Maximum request limit of %d exceeded. Terminating process.", max_requests)
                self.should_exit = True

    async def _close_listeners(self) -> None:
        for server in self.servers:
            server.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if getattr(self, "_owns_sockets", True):
            for sock in self.sockets:
                sock.close()
        if self.config.uds and os.path.exists(self.config.uds) and self.started:
            with contextlib.suppress(OSError):
                os.unlink(self.config.uds)

    async def shutdown(self) -> None:
        """Stop listening, close connections gracefully and let app tasks end (bounded), cancel the rest.

        The bound is --timeout-graceful-shutdown, for connections and app
        tasks together: an app that cleans up after websocket.disconnect, or
        works on after its HTTP response, is not cancelled halfway through.
        """
        logger.info("Shutting down")
        for server in self.servers:
            server.close()
        await self._drain_websockets()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown(self.shutdown_close_code)
        try:
            await asyncio.wait_for(self._wait_connections_closed(), self.config.timeout_graceful_shutdown)
        except asyncio.TimeoutError:
            logger.error("Cancel %d running task(s), timeout graceful shutdown exceeded", len(state.tasks))
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Let each cancelled app run its except/finally blocks before lifespan shutdown.
            await asyncio.wait(tasks, timeout=1.0)
        await self._close_listeners()
        if self.lifespan is not None and not self.force_exit:
            await self.lifespan.shutdown()
        await self._stop_broker()

    async def _drain_websockets(self) -> None:
        """Tell the apps (asgiws.drain), keep WebSockets serving --ws-drain-time seconds, then close
        those left with shutdown_close_code spread over --ws-close-spread seconds (asgiws.drain).

        HTTP connections are told at once: the request in flight finishes, idle ones close. What is
        left after this (closing handshakes, HTTP) is shutdown()'s, within --timeout-graceful-shutdown.
        """
        config, state, code = self.config, self.server_state, self.shutdown_close_code
        state.drain.begin(config.ws_drain_time, code, config.ws_close_spread)
        if config.ws_drain_time <= 0 and config.ws_close_spread <= 0:
            return
        for connection in list(state.connections):
            if not isinstance(connection, WebSocketProtocol):
                connection.shutdown(code)
        if config.ws_drain_time > 0:
            logger.info("Draining: WebSockets keep serving for %gs", config.ws_drain_time)
        loop = asyncio.get_running_loop()
        serve_until = loop.time() + config.ws_drain_time
        while self._open_websockets() and loop.time() < serve_until and not self.force_exit:
            await asyncio.sleep(min(DRAIN_POLL_INTERVAL, max(0.0, serve_until - loop.time())))
        left = self._open_websockets()
        if not left or self.force_exit:
            return
        logger.info("Closing %d WebSocket(s) with %d over %gs", len(left), code, config.ws_close_spread)
        await close_spread_out(left, config.ws_close_spread, lambda ws: ws.shutdown(code),
                               stop=lambda: self.force_exit)

    def _open_websockets(self) -> list[WebSocketProtocol]:
        return [c for c in self.server_state.connections if isinstance(c, WebSocketProtocol)]

    async def _wait_connections_closed(self) -> None:
        """Until every connection is closed and every app task has ended (or a second signal)."""
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit:
            await asyncio.sleep(0.05)

    # -- signals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _capture_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self._handle_signal) for sig in self.handled_signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _handle_signal(self, sig: int, frame: Any) -> None:
        """First SIGINT/SIGTERM: graceful shutdown. A second: stop waiting, at any stage.

        The second one cuts short the graceful wait and lifespan shutdown, and, when
        it comes during lifespan startup or shutdown (where the app may be stuck),
        leaves at once: the user asked twice.
        """
        if not self.should_exit:
            self.should_exit = True
            return
        self.force_exit = True
        logger.warning("Second %s: forcing exit", signal.Signals(sig).name)
        lifespan, loop = self.lifespan, self._loop
        if lifespan is not None and loop is not None:
            # A signal handler runs between two bytecodes of the loop: hand the work to the loop.
            loop.call_soon_threadsafe(lifespan.abandon)


def event_loop_factory(loop_setting: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loop for --loop: uvloop's for 'uvloop', and for 'auto' when importable.

    Raises ImportError for 'uvloop' when uvloop cannot be imported.
    """
    if loop_setting == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if loop_setting == "uvloop":
            raise
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_event_loop(main: Callable[[], Coroutine[Any, Any, None]], loop_setting: str) -> None:
    """asyncio.run(main()) on a loop from event_loop_factory, without installing an event loop policy.

    Installing uvloop's policy (as this did) switched every later loop of the
    process to uvloop, the embedding program's included. Python 3.11's
    asyncio.Runner takes a loop factory; on 3.10 its steps are written out.
    Raises what main() raises, and ImportError as event_loop_factory does.
    """
    factory = event_loop_factory(loop_setting)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
        return
    loop = factory()
    try:
        asyncio.set_event_loop(loop)  # the running thread's loop, as asyncio.run sets it; not the policy
        loop.run_until_complete(main())
    finally:
        try:
            _cancel_remaining_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does after main() returns: cancel the tasks left and wait for them."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception during shutdown", "exception": task.exception(), "task": task,
            })
