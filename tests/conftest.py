"""Shared fixtures: a real asgiws server on an ephemeral port in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from asgiws import Config, Server


class RunningServer:
    """What `run_server` yields: the Server, its port and loop, and a URL helper."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.port: int = server.port  # type: ignore[assignment]
        self.host = "127.0.0.1"
        self.config = server.config
        self.server_state = server.server_state

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A raw TCP socket to the server."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return sock

    def call(self, func: Callable[[], Any]) -> Any:
        """Run func on the server's loop thread and return its result."""
        done: Any = asyncio.run_coroutine_threadsafe(_call(func), self.loop)
        return done.result(5)


async def _call(func: Callable[[], Any]) -> Any:
    return func()


@contextlib.contextmanager
def serve_in_thread(app: Any, **overrides: Any) -> Iterator[RunningServer]:
    """Start Server(Config(app=app, host=127.0.0.1, port=0, **overrides)) and stop it on exit.

    Raises RuntimeError when the server fails to start (the server's error text).
    """
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "lifespan": "off"}
    options.update(overrides)
    server = Server(Config(app=app, **options))
    loop = uvloop.new_event_loop() if server.config.loop != "asyncio" else asyncio.new_event_loop()
    ready = threading.Event()

    async def main() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.005)
        ready.set()
        await task

    def target() -> None:
        try:
            loop.run_until_complete(main())
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ready.wait(10)
    if not server.started:
        thread.join(10)
        raise RuntimeError(f"server did not start: {server.error}")
    try:
        yield RunningServer(server, loop)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def run_server() -> Callable[..., contextlib.AbstractContextManager[RunningServer]]:
    """`with run_server(app, **config_overrides) as server: server.port`."""
    return serve_in_thread
