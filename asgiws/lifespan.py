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
        self.abandoned = False
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
        """Send lifespan.shutdown and wait for the answer, at most timeout_graceful_shutdown seconds.

        An app that does not answer in time is cancelled (an ERROR line says so): a
        hung shutdown hook must not keep the process, or a deploy, waiting forever.
        """
        if self.error or self._task is None or self.abandoned:
            return
        logger.info("Waiting for application shutdown.")
        await self.receive_queue.put({"type": "lifespan.shutdown"})
        timeout = self.config.timeout_graceful_shutdown
        try:
            await asyncio.wait_for(self.shutdown_event.wait(), timeout)
        except asyncio.TimeoutError:
            logger.error("Application shutdown did not complete within %.1fs: cancelled.", timeout)
            self._cancel()
            return
        if self._was_abandoned():
            return
        if self.shutdown_failed:
            logger.error("Application shutdown failed.")
        else:
            logger.info("Application shutdown complete.")

    def abandon(self) -> None:
        """Stop waiting for the app (a second Ctrl+C).

        Startup then fails, shutdown returns, and the app's lifespan task is cancelled.
        """
        if self.abandoned:
            return
        self.abandoned = True
        if not self.startup_event.is_set():
            self.startup_failed = True
            self.error = self.error or "interrupted"
        self.startup_event.set()
        self.shutdown_event.set()
        self._cancel()

    def _was_abandoned(self) -> bool:
        # A method, not the attribute: abandon() may have run while shutdown() awaited.
        return self.abandoned

    def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self.receive, self.send)
            if not self.startup_event.is_set():
                self._returned_without_answering()
        except asyncio.CancelledError:
            pass  # the server stopped waiting (abandon, shutdown timeout): not an app error
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

    def _returned_without_answering(self) -> None:
        """The app returned from its lifespan scope before answering lifespan.startup.

        What `if scope["type"] != "http": return` does: the app takes no part in
        lifespan. Saying "startup complete" for it (as uvicorn does) claims a
        startup that never ran; the same lines as for an app that raises are said.
        """
        self.error = "the app returned from the lifespan scope without answering lifespan.startup"
        if self.config.lifespan == "auto":
            logger.info("ASGI 'lifespan' protocol appears unsupported.")
        else:
            logger.error("%s (--lifespan on needs an app that answers it)", self.error.capitalize())

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
