"""--reload: which files count, both watchers, and a real restart that closes WebSockets with 1012."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from asgiws.config import Config
from asgiws.reload import FileFilter, PollingScanner, Watcher, watchfiles_available
from tests.supervisor.cluster import get, wait_for

pytestmark = pytest.mark.timeout(60)

DEFAULTS = Config(app="x:y")


def make_tree(root: Path) -> None:
    for name in ("app.py", "notes.txt", ".hidden/secret.py", "pkg/mod.py", "pkg/.mod.py.swp", "venv/.x/y.py"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")


def touch(path: Path, text: str = "x = 2\n") -> None:
    path.write_text(text)
    # Make the change visible to mtime polling even on coarse-grained clocks.
    later = time.time() + 1
    os.utime(path, (later, later))


def test_filter_includes_py_and_skips_hidden_dirs_and_editor_files(tmp_path):
    make_tree(tmp_path)
    accept = FileFilter([tmp_path], DEFAULTS.reload_includes, DEFAULTS.reload_excludes)
    assert accept(tmp_path / "app.py")
    assert accept(tmp_path / "pkg/mod.py")
    assert not accept(tmp_path / "notes.txt")
    assert not accept(tmp_path / ".hidden/secret.py")
    assert not accept(tmp_path / "pkg/.mod.py.swp")
    assert not accept(tmp_path / "venv/.x/y.py")
    custom = FileFilter([tmp_path], ("*.py", "*.txt"), ("pkg",))
    assert custom(tmp_path / "notes.txt") and not custom(tmp_path / "pkg/mod.py")


def test_polling_scanner_reports_modified_added_and_removed_files(tmp_path):
    make_tree(tmp_path)
    scanner = PollingScanner(FileFilter([tmp_path], DEFAULTS.reload_includes, DEFAULTS.reload_excludes))
    assert scanner.changes() == []
    touch(tmp_path / "app.py")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden/secret.py")
    assert scanner.changes() == [(tmp_path / "app.py").resolve()]
    (tmp_path / "new.py").write_text("")
    (tmp_path / "pkg/mod.py").unlink()
    assert scanner.changes() == sorted([(tmp_path / "new.py").resolve(), (tmp_path / "pkg/mod.py").resolve()])


@pytest.mark.parametrize("use_watchfiles", [
    pytest.param(True, marks=pytest.mark.skipif(not watchfiles_available(), reason="watchfiles not installed")),
    False,
], ids=["watchfiles", "polling"])
def test_watcher_process_reports_a_change_through_its_pipe(tmp_path, use_watchfiles):
    make_tree(tmp_path)
    config = Config(app="x:y", reload=True, reload_dirs=(str(tmp_path),), reload_delay=0.05)
    watcher = Watcher(config, use_watchfiles=use_watchfiles)
    watcher.start()
    try:
        time.sleep(0.5)  # let the child take its first look
        touch(tmp_path / "notes.txt")  # not watched
        touch(tmp_path / "pkg/mod.py")
        changed: list[str] = []
        deadline = time.monotonic() + 10
        while not changed and time.monotonic() < deadline:
            select.select([watcher], [], [], 0.5)
            changed += watcher.read_changes() or []
        assert changed == [str((tmp_path / "pkg/mod.py").resolve())]
    finally:
        watcher.stop()


APP_SOURCE = '''
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": b"{version}"}})
    elif scope["type"] == "websocket":
        await receive()
        await send({{"type": "websocket.accept"}})
        while (await receive())["type"] != "websocket.disconnect":
            pass
'''


def test_reload_restarts_on_change_with_1012_and_survives_a_broken_edit(cluster, tmp_path):
    source = tmp_path / "reloadapp.py"
    source.write_text(APP_SOURCE.format(version="v1"))
    server = cluster("reloadapp:app", "--reload", "--reload-dir", str(tmp_path), "--app-dir", str(tmp_path),
                     "--reload-delay", "0.05", "--lifespan", "off")
    server.wait_ready(1)
    assert get(server.port) == (200, "v1")
    assert server.supervisor_threads() == 1  # watchfiles' thread lives in the watcher process

    async def edit_while_connected() -> int | None:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await asyncio.sleep(0.3)  # the watcher's first scan
            touch(source, APP_SOURCE.format(version="v2"))
            try:
                await asyncio.wait_for(ws.recv(), 15)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        return -1

    assert asyncio.run(edit_while_connected()) == 1012
    wait_for(lambda: get(server.port)[1] == "v2", 10, "the new code")
    assert "reloadapp.py: rolling restart" in server.log()

    touch(source, "def broken(:\n")
    wait_for(lambda: "waiting for a file change" in server.log(), 10, "the failed start")
    assert get(server.port) == (200, "v2")  # the last good code goes on serving

    touch(source, APP_SOURCE.format(version="v3"))
    wait_for(lambda: get(server.port)[1] == "v3", 10, "the fixed code")
    server.signal(signal.SIGTERM)
    assert server.process.wait(10) == 0
