"""Load generator: picows client (Cython) on uvloop, one process.

Sub-commands print one JSON object on stdout. Every run is bounded in time.
  echo    --conns N --size B [--binary] --duration S
  fanout  --subs N --rounds R
  churn   --concurrency N --duration S
  memory  --conns N --pid PID [--deflate]     (websockets client: picows has no deflate)
"""
import argparse
import asyncio
import json
import os
import sys
import time

import uvloop
from picows import WSListener, WSMsgType, ws_connect

URL = "ws://127.0.0.1:{port}{path}"


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


class EchoClient(WSListener):
    def __init__(self, payload, mtype, state):
        self.payload = payload
        self.mtype = mtype
        self.state = state
        self.sent_at = 0.0
        self.expected = len(payload)
        self.got = 0

    def on_ws_connected(self, transport):
        self.transport = transport

    def fire(self):
        self.got = 0
        self.sent_at = time.perf_counter()
        self.transport.send(self.mtype, self.payload)

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()
            return
        if frame.msg_type not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return
        self.got += frame.payload_size
        if not frame.fin or self.got < self.expected:
            return
        now = time.perf_counter()
        st = self.state
        if st["measuring"]:
            st["count"] += 1
            st["lat"].append(now - self.sent_at)
        if st["running"]:
            self.fire()


async def run_echo(a):
    payload = (b"x" * a.size) if a.binary else ("x" * a.size).encode()
    mtype = WSMsgType.BINARY if a.binary else WSMsgType.TEXT
    st = {"measuring": False, "running": True, "count": 0, "lat": []}
    conns = []
    for _ in range(a.conns):
        tr, cl = await asyncio.wait_for(
            ws_connect(lambda: EchoClient(payload, mtype, st), URL.format(port=a.port, path="/echo"),
                       max_frame_size=64 * 1024 * 1024), 10)
        conns.append((tr, cl))
    for _, cl in conns:
        cl.fire()
    await asyncio.sleep(a.warmup)
    st["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(a.duration)
    st["measuring"] = False
    st["running"] = False
    el = time.perf_counter() - t0
    lat = sorted(st["lat"])
    for tr, _ in conns:
        tr.disconnect()
    return {"msgs_per_s": st["count"] / el, "p50_ms": (pct(lat, 50) or 0) * 1e3,
            "p99_ms": (pct(lat, 99) or 0) * 1e3, "count": st["count"]}


class Sub(WSListener):
    def __init__(self, st):
        self.st = st

    def on_ws_frame(self, transport, frame):
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            st = self.st
            st["n"] += 1
            if st["n"] >= st["target"] and not st["done"].done():
                st["done"].set_result(time.perf_counter())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


async def run_fanout(a):
    loop = asyncio.get_running_loop()
    st = {"n": 0, "target": a.subs, "done": loop.create_future()}
    url = URL.format(port=a.port, path="/fanout")
    subs = []
    sem = asyncio.Semaphore(64)
    t_conn = time.perf_counter()

    async def one():
        async with sem:
            tr, _ = await asyncio.wait_for(ws_connect(lambda: Sub(st), url), 20)
            subs.append(tr)

    res = await asyncio.wait_for(asyncio.gather(*[one() for _ in range(a.subs)], return_exceptions=True), a.connect_timeout)
    errors = [r for r in res if isinstance(r, BaseException)]
    if errors:
        return {"error": f"{len(errors)} of {a.subs} subscribers failed to connect: {errors[0]!r}"}
    connect_s = time.perf_counter() - t_conn
    pub, _ = await asyncio.wait_for(ws_connect(WSListener, URL.format(port=a.port, path="/publish")), 10)
    await asyncio.sleep(0.3)
    times = []
    for r in range(a.rounds):
        st["n"] = 0
        st["done"] = loop.create_future()
        t0 = time.perf_counter()
        pub.send(WSMsgType.TEXT, f"round {r}".encode())
        try:
            t1 = await asyncio.wait_for(st["done"], a.round_timeout)
        except asyncio.TimeoutError:
            return {"error": f"round {r}: only {st['n']} of {a.subs} received within {a.round_timeout}s"}
        times.append(t1 - t0)
        await asyncio.sleep(0.2)
    pub.disconnect()
    for tr in subs:
        tr.disconnect()
    s = sorted(times)
    return {"median_ms": s[len(s) // 2] * 1e3 if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2 * 1e3,
            "min_ms": s[0] * 1e3, "max_ms": s[-1] * 1e3, "connect_s": connect_s}


class ChurnClient(WSListener):
    def on_ws_connected(self, transport):
        self.fut = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.TEXT:
            if not self.fut.done():
                self.fut.set_result(True)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


async def run_churn(a):
    url = URL.format(port=a.port, path="/echo")
    st = {"count": 0, "errors": 0, "measuring": False}
    deadline = [0.0]

    async def worker():
        while time.perf_counter() < deadline[0]:
            try:
                tr, cl = await asyncio.wait_for(ws_connect(ChurnClient, url), 5)
                tr.send(WSMsgType.TEXT, b"hello")
                await asyncio.wait_for(cl.fut, 5)
                tr.send_close()
                await asyncio.wait_for(tr.wait_disconnected(), 5)
                if st["measuring"]:
                    st["count"] += 1
            except Exception:
                st["errors"] += 1
                if st["errors"] > 1000:
                    return

    deadline[0] = time.perf_counter() + a.warmup + a.duration
    tasks = [asyncio.ensure_future(worker()) for _ in range(a.concurrency)]
    await asyncio.sleep(a.warmup)
    st["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(a.duration)
    st["measuring"] = False
    el = time.perf_counter() - t0
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
    return {"handshakes_per_s": st["count"] / el, "errors": st["errors"]}


def tree_rss(pid):
    import psutil
    p = psutil.Process(pid)
    total = p.memory_info().rss
    for c in p.children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return total


async def run_memory(a):
    import websockets
    from websockets.asyncio.client import connect
    url = URL.format(port=a.port, path="/echo")
    comp = "deflate" if a.deflate else None
    # warm-up: a few connections so lazy imports/allocations are not counted
    warm = [await asyncio.wait_for(connect(url, compression=comp, ping_interval=None), 10) for _ in range(20)]
    for w in warm:
        await w.send("x")
        await w.recv()
    for w in warm:
        await w.close()
    await asyncio.sleep(0.5)
    before = tree_rss(a.pid)
    conns = []
    sem = asyncio.Semaphore(64)

    async def one():
        async with sem:
            c = await asyncio.wait_for(connect(url, compression=comp, ping_interval=None, open_timeout=20), 25)
            conns.append(c)

    res = await asyncio.wait_for(asyncio.gather(*[one() for _ in range(a.conns)], return_exceptions=True), a.connect_timeout)
    errors = [r for r in res if isinstance(r, BaseException)]
    if errors:
        return {"error": f"{len(errors)} of {a.conns} failed: {errors[0]!r}"}
    negotiated = bool(conns[0].response.headers.get("Sec-WebSocket-Extensions"))
    # one small message on each so per-connection deflate contexts exist
    for c in conns:
        await c.send("hello")
    for c in conns:
        await c.recv()
    await asyncio.sleep(1.0)
    after = tree_rss(a.pid)
    await asyncio.wait_for(asyncio.gather(*[c.close() for c in conns], return_exceptions=True), 30)
    return {"kib_per_conn": (after - before) / a.conns / 1024, "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20, "deflate_negotiated": negotiated}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["echo", "fanout", "churn", "memory"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--binary", action="store_true")
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--subs", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--round-timeout", type=float, default=10)
    p.add_argument("--connect-timeout", type=float, default=60)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--pid", type=int)
    p.add_argument("--deflate", action="store_true")
    a = p.parse_args()
    fn = {"echo": run_echo, "fanout": run_fanout, "churn": run_churn, "memory": run_memory}[a.mode]
    try:
        out = uvloop.run(fn(a))
    except Exception as e:  # reported, not raised: the harness records it
        out = {"error": repr(e)[:300]}
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
