"""The open-file limit: raised at start-up, logged near it, and past it connections refused cleanly.

Each test runs the real `asgiws` command (supervisor and one worker) under a
low RLIMIT_NOFILE set in the child before exec, and opens real WebSockets on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.rawws import RawWebSocket
from tests.supervisor.cluster import free_port, wait_for
from tests.wire import client_frame

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.supervisor.apps:app"  # WebSocket: echoes text
TEXT = 0x1


@contextlib.contextmanager
def server_under_limit(tmp_path: Path, soft: int, hard: int, *args: str) -> Iterator[tuple[int, Path, int]]:
    """`asgiws APP` started with RLIMIT_NOFILE (soft, hard); yields (port, log path, worker pid)."""
    port = free_port()
    log_path = tmp_path / "asgiws.log"
    # The limit is set by a small Python that then execs asgiws (preexec_fn is unsafe beside threads).
    under_limit = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), "
                   "int(sys.argv[2]))); os.execv(sys.executable, [sys.executable, '-m', 'asgiws', *sys.argv[3:]])")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", under_limit, str(soft), str(hard), APP, "--port", str(port), *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for(lambda: "Asgiws running on" in log_path.read_text(), 20, f"start-up in {log_path}")
        worker = wait_for(lambda: psutil.Process(process.pid).children(), 10, "the worker")[0].pid
        yield port, log_path, worker
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def soft_limit(pid: int) -> int:
    return psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)[0]


def echo(ws: RawWebSocket, text: bytes) -> bytes:
    ws.send(client_frame(TEXT, text))
    opcode, _, payload = ws.read_frame()
    assert opcode == TEXT
    return payload


def lines_with(log_path: Path, text: str) -> list[str]:
    return [line for line in log_path.read_text().splitlines() if text in line]


def test_supervisor_and_worker_raise_the_soft_limit_to_the_hard_limit(tmp_path: Path) -> None:
    with server_under_limit(tmp_path, 256, 4096, "--log-level", "debug") as (_port, log_path, worker):
        supervisor = psutil.Process(worker).ppid()
        assert soft_limit(supervisor) == 4096
        assert soft_limit(worker) == 4096
        # At debug: the supervisor raised it, and the worker inherited it already raised.
        assert len(lines_with(log_path, "Open-file limit: 4096 (raised from 256), hard limit 4096")) == 1
        assert len(lines_with(log_path, "Open-file limit: 4096, hard limit 4096")) == 1
        # 4096 covers the default --backlog 2048: no shortfall line.
        assert lines_with(log_path, "is below the") == []


def test_a_limit_below_the_backlog_is_said_once_at_info(tmp_path: Path) -> None:
    with server_under_limit(tmp_path, 1024, 1024) as (_port, log_path, worker):
        assert soft_limit(worker) == 1024
        assert lines_with(log_path, "Open-file limit: ") == []  # debug only
        said = lines_with(log_path, "Open-file limit 1024 (hard limit 1024) is below the 2112 files --backlog "
                                    "2048 needs (one per connection, 64 for the server): past it new "
                                    "connections are refused; raise it with `ulimit -n N`")
        assert len(said) == 1, log_path.read_text()  # from the supervisor, not once per worker
        assert "`LimitNOFILE=N` in a systemd unit, or `docker run --ulimit nofile=N:N`" in said[0]


def test_limit_concurrency_above_the_limit_is_named(tmp_path: Path) -> None:
    with server_under_limit(tmp_path, 4096, 4096, "--limit-concurrency", "10000") as (_, log_path, _):
        said = lines_with(log_path, "Open-file limit 4096 (hard limit 4096) is below the 10064 files "
                                    "--limit-concurrency 10000 needs")
        assert len(said) == 1, log_path.read_text()


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def open_until_refused(port: int, most: int) -> tuple[list[RawWebSocket], int]:
    """Open WebSockets until the server stops answering handshakes; (the open ones, refusals seen)."""
    opened: list[RawWebSocket] = []
    refused = 0
    for _ in range(most):
        try:
            opened.append(RawWebSocket(port, timeout=2.0))
        except (ConnectionError, TimeoutError, OSError):
            refused += 1
            if refused >= 3:
                break
    return opened, refused


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_past_the_open_file_limit_connections_are_refused_without_spinning_and_accepted_again(
    tmp_path: Path, loop: str
) -> None:
    limit = 200
    with server_under_limit(tmp_path, limit, limit, "--loop", loop) as (port, log_path, worker):
        opened, refused = open_until_refused(port, limit + 50)
        try:
            assert refused >= 1, "every connection was accepted past the open-file limit"
            assert limit - 64 < len(opened) < limit, len(opened)
            # While the limit holds, more clients keep trying: the worker must neither spin on
            # EMFILE nor crash. Generous bound on a shared machine: under half a core over 2 s.
            before = cpu_seconds(worker)
            deadline = time.monotonic() + 2.0
            attempts: list[socket.socket] = []
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    attempts.append(socket.create_connection(("127.0.0.1", port), timeout=1.0))
                time.sleep(0.05)
            spent = cpu_seconds(worker) - before
            assert spent < 1.0, f"{spent:.2f} CPU s over 2 s at the open-file limit"
            for sock in attempts:
                sock.close()
            # The connections it holds keep working.
            assert echo(opened[0], b"first") == b"first"
            assert echo(opened[-1], b"last") == b"last"
            near = lines_with(log_path, f"files of the open-file limit {limit} (RLIMIT_NOFILE)")
            assert len(near) == 1, log_path.read_text()
            assert "past it new connections are refused; raise it with `ulimit -n N`" in near[0]
            reached = wait_for(lambda: lines_with(log_path, f"Open-file limit {limit} reached"), 5,
                               f"the limit-reached line in:\n{log_path.read_text()}")
            assert len(reached) == 1, log_path.read_text()  # rate-limited, not one per refusal
            assert psutil.Process(worker).is_running()
        finally:
            for ws in opened[50:]:
                ws.sock.close()
        # Files free again: new connections are accepted (asyncio retries the listener each second).
        ws = wait_for(lambda: _try_connect(port), 15, "a connection accepted after others closed")
        assert echo(ws, b"again") == b"again"
        assert echo(opened[0], b"still") == b"still"
        for held in opened[:50]:
            held.sock.close()
        ws.sock.close()
        assert lines_with(log_path, "Traceback") == [], log_path.read_text()


def _try_connect(port: int) -> RawWebSocket | None:
    try:
        return RawWebSocket(port, timeout=2.0)
    except (ConnectionError, TimeoutError, OSError):
        return None
