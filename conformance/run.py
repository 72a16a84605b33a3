"""Run the Autobahn TestSuite (via kosoku's fuzzingclient) against a server.

Usage (from the repo root)::

    python -m conformance.run                       # asgiws, whole suite
    python -m conformance.run --server uvicorn      # peer baseline
    python -m conformance.run --include '1.*' --include '5.*' --exclude '5.19'
    python -m conformance.run --server-cmd 'python -m hypercorn examples.hello:app -b 127.0.0.1:{port}'

Exit status: 0 only if every case's behavior (and behaviorClose) is OK or
INFORMATIONAL (and the server stayed up); 1 if any case is NON-STRICT/UNIMPLEMENTED/FAILED/missing;
2 on harness errors (server never became ready, kosoku crashed); 3 if the
server process died; 4 on the overall --timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPORTS = REPO_ROOT / "conformance" / "reports"

# --ws-ping-interval 0 disables server keepalive pings: kosoku ends a 12.x/13.x
# case as FAILED ("Case did not finish within N seconds") as soon as an
# unsolicited ping arrives, so any case running longer than the interval (20 s
# by default; happens on a loaded 2-core CI box) would fail spuriously.
#
# --ws-deflate-min-size 0 compresses every message. asgiws sends messages under
# 128 bytes uncompressed by default, which RFC 7692 allows (RSV1 is per
# message), but kosoku 0.1.0 hands such an uncompressed text message to the
# 12.x case file as str and the case's hashlib.sha1(msg) raises "Strings must
# be encoded before hashing": cases 12.*.1-2 and 13.*.1-2 end in ERROR. That
# our default is fine with real clients is shown in tests/ws/test_deflate_interop.py.
SERVER_CMDS = {
    "asgiws": "{python} -m asgiws examples.hello:app --port {port} "
    "--log-level warning --ws-max-size 16777216 --ws-ping-interval 0 --ws-deflate-min-size 0",
    "uvicorn": "{python} -m uvicorn examples.hello:app --port {port} "
    "--log-level warning --ws-ping-interval 0",
}

PASSING = {"OK", "INFORMATIONAL"}
BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]

EXIT_OK, EXIT_CASES, EXIT_HARNESS, EXIT_SERVER_DIED, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class Timeout(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _case_key(case_id: str) -> list[int]:
    return [int(p) if p.isdigit() else 0 for p in case_id.split(".")]


def start_process(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")
    try:
        # Own process group, so we can kill the whole tree (e.g. reloaders/workers).
        return subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[bytes], port: int, deadline: float, limit: float) -> None:
    """Wait until GET / on the port answers with any HTTP status (the echo app says 200)."""
    give_up = min(deadline, time.monotonic() + limit)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
            return
        except urllib.error.HTTPError:
            return  # it answered HTTP; good enough to start fuzzing
        except OSError:
            pass
        if time.monotonic() > give_up:
            if time.monotonic() >= deadline:
                raise Timeout("overall timeout while waiting for the server")
            raise RuntimeError(f"server did not answer on port {port} within {limit:.0f}s")
        time.sleep(0.1)


def load_results(outdir: Path) -> dict[str, dict]:
    """Read kosoku's index.json (``{agent: {case_id: entry}}``) plus the per-case reports."""
    index = json.loads((outdir / "index.json").read_text())
    results: dict[str, dict] = {}
    for agent_cases in index.values():
        for case_id, entry in agent_cases.items():
            row = dict(entry)
            report = outdir / entry.get("reportfile", "")
            if entry.get("reportfile") and report.is_file():
                try:
                    row["report"] = json.loads(report.read_text())
                except ValueError:
                    pass
            results[case_id] = row
    return results


def _event(event: list) -> str:
    kind, payload = (event[0], event[1]) if len(event) > 1 else (event[0], "")
    payload = str(payload)
    return f"{kind}({payload[:24]!r}{'...' if len(payload) > 24 else ''})"


def reason(row: dict) -> str:
    rep = row.get("report") or {}
    parts = []
    if row.get("behavior") not in PASSING and rep.get("result"):
        parts.append(str(rep["result"]))
    if row.get("behaviorClose") not in PASSING and rep.get("resultClose"):
        parts.append(str(rep["resultClose"]))
    if row.get("behavior") not in PASSING and "received" in rep:
        got = rep["received"] or []
        shown = ", ".join(_event(e) for e in got[:3]) + (", ..." if len(got) > 3 else "")
        parts.append(f"received {len(got)} event(s)" + (f": {shown}" if got else ""))
        ok = (rep.get("expected") or {}).get("OK")
        if ok is not None and ok != got:
            want = ", ".join(_event(e) for e in ok[:3]) + (", ..." if len(ok) > 3 else "")
            parts.append(f"OK would be {len(ok)} event(s)" + (f": {want}" if ok else ""))
    if rep.get("wasNotCleanReason") and row.get("behaviorClose") not in PASSING:
        parts.append(f"not clean: {rep['wasNotCleanReason']}")
    text = " | ".join(dict.fromkeys(parts)) or "-"
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def summarize(results: dict[str, dict], out=sys.stdout) -> list[str]:
    """Print the summary; return the ids of the non-passing cases."""
    behaviors = Counter(r.get("behavior", "?") for r in results.values())
    closes = Counter(r.get("behaviorClose", "?") for r in results.values())
    print(f"\n{len(results)} cases", file=out)
    print("behavior:      " + "  ".join(
        f"{b}={behaviors.get(b, 0)}" for b in BEHAVIORS + sorted(set(behaviors) - set(BEHAVIORS))
    ), file=out)
    print("behaviorClose: " + "  ".join(f"{c}={n}" for c, n in sorted(closes.items())), file=out)
    bad = sorted(
        (cid for cid, r in results.items()
         if r.get("behavior") not in PASSING or r.get("behaviorClose") not in PASSING),
        key=_case_key,
    )
    if bad:
        print(f"\nnot OK/INFORMATIONAL ({len(bad)}):", file=out)
        print(f"  {'case':<9} {'behavior':<14} {'close':<11} {'code':<5} reason", file=out)
        for cid in bad:
            r = results[cid]
            code = r.get("remoteCloseCode")
            print(
                f"  {cid:<9} {r.get('behavior', '?'):<14} {r.get('behaviorClose', '?'):<11} "
                f"{'-' if code is None else code!s:<5} {reason(r)}",
                file=out,
            )
    return bad


def selected_case_ids(include: list[str] | None, exclude: list[str] | None) -> list[str] | None:
    """Which case ids kosoku will run (best effort; None if the index can't be read)."""
    try:
        from fnmatch import fnmatchcase

        from kosoku.cases import CASES  # type: ignore[import-not-found]
    except Exception:
        return None
    ids = [c for c in CASES if not include or any(fnmatchcase(c, p) for p in include)]
    return [c for c in ids if not any(fnmatchcase(c, p) for p in exclude or [])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--server", choices=sorted(SERVER_CMDS), default="asgiws",
                   help="which built-in server command to run (default: asgiws)")
    g.add_argument("--server-cmd", help="custom server command; {port} is replaced by the port, "
                   "{python} by this interpreter; run from the repo root")
    ap.add_argument("-i", "--include", action="append", metavar="GLOB",
                    help="case id or glob to run, repeatable (default: the whole suite)")
    ap.add_argument("-x", "--exclude", action="append", metavar="GLOB",
                    help="case id or glob to exclude, repeatable")
    ap.add_argument("-p", "--parallelism", type=int, default=2, help="cases run in parallel (default: 2)")
    ap.add_argument("--timeout", type=float, default=900.0, help="bound for the whole run in seconds (default: 900)")
    ap.add_argument("--startup-timeout", type=float, default=30.0,
                    help="seconds to wait for the server to answer (default: 30)")
    ap.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    ap.add_argument("-o", "--outdir", type=Path, default=None,
                    help="report directory (default: conformance/reports/<server>)")
    args = ap.parse_args(argv)

    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    port = args.port or free_port()
    name = "custom" if args.server_cmd else args.server
    template = args.server_cmd or SERVER_CMDS[args.server]
    server_argv = shlex.split(template.replace("{python}", shlex.quote(sys.executable)).replace("{port}", str(port)))
    outdir: Path = (args.outdir or DEFAULT_REPORTS / name).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    for stale in ("index.json",):
        (outdir / stale).unlink(missing_ok=True)
    server_log, kosoku_log = outdir / "server.log", outdir / "kosoku.log"

    kosoku_argv = [sys.executable, "-c", "import sys; sys.argv[0] = 'kosoku'; from kosoku._cli import main; main()",
                   "-m", "fuzzingclient", "-p", str(args.parallelism), "-o", str(outdir)]
    for pat in args.include or []:
        kosoku_argv += ["-i", pat]
    for pat in args.exclude or []:
        kosoku_argv += ["-x", pat]
    kosoku_argv.append(f"ws://127.0.0.1:{port}")

    print(f"server: {shlex.join(server_argv)}", flush=True)
    server = fuzzer = None
    server_died = False
    status = EXIT_OK

    def on_sigterm(signum, frame):  # turn SIGTERM into the same cleanup path as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)  # even if the parent shell ignored SIGINT for us
    try:
        server = start_process(server_argv, server_log)
        wait_ready(server, port, deadline, args.startup_timeout)
        print(f"ready on port {port} after {time.monotonic() - started:.1f}s; "
              f"fuzzing (parallelism {args.parallelism}, include={args.include or 'all'}, "
              f"exclude={args.exclude or []})", flush=True)
        fuzz_start = time.monotonic()
        fuzzer = start_process(kosoku_argv, kosoku_log)
        died_at = None
        while fuzzer.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                raise Timeout(f"overall timeout of {args.timeout:.0f}s reached while fuzzing")
            if died_at is None and server.poll() is not None:
                died_at = now
                server_died = True
                print(f"!! server exited with status {server.returncode} during the run", flush=True)
            if died_at is not None and now - died_at > 30:
                stop_process(fuzzer)  # remaining cases can only fail; don't wait for them
                break
            time.sleep(0.2)
        fuzz_secs = time.monotonic() - fuzz_start
        if server.poll() is not None:
            server_died = True
        print(f"fuzzing took {fuzz_secs:.1f}s (kosoku exit {fuzzer.returncode})", flush=True)
    except Timeout as exc:
        print(f"!! {exc}", flush=True)
        status = EXIT_TIMEOUT
    except RuntimeError as exc:
        print(f"!! {exc}\n--- server log tail ({server_log}) ---\n{tail(server_log)}", flush=True)
        status = EXIT_HARNESS
    except KeyboardInterrupt:
        print("!! interrupted", flush=True)
        status = 130
    finally:
        stop_process(fuzzer)
        stop_process(server)

    if status != EXIT_OK:
        return status

    if not (outdir / "index.json").is_file():
        print(f"!! kosoku wrote no index.json\n--- kosoku log tail ({kosoku_log}) ---\n{tail(kosoku_log)}")
        return EXIT_SERVER_DIED if server_died else EXIT_HARNESS

    results = load_results(outdir)
    bad = summarize(results)
    expected = selected_case_ids(args.include, args.exclude)
    missing = sorted(set(expected or ()) - set(results), key=_case_key)
    if missing:
        print(f"\n!! {len(missing)} selected cases have no result: {' '.join(missing[:40])}"
              f"{' ...' if len(missing) > 40 else ''}")
    if not results:
        print("!! no cases ran (check --include/--exclude)")
    print(f"\nreport: {outdir / 'index.html'}")
    if server_died:
        print(f"!! server died (exit {server.returncode if server else '?'}); "
              f"--- server log tail ({server_log}) ---\n{tail(server_log)}")
        return EXIT_SERVER_DIED
    if bad or missing or not results:
        return EXIT_CASES
    print("all cases OK/INFORMATIONAL")
    return EXIT_OK


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
