"""The chat page in a real browser: Debian's headless Chromium driven by Playwright.

Never a downloaded browser: executable_path is the system's /usr/bin/chromium
(Debian package `chromium`); the Playwright Python package only drives it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from asgiws.protocols.websocket import WebSocketProtocol
from asgiws.websocket.permessage_deflate import PerMessageDeflate
from examples.chat.app import app
from tests.broadcast.conftest import free_port

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TIMEOUT_MS = 15_000


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(path) and shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (Debian package; "
                    "the Playwright Python package drives it, never a downloaded browser)")
    return path if os.path.exists(path) else str(shutil.which("chromium"))


def negotiated_extensions(server: Any, query: bytes) -> list[Any]:
    """The extensions the server agreed on for the WebSocket whose query string is `query`."""
    def look() -> list[Any]:
        for connection in server.server_state.connections:
            if isinstance(connection, WebSocketProtocol) and connection.conn is not None \
                    and connection.scope.get("query_string") == query:
                return list(connection.conn.extensions)
        return []
    return server.call(look)  # type: ignore[no-any-return]


class PythonClient:
    """A websockets client on its own loop thread (Playwright's sync API owns this thread's loop)."""

    def __init__(self, server: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ws = self._run(self._login(server))

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(15)

    async def _login(self, server: Any) -> Any:
        ws = await connect(server.url("/ws?name=py", "ws"))
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "join", "payload": {"room": "lobby"}}))
        assert json.loads(await ws.recv())["type"] == "joined"
        return ws

    def say(self, text: str) -> None:
        self._run(self.ws.send(json.dumps({"type": "message", "payload": {"room": "lobby", "text": text}})))

    def wait_for_message(self, sender: str, prefix: str) -> None:
        async def wait() -> None:
            while True:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                payload = message["payload"]
                if message["type"] == "message" and payload["from"] == sender and payload["text"].startswith(prefix):
                    return
        self._run(wait())

    def close(self) -> None:
        self._run(self.ws.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_chat_page_in_chromium_deflate_and_reconnect_after_restart(run_server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_path()
    port = free_port()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
        )
        try:
            page = context.new_page()
            log, state = page.locator("#log"), page.locator("#state")
            with run_server(app, port=port) as server:
                page.goto(server.url("/"))
                page.fill("#name", "web")
                page.click("#login button")
                expect(state).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
                page.click("#room button[name=join]")
                expect(log).to_contain_text("you joined #lobby", timeout=TIMEOUT_MS)

                # Chromium offers permessage-deflate; the server agreed to it.
                extensions = negotiated_extensions(server, b"name=web")
                assert [type(e) for e in extensions] == [PerMessageDeflate], extensions

                py = PythonClient(server)
                py.say("hi browser")
                expect(log).to_contain_text("<py> hi browser", timeout=TIMEOUT_MS)
                page.fill("#text", "hello from chromium " + "long " * 60)  # over min size: compressed
                page.click("#send button")
                # The page's message reaches the other client and, through the room, the page itself.
                py.wait_for_message("web", "hello from chromium")
                expect(log).to_contain_text("<web> hello from chromium", timeout=TIMEOUT_MS)
                py.close()
                server.server.shutdown_close_code = 1012  # what a supervisor restart sends
            # Server gone: the page saw 1012 and is backing off.
            expect(log).to_contain_text("connection closed (1012), reconnecting", timeout=TIMEOUT_MS)
            expect(state).to_have_attribute("data-state", "reconnecting", timeout=TIMEOUT_MS)

            with run_server(app, port=port) as server:
                # Reconnected by itself, and rejoined its room.
                expect(state).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
                expect(log.locator("text=you joined #lobby")).to_have_count(2, timeout=TIMEOUT_MS)

                py = PythonClient(server)
                py.say("welcome back")
                expect(log).to_contain_text("<py> welcome back", timeout=TIMEOUT_MS)
                page.fill("#text", "still here")
                page.click("#send button")
                py.wait_for_message("web", "still here")
                expect(log).to_contain_text("<web> still here", timeout=TIMEOUT_MS)
                py.close()
        finally:
            context.close()
