"""What the metrics counters cost per echoed message, in instructions: a figure the machine's noise cannot move.

    python -m bench.uncounted /tmp/asgiws-uncounted
    python -m bench.uncounted --control /tmp/asgiws-counted
    python -m bench.metrics_cost --uncounted-tree /tmp/asgiws-uncounted --control-tree /tmp/asgiws-counted

Wall-clock echo rounds on a shared machine move by 5% and more from one round to the next, more
than the 2% the counters may cost. Instructions do not move: each server (this checkout, and
the same code with every counting statement taken out, from bench/uncounted.py) runs in-process
(`asgiws.run`, one worker, no pings, no access log) under `valgrind --tool=callgrind`, and one
client echoes 64-byte text messages one at a time over one WebSocket, so every read holds one
frame in both runs. Each server runs twice, with the two message counts; the difference in
instructions over the difference in messages is the cost of one echo, with start-up, the
handshake and shutdown cancelled out. What the server does by the clock (its main loop wakes
every 0.1 s, as uvicorn's does) grows with the run's length, which valgrind stretches more or less
with the machine's load: two idle runs (no message, idle 2 s and 22 s) give each tree's
instructions per idle second, and each echo run is corrected by its own length. The uncounted tree is rewritten by `ast.unparse`, which
alone moves the figure by about 1%, so the cost is taken against the control tree (the same
rewrite, nothing taken out); this checkout is measured beside them. Needs valgrind (Debian
package); takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The garbage collector is off in these runs: when a full collection falls inside the larger run
# and not the smaller it moved the figure by up to 2% (600 instructions an echo) between runs of
# the same code, and counting allocates no object it tracks (the counters are ints, or C fields).
SERVE = ("import asgiws, gc, sys; gc.disable(); asgiws.run('bench.app:app', host='127.0.0.1', "
         "port=int(sys.argv[1]), ws_ping_interval=0, access_log=False, log_level='warning', lifespan='off')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def echo(port: int, messages: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/echo", compression=None, ping_interval=None) as ws:
        payload = "x" * 64
        for _ in range(messages):
            await ws.send(payload)
            assert await ws.recv() == payload


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server under valgrind did not listen on {port} in {timeout:.0f} s")


def instructions(tree: Path, messages: int, idle: float = 0.0) -> tuple[int, float]:
    """Instructions the server executed from start to exit, for one client echoing `messages` then
    `idle` seconds of nothing, and the seconds it served (from listening to the signal to stop)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p",
             sys.executable, "-c", SERVE, str(port)],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, 120)
            serving = time.monotonic()  # start-up's length moves with the load; its instructions do not
            asyncio.run(echo(port, messages))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncounted-tree", type=Path, required=True,
                        help="a tree written by `python -m bench.uncounted DIR`")
    parser.add_argument("--control-tree", type=Path, required=True,
                        help="a tree written by `python -m bench.uncounted --control DIR`")
    parser.add_argument("--messages", default="2000,12000", help="two message counts, comma-separated")
    a = parser.parse_args()
    low, high = (int(n) for n in a.messages.split(","))
    per_message = {}
    trees = (("asgiws", ROOT), ("control", a.control_tree.resolve()), ("uncounted", a.uncounted_tree.resolve()))
    for name, tree in trees:
        (idle_short, short_s), (idle_long, long_s) = instructions(tree, 0, 2.0), instructions(tree, 0, 22.0)
        per_second = (idle_long - idle_short) / (long_s - short_s)
        (few, few_s), (many, many_s) = instructions(tree, low), instructions(tree, high)
        per_message[name] = (many - few - per_second * (many_s - few_s)) / (high - low)
        print(f"{name:10s} idle: {per_second:,.0f} instructions/s; {low:,} messages: {few:,} in {few_s:.1f} s; "
              f"{high:,}: {many:,} in {many_s:.1f} s; per echo {per_message[name]:,.0f}", flush=True)
    cost = per_message["control"] / per_message["uncounted"] - 1
    print(f"the counters cost {cost:+.2%} instructions per 64-byte echo "
          f"({per_message['control'] - per_message['uncounted']:+,.0f} of {per_message['uncounted']:,.0f})")


if __name__ == "__main__":
    main()
