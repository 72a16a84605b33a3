"""The supervisor with real processes, real signals and real clients on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.supervisor.cluster import get, wait_for

pytestmark = pytest.mark.timeout(60)


class HttpLoad:
    """Threads sending GET / on fresh connections until stopped; counts outcomes."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.sent = 0
        self.failures: list[str] = []
        self.pids: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.port, timeout=10)
                outcome = None if status == 200 else f"status {status}"
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                outcome, body = f"{type(exc).__name__}: {exc}", ""
            with self._lock:
                self.sent += 1
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.pids[body] += 1

    def __enter__(self) -> HttpLoad:  # noqa: PYI034
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_kill_9_worker_under_load_is_replaced_and_server_answers(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2")
    server.wait_ready(2)
    before = server.workers()
    assert len(before) == 2
    with HttpLoad(server.port) as load:
        wait_for(lambda: load.sent > 20, 10, "some requests")
        os.kill(before[0], signal.SIGKILL)
        wait_for(lambda: server.ready_count() >= 3, 10, "the replacement to be ready")
        sent_after_kill = load.sent
        wait_for(lambda: load.sent > sent_after_kill + 20, 10, "requests after the replacement")
    after = server.workers()
    assert len(after) == 2 and before[0] not in after and before[1] in after
    assert "died (killed by SIGKILL): replacing it" in server.log()
    assert get(server.port)[0] == 200
    print(f"kill -9 under load: {load.sent} requests, {len(load.failures)} failed {load.failures}")
    # Only requests in flight on the killed worker may fail, never many.
    assert len(load.failures) <= 4, load.failures
    assert server.stop() == 0


def test_sighup_rolling_restart_under_http_and_websocket_load_fails_nothing(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2")
    server.wait_ready(2)
    old = server.workers()
    ws_stats = Counter()

    async def websocket_load(stop: threading.Event) -> None:
        async def one_client() -> None:
            while not stop.is_set():
                try:
                    async with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=10) as ws:
                        ws_stats["opened"] += 1
                        for _ in range(3):
                            await ws.send("hi")
                            assert await ws.recv() == "hi"
                    ws_stats["completed"] += 1
                except ConnectionClosed as exc:
                    # Drained by the restart: a clean 1012 "service restart" close.
                    ws_stats[f"closed {exc.rcvd.code if exc.rcvd else None}"] += 1
                except Exception as exc:  # noqa: BLE001
                    ws_stats[f"failed {type(exc).__name__}: {exc}"] += 1

        await asyncio.gather(*(one_client() for _ in range(4)))

    async def long_lived() -> int | None:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            ready.set()
            try:
                await asyncio.wait_for(ws.recv(), 20)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        return -1

    def run_long_lived() -> None:
        long_lived_code.append(asyncio.run(long_lived()))

    stop, ready = threading.Event(), threading.Event()
    long_lived_code: list[int | None] = []
    ws_thread = threading.Thread(target=lambda: asyncio.run(websocket_load(stop)), daemon=True)
    long_thread = threading.Thread(target=run_long_lived, daemon=True)
    with HttpLoad(server.port) as load:
        ws_thread.start()
        long_thread.start()
        wait_for(lambda: load.sent > 50 and ws_stats["completed"] > 10 and ready.is_set(), 10, "load")
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.ready_count() >= 4, 15, "two new workers")
        wait_for(lambda: not set(old) & set(server.workers()), 15, "old workers gone")
        first = server.workers()
        for restarts in (2, 3):  # more restarts under the same load
            current = server.workers()
            server.signal(signal.SIGHUP)
            wait_for(lambda: server.ready_count() >= 2 + 2 * restarts, 15, "two new workers")  # noqa: B023
            wait_for(lambda: not set(current) & set(server.workers()), 15, "old workers gone")  # noqa: B023
        sent_after = load.sent
        wait_for(lambda: load.sent > sent_after + 50, 10, "requests after the restart")
        stop.set()
        ws_thread.join(20)
        long_thread.join(20)
    new = server.workers()
    assert len(new) == 2 and not set(old) & set(new)
    print(f"3 x SIGHUP: {load.sent} HTTP requests, {len(load.failures)} failed; WebSocket {dict(ws_stats)}")
    assert load.failures == []
    assert [k for k in ws_stats if k.startswith("failed") or k == "closed None"] == []
    assert {int(pid) for pid in load.pids} >= set(old) | set(first) | set(new)
    assert long_lived_code == [1012]  # "service restart": reconnect
    assert server.stop() == 0


def test_sigterm_closes_100_websockets_with_1001(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2")
    server.wait_ready(2)

    async def main() -> list[int | None]:
        clients = [await connect(f"ws://127.0.0.1:{server.port}/", open_timeout=10) for _ in range(100)]
        for ws in clients:
            await ws.send("x")
            assert await ws.recv() == "x"
        server.signal(signal.SIGTERM)

        async def close_code(ws) -> int | None:
            try:
                await asyncio.wait_for(ws.recv(), 15)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
            return -1

        return await asyncio.gather(*(close_code(ws) for ws in clients))

    codes = asyncio.run(main())
    assert Counter(codes) == {1001: 100}
    assert server.process.wait(15) == 0
    assert "SIGTERM: stopping 2 worker(s) gracefully" in server.log()


def test_worker_with_blocked_event_loop_is_killed_and_replaced(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2", "--timeout-worker-healthcheck", "1")
    server.wait_ready(2)
    before = server.workers()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/block", timeout=10)
    # The process was alive all along; only its loop could not answer.
    assert "did not answer a health check within 1.0s" in server.log()
    server.wait_ready(3)
    after = server.workers()
    assert len(after) == 2 and len(set(before) & set(after)) == 1
    for _ in range(10):
        assert get(server.port)[0] == 200
    assert server.stop() == 0


def test_sigttin_and_sigttou_change_the_number_of_workers(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2")
    server.wait_ready(2)
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.workers()) == 3 and server.ready_count() == 3, 10, "3 workers")
    server.signal(signal.SIGTTOU)
    wait_for(lambda: len(server.workers()) == 2, 10, "2 workers")
    server.signal(signal.SIGTTOU)
    wait_for(lambda: len(server.workers()) == 1, 10, "1 worker")
    assert "SIGTTOU: now 1 worker(s)" in server.log()
    assert server.supervisor_threads() == 1  # no thread, no event loop: forking stays safe
    assert get(server.port)[0] == 200
    assert server.stop() == 0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_server_sleeps_supervisor_and_workers_alike(cluster):
    # The supervisor's select() timeout once took a spawn deadline of 0.0 as due: select(0) in a loop, a
    # whole core burnt beside the workers it shares the machine with (half the echo throughput when pinned
    # on the worker's core). An idle select() loop with a 0.25 s tick and health pings costs a few ms.
    server = cluster("tests.supervisor.apps:app", "--workers", "2")
    server.wait_ready(2)
    time.sleep(0.5)  # start-up (imports, lifespan) is done
    pids = [server.pid, *server.workers()]
    before = {pid: _cpu_seconds(pid) for pid in pids}
    time.sleep(3.0)
    used = {pid: round(_cpu_seconds(pid) - before[pid], 3) for pid in pids}
    assert all(seconds < 0.3 for seconds in used.values()), f"CPU seconds over 3 s idle: {used}"
    assert server.stop() == 0


def test_every_worker_failing_at_startup_exits_nonzero_with_the_apps_message(cluster):
    server = cluster("tests.supervisor.apps:failing_app", "--workers", "2", "--lifespan", "on")
    code = server.process.wait(15)
    assert code != 0
    log = server.log()
    assert "database unreachable at db:5432" in log
    assert "Every worker failed to start" in log
    # No hot loop: each of the 2 workers was tried a bounded number of times.
    assert log.count("Started worker") <= 4


def test_sighup_with_a_broken_deploy_keeps_old_workers_and_backs_off(cluster, tmp_path):
    broken = tmp_path / "broken"
    server = cluster("tests.supervisor.apps:gated_app", "--workers", "2",
                     env={"ASGIWS_TEST_BROKEN": str(broken)})
    server.wait_ready(2)
    old = server.workers()
    broken.touch()
    server.signal(signal.SIGHUP)
    wait_for(lambda: "retrying in 1.0s" in server.log(), 10, "a second, later retry")
    assert "bad deploy: config missing; retrying in 0.5s" in server.log()
    assert get(server.port)[0] == 200  # the old generation goes on serving
    assert set(old) <= set(server.workers())
    broken.unlink()  # fixed: the next retry succeeds and the restart completes
    wait_for(lambda: len(server.workers()) == 2 and not set(old) & set(server.workers()), 15, "new workers")
    assert server.log().count("Started worker") <= 2 + 5 + 2  # no hot loop
    assert server.stop() == 0


def test_limit_max_requests_recycles_workers_without_failed_requests(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2", "--limit-max-requests", "10",
                     "--limit-max-requests-jitter", "5")
    server.wait_ready(2)
    pids: Counter[int] = Counter()
    deadline = time.monotonic() + 20
    while len(pids) < 5 and time.monotonic() < deadline:
        status, body = get(server.port)  # raises on any failed request
        assert status == 200
        pids[int(body)] += 1
        time.sleep(0.01)
    assert len(pids) >= 5, pids
    wait_for(lambda: len(server.workers()) == 2, 10, "the last drained worker to exit")
    retired = [pid for pid in pids if pid not in server.workers()]
    assert len(retired) >= 3
    # Recycled after its own limit (10 + 0..5 jitter), never before; it serves
    # on past it only until its replacement is ready.
    assert all(pids[pid] >= 10 for pid in retired), pids
    assert server.log().count("reached --limit-max-requests") >= 3
    assert server.stop() == 0


def test_uds_with_two_workers(cluster, tmp_path):
    path = tmp_path / "asgiws.sock"
    server = cluster("tests.supervisor.apps:app", "--workers", "2", "--uds", str(path))
    server.wait_ready(2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    # SO_REUSEPORT is for TCP: both workers accept on the one socket file.
    assert "Workers share one listening socket (SO_REUSEPORT applies to host:port only)" in server.log()
    transport = httpx.HTTPTransport(uds=str(path))
    pids = set()
    with httpx.Client(transport=transport, base_url="http://asgiws") as client:
        for _ in range(40):
            response = client.get("/", headers={"Connection": "close"})
            assert response.status_code == 200
            pids.add(int(response.text))
    assert pids <= set(server.workers()) and len(pids) >= 1
    # A drained worker must not remove the socket file the supervisor still serves.
    server.signal(signal.SIGHUP)
    server.wait_ready(4)
    wait_for(lambda: len(server.workers()) == 2, 10, "the old workers to exit")
    assert path.exists()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://asgiws") as client:
        assert int(client.get("/").text) in server.workers()
    assert server.stop() == 0
    assert not path.exists()


def test_fd_socket_activation_with_two_workers(cluster):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    server = cluster("tests.supervisor.apps:app", "--workers", "2", "--fd", str(fd), pass_fds=(fd,))
    listener.close()  # the server holds its own copy now
    server.wait_ready(2)
    assert get(port)[0] == 200
    # An inherited socket is not the supervisor's to multiply: both workers accept on it.
    assert "Workers share one listening socket" in server.log()
    assert server.stop() == 0


def test_second_sigint_forces_exit(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2", "--timeout-graceful-shutdown", "30")
    server.wait_ready(2)

    async def main() -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            # An HTTP request stuck in the loop keeps the worker from stopping gracefully.
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.3)
            server.signal(signal.SIGINT)
            await asyncio.sleep(0.3)
            assert server.process.poll() is None
            server.signal(signal.SIGINT)
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, server.process.wait, 10)
            assert time.monotonic() - started < 5
            sock.close()
            del ws

    asyncio.run(main())
    assert "WARNING:  Second SIGINT: forcing exit" in server.log()
    assert server.process.returncode == 3


def test_workers_ignore_sigint_and_ctrl_c_on_the_group_stops_gracefully(cluster):
    server = cluster("tests.supervisor.apps:app", "--workers", "2")
    server.wait_ready(2)
    workers = server.workers()
    os.kill(workers[0], signal.SIGINT)  # the supervisor coordinates shutdown, not the worker
    time.sleep(0.5)
    assert server.workers() == workers
    assert "Shutting down" not in server.log()

    async def main() -> int | None:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C in the terminal
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        return -1

    assert asyncio.run(main()) == 1001
    assert server.process.wait(10) == 0


def test_port_in_use_exits_1_with_a_one_line_error(cluster):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = cluster("tests.supervisor.apps:app", "--workers", "2", port=taken.getsockname()[1])
        assert server.process.wait(10) == 1
    assert server.log().splitlines() == [
        f"ERROR:    could not bind on 127.0.0.1:{server.port}: address already in use "
        "(another process is listening there: stop it or choose another --port)"
    ]
    assert "Traceback" not in server.log()


def test_failure_reason_sent_just_before_exit_is_read_when_the_worker_is_reaped():
    # The race behind a once-flaky test above: "fail <reason>" and the exit
    # arrive together, and _reap may run before select() reports the channel.
    from asgiws.config import Config
    from asgiws.supervisor import Supervisor, Worker
    from asgiws.workers import Channel

    supervisor = Supervisor(Config(app="tests.supervisor.apps:gated_app", workers=1), sockets=[])
    ours, the_workers = socket.socketpair()
    worker = Worker(pid=os.getpid(), channel=Channel(ours), generation=1, started_at=time.monotonic())
    supervisor.selector.register(ours, 1)  # selectors.EVENT_READ
    the_workers.sendall(b"fail Application startup failed: bad deploy\n")
    the_workers.close()  # the worker has exited
    try:
        supervisor._forget(worker)
        assert worker.failure == "Application startup failed: bad deploy"
        assert ours.fileno() == -1  # closed after it was read
    finally:
        supervisor.selector.close()
        supervisor._wakeup_r.close()
        supervisor._wakeup_w.close()
