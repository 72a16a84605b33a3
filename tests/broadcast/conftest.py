"""A real redis-server per test on a free port (Debian: apt-get install redis-server); asgiws processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench.ports import free_port, wait_for_port  # shared with the benchmarks' scripts


class RedisServer:
    """redis-server on 127.0.0.1:port; stop() and start() keep the port.

    No persistence by default (a restart comes back empty). `appendfsync="always"`
    keeps an append-only file in `directory`, fsynced before each reply, so a
    restart after SIGKILL has every write Redis acknowledged.
    """

    def __init__(self, binary: str, port: int, directory: str | None = None,
                 appendfsync: str | None = None) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.directory = directory
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = ["--appendonly", "no"]
        if self.appendfsync is not None:
            assert self.directory is not None
            persistence = ["--appendonly", "yes", "--appendfsync", self.appendfsync, "--dir", self.directory]
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persistence, "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        """SIGKILL: Redis gets no chance to write anything more."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ServerProcess:
    """`python -m asgiws tests.broadcast.apps:app` with N workers on a free port, sharing a Redis."""

    def __init__(self, redis_url: str, workers: int = 1, *options: str) -> None:
        self.port = free_port()
        self.redis_url = redis_url
        self.workers = workers
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.output = ""

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asgiws", "tests.broadcast.apps:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers), "--broadcast-url", self.redis_url,
             "--lifespan", "off", "--no-access-log", *self.options],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port, timeout=30)

    def stop(self) -> str:
        """SIGTERM to the whole process group; returns what it printed."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.output = self.process.communicate(timeout=30)[0].decode(errors="replace")
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.output = self.process.communicate(timeout=10)[0].decode(errors="replace")
            self.process = None
        return self.output


def connected_workers(url: str) -> int:
    """How many asgiws workers hold a Redis connection (each SUBSCRIBEs to an asgiws-worker:* channel)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return len(client.pubsub_channels("asgiws-worker:*"))
    finally:
        client.close()


def wait_for_workers(url: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while connected_workers(url) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} workers connected to Redis after {timeout}s")
        time.sleep(0.05)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (Debian package)")
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_binary(), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
