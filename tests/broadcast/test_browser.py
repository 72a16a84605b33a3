"""The chat page in a real browser: Debian's headless Chromium driven by Playwright.

Never a downloaded browser: executable_path is the system's /usr/bin/chromium
(Debian package `chromium`); the Playwright Python package only drives it.
Set CHAT_SCREENSHOTS=DIR to keep the screenshots the tests take (PNG).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asgiws.protocols.websocket import WebSocketProtocol
from asgiws.websocket.permessage_deflate import PerMessageDeflate
from examples.chat.app import app
from tests.broadcast.conftest import RedisServer, free_port, wait_for_port, wait_for_workers
from tests.broadcast.test_redis import wait_for_pattern_subscribers

ROOT = Path(__file__).resolve().parents[2]

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 15_000
CLOCK = re.compile(r"\d{1,2}:\d{2}")


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(path) and shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (Debian package; "
                    "the Playwright Python package drives it, never a downloaded browser)")
    return path if os.path.exists(path) else str(shutil.which("chromium"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A Chromium context on a fresh profile; new_page() for each user."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 640},
        )
        try:
            yield context
        finally:
            context.close()


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    directory = Path(os.environ.get("CHAT_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"chat-{name}.png"))


def sign_in(context: Any, url: str, name: str) -> Any:
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(url)
    page.fill("#name", name)
    page.click("#login button")
    expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
    expect(page.locator("#room-title")).to_have_text("# lobby", timeout=TIMEOUT_MS)  # joined on connect
    return page


def expect_people(page: Any, *names: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#people li button")).to_have_text(sorted(names), timeout=TIMEOUT_MS)


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def negotiated_extensions(server: Any, query: bytes) -> list[Any]:
    """The extensions the server agreed on for the WebSocket whose query string is `query`."""
    def look() -> list[Any]:
        for connection in server.server_state.connections:
            if isinstance(connection, WebSocketProtocol) and connection.conn is not None \
                    and connection.scope.get("query_string") == query:
                return list(connection.conn.extensions)
        return []
    return server.call(look)  # type: ignore[no-any-return]


def test_three_pages_presence_own_messages_unread_and_reconnect_after_restart(
    run_server: Any, browser: Any, tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    port = free_port()
    with run_server(app, port=port) as server:
        alice = sign_in(browser, server.url("/"), "alice")
        bob = sign_in(browser, server.url("/"), "bob")
        expect_people(alice, "alice", "bob")  # alice saw bob join; bob learned alice was here
        expect_people(bob, "alice", "bob")
        carol = sign_in(browser, server.url("/"), "carol")
        for page in (alice, bob, carol):
            expect_people(page, "alice", "bob", "carol")
            expect(page.locator("#room-sub")).to_have_text("3 here", timeout=TIMEOUT_MS)
        # Chromium offers permessage-deflate; the server agreed to it.
        assert [type(e) for e in negotiated_extensions(server, b"name=alice")] == [PerMessageDeflate]

        say(alice, "hello everyone " + "long " * 60)  # over the deflate min size: compressed both ways
        mine = alice.locator(".msg.mine")
        expect(mine).to_have_count(1, timeout=TIMEOUT_MS)
        expect(mine.locator(".meta b")).to_have_text("You")
        theirs = bob.locator(".msg:not(.mine)")
        expect(theirs).to_have_count(1, timeout=TIMEOUT_MS)
        expect(theirs.locator(".meta b")).to_have_text("alice")
        assert CLOCK.search(theirs.locator(".meta").inner_text()), theirs.locator(".meta").inner_text()
        expect(theirs.locator(".body")).to_contain_text("hello everyone")

        # bob and carol open #dev; carol goes back to the lobby and gets unread counts for #dev.
        for page in (bob, carol):
            page.fill("#roomname", "dev")
            page.click("#join button")
            expect(page.locator("#room-title")).to_have_text("# dev", timeout=TIMEOUT_MS)
        expect_people(bob, "bob", "carol")
        carol.click("#rooms .room[data-room=lobby]")
        say(bob, "standup in 5")
        say(bob, "bring coffee")
        expect(carol.locator("#rooms .room[data-room=dev] .unread")).to_have_text("2", timeout=TIMEOUT_MS)
        expect(alice.locator("#rooms .room[data-room=dev]")).to_have_count(0)  # alice never joined it
        say(alice, "/msg carol psst")
        direct = carol.locator("#rooms .room[data-room='@direct'] .unread")
        expect(direct).to_have_text("1", timeout=TIMEOUT_MS)
        screenshot(carol, "1-live", tmp_path)
        carol.click("#rooms .room[data-room=dev]")
        expect(carol.locator("#rooms .room[data-room=dev] .unread")).to_have_count(0)
        expect(carol.locator("#messages .msg .body")).to_have_text(["standup in 5", "bring coffee"])
        server.server.shutdown_close_code = 1012  # what a supervisor restart sends

    # The server is gone: every page says so and counts down to its next try.
    for page in (alice, bob, carol):
        expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=TIMEOUT_MS)
    expect(carol.locator("#messages")).to_contain_text("Connection closed (1012, server restarting)")
    expect(carol.locator("#banner")).to_contain_text("Reconnecting in", timeout=TIMEOUT_MS)
    expect(carol.locator("#send")).to_be_disabled()
    screenshot(carol, "2-restarting", tmp_path)

    with run_server(app, port=port):
        # Back by themselves, in the lobby and in #dev again, and everyone listed again.
        for page in (alice, bob, carol):
            expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
        expect_people(carol, "bob", "carol")  # carol is looking at #dev
        # A new in-memory server has none of the old one's history: each page says what it could not resume.
        expect(carol.locator("#messages")).to_contain_text(
            "Could not resume #dev: some messages may be missing", timeout=TIMEOUT_MS)
        expect(alice.locator("#messages")).to_contain_text(
            "Could not resume #lobby: some messages may be missing", timeout=TIMEOUT_MS)
        carol.click("#rooms .room[data-room=lobby]")
        expect_people(carol, "alice", "bob", "carol")
        expect_people(alice, "alice", "bob", "carol")
        say(carol, "still here")
        expect(alice.locator(".msg:not(.mine) .body").last).to_have_text("still here", timeout=TIMEOUT_MS)
        expect(bob.locator("#rooms .room[data-room=lobby] .unread")).to_have_text("1", timeout=TIMEOUT_MS)
        say(bob, "back in dev")
        expect(carol.locator("#rooms .room[data-room=dev] .unread")).to_have_text("1", timeout=TIMEOUT_MS)
        screenshot(carol, "3-after-restart", tmp_path)


def test_changing_name_keeps_the_new_connection(run_server: Any, browser: Any, tmp_path: Path) -> None:
    """The old socket closes after the new one opened; its onclose must not clear the new one."""
    from playwright.sync_api import expect

    with run_server(app) as server:
        first = sign_in(browser, server.url("/"), "dave")
        other = sign_in(browser, server.url("/"), "erin")
        expect_people(other, "dave", "erin")
        first.once("dialog", lambda dialog: dialog.accept("dave2"))
        first.click("#rename")
        expect(first.locator("#me")).to_have_text("dave2", timeout=TIMEOUT_MS)
        expect(first.locator("#state")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
        expect_people(other, "dave2", "erin")  # dave's old connection left, dave2's joined
        first.wait_for_timeout(500)  # the old socket's close handshake is over by now
        say(first, "renamed")
        expect(first.locator(".msg.mine .body")).to_have_text("renamed", timeout=TIMEOUT_MS)
        expect(other.locator(".msg .meta b")).to_have_text("dave2", timeout=TIMEOUT_MS)
        expect(first.locator("#state")).to_have_attribute("data-state", "live")
        expect(first.locator("#messages")).not_to_contain_text("Not connected")


def test_two_workers_sharing_redis_list_each_others_users(
    run_server: Any, browser: Any, redis_server: RedisServer, tmp_path: Path,
) -> None:
    """Two servers, each on its own loop and broker, meet through Redis: presence is right on both."""
    from playwright.sync_api import expect

    with run_server(app, broadcast_url=redis_server.url) as one, \
            run_server(app, broadcast_url=redis_server.url) as two:
        wait_for_pattern_subscribers(redis_server.url, 2)
        ann = sign_in(browser, one.url("/"), "ann")
        ben = sign_in(browser, two.url("/"), "ben")
        expect_people(ann, "ann", "ben")
        expect_people(ben, "ann", "ben")
        say(ben, "hi from the other worker")
        expect(ann.locator(".msg .body")).to_have_text(["hi from the other worker"], timeout=TIMEOUT_MS)
        ben.close()
        expect_people(ann, "ann")
        expect(ann.locator("#messages")).to_contain_text("ben left", timeout=TIMEOUT_MS)


def test_a_message_sent_while_redis_is_down_is_kept_in_the_box_and_sent_once_it_is_back(
    run_server: Any, browser: Any, redis_server: RedisServer, tmp_path: Path,
) -> None:
    """Redis down: the publish fails, the page is told (banner, 1013), and the text is not lost."""
    from playwright.sync_api import expect

    with run_server(app, broadcast_url=redis_server.url) as server:
        wait_for_pattern_subscribers(redis_server.url, 1)
        fay = sign_in(browser, server.url("/"), "fay")
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # hung, not gone: the publish waits, then fails
        say(fay, "is anyone there?")
        messages = fay.locator("#messages")
        expect(messages).to_contain_text("chat is temporarily unavailable", timeout=TIMEOUT_MS)
        expect(messages).to_contain_text("Connection closed (1013, chat unavailable)", timeout=TIMEOUT_MS)
        expect(messages).to_contain_text("Not delivered: \u201cis anyone there?\u201d; it is back in the message box")
        expect(fay.locator("#banner")).to_contain_text("Offline (chat unavailable)", timeout=TIMEOUT_MS)
        expect(fay.locator("#text")).to_have_value("is anyone there?")
        expect(fay.locator("#send")).to_be_disabled()
        screenshot(fay, "5-redis-down", tmp_path)

        redis_server.process.send_signal(signal.SIGCONT)
        # The page's backoff grew while each try met 1013 (0.5 s doubling, at most 15 s).
        expect(fay.locator("#state")).to_have_attribute("data-state", "live", timeout=40_000)
        # The hung Redis may still run the PUBLISH it had read before SIGSTOP: then the resume delivers the
        # message after all, and the page takes it out of the box. Else it waits there, to be sent again.
        fay.wait_for_timeout(1000)
        if fay.locator("#text").input_value():
            expect(fay.locator("#text")).to_have_value("is anyone there?")
            fay.click("#send")
        else:
            expect(messages).to_contain_text("\u201cis anyone there?\u201d was delivered after all")
        expect(fay.locator(".msg.mine .body")).to_have_text(["is anyone there?"], timeout=TIMEOUT_MS)
        expect(fay.locator("#text")).to_have_value("")
        fay.wait_for_timeout(300)
        expect(fay.locator(".msg.mine")).to_have_count(1)  # delivered once

        # Redis gone: the next message fails and closes with 1013; each try after it is accepted, then
        # closed with 1013 again. The page backs off (0.5 s doubling: about 4 tries in 6 s), where resetting
        # the backoff on every open retried every 0.25-0.5 s.
        closes = fay.locator("#messages .notice", has_text="Connection closed (1013")
        before = closes.count()
        redis_server.stop()
        say(fay, "and now?")
        expect(closes).to_have_count(before + 1, timeout=TIMEOUT_MS)
        fay.wait_for_timeout(6000)
        tries = closes.count() - before
        redis_server.start()
        assert 2 <= tries <= 6, f"{tries} closes with 1013 in 6 s"
        expect(fay.locator("#text")).to_have_value("and now?")


def start_chat_process(port: int, redis_url: str) -> subprocess.Popen[bytes]:
    """The chat example served by the asgiws CLI in its own process, on `port`, broadcasting through Redis."""
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "examples.chat.app:app", "--host", "127.0.0.1", "--port", str(port),
         "--broadcast-url", redis_url, "--lifespan", "off"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_for_port(port, timeout=30)
    return process


def stop_chat_process(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM (a graceful stop: the pages get a close frame), then its output."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    return process.communicate(timeout=30)[0].decode()


def test_a_page_resumes_after_its_server_restarts_with_what_the_other_server_published(
    browser: Any, redis_server: RedisServer, tmp_path: Path,
) -> None:
    """Two server processes, one Redis: what B publishes while A is down reaches A's page once, in order."""
    from playwright.sync_api import expect

    port_a, port_b = free_port(), free_port()
    server_a = start_chat_process(port_a, redis_server.url)
    server_b = start_chat_process(port_b, redis_server.url)
    try:
        wait_for_workers(redis_server.url, 2)
        alice = sign_in(browser, f"http://127.0.0.1:{port_a}/", "alice")
        bob = sign_in(browser, f"http://127.0.0.1:{port_b}/", "bob")
        for page in (alice, bob):
            expect_people(page, "alice", "bob")
        say(alice, "before the restart")
        expect(bob.locator(".msg .body")).to_have_text(["before the restart"], timeout=TIMEOUT_MS)

        stop_chat_process(server_a)
        expect(alice.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=TIMEOUT_MS)
        expect_people(bob, "bob")  # alice's connection left with its server
        missed = [f"while you were away {n}" for n in range(1, 6)]
        for text in missed:
            say(bob, text)
        expect(bob.locator(".msg.mine .body")).to_have_text(missed, timeout=TIMEOUT_MS)

        server_a = start_chat_process(port_a, redis_server.url)
        # The page's backoff may have grown while A was down (0.5 s doubling, at most 15 s).
        expect(alice.locator("#state")).to_have_attribute("data-state", "live", timeout=40_000)
        bodies = alice.locator("#messages .msg .body")
        expect(bodies).to_have_text(["before the restart", *missed], timeout=TIMEOUT_MS)  # none missing or twice
        expect(alice.locator("#messages")).not_to_contain_text("Could not resume")
        expect(alice.locator(".msg.mine .body")).to_have_text(["before the restart"])  # own, from before
        for page in (alice, bob):
            expect_people(page, "alice", "bob")
        say(bob, "welcome back")
        expect(bodies).to_have_text(["before the restart", *missed, "welcome back"], timeout=TIMEOUT_MS)
        alice.wait_for_timeout(300)  # nothing late arrives twice
        expect(bodies).to_have_count(len(missed) + 2)
        screenshot(alice, "4-resumed-on-restarted-server", tmp_path)
    finally:
        outputs = [stop_chat_process(server) for server in (server_a, server_b)]
    for output in outputs:
        assert "Traceback" not in output, output
