"""Instructions per echoed 64-byte message, a figure the machine's noise cannot move: the metrics
counters' cost, and asgiws beside its peers.

    python -m bench.uncounted /tmp/asgiws-uncounted
    python -m bench.uncounted --control /tmp/asgiws-counted
    python -m bench.echo_instructions --uncounted-tree /tmp/asgiws-uncounted --control-tree /tmp/asgiws-counted
    python -m bench.echo_instructions --peers uvicorn,picows,picows-floor

Wall-clock echo rounds on a shared machine move by 5% and more from one round to the next, more
than the 2% the counters may cost. Instructions do not move: each server runs under `valgrind
--tool=callgrind` (asgiws in-process through `asgiws.run`, one worker; uvicorn as bench/run.py runs
it, its default `--ws`; the bare picows server of bench/picows_server.py; picows-floor, the same
server's /echo_floor: bench/app.py's echo coroutine stepped from its frames with no Task; no
pings, no access log, the garbage collector off), and one client echoes 64-byte text messages one
at a time over one WebSocket, so every read holds one frame. Each server runs with 2,000 and 12,000 messages; the
difference in instructions over the difference in messages is the cost of one echo, with
start-up, the handshake and shutdown cancelled out. What a server does by the clock (asgiws's and
uvicorn's main loops wake every 0.1 s) grows with the run's length, which valgrind stretches more
or less with the machine's load: two idle runs (no message, idle 2 s and 22 s) give each server's
instructions per idle second, and each echo run is corrected by its own serving time.

The counters' cost: this checkout beside the same code with every counting statement taken out
(bench/uncounted.py), against a control tree given the same `ast.unparse` rewrite with nothing
taken out. Instructions are user space only: the kernel's send and receive are not in them.
Needs valgrind (Debian package); a few minutes per server.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
# The garbage collector is off in these runs: when a full collection falls inside the larger run
# and not the smaller it moved the figure by up to 2% (600 instructions an echo) between runs of
# the same code, and counting allocates no object it tracks (the counters are ints, or C fields).
# Each is `python -c CODE PORT`, run in the tree measured.
SERVE = ("import asgiws, gc, sys; gc.disable(); asgiws.run('bench.app:app', host='127.0.0.1', "
         "port=int(sys.argv[1]), ws_ping_interval=0, access_log=False, log_level='warning', lifespan='off')")
PEERS = {
    "uvicorn": ("import gc, runpy, sys; gc.disable(); sys.argv = ['uvicorn', 'bench.app:app', '--host', "
                "'127.0.0.1', '--port', sys.argv[1], '--loop', 'uvloop', '--http', 'httptools', '--ws', 'auto', "
                "'--ws-ping-interval', '0', '--log-level', 'warning', '--no-access-log', '--lifespan', 'off']; "
                "runpy.run_module('uvicorn', run_name='__main__')"),
    "picows": ("import gc, runpy, sys; gc.disable(); sys.argv = ['picows_server.py', '--port', sys.argv[1]]; "
               "runpy.run_path('bench/picows_server.py', run_name='__main__')"),
}
# picows-floor: the same picows server on its /echo_floor route, bench/app.py's echo coroutine
# stepped from each frame with no Task: the floor under any ASGI server (bench/picows_server.py)
PEERS["picows-floor"] = PEERS["picows"]
PATHS = {"picows-floor": "/echo_floor"}


async def echo(port: int, messages: int, path: str = "/echo") -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}{path}", compression=None, ping_interval=None) as ws:
        payload = "x" * 64
        for _ in range(messages):
            await ws.send(payload)
            assert await ws.recv() == payload


def instructions(tree: Path, messages: int, idle: float = 0.0, code: str = SERVE,
                 path: str = "/echo") -> tuple[int, float]:
    """Instructions the server executed from start to exit, for one client echoing `messages` then
    `idle` seconds of nothing, and the seconds it served (from listening to the signal to stop)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p",
             sys.executable, "-c", code, str(port)],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, 120)
            serving = time.monotonic()  # start-up's length moves with the load; its instructions do not
            asyncio.run(echo(port, messages, path))
            time.sleep(idle)
            seconds = time.monotonic() - serving
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(120)
        total = 0
        for path in glob.glob(f"{out}/callgrind.*"):
            match = re.search(r"^(?:summary|totals): (\d+)", Path(path).read_text(errors="replace"), re.MULTILINE)
            if match is None:
                raise SystemExit(f"{path}: no instruction total in callgrind's output")
            total += int(match.group(1))
        return total, seconds


def per_echo(name: str, tree: Path, code: str, low: int, high: int) -> float:
    """Instructions per echo of one server, corrected for its run's length; prints the runs."""
    path = PATHS.get(name, "/echo")
    (idle_short, short_s), (idle_long, long_s) = instructions(tree, 0, 2.0, code), instructions(tree, 0, 22.0, code)
    per_second = (idle_long - idle_short) / (long_s - short_s)
    (few, few_s), (many, many_s) = (instructions(tree, low, 0.0, code, path),
                                    instructions(tree, high, 0.0, code, path))
    result = (many - few - per_second * (many_s - few_s)) / (high - low)
    print(f"{name:10s} idle: {per_second:,.0f} instructions/s; {low:,} messages: {few:,} in {few_s:.1f} s; "
          f"{high:,}: {many:,} in {many_s:.1f} s; per echo {result:,.0f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncounted-tree", type=Path, help="a tree written by `python -m bench.uncounted DIR`")
    parser.add_argument("--control-tree", type=Path,
                        help="a tree written by `python -m bench.uncounted --control DIR`")
    parser.add_argument("--peers", default="", help=f"also measure these, comma-separated: {', '.join(PEERS)}")
    parser.add_argument("--messages", default="2000,12000", help="two message counts, comma-separated")
    a = parser.parse_args()
    if (a.uncounted_tree is None) != (a.control_tree is None):
        parser.error("--uncounted-tree and --control-tree go together")
    peers = [name for name in a.peers.split(",") if name]
    for name in peers:
        if name not in PEERS:
            parser.error(f"unknown peer {name!r}: one of {', '.join(PEERS)}")
    low, high = (int(n) for n in a.messages.split(","))
    asgiws = per_echo("asgiws", ROOT, SERVE, low, high)
    if a.control_tree is not None:
        control = per_echo("control", a.control_tree.resolve(), SERVE, low, high)
        uncounted = per_echo("uncounted", a.uncounted_tree.resolve(), SERVE, low, high)
        print(f"the counters cost {control / uncounted - 1:+.2%} instructions per 64-byte echo "
              f"({control - uncounted:+,.0f} of {uncounted:,.0f})")
    for name in peers:
        peer = per_echo(name, ROOT, PEERS[name], low, high)
        print(f"asgiws runs {asgiws / peer:.2f}x the instructions of {name} per echo")


if __name__ == "__main__":
    main()
