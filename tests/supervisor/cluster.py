"""Run the real `asgiws` command with a supervisor, and look at its processes."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` every 20 ms; its first truthy result, or AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One GET on a fresh connection (Connection: close)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class Cluster:
    """One `python -m asgiws ... --workers N` process tree; its log goes to a file."""

    def __init__(self, tmp_path: Path, app: str, *args: str, port: int | None = None,
                 pass_fds: tuple[int, ...] = (), env: dict[str, str] | None = None) -> None:
        self.port = free_port() if port is None else port
        self.log_path = tmp_path / f"asgiws-{self.port}.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, **(env or {}), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "asgiws", app, "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT, pass_fds=pass_fds,
            start_new_session=True,  # its own process group, as a shell job would have
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The supervisor's live child processes (reaped ones disappear)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return []
        live = []
        for child in map(int, children):
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                live.append(child)
        return sorted(live)

    def supervisor_threads(self) -> int:
        """Threads in the supervisor process: it must stay at 1 for fork to be safe."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))

    def ready_count(self) -> int:
        return self.log().count(" is ready")

    def wait_ready(self, count: int, timeout: float = 15.0) -> None:
        wait_for(lambda: self.ready_count() >= count, timeout, f"{count} 'is ready' lines in:\n{self.log()}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in self.workers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            code = self.process.wait(5)
        self.log_file.close()
        return code


@contextlib.contextmanager
def open_files_for(connections: int, spare: int) -> Iterator[None]:
    """Client sockets by the thousand in this process: the soft RLIMIT_NOFILE raised to the hard limit.

    Fails the test when the hard limit is below `connections` + `spare`.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < connections + spare:
        pytest.fail(f"the hard open-files limit ({hard}) is too low for {connections} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

