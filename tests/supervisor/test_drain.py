"""Drain on deploy: WebSockets keep serving, the app is told, then the closes are spread out.

Real `asgiws --workers N` process trees on loopback, real `websockets` clients in this process. The
test app (tests.supervisor.apps:drain_app) sends "draining <code> <seconds left>" when asgiws.drain
is set. Times are CLOCK_MONOTONIC, which this process and the workers share.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from tests.supervisor.cluster import Cluster, free_port, get, open_files_for, wait_for
from tests.supervisor.test_balance import Arrivals, _wait_serving

pytestmark = pytest.mark.timeout(240)

APP = "tests.supervisor.apps:drain_app"
CONNECTIONS = 2000
WORKERS = 2
DRAIN_TIME = 1.0
CLOSE_SPREAD = 2.0
# Handshakes in flight at once while the 2,000 are opened.
OPENING_CONCURRENCY = 50
# A loaded machine (2 cores, other test runs) delays reads: every wait is generous.
SESSION_TIMEOUT = 60.0
# Bunching, on the server's own close times (the app's websocket.disconnect, which asgiws gives as it
# sends the close frame): an even spread puts a tenth of the closes in each tenth of the window, all at
# once puts them all in one. The bound is a quarter; a worker stalled by a loaded machine closes
# what fell due meanwhile at once, hence a third. And the middle 80% of the closes must cover at least
# half the spread (an even spread: 80% of it; all at once: nothing). The clients' own view is printed
# only: a client process stalled for seconds at a load average of 17 read 2,000 closes within 0.6 s.
MOST_IN_A_TENTH = 1 / 3
MIDDLE_80_AT_LEAST = 0.5


@pytest.fixture(autouse=True)
def enough_open_files() -> Iterator[None]:
    """2,000 client sockets in this process: raise the soft RLIMIT_NOFILE to the hard limit."""
    with open_files_for(CONNECTIONS, 1000):
        yield


@dataclass
class Session:
    """What one client saw on one connection."""

    pid: int
    drained: str | None = None  # the app's "draining ..." message
    closed_at: float = 0.0  # time.monotonic() when the close was seen
    code: int | None = None  # the close code received; None: no close frame (1006)


def _close_code(ws: object) -> int | None:
    """The close code the server sent; None when no close frame came (what a browser shows as 1006)."""
    received = ws.protocol.close_rcvd  # type: ignore[attr-defined]
    return None if received is None else int(received.code)


async def _open(port: int) -> tuple[ClientConnection, int]:
    ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=SESSION_TIMEOUT, max_queue=4)
    await ws.send("")
    return ws, int(await asyncio.wait_for(ws.recv(), SESSION_TIMEOUT))


async def _until_closed(ws: ClientConnection, session: Session) -> Session:
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("draining"):
                session.drained = message
    except ConnectionClosed:
        pass
    session.closed_at = time.monotonic()
    session.code = _close_code(ws)
    return session


async def _open_many(port: int, count: int) -> list[tuple[ClientConnection, int]]:
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)

    async def one() -> tuple[ClientConnection, int]:
        async with gate:
            return await _open(port)

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 180)


def _most_in_any_window(times: list[float], width: float) -> int:
    """The largest number of `times` inside any window `width` seconds wide."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > width:
            start += 1
        most = max(most, end - start + 1)
    return most


def _server_side_closes(where: Path) -> tuple[list[float], list[float]]:
    """The close times and lifespan shutdown times the workers wrote (tests.supervisor.apps:drain_app)."""
    closes: list[float] = []
    shutdowns: list[float] = []
    for path in where.iterdir():
        for line in path.read_text().splitlines():
            kind, moment = line.split()
            (closes if kind == "close" else shutdowns).append(float(moment))
    return sorted(closes), shutdowns


def test_sigterm_drains_then_spreads_2000_closes_with_1001_over_the_spread(cluster, tmp_path):
    where = tmp_path / "closes"
    where.mkdir()
    server = cluster(APP, "--workers", str(WORKERS), "--no-access-log", "--ws-drain-time", str(DRAIN_TIME),
                     "--ws-close-spread", str(CLOSE_SPREAD), env={"ASGIWS_TEST_CLOSES": str(where)})
    server.wait_ready(WORKERS)
    _wait_serving(server, WORKERS)

    async def main() -> tuple[float, list[Session]]:
        opened = await _open_many(server.port, CONNECTIONS)
        watchers = [asyncio.ensure_future(_until_closed(ws, Session(pid))) for ws, pid in opened]
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        return signalled, await asyncio.wait_for(asyncio.gather(*watchers), SESSION_TIMEOUT)

    signalled, sessions = asyncio.run(main())
    assert server.process.wait(30) == 0
    seen = sorted(s.closed_at - signalled for s in sessions)
    absolute, shutdowns = _server_side_closes(where)
    closes = [moment - signalled for moment in absolute]
    first, last = closes[0], closes[-1]
    middle = closes[len(closes) * 9 // 10] - closes[len(closes) // 10]
    most = _most_in_any_window(closes, CLOSE_SPREAD / 10)
    print(f"SIGTERM, {CONNECTIONS} WebSockets on {WORKERS} workers, drain {DRAIN_TIME}s, "
          f"spread {CLOSE_SPREAD}s: the servers closed from {first:.2f}s to {last:.2f}s after the signal, "
          f"the middle 80% over {middle:.2f}s, at most {most} in any {CLOSE_SPREAD / 10:.1f}s; "
          f"the clients saw them from {seen[0]:.2f}s to {seen[-1]:.2f}s; "
          f"codes {dict(Counter(s.code for s in sessions))}")
    assert Counter(s.code for s in sessions) == {1001: CONNECTIONS}
    # Told first, with the time left before the closes begin.
    assert all(s.drained is not None for s in sessions)
    told = [s.drained.split() for s in sessions if s.drained]
    assert {code for _, code, _ in told} == {"1001"}
    assert all(0 < float(left) <= DRAIN_TIME for _, _, left in told)
    # Served on for the drain time: no close before it (the signal reaches the workers after this clock read).
    assert len(closes) == CONNECTIONS
    assert first >= DRAIN_TIME
    # Spread: the closes cover most of the window, and never bunch.
    assert middle >= MIDDLE_80_AT_LEAST * CLOSE_SPREAD
    assert last - first <= CLOSE_SPREAD + 10
    assert most <= MOST_IN_A_TENTH * CONNECTIONS
    # The lifespan shutdown of each worker came after its drain.
    assert len(shutdowns) == WORKERS
    assert min(shutdowns) - signalled >= DRAIN_TIME
    assert max(shutdowns) >= max(absolute)
    log = server.log()
    assert "Draining: WebSockets keep serving for 1s" in log
    assert log.count(" WebSocket(s) with 1001 over 2s") == WORKERS
    assert "did not stop in time" not in log


@dataclass
class Reconnecting:
    """`count` clients that reconnect whenever the server closes them, until told to stop."""

    port: int
    count: int
    sessions: list[Session] = field(default_factory=list)  # every session the server closed
    current: dict[int, int] = field(default_factory=dict)  # client -> pid of its open session
    failures: list[str] = field(default_factory=list)  # connects that failed
    stopping: bool = False

    async def client(self, index: int, gate: asyncio.Semaphore) -> list[ClientConnection]:
        kept: list[ClientConnection] = []
        while not self.stopping:
            try:
                async with gate:
                    ws, pid = await _open(self.port)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding, listed by the test
                self.failures.append(f"{type(exc).__name__}: {exc}")
                return kept
            self.current[index] = pid
            kept = [ws]
            closing = asyncio.ensure_future(_until_closed(ws, Session(pid)))
            while not closing.done() and not self.stopping:
                await asyncio.wait([closing], timeout=0.1)
            if closing.done():
                self.current.pop(index, None)
                self.sessions.append(closing.result())
        return kept


def test_sighup_closes_2000_with_1012_and_refuses_no_reconnect_nor_new_client(cluster):
    server = cluster(APP, "--workers", str(WORKERS), "--no-access-log", "--ws-drain-time", str(DRAIN_TIME),
                     "--ws-close-spread", str(CLOSE_SPREAD))
    server.wait_ready(WORKERS)
    _wait_serving(server, WORKERS)
    old = set(server.workers())
    clients = Reconnecting(server.port, CONNECTIONS)

    async def main() -> None:
        gate = asyncio.Semaphore(OPENING_CONCURRENCY)
        tasks = [asyncio.ensure_future(clients.client(i, gate)) for i in range(CONNECTIONS)]
        deadline = time.monotonic() + 180
        while len(clients.current) < CONNECTIONS and not clients.failures:
            assert time.monotonic() < deadline, f"only {len(clients.current)} connected"
            await asyncio.sleep(0.1)
        with Arrivals(server.port) as arrivals:
            await asyncio.sleep(0.5)
            server.signal(signal.SIGHUP)

            def moved() -> bool:  # the old generation gone, every client back on a new worker
                return (not old & set(server.workers()) and len(clients.current) == CONNECTIONS
                        and not old & set(clients.current.values()))

            while not moved() and not clients.failures:
                assert time.monotonic() < deadline + 120, f"not moved:\n{server.log()}"
                await asyncio.sleep(0.1)
            clients.stopping = True
            kept = await asyncio.wait_for(asyncio.gather(*tasks), SESSION_TIMEOUT)
            await asyncio.gather(*(ws.close() for held in kept for ws in held), return_exceptions=True)
        print(f"SIGHUP, {CONNECTIONS} reconnecting WebSockets and {len(arrivals.outcomes)} new sessions: "
              f"closes {dict(Counter(s.code for s in clients.sessions))}, "
              f"failed connects {clients.failures[:3]}, "
              f"failed new sessions {arrivals.failures()[:3]}")
        assert arrivals.failures() == []

    asyncio.run(main())
    assert clients.failures == []
    # Every client of the old generation was closed with 1012 (some twice: a client that reconnected
    # onto the slot not yet replaced); the app was told, with the same code.
    assert len(clients.sessions) >= CONNECTIONS
    assert Counter(s.code for s in clients.sessions) == {1012: len(clients.sessions)}
    assert all(s.drained is not None and s.drained.split()[1] == "1012" for s in clients.sessions)
    assert {s.pid for s in clients.sessions} == old
    assert server.stop() == 0


def test_a_long_drain_is_not_cut_short_by_the_supervisors_kill_timer(cluster):
    """The supervisor's deadline covers drain + spread + the graceful timeout (2 * 0.5 + 5 s alone
    would SIGKILL this worker 6 s into its 7 s drain: its clients would see 1006)."""
    server = cluster(APP, "--workers", "1", "--ws-drain-time", "7", "--ws-close-spread", "0.5",
                     "--timeout-graceful-shutdown", "0.5")
    _wait_running(server)

    sessions = asyncio.run(_sessions_through_sigterm(server, 20))
    assert Counter(s.code for s in sessions) == {1001: 20}
    assert server.process.wait(30) == 0
    assert "did not stop in time" not in server.log()


def test_the_drain_is_in_the_http_scope_too_and_unset_while_serving(cluster):
    server = cluster(APP, "--workers", "1")
    _wait_running(server)
    assert get(server.port, "/drain") == (200, "False 1001")


def test_ws_drain_time_0_and_spread_0_close_at_once_as_before(cluster):
    server = cluster(APP, "--workers", "1", "--ws-drain-time", "0", "--ws-close-spread", "0")
    _wait_running(server)

    sessions = asyncio.run(_sessions_through_sigterm(server, 50))
    assert Counter(s.code for s in sessions) == {1001: 50}
    # Told too, with nothing left: the closes begin at once.
    assert all(s.drained is None or float(s.drained.split()[2]) == 0 for s in sessions)
    assert server.process.wait(30) == 0
    assert "WebSocket(s) with 1001 over" not in server.log()


async def _sessions_through_sigterm(server: Cluster, count: int) -> list[Session]:
    """Open `count` WebSockets one by one, SIGTERM the server, and return each one's session once closed."""
    opened = [await _open(server.port) for _ in range(count)]
    watchers = [asyncio.ensure_future(_until_closed(ws, Session(pid))) for ws, pid in opened]
    server.signal(signal.SIGTERM)
    return await asyncio.wait_for(asyncio.gather(*watchers), SESSION_TIMEOUT)


def _wait_running(server: Cluster) -> None:
    """Until the one worker serves (with one worker the supervisor's "is ready" line is DEBUG)."""
    wait_for(lambda: "Asgiws running on" in server.log(), 30, f"the worker serving in:\n{server.log()}")


# -- recycling -------------------------------------------------------------------------------------


def _watch_one(port: int) -> tuple[int, threading.Thread, list[int | None]]:
    """A WebSocket held open in a thread, and its worker's pid; the list gets its close code (None:
    no close frame; -1: none within SESSION_TIMEOUT)."""
    pids: list[int] = []
    codes: list[int | None] = []
    opened = threading.Event()

    def run() -> None:
        with sync_connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
            ws.send("")
            pids.append(int(ws.recv(timeout=10)))
            opened.set()
            try:
                while True:
                    ws.recv(timeout=SESSION_TIMEOUT)
            except ConnectionClosed:
                codes.append(_close_code(ws))
            except TimeoutError:
                codes.append(-1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert opened.wait(15), "the WebSocket did not open"
    return pids[0], thread, codes


def _gets_all_ok(server: Cluster, until: threading.Event) -> list[str]:
    """GET / on fresh connections until `until` is set; the failures."""
    failures = []
    while not until.is_set():
        try:
            status, _ = get(server.port)
            if status != 200:
                failures.append(str(status))
        except OSError as exc:
            failures.append(repr(exc))
        time.sleep(0.01)
    return failures


def test_limit_max_memory_recycles_through_the_drain_with_1012(cluster):
    metrics_port = free_port()
    server = cluster(APP, "--workers", "1", "--limit-max-memory", "150", "--metrics-port", str(metrics_port))
    _wait_running(server)
    pid, thread, codes = _watch_one(server.port)
    for _ in range(4):  # 4 x 64 MiB held: past 150 MiB whatever the baseline
        assert get(server.port, "/grow", timeout=30)[0] == 200
    thread.join(SESSION_TIMEOUT)
    _check_recycled(server, metrics_port, pid, codes, "memory", "--limit-max-memory")
    assert "MiB, over --limit-max-memory 150 MiB: asking to be recycled" in server.log()


def test_limit_max_lifetime_recycles_through_the_drain_with_1012_refusing_no_request(cluster):
    metrics_port = free_port()
    server = cluster(APP, "--workers", "1", "--limit-max-lifetime", "3", "--limit-max-lifetime-jitter", "0",
                     "--metrics-port", str(metrics_port))
    _wait_running(server)
    pid, thread, codes = _watch_one(server.port)
    done = threading.Event()
    failures: list[str] = []
    loader = threading.Thread(target=lambda: failures.extend(_gets_all_ok(server, done)), daemon=True)
    loader.start()
    try:
        thread.join(SESSION_TIMEOUT)
    finally:
        done.set()
        loader.join(30)
    assert failures == []
    _check_recycled(server, metrics_port, pid, codes, "lifetime", "--limit-max-lifetime")
    assert "past --limit-max-lifetime: asking to be recycled" in server.log()


def test_limit_max_requests_recycles_through_the_drain_with_1012(cluster):
    metrics_port = free_port()
    server = cluster(APP, "--workers", "1", "--limit-max-requests", "5", "--metrics-port", str(metrics_port))
    _wait_running(server)
    pid, thread, codes = _watch_one(server.port)  # the handshake is the first request
    for _ in range(5):
        assert get(server.port)[0] == 200
    thread.join(SESSION_TIMEOUT)
    _check_recycled(server, metrics_port, pid, codes, "max_requests", "--limit-max-requests")


def _check_recycled(server: Cluster, metrics_port: int, pid: int, codes: list[int | None], reason: str,
                    flag: str) -> None:
    """The WebSocket held on `pid` saw 1012; the log and the restart counter say `reason`."""
    from tests.metrics.test_metrics import scrape, value

    assert codes == [1012], server.log()
    wait_for(lambda: pid not in server.workers(), 30, "the recycled worker to exit")
    log = server.log()
    assert f"Worker {pid} reached {flag}: replacing it" in log
    assert f"Draining worker {pid} ({reason})" in log
    samples = wait_for(lambda: (s := scrape(metrics_port))
                       and value(s, "asgiws_worker_restarts_total", reason=reason) >= 1 and s, 30,
                       f"the {reason} restart counted")
    assert value(samples, "asgiws_worker_restarts_total", reason=reason) >= 1
    assert server.stop() == 0
