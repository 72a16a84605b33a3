"""Lifespan: startup/shutdown order, state shared with requests, failures end the process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import httpx

from asgiws import Config, Server


def test_startup_and_shutdown_run_around_serving(run_server):
    events = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        events.append("request")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with run_server(app, lifespan="on") as server:
        httpx.get(server.url())
    assert events == ["lifespan.startup", "request", "lifespan.shutdown"]


def test_auto_tolerates_apps_without_lifespan(run_server):
    async def app(scope, receive, send):
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with run_server(app, lifespan="auto") as server:
        assert httpx.get(server.url()).status_code == 204


def _serve(app, **options):
    server = Server(Config(app=app, port=0, **options))
    asyncio.run(asyncio.wait_for(server.serve(), 10))
    return server


def test_startup_failed_message_stops_server():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    server = _serve(app, lifespan="auto")
    assert not server.started
    assert server.exit_code == 1
    assert "database unreachable" in server.error


def test_startup_exception_with_lifespan_on_stops_server():
    async def app(scope, receive, send):
        raise RuntimeError("no lifespan here")

    server = _serve(app, lifespan="on")
    assert not server.started
    assert server.exit_code == 1
    assert "no lifespan here" in server.error


def test_failed_startup_exits_non_zero_with_message(tmp_path):
    (tmp_path / "failapp.py").write_text(textwrap.dedent("""
        async def app(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "missing SECRET_KEY"})
    """))
    result = subprocess.run(
        [sys.executable, "-m", "asgiws", "failapp:app", "--port", "0", "--app-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode != 0
    assert "missing SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def _run_briefly(tmp_path, source, *args):
    """`asgiws app:app` on a free port, stopped with SIGTERM once it serves; its log lines and exit status."""
    (tmp_path / "ignoring.py").write_text(textwrap.dedent(source))
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "ignoring:app", "--port", "0", "--app-dir", str(tmp_path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "Press CTRL+C to quit" in line:
                process.terminate()  # serving: stop it; a failed start-up exits by itself
                break
        rest, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    return lines + rest.splitlines(), process.returncode


IGNORES_LIFESPAN = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return  # what many small apps do: no part in lifespan
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
"""


def test_an_app_that_returns_from_lifespan_is_not_said_to_have_started_up(tmp_path):
    lines, code = _run_briefly(tmp_path, IGNORES_LIFESPAN)
    assert code == 0
    assert "INFO:     ASGI 'lifespan' protocol appears unsupported." in lines
    # No startup ran, so none is claimed, and no shutdown is waited for.
    assert not [line for line in lines if "Application startup" in line or "Application shutdown" in line]


def test_an_app_that_returns_from_lifespan_fails_lifespan_on(tmp_path):
    lines, code = _run_briefly(tmp_path, IGNORES_LIFESPAN, "--lifespan", "on")
    assert code != 0
    assert ("ERROR:    The app returned from the lifespan scope without answering lifespan.startup "
            "(--lifespan on needs an app that answers it)") in lines
    assert "ERROR:    Application startup failed. Exiting." in lines
