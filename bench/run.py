"""Benchmark harness: python -m bench.run [--quick] [--only SCENARIO] [--servers a,b]

For each scenario, in rounds: each round runs every server once (fresh process),
in an order rotated by one per round, so background load drifting over time hits
every server alike; the median over rounds is reported. Servers run bench/app.py
(picows: bench/picows_server.py), one worker, uvloop, logging off, 127.0.0.1,
server pinned to CPU 0 and the load to CPU 1 (taskset, when present). Writes
bench/RESULTS.md.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from importlib import metadata

from bench import tls
from bench.ports import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
TASKSET = shutil.which("taskset") if (os.cpu_count() or 1) >= 2 else None
WRK = shutil.which("wrk")
SERVER_CPU, LOAD_CPU = "0", "1"

# asgiws-scraped: asgiws with --metrics-port, scraped every SCRAPE_INTERVAL s while the load runs (what a
# Prometheus does), beside plain asgiws in the same rounds. asgiws-base: asgiws from --base-tree DIR (e.g. a
# checkout of main), to compare the cost of a change against the code before it.
METRICS_PORTS = {}  # server port -> its --metrics-port
SCRAPE_INTERVAL = 1.0
BASE_TREE = [None]  # --base-tree


def _asgiws(port, *extra):
    return [PY, "-m", "asgiws", "bench.app:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", *extra]


SERVERS = {
    "asgiws": _asgiws,
    "asgiws-scraped": lambda port: _asgiws(port, "--metrics-port", str(METRICS_PORTS[port])),
    "asgiws-base": _asgiws,
    # uvicorn's default WebSocket implementation (--ws auto picks websockets-sansio when websockets is
    # installed, uvicorn 0.54); the legacy websockets implementation and wsproto are rows of their own.
    "uvicorn": lambda port: [PY, "-m", "uvicorn", "bench.app:app", "--host", "127.0.0.1", "--port", str(port),
                             "--loop", "uvloop", "--http", "httptools", "--ws", "auto",
                             "--log-level", "warning", "--no-access-log", "--workers", "1"],
    "uvicorn-legacy": lambda port: [PY, "-m", "uvicorn", "bench.app:app", "--host", "127.0.0.1", "--port",
                                    str(port), "--loop", "uvloop", "--http", "httptools", "--ws", "websockets",
                                    "--log-level", "warning", "--no-access-log", "--workers", "1"],
    "uvicorn-wsproto": lambda port: [PY, "-m", "uvicorn", "bench.app:app", "--host", "127.0.0.1", "--port", str(port),
                                     "--loop", "uvloop", "--http", "httptools", "--ws", "wsproto",
                                     "--log-level", "warning", "--no-access-log", "--workers", "1"],
    "hypercorn": lambda port: [PY, "-m", "hypercorn", "bench.app:app", "--bind", f"127.0.0.1:{port}",
                               "--worker-class", "uvloop", "--workers", "1", "--log-level", "warning"],
    "granian": lambda port: [PY, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--loop", "uvloop", "--log-level", "warning", "--no-access-log",
                             "bench.app:app"],
    "picows": lambda port: [PY, os.path.join(HERE, "picows_server.py"), "--port", str(port)],
}
BASELINE = "asgiws"
WS_ONLY = {"picows"}  # ceiling: WebSocket scenarios only

# name -> (title, metric key, unit, higher is better, websocket scenario)
SCENARIOS = {
    "echo64": ("WS echo 64 B text, 50 conns", "msgs_per_s", "msg/s", True, True),
    # picows on its /echo_floor route: bench/app.py's echo coroutine stepped straight from each
    # frame, no Task (bench/picows_server.py's AsgiFloor): the least any ASGI server could do,
    # beside asgiws serving the same path (any other WS path echoes) in the same rounds
    "echo64_floor": ("WS echo 64 B text, 50 conns, picows running the ASGI app with no Task (floor)",
                     "msgs_per_s", "msg/s", True, True),
    "echo1m": ("WS echo 1 MiB binary, 4 conns", "msgs_per_s", "msg/s", True, True),
    "fanout": ("Fan-out to 5,000 subscribers, publisher loops over send", "median_ms", "ms", False, True),
    "fanout_queue": ("Fan-out to 5,000 subscribers, a task + queue each", "median_ms", "ms", False, True),
    "fanout_broadcast": ("Fan-out to 5,000 subscribers, asgiws.broadcast (server-side)", "median_ms", "ms", False,
                         True),
    # the publisher's loop with the server's send taken out (bench/app.py's /publish_floor): what
    # the app's own work per subscriber leaves for any ASGI server, beside picows's loop
    "fanout_floor": ("Fan-out to 5,000 subscribers, the app's loop with the server's send taken out (floor)",
                     "median_ms", "ms", False, True),
    "memory": ("RSS per idle WS conn, 2,000 conns, no deflate", "kib_per_conn", "KiB", False, True),
    "memory_deflate": ("RSS per idle WS conn, 2,000 conns, permessage-deflate", "kib_per_conn", "KiB", False, True),
    "churn": ("Churn: connect+echo+close, 16 at a time", "handshakes_per_s", "hs/s", True, True),
    "http_get": ("HTTP GET hello world, wrk 64 conns", "req_per_s", "req/s", True, False),
    "http_post": ("HTTP POST 1 MiB echo, wrk 8 conns", "req_per_s", "req/s", True, False),
    # what most API calls are: a small JSON body in the same read as its head
    "http_post_json": ("HTTP POST 86-byte JSON echo, wrk 64 conns", "req_per_s", "req/s", True, False),
    "stall": ("Stall: worst RTT of 20 pinging conns while 1 conn echoes 16 MiB deflate text", "max_ms", "ms",
              False, True),
    # wss: the same loads over TLS, a self-signed certificate made at run time (bench/tls.py)
    "wss_echo64": ("wss echo 64 B text, 50 conns", "msgs_per_s", "msg/s", True, True),
    "wss_echo1m": ("wss echo 1 MiB binary, 4 conns", "msgs_per_s", "msg/s", True, True),
    "wss_memory": ("RSS per idle wss conn, 1,000 conns, no deflate", "kib_per_conn", "KiB", False, True),
}
TLS_SCENARIOS = {"wss_echo64", "wss_echo1m", "wss_memory"}
# more figures per scenario: (metric key, label, unit, higher is better); each gets its own rows
_HTTP_CPU = [("req_per_cpu_s", "requests per server CPU second", "1/s", True)]
_FANOUT_CPU = [("deliveries_per_cpu_s", "deliveries per server CPU second", "1/s", True)]
_MSG_CPU = [("msgs_per_cpu_s", "messages per server CPU second", "1/s", True)]
EXTRA = {"echo64": [("p50_ms", "p50", "ms", False), ("p99_ms", "p99", "ms", False),
                    *_MSG_CPU],
         "echo64_floor": _MSG_CPU,
         "echo1m": _MSG_CPU,
         "stall": [("p99_ms", "p99", "ms", False)],
         # TLS record work is most of a wss server's CPU: per CPU second is the figure noise moves less
         "wss_echo64": _MSG_CPU, "wss_echo1m": _MSG_CPU,
         "fanout": _FANOUT_CPU, "fanout_queue": _FANOUT_CPU, "fanout_broadcast": _FANOUT_CPU,
         "fanout_floor": _FANOUT_CPU,
         "churn": [("handshakes_per_cpu_s", "handshakes per server CPU second", "1/s", True)],
         "http_get": _HTTP_CPU, "http_post": _HTTP_CPU, "http_post_json": _HTTP_CPU}
# scenarios that only some servers can run (others: n/a); stall needs permessage-deflate
ONLY_ON = {"stall": {"asgiws", "uvicorn", "uvicorn-legacy", "uvicorn-wsproto", "hypercorn"},
           # asgiws's own API; picows (its publisher writes to each subscriber) is the ceiling beside it
           "fanout_broadcast": {"asgiws", "asgiws-scraped", "picows"},
           # asgiws internals; picows's own loop is the ceiling beside it
           "fanout_floor": {"asgiws", "picows"},
           "echo64_floor": {"asgiws", "picows"}}
# per-run loads, seconds unless said otherwise: full / --quick
# wrk takes whole seconds only ("2.5s" is rejected with its usage text).
DUR = {
    False: {"echo": 2, "churn": 2, "http_get": 4, "http_post": 3, "fanout_rounds": 10, "mem_conns": 2000,
            "stall": 3, "wss_mem_conns": 1000},
    True: {"echo": 1, "churn": 1, "http_get": 2, "http_post": 2, "fanout_rounds": 3, "mem_conns": 2000,
           "stall": 2, "wss_mem_conns": 1000},
}

_procs = []


def pin(cmd, cpu):
    return [TASKSET, "-c", cpu] + cmd if TASKSET else cmd


def wait_ready(proc, port, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def start_server(name, port, logf, extra=()):
    """The server on port (extra: more flags, e.g. TLS), once it accepts connections; None if it did not."""
    # asgiws-base runs from the other tree: `python -m` puts the working directory first on sys.path,
    # ahead of this checkout's editable install.
    tree = BASE_TREE[0] if name == "asgiws-base" else ROOT
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if name == "asgiws-scraped":
        METRICS_PORTS[port] = free_port()
    cmd = SERVERS[name](port) + list(extra)
    proc = subprocess.Popen(pin(cmd, SERVER_CPU), cwd=tree, stdout=logf, stderr=logf,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _procs.append(proc)
    if not wait_ready(proc, port, 15):
        stop_server(proc)
        return None
    time.sleep(0.3)
    return proc


class Scraper(threading.Thread):
    """GET /metrics every SCRAPE_INTERVAL s until stopped; counts the answers (and failures)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stopping = threading.Event()
        self.scrapes = self.failures = 0

    def run(self):
        while not self.stopping.wait(SCRAPE_INTERVAL):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    ok = response.status == 200 and b"asgiws_websocket_connections" in response.read()
            except OSError:
                ok = False
            self.scrapes += ok
            self.failures += not ok

    def stop(self):
        self.stopping.set()
        self.join(10)
        return {"scrapes": self.scrapes, "scrape_failures": self.failures}


def stop_server(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    if proc in _procs:
        _procs.remove(proc)


def kill_all():
    for p in list(_procs):
        try:
            stop_server(p)
        except Exception:
            pass


def run_cmd(cmd, timeout):
    try:
        r = subprocess.run(pin(cmd, LOAD_CPU), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "load timed out (server hung?)"
    return r.stdout, r.stderr


def loadgen(args, timeout):
    out, err = run_cmd([PY, "-m", "bench.loadgen"] + args, timeout)
    if out is None:
        return {"error": err}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except Exception:
        return {"error": "no result: " + (err or "")[-300:]}


def parse_wrk(out):
    res = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            res["req_per_s"] = float(line.split()[1])
        elif " requests in " in line:
            res["requests"] = int(line.split()[0])
        elif line.startswith("Non-2xx"):
            res["non2xx"] = int(line.split()[-1])
        elif line.startswith("Socket errors"):
            res["socket_errors"] = line
    return res


def wrk(port, conns, dur, pid, script=None, path="/"):
    """wrk's figures, and requests per server CPU second (steadier than req/s on a shared machine)."""
    if not WRK:
        return {"error": "wrk not installed"}
    cmd = [WRK, "-t", "1", "-c", str(conns), "-d", f"{dur}s", "--timeout", "5s"]
    if script:
        cmd += ["-s", os.path.join(HERE, script)]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    from bench.loadgen import tree_cpu_seconds
    cpu0 = tree_cpu_seconds(pid)
    out, err = run_cmd(cmd, dur + 20)
    cpu = tree_cpu_seconds(pid) - cpu0
    if out is None:
        return {"error": err}
    r = parse_wrk(out)
    if "req_per_s" not in r:
        return {"error": "wrk: " + (out + err)[-300:]}
    r["req_per_cpu_s"] = r["requests"] / cpu if cpu and "requests" in r else None
    if r.get("non2xx"):
        r["error"] = f"{r['non2xx']} non-2xx responses"
    return r


def scenario(name, port, pid, q):
    D = DUR[q]
    d = D["echo"]
    if name in ("echo64", "echo64_floor"):
        path = ["--path", "/echo_floor"] if name == "echo64_floor" else []
        return loadgen(["echo", "--port", str(port), "--conns", "50", "--size", "64", "--duration", str(d),
                        "--pid", str(pid), *path], d + 30)
    if name == "echo1m":
        return loadgen(["echo", "--port", str(port), "--conns", "4", "--size", str(1 << 20), "--binary",
                        "--duration", str(d), "--pid", str(pid)], d + 30)
    if name in ("fanout", "fanout_queue", "fanout_broadcast", "fanout_floor"):
        paths = ["--path", "/fanout", "--publish-path", "/publish_floor"] if name == "fanout_floor" else [
            "--path", "/" + name]
        return loadgen(["fanout", "--port", str(port), "--subs", "5000", "--rounds", str(D["fanout_rounds"]),
                        *paths, "--pid", str(pid), "--connect-timeout", "60"], 150)
    if name in ("memory", "memory_deflate"):
        a = ["memory", "--port", str(port), "--conns", str(D["mem_conns"]), "--pid", str(pid),
             "--connect-timeout", "60"]
        return loadgen(a + (["--deflate"] if name == "memory_deflate" else []), 120)
    if name == "churn":
        return loadgen(["churn", "--port", str(port), "--concurrency", "16", "--duration", str(D["churn"]),
                        "--pid", str(pid)], D["churn"] + 40)
    if name == "stall":
        return loadgen(["stall", "--port", str(port), "--probes", "20", "--interval-ms", "10",
                        "--size", str(16 << 20), "--duration", str(D["stall"])], D["stall"] + 180)
    if name in ("wss_echo64", "wss_echo1m"):
        size = ["--size", "64"] if name == "wss_echo64" else ["--size", str(1 << 20), "--binary"]
        conns = "50" if name == "wss_echo64" else "4"
        return loadgen(["echo", "--tls", "--port", str(port), "--conns", conns, *size, "--duration", str(d),
                        "--pid", str(pid)], d + 30)
    if name == "wss_memory":
        return loadgen(["memory", "--tls", "--port", str(port), "--conns", str(D["wss_mem_conns"]), "--pid",
                        str(pid), "--connect-timeout", "60"], 120)
    if name == "http_get":
        return wrk(port, 64, D["http_get"], pid)
    if name == "http_post":
        return wrk(port, 8, D["http_post"], pid, script="post.lua", path="/echo")
    if name == "http_post_json":
        return wrk(port, 64, D["http_get"], pid, script="post_json.lua", path="/echo")
    raise ValueError(name)


def applies(server, name):
    if server in WS_ONLY and not SCENARIOS[name][4]:
        return False
    return server in ONLY_ON.get(name, (server,))


def rotated(seq, k):
    k %= len(seq) or 1
    return seq[k:] + seq[:k]


def median(vals):
    s = sorted(vals)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def machine_info():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = {}
    for pkg in ["asgiws", "uvicorn", "websockets", "wsproto", "hypercorn", "granian", "picows", "uvloop",
                "httptools", "psutil"]:
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = "not installed"
    try:
        wv = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=5)
        vers["wrk"] = (wv.stdout + wv.stderr).strip().splitlines()[0]
    except Exception:
        vers["wrk"] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "versions": vers,
            "pinning": f"server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU} (taskset)" if TASKSET else "none"}


def fmt(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def not_negotiated(n, r):
    return n == "memory_deflate" and not all(x.get("deflate_negotiated") for x in r.get("runs", []))


def write_results(path, results, servers, scen, info, mode, elapsed, runs):
    L = ["# asgiws benchmark results", "",
         f"Generated by `python -m bench.run{' --quick' if mode == 'quick' else ''}` on "
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; mode **{mode}** "
         f"({runs} round{'s' if runs != 1 else ''} per scenario, each round runs every server once in a rotated "
         f"order; median over rounds reported); total {elapsed:.0f} s.",
         "", "## Machine", "",
         f"- CPU: {info['cpu']} — {info['cores']} cores", f"- Kernel: {info['kernel']}",
         f"- Python: {info['python']}", f"- Pinning: {info['pinning']}", "", "## Versions", ""]
    L += [f"- {k}: {v}" for k, v in info["versions"].items()]
    L += ["", "## Absolute figures", "",
          "Median over rounds. `failed: …` = the server did not start, crashed, hung, or the load reported errors; "
          "`n/a` = scenario does not apply (picows is WebSocket-only; the stall scenario needs permessage-deflate, "
          "which granian and picows do not offer); `not negotiated` = permessage-deflate was offered and the "
          "server declined it (the figure in brackets is then an uncompressed connection's).", ""]
    L.append("| scenario | unit | " + " | ".join(servers) + " |")
    L.append("|---|---|" + "---|" * len(servers))

    def cell(s, n, key):
        r = results.get(s, {}).get(n)
        if r is None:
            return "n/a"
        if r.get("failed"):
            return "failed: " + r["failed"][:60].replace("|", "/")
        txt = fmt(r.get(key))
        if not_negotiated(n, r):
            txt = f"not negotiated ({txt})"
        return txt

    def rows(n):
        """(title, metric key, unit, higher is better) of every figure scenario n reports."""
        title, key, unit, hib, _ = SCENARIOS[n]
        return [(title, key, unit, hib)] + [(f"{title}: {lab}", k, u, h) for k, lab, u, h in EXTRA.get(n, [])]

    for n in scen:
        for title, key, unit, hib in rows(n):
            L.append(f"| {title} | {unit} {'↑' if hib else '↓'} | " + " | ".join(cell(s, n, key) for s in servers)
                     + " |")
    peers = [s for s in servers if s != BASELINE]
    L += ["", f"## Ratio {BASELINE}/peer", "",
          "asgiws figure divided by the peer's figure, same unit. For ↑ metrics (throughput) >1 means asgiws is "
          "better; for ↓ metrics (latency, time, memory) <1 means asgiws is better.", ""]
    L.append("| scenario | " + " | ".join(peers) + " |")
    L.append("|---|" + "---|" * len(peers))
    for n in scen:
        for title, key, _unit, hib in rows(n):
            row = []
            for p in peers:
                a = results.get(BASELINE, {}).get(n)
                b = results.get(p, {}).get(n)
                if (not a or not b or a.get("failed") or b.get("failed") or not b.get(key) or a.get(key) is None
                        or not_negotiated(n, a) or not_negotiated(n, b)):
                    row.append("—")
                else:
                    row.append(f"{a[key] / b[key]:.2f}")
            L.append(f"| {title} ({'↑' if hib else '↓'}) | " + " | ".join(row) + " |")
    L += ["", "## Raw per-run results", "", "```"]
    for s in servers:
        for n in scen:
            r = results.get(s, {}).get(n)
            if r is not None:
                L.append(f"{s:16} {n:15} {json.dumps(r.get('runs', r.get('failed')))}")
    L += ["```", ""]
    with open(path, "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 round per scenario, short durations")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--servers", help="comma-separated servers: " + ",".join(SERVERS))
    ap.add_argument("--runs", type=int, help="override the number of rounds (full: 3, quick: 1)")
    ap.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--base-tree", metavar="DIR",
                    help="another asgiws checkout (e.g. of main, C helper built) served as asgiws-base")
    a = ap.parse_args()
    # The two asgiws variants run only when named (they compare asgiws with itself, not with peers).
    variants = ("asgiws-base", "asgiws-scraped")
    servers = a.servers.split(",") if a.servers else [s for s in SERVERS if s not in variants]
    if "asgiws-base" in servers:
        if not a.base_tree or not os.path.isdir(os.path.join(a.base_tree, "asgiws")):
            ap.error("asgiws-base needs --base-tree DIR, a checkout with the asgiws package in it")
        BASE_TREE[0] = os.path.abspath(a.base_tree)
    scen = a.only.split(",") if a.only else list(SCENARIOS)
    for s in servers:
        if s not in SERVERS:
            ap.error(f"unknown server {s}")
    for n in scen:
        if n not in SCENARIOS:
            ap.error(f"unknown scenario {n}")
    runs = a.runs or (1 if a.quick else 3)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 12000:
        print("warning: RLIMIT_NOFILE below 12000; fanout may fail", file=sys.stderr)
    logdir = os.path.join(HERE, ".logs")
    os.makedirs(logdir, exist_ok=True)
    t_start = time.time()
    info = machine_info()
    results = {}
    certificate = tls.make_certificate() if TLS_SCENARIOS & set(scen) else None

    def onsig(sig, frm):
        kill_all()
        sys.exit(1)

    signal.signal(signal.SIGTERM, onsig)
    try:
        dead = {}  # server -> reason, once it failed to start: its later runs are skipped
        for n in scen:
            cand = [s for s in servers if applies(s, n)]
            vals = {s: [] for s in cand}
            failed = {}
            for i in range(runs):
                # round i: every server once, order rotated by i so no server always runs first/last
                for s in rotated(cand, i):
                    if s in dead or s in failed:
                        continue
                    port = free_port()
                    t0 = time.time()
                    with open(os.path.join(logdir, f"{s}.{n}.{i}.log"), "w") as logf:
                        extra = tls.SERVER_FLAGS[s](*certificate) if n in TLS_SCENARIOS else ()
                        proc = start_server(s, port, logf, extra)
                        if proc is None:
                            r, alive = {"error": "failed to start"}, True
                            dead[s] = "failed to start"
                        else:
                            scraper = Scraper(METRICS_PORTS[port]) if s == "asgiws-scraped" else None
                            if scraper is not None:
                                scraper.start()
                            try:
                                r = scenario(n, port, proc.pid, a.quick)
                                if scraper is not None:
                                    r.update(scraper.stop())
                                    if r["scrape_failures"] or not r["scrapes"]:
                                        r["error"] = f"{r['scrape_failures']} scrape(s) of /metrics failed"
                            finally:
                                alive = proc.poll() is None
                                stop_server(proc)
                    err = "server crashed" if not alive else r.get("error")
                    if err:
                        failed[s] = err
                        print(f"{s:16} {n:15} round {i + 1}/{runs}: FAILED: {err}", flush=True)
                        continue
                    vals[s].append(r)
                    print(f"{s:16} {n:15} round {i + 1}/{runs} ({time.time() - t0:.1f} s): {json.dumps(r)}",
                          flush=True)
            for s in cand:
                results.setdefault(s, {})
                if s in failed or s in dead:
                    results[s][n] = {"failed": failed.get(s) or dead[s]}
                    continue
                v = vals[s]
                agg = {k: median([x[k] for x in v]) for k in v[0] if isinstance(v[0][k], (int, float))
                       and not isinstance(v[0][k], bool)}
                agg["runs"] = v
                results[s][n] = agg
    finally:
        kill_all()
    elapsed = time.time() - t_start
    write_results(a.output, results, servers, scen, info, "quick" if a.quick else "full", elapsed, runs)
    print(f"wrote {a.output} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
