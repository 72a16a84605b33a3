"""Workers share the load: new connections spread evenly, and none is lost while a worker is replaced.

Real `asgiws --workers N` process trees on loopback, real WebSocket clients. Each client asks the
worker that accepted it for its pid (the test app answers an empty text message with os.getpid()).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.supervisor.cluster import Cluster, open_files_for, wait_for

pytestmark = pytest.mark.timeout(180)

CONNECTIONS = 2000
WORKERS = 4
# Each worker's share may differ from the mean by at most this fraction (the figure). With
# connections hashed over 4 listeners, a worker's count has a standard deviation of about 19 around
# 500, so 15% (75) is about 4 standard deviations: a fair spread passes, a pile-up never does.
TOLERANCE = 0.15
# Handshakes in flight at once while the 2,000 are opened: enough to keep every worker busy.
OPENING_CONCURRENCY = 50
# One new client every this many seconds while workers are restarted or killed.
ARRIVAL_INTERVAL = 0.004
# A connection may wait in a listener's queue while its worker is replaced (start-up, app import).
SESSION_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def enough_open_files() -> Iterator[None]:
    """2,000 client sockets in this process: raise the soft RLIMIT_NOFILE to the hard limit."""
    with open_files_for(CONNECTIONS, 500):
        yield


async def _ask_pid(ws: ClientConnection) -> int:
    await ws.send("")
    return int(await asyncio.wait_for(ws.recv(), SESSION_TIMEOUT))


async def _hold_connections(port: int, count: int) -> Counter[int]:
    """Open `count` WebSockets and keep them all open until each has said its worker's pid."""
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)
    opened: list[ClientConnection] = []

    async def one() -> int:
        async with gate:
            ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=SESSION_TIMEOUT, max_queue=4)
            opened.append(ws)
            return await _ask_pid(ws)

    try:
        pids = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 120)
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return Counter(pids)


def _spread(counts: Counter[int]) -> str:
    return " ".join(str(n) for n in sorted(counts.values(), reverse=True))


def test_2000_websockets_over_4_workers_each_within_15_percent_of_the_mean(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", str(WORKERS), "--no-access-log")
    wait_for(lambda: len(server.workers()) == WORKERS, 15, "4 workers")
    _wait_serving(server, WORKERS)
    counts = asyncio.run(_hold_connections(server.port, CONNECTIONS))
    mean = CONNECTIONS / WORKERS
    print(f"{CONNECTIONS} WebSockets over {WORKERS} workers: {_spread(counts)} (mean {mean:.0f})")
    assert sum(counts.values()) == CONNECTIONS
    assert set(counts) <= set(server.workers())
    assert len(counts) == WORKERS, counts
    for pid, count in counts.items():
        assert abs(count - mean) <= TOLERANCE * mean, f"worker {pid}: {count} of {CONNECTIONS}: {counts}"
    assert "Spreading connections over 4 listener(s), one per worker (SO_REUSEPORT)" in server.log()
    assert server.stop() == 0


def test_sigttou_hands_the_retired_listener_to_a_remaining_worker_and_sigttin_takes_it_back(cluster):
    """No listener is closed (its queue would be reset): after SIGTTOU a remaining worker accepts on it,
    so no connection hashed there waits for a worker that will never come."""
    server = cluster("tests.supervisor.apps:app", "--workers", str(WORKERS), "--no-access-log")
    server.wait_ready(WORKERS)
    server.signal(signal.SIGTTOU)
    wait_for(lambda: len(server.workers()) == WORKERS - 1, 30, f"3 workers in:\n{server.log()}")
    counts = asyncio.run(_hold_connections(server.port, 400))
    print(f"after SIGTTOU, 400 WebSockets over 3 workers and 4 listeners: {_spread(counts)}")
    assert set(counts) == set(server.workers()) and sum(counts.values()) == 400
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.workers()) == WORKERS and server.ready_count() >= WORKERS + 3, 30,
             f"4 workers again in:\n{server.log()}")
    wait_for(lambda: len(server.workers()) == WORKERS, 30, "the worker that held 2 listeners to exit")
    counts = asyncio.run(_hold_connections(server.port, 400))
    print(f"after SIGTTIN, 400 WebSockets over 4 workers: {_spread(counts)}")
    assert set(counts) == set(server.workers()) and sum(counts.values()) == 400
    assert server.stop() == 0


def _wait_serving(server: Cluster, workers: int) -> None:
    """Until `workers` different pids have answered: every worker has started accepting."""
    seen: set[int] = set()

    async def probe() -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=10) as ws:
            seen.add(await _ask_pid(ws))

    deadline = time.monotonic() + 30
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {len(seen)} workers answered:\n{server.log()}"
        asyncio.run(probe())


class Arrivals:
    """A thread opening one short WebSocket session every ARRIVAL_INTERVAL s until stopped.

    Each session connects, asks for the pid, and closes; its outcome is kept with its start time.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: list[tuple[float, str]] = []  # (start time, "ok" or what went wrong)
        self.pids: Counter[int] = Counter()
        self.longest = 0.0  # the slowest session, in seconds (one that waited in a listener's queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _session(self, started: float) -> None:
        try:
            async with connect(f"ws://127.0.0.1:{self.port}/", open_timeout=SESSION_TIMEOUT) as ws:
                self.pids[await _ask_pid(ws)] += 1
            outcome = "ok"
            self.longest = max(self.longest, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - every failure is a finding, classified below
            cause = exc.__cause__ or exc.__context__
            outcome = f"{type(exc).__name__}: {exc}" + (f" ({type(cause).__name__})" if cause else "")
        self.outcomes.append((started, outcome))

    async def _run(self) -> None:
        sessions: set[asyncio.Task[None]] = set()
        while not self._stop.is_set():
            task = asyncio.create_task(self._session(time.monotonic()))
            sessions.add(task)
            task.add_done_callback(sessions.discard)
            await asyncio.sleep(ARRIVAL_INTERVAL)
        await asyncio.wait_for(asyncio.gather(*sessions), SESSION_TIMEOUT + 10)

    def failures(self, since: float = 0.0) -> list[str]:
        return [outcome for started, outcome in self.outcomes if started >= since and outcome != "ok"]

    def __enter__(self) -> Arrivals:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(SESSION_TIMEOUT + 20)
        assert not self._thread.is_alive(), "the client sessions did not finish"


def test_rolling_restart_refuses_and_resets_no_connection(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", str(WORKERS), "--no-access-log")
    server.wait_ready(WORKERS)
    _wait_serving(server, WORKERS)
    old = set(server.workers())
    with Arrivals(server.port) as arrivals:
        wait_for(lambda: len(arrivals.outcomes) > 100, 20, "sessions before the restart")
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.ready_count() >= 2 * WORKERS, 60, f"a new generation in:\n{server.log()}")
        wait_for(lambda: not old & set(server.workers()), 60, "the old generation to exit")
        count = len(arrivals.outcomes)
        wait_for(lambda: len(arrivals.outcomes) > count + 100, 20, "sessions after the restart")
    new_pids = set(arrivals.pids) - old
    print(f"SIGHUP under {1 / ARRIVAL_INTERVAL:.0f} sessions/s: {len(arrivals.outcomes)} sessions, "
          f"failures {arrivals.failures()}, served by {len(new_pids)} new workers after, "
          f"slowest session {arrivals.longest:.2f}s")
    assert arrivals.failures() == []
    assert len(new_pids) == WORKERS
    assert server.stop() == 0


def _gone(pid: int) -> bool:
    """True once `pid` has died (a zombie waiting for its parent counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_sigkilled_worker_refuses_and_resets_no_new_connection(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", str(WORKERS), "--no-access-log")
    server.wait_ready(WORKERS)
    _wait_serving(server, WORKERS)
    victim = server.workers()[0]
    with Arrivals(server.port) as arrivals:
        wait_for(lambda: len(arrivals.outcomes) > 100, 20, "sessions before the kill")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: _gone(victim), 10, "the killed worker to die")
        dead_at = time.monotonic()
        wait_for(lambda: server.ready_count() >= WORKERS + 1, 30, f"a replacement in:\n{server.log()}")
        count = len(arrivals.outcomes)
        wait_for(lambda: len(arrivals.outcomes) > count + 100, 20, "sessions after the replacement")
    in_flight = [o for started, o in arrivals.outcomes if started < dead_at and o != "ok"]
    print(f"kill -9 under {1 / ARRIVAL_INTERVAL:.0f} sessions/s: {len(arrivals.outcomes)} sessions; "
          f"after the death {arrivals.failures(dead_at)}; in flight on the victim {in_flight}; "
          f"slowest session {arrivals.longest:.2f}s")
    assert "died (killed by SIGKILL): replacing it" in server.log()
    assert arrivals.failures(dead_at) == []
    assert server.stop() == 0
