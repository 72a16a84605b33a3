"""Drain on deploy, measured: when the closes come, and how fast the clients land on the new workers.

    python -m bench.drain                         # 2,000 WebSockets, 2 workers, spread 0 s then 2 s
    python -m bench.drain --connections 5000 --workers 4 --spreads 0,1,5 --signal TERM

For each --ws-close-spread it starts `asgiws bench.drain:app --workers N --ws-drain-time D
--ws-close-spread S`, opens the WebSockets (each asks the worker's pid), sends the signal and
records, from the client side, when each close arrives and its code. On HUP (a rolling restart)
every client reconnects as soon as it is closed, as a client library would; the handshakes that
complete on a worker of the new generation are counted per 100 ms. It prints the closes' histogram
and the peak reconnect rate. Run by hand, not in the test suite: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
# Handshakes in flight while the connections are opened (not while they reconnect: those go at once).
OPENING_CONCURRENCY = 50
BUCKET = 0.1  # seconds per histogram bar and per reconnect count
TIMEOUT = 120.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """WebSocket: an empty message answers this worker's pid, others are echoed. HTTP: the pid."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": message.get("text") or str(os.getpid())})
    elif scope["type"] == "http":
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


class Clients:
    """`count` WebSocket clients in one process: each opens, asks the pid, waits for its close, and on
    HUP reconnects at once until it lands on a worker of the new generation (times: monotonic s)."""

    def __init__(self, port: int, count: int, reconnect: bool) -> None:
        self.port, self.count, self.reconnect = port, count, reconnect
        self.closes: list[tuple[float, int | None]] = []  # (when, code; None: no close frame)
        self.reconnects: list[float] = []  # when a handshake completed on a new-generation worker
        self.failed: Counter[str] = Counter()
        self.old_pids: set[int] = set()

    async def open(self) -> tuple[ClientConnection, int]:
        ws = await connect(f"ws://127.0.0.1:{self.port}/", open_timeout=TIMEOUT, max_queue=4)
        await ws.send("")
        return ws, int(await asyncio.wait_for(ws.recv(), TIMEOUT))

    async def client(self, gate: asyncio.Semaphore, opened: list[int], all_open: asyncio.Event) -> None:
        async with gate:
            ws, pid = await self.open()
        self.old_pids.add(pid)
        opened.append(pid)
        if len(opened) == self.count:
            all_open.set()
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        received = ws.protocol.close_rcvd
        self.closes.append((time.monotonic(), None if received is None else received.code))
        while self.reconnect:  # at once, as a client library would, until on the new generation
            try:
                ws, pid = await self.open()
            except Exception as exc:  # noqa: BLE001 - counted and shown, never hidden
                self.failed[type(exc).__name__] += 1
                return
            if pid not in self.old_pids:
                self.reconnects.append(time.monotonic())
                await ws.close()
                return
            await ws.wait_closed()

    async def run(self, ready: Any, go: Any) -> None:
        gate = asyncio.Semaphore(OPENING_CONCURRENCY)
        opened: list[int] = []
        all_open = asyncio.Event()
        clients = [asyncio.ensure_future(self.client(gate, opened, all_open)) for _ in range(self.count)]
        await asyncio.wait_for(all_open.wait(), TIMEOUT)
        ready.put(sorted(self.old_pids))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        await asyncio.wait_for(asyncio.gather(*clients), TIMEOUT)


def client_process(port: int, count: int, reconnect: bool, ready: Any, go: Any, results: Any) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per client, two while reconnecting
    clients = Clients(port, count, reconnect)
    asyncio.run(clients.run(ready, go))
    results.put((clients.closes, clients.reconnects, dict(clients.failed)))


class Run:
    """One server, the clients in --client-processes processes, one signal; what the clients saw."""

    def __init__(self, args: argparse.Namespace, spread: float) -> None:
        self.args = args
        self.spread = spread
        self.port = free_port()
        self.closes: list[tuple[float, int | None]] = []  # (seconds after the signal, code)
        self.reconnects: list[float] = []  # seconds after the signal
        self.failed: Counter[str] = Counter()

    def start_server(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "asgiws", "bench.drain:app", "--port", str(self.port),
                   "--workers", str(self.args.workers), "--no-access-log", "--log-level", "warning",
                   "--ws-drain-time", str(self.args.drain_time), "--ws-close-spread", str(self.spread)]
        return subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                start_new_session=True)

    def run(self) -> None:
        server = self.start_server()
        context = multiprocessing.get_context("spawn")
        ready, results, go = context.Queue(), context.Queue(), context.Event()
        processes = self.args.client_processes
        shares = [self.args.connections // processes + (i < self.args.connections % processes)
                  for i in range(processes)]
        children = [context.Process(target=client_process, args=(
            self.port, share, self.args.signal == "HUP", ready, go, results)) for share in shares]
        try:
            wait_for_port(self.port, 30)
            time.sleep(1.0)  # every worker serving
            for child in children:
                child.start()
            for _ in children:
                ready.get(timeout=TIMEOUT)
            time.sleep(0.5)
            go.set()
            signalled = time.monotonic()
            os.kill(server.pid, getattr(signal, f"SIG{self.args.signal}"))
            for _ in children:
                closes, reconnects, failed = results.get(timeout=TIMEOUT)
                self.closes += [(when - signalled, code) for when, code in closes]
                self.reconnects += [when - signalled for when in reconnects]
                self.failed.update(failed)
        finally:
            for child in children:
                child.join(30)
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            server.wait(60)

    def report(self) -> str:
        times = sorted(t for t, _ in self.closes)
        codes = Counter(code for _, code in self.closes)
        lines = [f"--ws-close-spread {self.spread:g} s: {len(times)} closes from {times[0]:.2f} s to "
                 f"{times[-1]:.2f} s after SIG{self.args.signal} (over {times[-1] - times[0]:.2f} s), codes "
                 + ", ".join(f"{code if code is not None else '1006 (none)'}: {n}" for code, n in sorted(
                     codes.items(), key=lambda item: item[0] or 0))]
        lines += histogram(times)
        if self.args.signal == "HUP":
            per_bucket = Counter(int(t / BUCKET) for t in self.reconnects)
            peak_bucket = max(per_bucket.values(), default=0)
            lines.append(f"  reconnects on the new generation: {len(self.reconnects)}, peak "
                         f"{peak_bucket / BUCKET:,.0f}/s (in {BUCKET * 1000:.0f} ms), peak in any second "
                         f"{most_in_window(self.reconnects, 1.0):,}; failed: {dict(self.failed) or 0}")
        return "\n".join(lines)


def most_in_window(times: list[float], width: float) -> int:
    ordered, most, start = sorted(times), 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > width:
            start += 1
        most = max(most, end - start + 1)
    return most


def histogram(times: list[float], width: int = 50) -> list[str]:
    """Text bars of `times` per BUCKET seconds, from the first to the last."""
    counts = Counter(int(t / BUCKET) for t in times)
    top = max(counts.values())
    rows = []
    for bucket in range(min(counts), max(counts) + 1):
        n = counts.get(bucket, 0)
        bar = "#" * round(width * n / top)
        rows.append(f"  {bucket * BUCKET:5.1f}-{(bucket + 1) * BUCKET:4.1f} s {n:5d} {bar}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drain-time", type=float, default=1.0, help="--ws-drain-time, seconds")
    parser.add_argument("--spreads", default="0,2", help="--ws-close-spread values to run, comma-separated")
    parser.add_argument("--signal", choices=("HUP", "TERM"), default="HUP")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the clients are spread over (one would be the bottleneck)")
    args = parser.parse_args()
    print(f"{args.connections} WebSockets, {args.workers} workers, --ws-drain-time {args.drain_time:g}, "
          f"SIG{args.signal}; times from the client side")
    for spread in (float(value) for value in args.spreads.split(",")):
        run = Run(args, spread)
        run.run()
        print(run.report(), flush=True)


if __name__ == "__main__":
    main()
