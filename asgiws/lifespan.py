"""The ASGI lifespan protocol: startup before serving, shutdown after."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiws.config import Config
from asgiws.types import ASGIApp, Message

logger = logging.getLogger("asgiws.error")


class LifespanOn:
    """Runs the app's lifespan task and exchanges startup/shutdown events with it.

    After `startup()`, `should_exit` is True when startup failed (and, with
    --lifespan on, when the app does not support lifespan); `error` is the
    app's message.
    """

    def __init__(self, config: Config, app: ASGIApp, state: dict[str, Any]) -> None:
        self.config = config
        self.app = app
        self.state = state
        self.startup_event = asyncio.Event()
        self.shutdown_event = asyncio.Event()
        self.receive_queue: asyncio.Queue[Message] = asyncio.Queue()
        self.startup_failed = False
        self.shutdown_failed = False
        self.should_exit = False
        self.error: str = ""
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        logger.info("Waiting for application startup.")
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self.receive_queue.put({"type": "lifespan.startup"})
        await self.startup_event.wait()
        if self.startup_failed or (self.error and self.config.lifespan == "on"):
            logger.error("Application startup failed. Exiting.")
            self.should_exit = True
        elif not self.error:
            logger.info("Application startup complete.")

    async def shutdown(self) -> None:
        if self.error or self._task is None:
            return
        logger.info("Waiting for application shutdown.")
        await self.receive_queue.put({"type": "lifespan.shutdown"})
        await self.shutdown_event.wait()
        if self.shutdown_failed:
            logger.error("Application shutdown failed.")
        else:
            logger.info("Application shutdown complete.")

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self.receive, self.send)
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            if self.startup_failed or self.shutdown_failed:
                pass
            elif self.config.lifespan == "auto":
                logger.info("ASGI 'lifespan' protocol appears unsupported.")
            else:
                logger.error("Exception in 'lifespan' protocol", exc_info=exc)
                if not self.startup_event.is_set():
                    self.startup_failed = True
        finally:
            self.startup_event.set()
            self.shutdown_event.set()

    async def receive(self) -> Message:
        return await self.receive_queue.get()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.startup_event.set()
        elif kind == "lifespan.startup.failed":
            self.startup_failed = True
            self.error = message.get("message", "") or "startup failed"
            if message.get("message"):
                logger.error(message["message"])
            self.startup_event.set()
        elif kind == "lifespan.shutdown.complete":
            self.shutdown_event.set()
        elif kind == "lifespan.shutdown.failed":
            self.shutdown_failed = True
            if message.get("message"):
                logger.error(message["message"])
            self.shutdown_event.set()
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r}")
