"""The asgiws command, run as a real subprocess."""

from __future__ import annotations

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

import click
import httpx
import pytest

from asgiws.cli import main as cli_main
from asgiws.config import Config

APP = textwrap.dedent("""
    import os

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = os.environ.get("GREETING", "hello").encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def create_app():
        return app
""")


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "cliapp.py").write_text(APP)
    return tmp_path


def asgiws(*args, env=None, **kwargs):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "asgiws", *args], capture_output=True, text=True,
                          timeout=20, env=full_env, **kwargs)


@contextmanager
def running(*args, env=None):
    """Start asgiws, wait for its 'running on' line, yield (port, process, log lines)."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "asgiws", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=full_env)
    lines = []
    port = None
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "".join(lines)
        yield port, process, lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        lines.append(out or "")


def single_error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    return lines[0]


def test_missing_module_is_one_line_error():
    result = asgiws("nosuchmodule_xyz:app")
    assert result.returncode != 0
    assert single_error_line(result.stderr) == (
        'ERROR:    could not import "nosuchmodule_xyz:app": No module named \'nosuchmodule_xyz\''
    )


def test_an_app_without_its_attribute_is_one_line_error():
    result = asgiws("main")
    assert result.returncode == 1
    assert single_error_line(result.stderr) == (
        'ERROR:    import string "main" must be in format "<module>:<attribute>"'
    )


def test_missing_attribute_is_one_line_error(app_dir):
    result = asgiws("cliapp:nothere", "--app-dir", str(app_dir))
    assert result.returncode != 0
    assert 'attribute "nothere" not found' in single_error_line(result.stderr)


def test_malformed_import_string_is_one_line_error():
    result = asgiws("justamodule")
    assert result.returncode != 0
    assert "<module>:<attribute>" in single_error_line(result.stderr)


def test_port_in_use_is_one_line_error(app_dir):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = asgiws("cliapp:app", "--app-dir", str(app_dir), "--port", str(port), "--lifespan", "off")
    finally:
        holder.close()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"could not bind on 127.0.0.1:{port}" in result.stderr


def test_invalid_config_value_is_usage_error(app_dir):
    result = asgiws("cliapp:app", "--app-dir", str(app_dir), "--port", "70000")
    assert result.returncode == 2
    assert "port must be between 0 and 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_choice_is_usage_error():
    result = asgiws("x:app", "--loop", "tornado")
    assert result.returncode == 2
    assert "tornado" in result.stderr


def test_version():
    result = asgiws("--version")
    assert result.returncode == 0
    assert "0.1.0" in result.stdout


def test_every_cli_config_field_is_an_option():
    names = {param.name for param in cli_main.params if isinstance(param, click.Option)}
    import dataclasses
    for field in dataclasses.fields(Config):
        assert (field.name in names) == field.metadata["cli"], field.name


def test_port_zero_logs_real_port_and_serves(app_dir):
    with running("cliapp:app", "--app-dir", str(app_dir), "--port", "0") as (port, process, lines):
        assert port != 0
        response = httpx.get(f"http://127.0.0.1:{port}/")
        assert response.text == "hello"
        assert response.headers["server"] == "asgiws"
    # SIGINT: graceful shutdown, exit status 0.
    assert process.returncode == 0
    assert "Shutting down" in "".join(lines)


def test_sigterm_shuts_down_gracefully(app_dir):
    with running("cliapp:app", "--app-dir", str(app_dir), "--port", "0") as (_, process, lines):
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    assert process.returncode == 0
    assert "Traceback" not in "".join(lines)


def test_env_var_sets_port(app_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with running("cliapp:app", "--app-dir", str(app_dir), env={"ASGIWS_PORT": str(free)}) as (port, _, _):
        assert port == free


def test_header_and_no_server_header(app_dir):
    with running("cliapp:app", "--app-dir", str(app_dir), "--port", "0", "--header", "X-Team: core",
                 "--header", "X-Other: 2", "--no-server-header") as (port, _, _):
        response = httpx.get(f"http://127.0.0.1:{port}/")
    assert response.headers["x-team"] == "core"
    assert response.headers["x-other"] == "2"
    assert "server" not in response.headers


@pytest.mark.parametrize(("header", "reason"), [
    ("x y: 1", "the name is not an RFC 9110 token"),
    ("x-cr: a\rSet-Cookie: b", "the value b'a\\rSet-Cookie: b' contains CR, LF or NUL"),
])
def test_header_that_no_response_could_carry_is_one_line_error(app_dir, header, reason):
    result = asgiws("cliapp:app", "--app-dir", str(app_dir), "--port", "0", "--header", header)
    assert result.returncode != 0
    assert single_error_line(result.stderr) == f"ERROR:    invalid --header {header!r}: {reason}"


def test_env_file_and_factory(app_dir):
    env_file = app_dir / ".env"
    env_file.write_text("# comment\nexport GREETING='from env file'\n")
    with running("cliapp:create_app", "--factory", "--app-dir", str(app_dir), "--port", "0",
                 "--env-file", str(env_file)) as (port, _, _):
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "from env file"


def test_log_config_json(app_dir):
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "CUSTOM %(message)s"}},
        "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}},
        "loggers": {"asgiws": {"handlers": ["out"], "level": "INFO", "propagate": False}},
    }
    path = app_dir / "log.json"
    path.write_text(json.dumps(config))
    with running("cliapp:app", "--app-dir", str(app_dir), "--port", "0", "--log-config", str(path)) as (
        _, _, lines
    ):
        pass
    assert any(line.startswith("CUSTOM Asgiws running on") for line in lines)


def test_workers_without_supervisor_warns_and_serves(app_dir):
    with running("cliapp:app", "--app-dir", str(app_dir), "--port", "0", "--workers", "2") as (port, _, lines):
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
    import importlib.util
    if importlib.util.find_spec("asgiws.supervisor") is None:
        assert any("running 1 worker" in line for line in lines)


def test_run_function_serves_import_string(app_dir):
    code = "import asgiws; raise SystemExit(asgiws.run('cliapp:app', port=0, app_dir=%r))" % str(app_dir)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=full_env)
    try:
        port = None
        for _ in range(20):
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", process.stdout.readline())
            if match:
                port = int(match.group(1))
                break
        assert port
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_log_config_ini(app_dir):
    path = app_dir / "log.ini"
    path.write_text(textwrap.dedent("""
        [loggers]
        keys=root,asgiws
        [handlers]
        keys=out
        [formatters]
        keys=plain
        [logger_root]
        handlers=
        [logger_asgiws]
        handlers=out
        level=INFO
        qualname=asgiws
        propagate=0
        [handler_out]
        class=StreamHandler
        formatter=plain
        args=(sys.stdout,)
        [formatter_plain]
        format=INI %(message)s
    """))
    with running("cliapp:app", "--app-dir", str(app_dir), "--port", "0", "--log-config", str(path)) as (
        _, _, lines
    ):
        pass
    assert any(line.startswith("INI Asgiws running on") for line in lines)


def test_missing_module_with_workers_is_one_line_error():
    result = asgiws("nosuchmodule_xyz:app", "--workers", "2")
    assert result.returncode != 0
    assert "could not import \"nosuchmodule_xyz:app\"" in single_error_line(result.stderr)
