"""Many idle WebSockets, pings on: memory and idle CPU per connection, and a broadcast to all of them.

    python -m bench.idle [--scenario idle19k] [--conns 19000] [--servers asgiws,uvicorn] [--runs N]
    python -m bench.idle --scenario idle100k [--conns 100000] [--workers 6] [--server-python PY]

idle19k: one worker, pinned to CPU 0 as bench/run.py pins it, holding `--conns`
WebSockets opened by client processes on CPU 1; every server at its default ping interval (asgiws
and uvicorn: 20 s). Per server: RSS per connection (tree RSS after the connections minus before,
over the count), idle server CPU over `--idle-window` seconds (45 s by default: two ping rounds),
and a broadcast to all: server CPU seconds per broadcast and the wall time from the publisher's
send to the last delivery (over every client process), for the app's plain `send` loop (WS
/publish; FastAPI's ConnectionManager shape) and, on asgiws, for `asgiws.broadcast` (WS
/broadcast_publish). asgiws's subscribers are on /broadcast, which joins both (so its memory figure
includes the broadcast subscription); uvicorn's are on /fanout.

idle100k: `--workers` asgiws workers with `--broadcast-url redis://` on a
redis-server of its own, `--conns` connections from enough client processes that each holds under
10,000 files; the same figures for the whole process tree, the broadcast through Redis. Not
pinned: every core serves and loads. A run-by-hand benchmark; on 2 cores it takes minutes.

Clients: picows on uvloop, pongs answered by the listener (pings counted), each process bound to
its own loopback source address (127.0.0.2, 127.0.0.3, ...: one address has ~28,000 ephemeral
ports towards one server port, net.ipv4.ip_local_port_range) and under 10,000 connections (this
machine caps open files at 20,000 per process). Prints one JSON object per server and a table.
"""
import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PER_CLIENT = 9500  # connections per client process: under half of the 20,000-file cap
CONNECT_CONCURRENCY = 100  # handshakes in flight per client process


# -- client process ---------------------------------------------------------------------------

async def client_main(a):
    from picows import WSListener, WSMsgType, ws_connect

    loop = asyncio.get_running_loop()
    st = {"token": None, "got": 0, "pings": 0, "lost": 0}

    class Idle(WSListener):
        def on_ws_frame(self, transport, frame):
            kind = frame.msg_type
            if kind == WSMsgType.PING:
                st["pings"] += 1
                transport.send_pong(frame.get_payload_as_bytes())
            elif kind == WSMsgType.TEXT:
                if frame.get_payload_as_bytes() == st["token"]:
                    st["got"] += 1
                    if st["got"] == len(conns):
                        say(f"done {time.monotonic():.6f}")
            elif kind == WSMsgType.CLOSE:
                transport.disconnect()

        def on_ws_disconnected(self, transport):
            st["lost"] += 1

    def say(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    url = f"ws://{a.host}:{a.port}{a.path}"
    conns = []
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one():
        async with sem:
            tr, _ = await ws_connect(Idle, url, enable_auto_pong=False, websocket_handshake_timeout=60,
                                     read_buffer_init_size=1024, local_addr=(a.source, 0))
            conns.append(tr)

    t0 = time.monotonic()
    results = await asyncio.gather(*[one() for _ in range(a.conns)], return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        say(f"error {len(errors)} of {a.conns} failed to connect: {errors[0]!r}")
    else:
        say(f"connected {len(conns)} {time.monotonic() - t0:.2f}")
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "expect":
            st["token"], st["got"] = line[1].encode(), 0
            say("armed")
        elif line[0] == "stats":
            say(f"stats {st['pings']} {st['lost']}")
        elif line[0] == "quit":
            break
    for tr in conns:
        tr.disconnect()
    await asyncio.sleep(0.5)


# -- controller -------------------------------------------------------------------------------

class Clients:
    """Client processes, each bound to its own source address, spoken to by lines on stdin/stdout."""

    def __init__(self, host, port, path, total, cpu):
        self.procs = []
        n_procs = -(-total // PER_CLIENT)
        for k in range(n_procs):
            share = total // n_procs + (k < total % n_procs)
            cmd = [sys.executable, "-m", "bench.idle", "--client", "--host", host, "--port", str(port),
                   "--path", path, "--conns", str(share), "--source", f"127.0.0.{2 + k}"]
            if cpu is not None and shutil.which("taskset"):
                cmd = ["taskset", "-c", cpu, *cmd]
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               text=True, start_new_session=True))

    def ask(self, line=None, timeout=120.0):
        """Send `line` to every client (None: send nothing) and return each one's answer line."""
        import selectors
        if line is not None:
            for p in self.procs:
                p.stdin.write(line + "\n")
                p.stdin.flush()
        answers = {}
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for p in self.procs:
                sel.register(p.stdout, selectors.EVENT_READ, p)
            while len(answers) < len(self.procs):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(answers)} of {len(self.procs)} clients answered {line!r}")
                for key, _ in sel.select(left):
                    answers[key.data.pid] = key.data.stdout.readline().strip()
                    sel.unregister(key.fileobj)
        return [answers[p.pid] for p in self.procs]

    def stop(self):
        for p in self.procs:
            try:
                p.stdin.write("quit\n")
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


class Publisher:
    """One WebSocket to the server's publish route, driven from a thread with its own loop."""

    def __init__(self, host, port, path):
        import threading

        import uvloop
        from picows import WSListener, ws_connect
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        url = f"ws://{host}:{port}{path}"
        self.transport, _ = asyncio.run_coroutine_threadsafe(ws_connect(WSListener, url), self.loop).result(30)

    def send(self, text):
        from picows import WSMsgType
        self.loop.call_soon_threadsafe(self.transport.send, WSMsgType.TEXT, text.encode())

    def close(self):
        self.loop.call_soon_threadsafe(self.transport.disconnect)
        time.sleep(0.2)
        self.loop.call_soon_threadsafe(self.loop.stop)


def broadcast_rounds(clients, publisher, pid, label, rounds, timeout, idle_cpu_pct=0.0):
    """Median server CPU seconds per broadcast and median wall seconds to the last delivery.

    The CPU is measured from the send to 0.5 s after the last delivery, over which the idle
    connections' pings go on: `idle_cpu_pct` of that span (the idle window's rate) is taken off, so
    that the figure is the broadcast's own.
    """
    from bench.loadgen import tree_cpu_times
    cpus, walls, kernel = [], [], []
    for r in range(rounds):
        token = f"{label}-{r}-{time.monotonic_ns()}"
        assert all(a == "armed" for a in clients.ask(f"expect {token}"))
        time.sleep(0.5)
        user0, system0 = tree_cpu_times(pid)
        t0 = time.monotonic()
        publisher.send(token)
        done = clients.ask(timeout=timeout)
        bad = [a for a in done if not a.startswith("done ")]
        if bad:
            raise RuntimeError(f"{label}: {bad[0]}")
        walls.append(max(float(a.split()[1]) for a in done) - t0)
        time.sleep(0.5)  # the server's last writes are done before the last delivery; its CPU settles
        user, system = tree_cpu_times(pid)
        cpu = user - user0 + system - system0
        cpus.append(cpu - idle_cpu_pct / 100 * (time.monotonic() - t0))
        kernel.append((system - system0) / cpu if cpu else 0.0)
    middle = len(cpus) // 2
    return {f"{label}_cpu_s": sorted(cpus)[middle], f"{label}_wall_s": sorted(walls)[middle],
            f"{label}_kernel_share": sorted(kernel)[middle],  # of the server's CPU in those spans
            f"{label}_cpu_s_all": cpus, f"{label}_wall_s_all": walls}


def hold_and_measure(pid, clients, conns, window, before_rss, connect_s):
    from bench.loadgen import tree_cpu_times, tree_rss
    pings0 = sum(int(a.split()[1]) for a in clients.ask("stats"))
    time.sleep(3.0)
    rss = tree_rss(pid)
    user0, system0 = tree_cpu_times(pid)
    time.sleep(window)
    user, system = tree_cpu_times(pid)
    user, system = user - user0, system - system0
    cpu = user + system
    stats = [a.split() for a in clients.ask("stats")]
    pings = sum(int(s[1]) for s in stats) - pings0
    lost = sum(int(s[2]) for s in stats)
    return {"conns": conns, "connect_s": connect_s, "kib_per_conn": (rss - before_rss) / conns / 1024,
            "rss_mib": rss / 2**20, "idle_window_s": window, "idle_cpu_pct": cpu / window * 100,
            # in the kernel: the pings' and pongs' send and receive paths (loopback TCP both ways)
            "idle_cpu_user_pct": user / window * 100, "idle_cpu_system_pct": system / window * 100,
            "pings_per_conn": pings / conns, "lost": lost,
            # how many pings fall in the window depends on when the connections opened: per ping
            # is the figure to compare between servers and runs
            "cpu_us_per_ping": cpu / pings * 1e6 if pings else None}


def open_clients(host, port, path, conns, cpu, timeout):
    clients = Clients(host, port, path, conns, cpu)
    # Under a load average of 17 on 2 cores, 100,000 handshakes went at 58 to 150 a second.
    answers = clients.ask(timeout=timeout or max(120.0, conns / 20))
    bad = [a for a in answers if not a.startswith("connected ")]
    if bad:
        clients.stop()
        raise RuntimeError(bad[0])
    return clients, max(float(a.split()[2]) for a in answers)


def run_one(name, a):
    from bench import run
    from bench.loadgen import tree_rss
    port = run.free_port()
    os.makedirs(os.path.join(HERE, ".logs"), exist_ok=True)
    with open(os.path.join(HERE, ".logs", f"idle-{name}.log"), "w") as logf:
        proc = run.start_server(name, port, logf)
    if proc is None:
        return {"server": name, "error": "did not start"}
    asgiws = name.startswith("asgiws")
    try:
        before = tree_rss(proc.pid)
        clients, connect_s = open_clients("127.0.0.1", port, "/broadcast" if asgiws else "/fanout", a.conns,
                                          run.LOAD_CPU if run.TASKSET else None, a.connect_timeout)
        try:
            result = {"server": name, **hold_and_measure(proc.pid, clients, a.conns, a.idle_window, before,
                                                         connect_s)}
            publisher = Publisher("127.0.0.1", port, "/publish")
            result.update(broadcast_rounds(clients, publisher, proc.pid, "send_loop", a.broadcasts, 120,
                                           result["idle_cpu_pct"]))
            publisher.close()
            if asgiws:
                publisher = Publisher("127.0.0.1", port, "/broadcast_publish")
                result.update(broadcast_rounds(clients, publisher, proc.pid, "broadcast", a.broadcasts, 120,
                                               result["idle_cpu_pct"]))
                publisher.close()
        finally:
            clients.stop()
        return result
    except Exception as exc:  # noqa: BLE001 - one server's failure is a row that says so, not a lost run
        return {"server": name, "error": repr(exc)}
    finally:
        run.stop_server(proc)


def cmd_one(a):
    from bench import run
    if a.base_tree:
        run.BASE_TREE[0] = os.path.abspath(a.base_tree)
    servers = a.servers.split(",")
    results = {s: [] for s in servers}
    for r in range(a.runs):
        for name in run.rotated(servers, r):
            res = run_one(name, a)
            print(json.dumps(res), flush=True)
            results[name].append(res)
    print_table(results, a.conns)


def print_table(results, conns):
    keys = [("kib_per_conn", "RSS per connection, KiB"), ("idle_cpu_pct", "idle server CPU, % of a core"),
            ("idle_cpu_user_pct", "  of which user space"), ("idle_cpu_system_pct", "  of which the kernel"),
            ("pings_per_conn", "pings answered per connection in the window"),
            ("cpu_us_per_ping", "idle server CPU per ping answered, µs"),
            ("send_loop_cpu_s", "send loop: server CPU s per broadcast"),
            ("send_loop_wall_s", "send loop: s to the last delivery"),
            ("send_loop_kernel_share", "send loop: share of that CPU in the kernel"),
            ("broadcast_cpu_s", "asgiws.broadcast: server CPU s per broadcast"),
            ("broadcast_wall_s", "asgiws.broadcast: s to the last delivery"),
            ("broadcast_kernel_share", "asgiws.broadcast: share of that CPU in the kernel")]
    names = list(results)
    print(f"\n{conns:,} idle WebSockets | " + " | ".join(names))
    for key, label in keys:
        cells = []
        for n in names:
            vals = sorted(r[key] for r in results[n] if r.get(key) is not None)
            cells.append(f"{vals[len(vals) // 2]:.4g}" if vals else "n/a")
        print(f"{label} | " + " | ".join(cells))
    for n in names:
        for r in results[n]:
            if "error" in r:
                print(f"{n}: {r['error']}")


def cmd_many(a):
    from bench import run
    from bench.loadgen import tree_rss
    redis_port, port = run.free_port(), run.free_port()
    tmp = tempfile.mkdtemp(prefix="asgiws-idle-")
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
                             start_new_session=True)
    logf = open(os.path.join(tmp, "asgiws.log"), "w")  # noqa: SIM115 - closed below
    cmd = [a.server_python, "-m", "asgiws", "bench.app:app", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(a.workers), "--broadcast-url", f"redis://127.0.0.1:{redis_port}",
           "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    clients = None
    try:
        if not run.wait_ready(server, port, 60):
            raise RuntimeError("asgiws did not start: see " + logf.name)
        time.sleep(2.0)
        before = tree_rss(server.pid)
        clients, connect_s = open_clients("127.0.0.1", port, "/broadcast", a.conns, None, a.connect_timeout)
        result = {"server": f"asgiws --workers {a.workers} --broadcast-url redis://",
                  "client_processes": len(clients.procs),
                  **hold_and_measure(server.pid, clients, a.conns, a.idle_window, before, connect_s)}
        result["worker_rss_mib"] = _worker_rss(server.pid)
        publisher = Publisher("127.0.0.1", port, "/broadcast_publish")
        result.update(broadcast_rounds(clients, publisher, server.pid, "broadcast", a.broadcasts, 300,
                                       result["idle_cpu_pct"]))
        publisher.close()
        result["limits"] = kernel_limits()
        print(json.dumps(result, indent=1), flush=True)
    finally:
        if clients is not None:
            clients.stop()
        run.stop_server(server)
        redis.terminate()
        redis.wait(10)
        logf.close()
        print("server log:", logf.name, file=sys.stderr)


def _worker_rss(pid):
    import psutil
    return [round(c.memory_info().rss / 2**20, 1) for c in psutil.Process(pid).children()]


def kernel_limits():
    """The kernel settings many connections meet, as this machine has them."""
    found = {"RLIMIT_NOFILE": resource.getrlimit(resource.RLIMIT_NOFILE)}
    for name in ("net/ipv4/ip_local_port_range", "fs/file-max", "fs/nr_open", "net/core/somaxconn",
                 "net/ipv4/tcp_max_syn_backlog"):
        try:
            with open(f"/proc/sys/{name}") as f:
                found[name.replace("/", ".")] = " ".join(f.read().split())
        except OSError:
            pass
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=["idle19k", "idle100k"], default="idle19k",
                   help="idle19k: one pinned worker per server; idle100k: --workers asgiws workers with "
                        "--broadcast-url redis://")
    p.add_argument("--conns", type=int, help="connections (default: 19000 for idle19k, 100000 for idle100k)")
    p.add_argument("--servers", default="asgiws,uvicorn", help="idle19k: bench/run.py's server names")
    p.add_argument("--runs", type=int, default=1, help="idle19k: rounds, the servers' order rotated")
    p.add_argument("--base-tree", help="idle19k: the tree of the asgiws-base server (as bench/run.py's)")
    p.add_argument("--workers", type=int, default=6, help="idle100k: asgiws workers")
    p.add_argument("--server-python", default=sys.executable,
                   help="idle100k: the Python that runs asgiws (it needs asgiws[redis])")
    p.add_argument("--idle-window", type=float, default=45.0, help="seconds; 45 s holds two ping rounds")
    p.add_argument("--broadcasts", type=int, default=3, help="broadcasts to all per publishing path")
    p.add_argument("--connect-timeout", type=float,
                   help="seconds for every connection to open (default: one per 20 connections, at least 120)")
    # One client process of the load, started by the controller.
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.client:
        import uvloop
        uvloop.run(client_main(a))
    elif a.scenario == "idle19k":
        a.conns = a.conns or 19000
        cmd_one(a)
    else:
        a.conns = a.conns or 100000
        cmd_many(a)


if __name__ == "__main__":
    main()
