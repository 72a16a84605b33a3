"""Load generator: picows client (Cython) on uvloop, one process.

Sub-commands print one JSON object on stdout. Every run is bounded in time.
  echo    --conns N --size B [--binary] --duration S [--pid PID: also messages per server CPU second]
  fanout  --subs N --rounds R
  churn   --concurrency N --duration S
  memory  --conns N --pid PID [--deflate]     (websockets client: picows has no deflate)
  echo and memory take --tls: wss, the server's certificate not verified (bench/tls.py)
  stall   --probes N --interval-ms I --size B --duration S
          one permessage-deflate client (own process, `bulk`, minimal client) echoes B-byte
          compressible text in a loop while N picows connections each send a small message every
          I ms; reports the probes' round-trip times (max, p99, p50)
"""
import argparse
import asyncio
import json
import os
import sys
import time

import uvloop
from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

URL = "ws://127.0.0.1:{port}{path}"
TLS_URL = "wss://127.0.0.1:{port}{path}"


def url_and_context(a, path):
    """The URL to connect to and the client TLS context (None for ws://)."""
    if not a.tls:
        return URL.format(port=a.port, path=path), None
    from bench.tls import client_context
    return TLS_URL.format(port=a.port, path=path), client_context()


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
    url, context = url_and_context(a, a.path or "/echo")
    for _ in range(a.conns):
        tr, cl = await asyncio.wait_for(
            ws_connect(lambda: EchoClient(payload, mtype, st), url, ssl_context=context,
                       max_frame_size=64 * 1024 * 1024), 10)
        conns.append((tr, cl))
    for _, cl in conns:
        cl.fire()
    await asyncio.sleep(a.warmup)
    st["measuring"] = True
    t0 = time.perf_counter()
    cpu0 = tree_cpu_seconds(a.pid) if a.pid else 0.0
    await asyncio.sleep(a.duration)
    st["measuring"] = False
    st["running"] = False
    el = time.perf_counter() - t0
    cpu = tree_cpu_seconds(a.pid) - cpu0 if a.pid else 0.0
    lat = sorted(st["lat"])
    for tr, _ in conns:
        tr.disconnect()
    result = {"msgs_per_s": st["count"] / el, "p50_ms": (pct(lat, 50) or 0) * 1e3,
              "p99_ms": (pct(lat, 99) or 0) * 1e3, "count": st["count"]}
    if a.pid:
        # The server's own cost per message: steadier than msg/s on a machine others load too.
        result["msgs_per_cpu_s"] = st["count"] / cpu if cpu else None
    return result


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
    url = URL.format(port=a.port, path=a.path or "/fanout")
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
    pub, _ = await asyncio.wait_for(ws_connect(WSListener, URL.format(port=a.port, path=a.publish_path)), 10)
    await asyncio.sleep(0.3)
    times = []
    cpu = 0.0  # server CPU seconds spent inside the rounds
    for r in range(a.rounds):
        st["n"] = 0
        st["done"] = loop.create_future()
        cpu0 = tree_cpu_seconds(a.pid) if a.pid else 0.0
        t0 = time.perf_counter()
        pub.send(WSMsgType.TEXT, f"round {r}".encode())
        try:
            t1 = await asyncio.wait_for(st["done"], a.round_timeout)
        except asyncio.TimeoutError:
            return {"error": f"round {r}: only {st['n']} of {a.subs} received within {a.round_timeout}s"}
        times.append(t1 - t0)
        if a.pid:
            cpu += tree_cpu_seconds(a.pid) - cpu0
        await asyncio.sleep(0.2)
    pub.disconnect()
    for tr in subs:
        tr.disconnect()
    s = sorted(times)
    result = {"median_ms": s[len(s) // 2] * 1e3 if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2 * 1e3,
              "min_ms": s[0] * 1e3, "max_ms": s[-1] * 1e3, "connect_s": connect_s}
    if a.pid:
        # The wall time above is bounded by this one client process receiving
        # 5,000 frames (the picows row shows that floor); the server's own cost
        # is its CPU time. /proc counts it in 10 ms ticks: summed over all rounds.
        result["server_cpu_ms"] = cpu * 1e3
        result["deliveries_per_cpu_s"] = a.subs * a.rounds / cpu if cpu else None
    return result


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
                # A normal closure: send_close() without a code sends code 0,
                # which RFC 6455 7.4.2 forbids, and a strict server answers 1002.
                tr.send_close(WSCloseCode.OK)
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
    cpu0 = tree_cpu_seconds(a.pid) if a.pid else 0.0
    t0 = time.perf_counter()
    await asyncio.sleep(a.duration)
    st["measuring"] = False
    el = time.perf_counter() - t0
    cpu = tree_cpu_seconds(a.pid) - cpu0 if a.pid else 0.0
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
    result = {"handshakes_per_s": st["count"] / el, "errors": st["errors"]}
    if a.pid:
        # This one client process spends ~300 us per handshake (connect, upgrade,
        # echo, close) and saturates its core before the faster servers do: the
        # rate above is then the client's. The server's own cost is its CPU time.
        result["server_cpu_share"] = cpu / el
        result["handshakes_per_cpu_s"] = st["count"] / cpu if cpu else None
    return result


def tree_cpu_times(pid):
    """(user, system) CPU seconds of the server process and its children so far."""
    import psutil
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    user = system = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        user += times.user
        system += times.system
    return user, system


def tree_cpu_seconds(pid):
    """User + system CPU seconds of the server process and its children so far."""
    return sum(tree_cpu_times(pid))


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
    url, context = url_and_context(a, a.path or "/echo")
    tls = {"ssl": context} if context else {}
    comp = "deflate" if a.deflate else None
    # warm-up: a few connections so lazy imports/allocations are not counted
    warm = [await asyncio.wait_for(connect(url, compression=comp, ping_interval=None, **tls), 10)
            for _ in range(20)]
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
            c = await asyncio.wait_for(
                connect(url, compression=comp, ping_interval=None, open_timeout=20, **tls), 25)
            conns.append(c)

    res = await asyncio.wait_for(asyncio.gather(*[one() for _ in range(a.conns)], return_exceptions=True), a.connect_timeout)
    errors = [r for r in res if isinstance(r, BaseException)]
    if errors:
        return {"error": f"{len(errors)} of {a.conns} failed: {errors[0]!r}"}
    # the server's answer, per connection: a server that ignores the offer must show up as such
    negotiated_n = sum(1 for c in conns if _deflate_accepted(c))
    # one small message on each so per-connection deflate contexts exist
    for c in conns:
        await c.send("hello")
    for c in conns:
        await c.recv()
    await asyncio.sleep(1.0)
    after = tree_rss(a.pid)
    await asyncio.wait_for(asyncio.gather(*[c.close() for c in conns], return_exceptions=True), 30)
    return {"kib_per_conn": (after - before) / a.conns / 1024, "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20, "deflate_negotiated": negotiated_n == len(conns),
            "deflate_conns": negotiated_n}


def _deflate_accepted(ws):
    ext = ws.response.headers.get_all("Sec-WebSocket-Extensions") if ws.response else []
    return any(e.strip().lower().startswith("permessage-deflate") for h in ext for e in h.split(","))


def stall_text(size):
    line = '{"id": 1234567, "user": "alice", "event": "price", "symbol": "ACME", "value": 101.25}\n'
    return (line * (size // len(line) + 1))[:size]


async def run_bulk(a):
    """Bulk side of `stall`, in its own process. A minimal permessage-deflate client on asyncio streams:
    the message is compressed once up front and sent with a zero mask, and the echoes are not inflated
    (only the first, to check it), so this client spends almost no CPU and cannot starve the probes,
    which share its core."""
    import base64
    import zlib
    msg = stall_text(a.size).encode()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = c.compress(msg) + c.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    body = body[:-4]  # RFC 7692: fresh compressor per message, so valid with or without context takeover
    n = len(body)  # minimal length encoding (wsproto insists)
    ln = bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big") if n < 65536 else \
        bytes([0xFF]) + n.to_bytes(8, "big")
    frame = bytes([0xC1]) + ln + b"\x00" * 4 + body  # FIN, RSV1 (compressed), text; masked with key 0
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", a.port, limit=1 << 20), 10)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n\r\n").encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1").lower()
    if not head.startswith("http/1.1 101"):
        return {"error": "handshake: " + head.splitlines()[0]}
    exts = [ln.split(":", 1)[1] for ln in head.split("\r\n") if ln.startswith("sec-websocket-extensions:")]
    if not any(e.strip().startswith("permessage-deflate") for h in exts for e in h.split(",")):
        print(json.dumps({"error": "deflate not negotiated"}), flush=True)
        return {"error": "deflate not negotiated"}

    async def read_message():
        parts, compressed = [], False
        while True:
            h = await reader.readexactly(2)
            op, n = h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            data = await reader.readexactly(n)
            if op == 0x9:  # ping -> pong (zero mask)
                writer.write(bytes([0x8A, 0x80 | n]) + b"\x00" * 4 + data)
                continue
            if op == 0x8:
                raise ConnectionError("server closed: " + data[2:].decode(errors="replace"))
            if op in (0x1, 0x2):
                compressed = bool(h[0] & 0x40)
            if op in (0x0, 0x1, 0x2):
                parts.append(data)
                if h[0] & 0x80:
                    return compressed, parts

    print(json.dumps({"ready": True}), flush=True)
    t0 = time.perf_counter()
    end = t0 + a.duration
    n = wire = 0
    while time.perf_counter() < end:
        writer.write(frame)
        await asyncio.wait_for(writer.drain(), 60)
        compressed, parts = await asyncio.wait_for(read_message(), 60)
        if n == 0:  # check the first echo in full
            d = zlib.decompressobj(-15)
            got = d.decompress(b"".join(parts) + b"\x00\x00\xff\xff") if compressed else b"".join(parts)
            if got != msg:
                return {"error": f"bulk echo of {len(got)} bytes differs from the {len(msg)} sent"}
        wire += sum(len(p) for p in parts)
        n += 1
    el = time.perf_counter() - t0
    writer.write(bytes([0x88, 0x82]) + b"\x00" * 4 + (1000).to_bytes(2, "big"))
    writer.close()
    return {"bulk_msgs": n, "bulk_mib_per_s": n * len(msg) / 2**20 / el, "echo_compressed": compressed,
            "echo_wire_kib": wire / max(n, 1) / 1024, "sent_wire_kib": len(body) / 1024}


class Probe(WSListener):
    def __init__(self, st):
        self.st = st

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.TEXT:
            now = time.perf_counter()
            st = self.st
            st["lat"].append(now - float(frame.get_payload_as_ascii_text()))
            st["outstanding"] -= 1
            if st["outstanding"] == 0 and not st["sending"] and not st["drained"].done():
                st["drained"].set_result(None)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


async def run_stall(a):
    loop = asyncio.get_running_loop()
    st = {"lat": [], "outstanding": 0, "sending": False, "drained": loop.create_future()}
    url = URL.format(port=a.port, path="/echo")
    probes = []
    for _ in range(a.probes):
        tr, _ = await asyncio.wait_for(ws_connect(lambda: Probe(st), url), 10)
        probes.append(tr)
    bulk = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "bulk", "--port", str(a.port), "--size", str(a.size),
        "--duration", str(a.duration + 0.5), stdout=asyncio.subprocess.PIPE)
    try:
        first = json.loads(await asyncio.wait_for(bulk.stdout.readline(), 20) or b"{}")
        if not first.get("ready"):
            return {"error": "bulk client: " + str(first.get("error", "no answer"))}
        await asyncio.sleep(0.3)  # let the first 16 MiB message reach the server
        interval = a.interval_ms / 1e3

        async def pinger(tr, k):
            await asyncio.sleep(interval * k / len(probes))  # spread the probes over the interval
            nxt = time.perf_counter()
            while st["sending"]:
                st["outstanding"] += 1
                tr.send(WSMsgType.TEXT, repr(time.perf_counter()).encode())
                nxt += interval
                await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

        async def lag_monitor():
            # the probes' own event loop: a late 1 ms tick means the client, not the server, was slow
            while st["sending"]:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                st["client_lag"] = max(st["client_lag"], time.perf_counter() - t - 0.001)

        st["sending"] = True
        st["client_lag"] = 0.0
        tasks = [asyncio.ensure_future(pinger(tr, k)) for k, tr in enumerate(probes)]
        tasks.append(asyncio.ensure_future(lag_monitor()))
        await asyncio.sleep(a.duration)
        st["sending"] = False
        await asyncio.gather(*tasks)
        if st["outstanding"] > 0:
            # a stall still going on at the end of the window is counted in full
            try:
                await asyncio.wait_for(st["drained"], 30)
            except asyncio.TimeoutError:
                return {"error": f"{st['outstanding']} probe messages unanswered after 30 s"}
        out = await asyncio.wait_for(bulk.stdout.read(), 90)
        res = json.loads(out.strip().splitlines()[-1])
        if res.get("error"):
            return {"error": "bulk client: " + res["error"]}
        if not res.get("bulk_msgs"):
            return {"error": "no 16 MiB message echoed within the window"}
    finally:
        if bulk.returncode is None:
            bulk.kill()
        await bulk.wait()
    for tr in probes:
        tr.disconnect()
    lat = sorted(st["lat"])
    return {"max_ms": lat[-1] * 1e3, "p99_ms": pct(lat, 99) * 1e3, "p50_ms": pct(lat, 50) * 1e3,
            "probe_msgs": len(lat), "client_lag_max_ms": st["client_lag"] * 1e3, **res}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["echo", "fanout", "churn", "memory", "stall", "bulk"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--binary", action="store_true")
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--subs", type=int, default=5000)
    p.add_argument("--path", help="echo, memory: the path (/echo); fanout: the subscribers' (/fanout, ...)")
    p.add_argument("--publish-path", default="/publish", help="fanout: the publisher's path (/publish_floor: "
                   "the floor, asgiws only)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--round-timeout", type=float, default=10)
    p.add_argument("--connect-timeout", type=float, default=60)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--pid", type=int)
    p.add_argument("--deflate", action="store_true")
    p.add_argument("--tls", action="store_true", help="echo, memory: wss:// (certificate not verified)")
    p.add_argument("--probes", type=int, default=20)
    p.add_argument("--interval-ms", type=float, default=10)
    a = p.parse_args()
    fn = {"echo": run_echo, "fanout": run_fanout, "churn": run_churn, "memory": run_memory,
          "stall": run_stall, "bulk": run_bulk}[a.mode]
    try:
        out = uvloop.run(fn(a))
    except Exception as e:  # reported, not raised: the harness records it
        out = {"error": repr(e)[:300]}
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
