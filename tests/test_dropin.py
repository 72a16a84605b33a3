"""Switching from uvicorn is a change of command name: uvicorn's options and keywords, its log format,
and the newcomer's mistakes, each answered in one clear line. The CLI runs as a real subprocess."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import click
import httpx
import pytest
import uvicorn
import uvicorn.main
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import asgiws
from asgiws.cli import main as asgiws_main
from asgiws.config import Config, ConfigError

APPS = textwrap.dedent('''
    import asyncio, contextvars, os, sys

    # Set while the server imports the app: every request's context is a copy of the server's,
    # unless --reset-contextvars gives each one a fresh, empty context (uvicorn's mechanism).
    set_at_import = contextvars.ContextVar("set_at_import", default="unset")
    set_at_import.set("set at import")

    def log(text):
        print("app: " + text, flush=True)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    log("startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    log("shutdown")
                    if os.environ.get("HANG_SHUTDOWN"):
                        await asyncio.sleep(3600)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "text": message.get("text")})
        if scope["type"] == "http":
            version = open(os.environ["VERSION_FILE"]).read() if os.environ.get("VERSION_FILE") else "hi"
            if scope["path"] == "/context":
                body = set_at_import.get()
            else:
                body = f"{version} {scope['asgi']['version']} upgrade={dict(scope['headers']).get(b'upgrade')}"
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body.encode()})

    class Legacy:  # ASGI 2: app(scope) returns the coroutine function
        def __init__(self, scope):
            self.scope = scope

        async def __call__(self, receive, send):
            body = self.scope["asgi"]["version"].encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
''')

BROKEN = textwrap.dedent('''
    import json

    def read_settings():
        return json.loads("{not json")

    SETTINGS = read_settings()
''')

WSGI = textwrap.dedent('''
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi " + environ["PATH_INFO"].encode()]
''')


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "dropinapp.py").write_text(APPS)
    (tmp_path / "brokenapp.py").write_text(BROKEN)
    (tmp_path / "wsgiapp.py").write_text(WSGI)
    return tmp_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def asgiws_cli(app_dir, *args, env=None, timeout=30):
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "asgiws", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=app_dir, check=False)


def output_lines(text: str) -> list[str]:
    """Lines with process ids and ports replaced, so that they can be compared exactly."""
    text = re.sub(r"\[\d+\]", "[PID]", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    return [line for line in text.splitlines() if line.strip()]


@contextmanager
def serving(app_dir, *args, env=None):
    """Start asgiws (a process group of its own), wait until it serves; yield (port, process, read_log)."""
    port = free_port()
    log_path = app_dir / f"log-{port}.txt"
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "asgiws", *args, "--port", str(port)], cwd=app_dir,
                                   env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def read_log() -> str:
        return log_path.read_text()

    try:
        wait_for(lambda: "running on" in read_log() or process.poll() is not None, 20, "start-up")
        assert process.poll() is None, read_log()
        yield port, process, read_log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- every uvicorn option and keyword -----------------------------------------------------------

def _uvicorn_command() -> click.Command:
    command = uvicorn.main.main
    return command if isinstance(command, click.Command) else command.__self__  # type: ignore[union-attr]


def _sample_values(option: click.Option) -> list[list[str]]:
    """Command-line spellings of `option` in uvicorn's syntax, one per choice where it has choices."""
    name = option.opts[0]
    if option.is_flag:
        return [[name]] + [[secondary] for secondary in option.secondary_opts]
    if isinstance(option.type, click.Choice):
        return [[name, choice] for choice in option.type.choices]
    metavar = re.match(r"\[(.*)\]$", option.metavar or "")
    if metavar:
        return [[name, choice] for choice in metavar.group(1).split("|")]
    samples = {click.INT: "1", click.FLOAT: "1.5", click.BOOL: "false"}
    return [[name, samples.get(option.type, "x")]]


def _uvicorn_options() -> list[click.Option]:
    return [p for p in _uvicorn_command().params
            if isinstance(p, click.Option) and p.opts[0] not in ("--version", "--help")]


@pytest.mark.parametrize("option", _uvicorn_options(), ids=lambda option: option.opts[0])
def test_every_uvicorn_option_parses_with_uvicorns_syntax(option):
    for argv in _sample_values(option):
        ctx = asgiws_main.make_context("asgiws", ["app:app", *argv])
        assert ctx.params, argv


@pytest.mark.parametrize(("argv", "value"), [
    (["--ws-per-message-deflate", "false", "app:app"], False),   # uvicorn's form
    (["--ws-per-message-deflate", "app:app"], True),            # asgiws's bare flag still works
    (["app:app", "--ws-per-message-deflate"], True),
    (["--no-ws-per-message-deflate", "app:app"], False),
    (["app:app"], True),
])
def test_per_message_deflate_takes_uvicorns_value_and_asgiws_flags(argv, value):
    ctx = asgiws_main.make_context("asgiws", list(argv))
    assert ctx.params["app"] == "app:app"
    assert ctx.params["ws_per_message_deflate"] is value


def test_nullable_numbers_take_none():
    ctx = asgiws_main.make_context("asgiws", ["app:app", "--ws-ping-interval", "none",
                                              "--timeout-graceful-shutdown", "None"])
    assert ctx.params["ws_ping_interval"] is None
    assert ctx.params["timeout_graceful_shutdown"] is None


def test_loop_choices_of_uvicorns_help_are_offered():
    # uvicorn types --loop/--http/--ws as strings and lists the choices in the help's metavar.
    help_text = _uvicorn_command().get_help(click.Context(_uvicorn_command()))
    for flag, choices in re.findall(r"(--loop|--http|--ws) \[([\w|-]+)\]", help_text):
        for choice in choices.split("|"):
            asgiws_main.make_context("asgiws", ["app:app", flag, choice])


def test_config_takes_every_uvicorn_config_keyword_with_uvicorns_defaults():
    parameters = inspect.signature(uvicorn.Config.__init__).parameters
    keywords = {name: p.default for name, p in parameters.items() if name not in ("self", "app")}
    missing = set(keywords) - set(inspect.signature(Config).parameters)
    assert not missing, f"uvicorn.Config keywords asgiws.Config lacks: {sorted(missing)}"
    config = Config(app="app:app", **keywords)
    assert config.workers >= 1
    assert config.ssl_ciphers is None
    assert config.headers == ()


def test_run_takes_every_uvicorn_run_keyword():
    ours = inspect.signature(asgiws.run).parameters
    theirs = inspect.signature(uvicorn.run).parameters
    assert set(theirs) - set(ours) == set()
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ours if name != "app")


def test_uvicorn_keyword_forms_are_normalised():
    config = Config(app="a:b", headers=[("X-Team", "core")], reload_dirs="src",
                    forwarded_allow_ips=["10.0.0.1", "::1"], log_level=10, workers=None, app_dir=None,
                    env_file=Path("x.env"))
    assert config.headers == ("X-Team:core",)
    assert config.reload_dirs == ("src",)
    assert config.forwarded_allow_ips == "10.0.0.1,::1"
    assert config.log_level == "debug"
    assert config.env_file == "x.env"
    assert Config(h11_max_incomplete_event_size=32768).max_header_size == 32768


def test_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="^ws_max_size must be at least 1$"):
        Config(ws_max_size=0)
    with pytest.raises(ConfigError, match="^loop must be one of auto, uvloop, asyncio, zuvloop"):
        Config(loop="tornado")


def test_every_config_field_shown_by_the_cli_has_a_derived_type():
    for field in dataclasses.fields(Config):
        if field.metadata["cli"]:
            option = next(p for p in asgiws_main.params if p.name == field.name)
            assert option.type is not None


# -- newcomer mistakes: one line, the exit status, the app's lifespan left alone ------------------

def test_port_in_use_is_one_line_before_the_app_starts(app_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            result = asgiws_cli(app_dir, "dropinapp:app", "--port", str(port), "--workers", workers)
            assert result.returncode == 1
            assert output_lines(result.stderr) == [
                ("ERROR:    could not bind on 127.0.0.1:PORT: address already in use "
                 "(another process is listening there: stop it or choose another --port)")
            ]
            assert result.stdout == ""  # the app's lifespan never started


def test_host_that_is_not_this_machines_is_one_line(app_dir):
    result = asgiws_cli(app_dir, "dropinapp:app", "--host", "203.0.113.7", "--port", "8123")
    assert result.returncode == 1
    assert output_lines(result.stderr) == [
        ("ERROR:    could not bind on 203.0.113.7:8123: cannot assign requested address "
         "(--host must be an address of this machine, or 0.0.0.0 for all of them)")
    ]


def test_host_that_does_not_resolve_is_one_line(app_dir):
    result = asgiws_cli(app_dir, "dropinapp:app", "--host", "no-such-host.invalid")
    assert result.returncode == 1
    [line] = output_lines(result.stderr)
    assert line.startswith("ERROR:    could not bind on no-such-host.invalid:8000: "
                           "--host 'no-such-host.invalid' is not a known host name (")


def test_uds_in_a_missing_directory_is_one_line(app_dir):
    result = asgiws_cli(app_dir, "dropinapp:app", "--uds", "/nonexistent/dir/app.sock")
    assert result.returncode == 1
    assert output_lines(result.stderr) == [
        ("ERROR:    could not bind on /nonexistent/dir/app.sock: no such file or directory "
         "(the directory /nonexistent/dir does not exist)")
    ]


@pytest.mark.parametrize("workers", ["1", "3"])
def test_missing_tls_file_is_named_in_one_line(app_dir, workers):
    (app_dir / "key.pem").write_text("not a key")
    result = asgiws_cli(app_dir, "dropinapp:app", "--ssl-certfile", "missing.pem", "--ssl-keyfile", "key.pem",
                        "--workers", workers)
    assert result.returncode == 1
    assert output_lines(result.stderr) == [
        "ERROR:    could not load the TLS certificate or key: missing.pem: no such file or directory"
    ]
    assert result.stdout == ""


def test_tls_file_that_is_not_pem_is_named(app_dir):
    (app_dir / "cert.pem").write_text("garbage")
    result = asgiws_cli(app_dir, "dropinapp:app", "--ssl-certfile", "cert.pem")
    assert result.returncode == 1
    [line] = output_lines(result.stderr)
    assert line.startswith("ERROR:    could not load the TLS certificate or key (cert.pem): ")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_app_import_error_is_its_traceback_once_from_the_apps_frames(app_dir, workers):
    # --port 0: the two cases run side by side under xdist, and on the default port 8000 one of them
    # met "address already in use" before the import error this test is about.
    result = asgiws_cli(app_dir, "brokenapp:app", "--workers", workers, "--port", "0")
    assert result.returncode == 1
    lines = [line for line in output_lines(result.stderr) if not line.startswith(("INFO:", "DEBUG:"))]
    assert lines[:3] == [
        "ERROR:    Error importing 'brokenapp:app':",
        "Traceback (most recent call last):",
        f'  File "{app_dir / "brokenapp.py"}", line 7, in <module>',
    ]
    assert lines[-1] == "json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: " \
                        "line 1 column 2 (char 1)"
    assert result.stderr.count("Traceback") == 1
    assert "importlib" not in result.stderr and "click" not in result.stderr
    assert "asgiws/" not in result.stderr


def test_ws_max_size_zero_names_the_flag(app_dir):
    result = asgiws_cli(app_dir, "dropinapp:app", "--ws-max-size", "0")
    assert result.returncode == 2
    assert output_lines(result.stderr)[-1] == "Error: --ws-max-size must be at least 1"


def test_allowed_origin_without_scheme_is_refused_with_a_hint(app_dir):
    result = asgiws_cli(app_dir, "dropinapp:app", "--ws-allowed-origin", "*.example.com")
    assert result.returncode == 2
    assert output_lines(result.stderr)[-1] == (
        "Error: --ws-allowed-origin entry '*.example.com' has no scheme: browsers send Origin as "
        "scheme://host, e.g. https://*.example.com"
    )


def test_ws_ping_interval_none_serves(app_dir):
    with serving(app_dir, "dropinapp:app", "--ws-ping-interval", "none") as (port, _, _):
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200


def test_http2_is_one_warning_and_http11_is_served(app_dir):
    with serving(app_dir, "dropinapp:app", "--http2", "--http", "h11") as (port, _, read_log):
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        log = read_log()
    assert ("WARNING:  --http2: HTTP/2 is not supported; serving HTTP/1.1 "
            "(TLS ALPN offers http/1.1 only)\n") in log
    assert "INFO:     --http h11: asgiws serves HTTP/1.1 with its own parser on httptools\n" in log


def test_ws_none_serves_upgrade_requests_as_plain_http(app_dir):
    with serving(app_dir, "dropinapp:app", "--ws", "none") as (port, _, read_log):
        response = httpx.get(f"http://127.0.0.1:{port}/ws", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert response.status_code == 200
        assert response.text == "hi 3.0 upgrade=b'websocket'"
    expected = "INFO:     --ws none: WebSocket disabled; upgrade requests are served as plain HTTP\n"
    assert expected in read_log()


def test_ws_wsproto_uses_asgiws_own_and_says_so(app_dir):
    with serving(app_dir, "dropinapp:app", "--ws", "wsproto") as (port, _, read_log):
        async def echo():
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("x")
                return await ws.recv()
        assert asyncio.run(asyncio.wait_for(echo(), 10)) == "x"
    assert read_log().count("--ws wsproto: asgiws uses its own WebSocket implementation") == 1


def test_interface_wsgi_serves_through_a2wsgi(app_dir):
    with serving(app_dir, "wsgiapp:app", "--interface", "wsgi") as (port, _, _):
        assert httpx.get(f"http://127.0.0.1:{port}/path").text == "wsgi /path"


def test_interface_wsgi_without_the_adapter_is_one_line(app_dir, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "a2wsgi.py").write_text("raise ImportError('a2wsgi is not installed')\n")
    result = asgiws_cli(app_dir, "wsgiapp:app", "--interface", "wsgi",
                        env={"PYTHONPATH": os.pathsep.join([str(blocker), *sys.path])})
    assert result.returncode == 1
    errors = [line for line in output_lines(result.stderr) if line.startswith("ERROR")]
    assert errors == [
        "ERROR:    --interface wsgi needs a WSGI adapter: pip install 'asgiws[wsgi]' (installs a2wsgi)"
    ]


def test_asgi2_app_is_detected_and_sees_version_2(app_dir):
    with serving(app_dir, "dropinapp:Legacy") as (port, _, _):
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "2.0"


def test_reset_contextvars_runs_each_request_in_a_fresh_context(app_dir):
    with serving(app_dir, "dropinapp:app") as (port, _, _):
        assert httpx.get(f"http://127.0.0.1:{port}/context").text == "set at import"
    with serving(app_dir, "dropinapp:app", "--reset-contextvars") as (port, _, _):
        assert httpx.get(f"http://127.0.0.1:{port}/context").text == "unset"


def test_default_tls_ciphers_are_openssls_with_aead_and_no_anonymous_suites(tmp_path):
    trustme = pytest.importorskip("trustme")  # a test extra: always installed with '.[test]'
    cert = trustme.CA().issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "both.pem")
    from asgiws.sockets import create_ssl_context

    context = create_ssl_context(Config(ssl_certfile=str(tmp_path / "both.pem")))
    names = [cipher["name"] for cipher in context.get_ciphers()]
    assert any("GCM" in name for name in names) and any("CHACHA20" in name for name in names)
    assert not any(name.startswith(("AECDH", "ADH")) for name in names)


# -- log lines in uvicorn's format ------------------------------------------------------------

def test_log_lines_are_uvicorns_with_reason_phrase_and_credentials_redacted(app_dir):
    with serving(app_dir, "dropinapp:app") as (port, process, read_log):
        httpx.get(f"http://127.0.0.1:{port}/a?token=s3cret&room=1&API_KEY=k")
        httpx.get(f"http://127.0.0.1:{port}/b")
        wait_for(lambda: "/b HTTP/1.1" in read_log(), 10, "the access line")
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
    lines = output_lines(read_log())
    assert lines == [
        "INFO:     Started server process [PID]",
        "INFO:     Waiting for application startup.",
        "app: startup",
        "INFO:     Application startup complete.",
        "INFO:     Asgiws running on http://127.0.0.1:PORT (Press CTRL+C to quit)",
        'INFO:     127.0.0.1:PORT - "GET /a?token=[redacted]&room=1&API_KEY=[redacted] HTTP/1.1" 200 OK',
        'INFO:     127.0.0.1:PORT - "GET /b HTTP/1.1" 200 OK',
        "INFO:     Shutting down",
        "INFO:     Waiting for application shutdown.",
        "app: shutdown",
        "INFO:     Application shutdown complete.",
        "INFO:     Finished server process [PID]",
    ]


def test_redacted_parameters_are_configurable(app_dir):
    with serving(app_dir, "dropinapp:app", "--log-redact-query-param", "room") as (port, _, read_log):
        httpx.get(f"http://127.0.0.1:{port}/a?token=t&room=1")
        wait_for(lambda: "/a?" in read_log(), 10, "the access line")
    assert '"GET /a?token=t&room=[redacted] HTTP/1.1" 200 OK' in read_log()


def test_use_colors_colours_level_and_status(app_dir):
    with serving(app_dir, "dropinapp:app", "--use-colors") as (port, _, read_log):
        httpx.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: "GET / HTTP" in read_log(), 10, "the access line")
    log = read_log()
    assert "\x1b[32mINFO\x1b[0m:     Started server process" in log
    assert '"GET / HTTP/1.1" \x1b[32m200 OK\x1b[0m' in log
    with serving(app_dir, "dropinapp:app") as (_, _, read_log):
        pass
    assert "\x1b[" not in read_log()  # not a terminal: no colours by default


def test_workers_each_say_started_and_finished(app_dir):
    with serving(app_dir, "dropinapp:app", "--workers", "2") as (_, process, read_log):
        wait_for(lambda: read_log().count("running on") == 2, 20, "two workers")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    log = read_log()
    assert len(re.findall(r"^INFO:     Started server process \[\d+\]$", log, re.MULTILINE)) == 2
    assert len(re.findall(r"^INFO:     Finished server process \[\d+\]$", log, re.MULTILINE)) == 2
    assert "INFO:     Started parent process [" in log and "INFO:     Stopping parent process [" in log


# -- signals --------------------------------------------------------------------------------

def test_sighup_in_single_worker_mode_restarts_onto_new_code_without_refusing(app_dir):
    version = app_dir / "version.txt"
    version.write_text("v1")
    with serving(app_dir, "dropinapp:app", env={"VERSION_FILE": str(version)}) as (port, process, read_log):
        assert httpx.get(f"http://127.0.0.1:{port}/").text.startswith("v1")

        async def main() -> tuple[int | None, list[str]]:
            seen: list[str] = []
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                version.write_text("v2")
                process.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 20
                async with httpx.AsyncClient() as client:
                    while time.monotonic() < deadline and not (seen and seen[-1] == "v2"):
                        # A new connection each time: none may be refused during the restart.
                        url = f"http://127.0.0.1:{port}/"
                        response = await client.get(url, headers={"Connection": "close"})
                        seen.append(response.text.split()[0])
                        await asyncio.sleep(0.02)
                try:
                    await asyncio.wait_for(ws.recv(), 15)
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None, seen
            return None, seen

        code, seen = asyncio.run(main())
        assert code == 1012  # service restart: reconnect
        assert seen[-1] == "v2"
        assert process.poll() is None
    assert "SIGHUP: rolling restart of 1 worker(s)" in read_log()


def test_second_sigint_during_a_hung_lifespan_shutdown_forces_exit(app_dir):
    with serving(app_dir, "dropinapp:app", "--timeout-graceful-shutdown", "60",
                 env={"HANG_SHUTDOWN": "1"}) as (_, process, read_log):
        process.send_signal(signal.SIGINT)
        wait_for(lambda: "app: shutdown" in read_log(), 10, "lifespan shutdown")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 3
    lines = output_lines(read_log())
    assert "WARNING:  Second SIGINT: forcing exit" in lines
    assert "Traceback" not in read_log()


def test_second_sigterm_forces_exit_too(app_dir):
    with serving(app_dir, "dropinapp:app", "--timeout-graceful-shutdown", "60",
                 env={"HANG_SHUTDOWN": "1"}) as (_, process, read_log):
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "app: shutdown" in read_log(), 10, "lifespan shutdown")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 3
    assert "WARNING:  Second SIGTERM: forcing exit" in read_log()


def test_lifespan_shutdown_is_bounded(app_dir):
    with serving(app_dir, "dropinapp:app", "--timeout-graceful-shutdown", "1",
                 env={"HANG_SHUTDOWN": "1"}) as (_, process, read_log):
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    lines = output_lines(read_log())
    assert "ERROR:    Application shutdown did not complete within 1.0s: cancelled." in lines
    assert "Traceback" not in read_log()


def test_second_sigint_in_process_server_forces_exit(app_dir):
    # An app object is served in the calling process; the first SIGINT comes as soon as it serves
    # (a start-up race once let the shutdown end with status 0 and no "Finished" line).
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(app_dir)!r})
        os.environ["HANG_SHUTDOWN"] = "1"
        import asgiws, dropinapp
        raise SystemExit(asgiws.run(dropinapp.app, port=0, timeout_graceful_shutdown=60))
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "running on" in line:
                process.send_signal(signal.SIGINT)
            if "app: shutdown" in line:
                process.send_signal(signal.SIGINT)
                break
        code = process.wait(10)
        lines += process.stdout.readlines()
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 3, "".join(lines)
    assert lines[-2:] == [
        "WARNING:  Second SIGINT: forcing exit\n",
        f"INFO:     Finished server process [{process.pid}]\n",
    ]


def test_log_config_may_name_a_formatter_beside_the_app(app_dir):
    # The console script (not `python -m`, which puts the working directory on
    # sys.path by itself): --app-dir is on the import path before the log config
    # is read, so "()": "jsonlog.JsonFormatter" beside the app is found.
    (app_dir / "jsonlog.py").write_text(
        "import json, logging\n"
        "class JsonFormatter(logging.Formatter):\n"
        "    def format(self, record):\n"
        "        return json.dumps({'logger': record.name, 'message': record.getMessage()})\n")
    (app_dir / "log.json").write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "jsonlog.JsonFormatter"}},
        "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "loggers": {"asgiws": {"handlers": ["out"], "level": "INFO"}}}))
    script = os.path.join(os.path.dirname(sys.executable), "asgiws")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen([script, "dropinapp:app", "--port", str(free_port()), "--log-config", "log.json"],
                               cwd=app_dir, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = json.loads(process.stdout.readline())
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=15)
    assert first["logger"] == "asgiws.error" and first["message"].startswith("Started server process"), rest
    assert process.returncode == 0, rest
    assert json.loads(rest.splitlines()[-1])["message"].startswith("Finished server process"), rest
