"""Memory and file-descriptor probes of this process (Linux /proc)."""

from __future__ import annotations

import os


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size in bytes, from /proc/<pid>/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def open_fds(pid: int | str = "self") -> int:
    """Number of open file descriptors."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            return [int(child) for child in file.read().split()]
    except OSError:
        return []


class ServerProcess:
    """`python -m asgiws APP` on a free port in a subprocess, to measure its RSS alone."""

    def __init__(self, app: str, *args: str, fixed_mmap_threshold: bool = True) -> None:
        import socket
        import subprocess
        import sys
        import time

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = dict(os.environ)
        if fixed_mmap_threshold:
            # glibc raises its mmap threshold each time a large block is freed, after
            # which 64-256 KiB read buffers come from the heap and RSS depends on
            # fragmentation, not on what the server keeps. A fixed threshold makes RSS
            # measure retained memory (production can set the same variable).
            env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asgiws", app, "--port", str(self.port), "--no-access-log",
             "--log-level", "warning", "--lifespan", "off", *args],
            cwd=root,
            env=env,
        )
        # The command runs its one worker under the supervisor (for SIGHUP restarts): measure the
        # worker, once it answers a request (the supervisor's socket accepts before that).
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited")
            children = _children(self.proc.pid)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answered = probe.recv(65536)
                    while probe.recv(65536):  # to the end: the server has closed its side (and fd)
                        pass
                    if answered and len(children) == 1:
                        self.pid = children[0]
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.close()
        raise RuntimeError("server did not start")

    @property
    def rss(self) -> int:
        return rss_bytes(self.pid)

    @property
    def fds(self) -> int:
        return open_fds(self.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
