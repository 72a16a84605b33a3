"""Raw sockets to a server (TCP on 127.0.0.1, or a UNIX socket), and the programs in front of it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.rawws import handshake_request
from tests.wire import Opcode, client_frame, close_payload

Address = int | str  # a TCP port on 127.0.0.1, or a UNIX socket path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connect(address: Address, timeout: float = 10.0) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    return socket.create_connection(("127.0.0.1", address), timeout=timeout)


def read_to_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout and `limit` bytes)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def http_request(headers: str = "", path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{headers}\r\n".encode()


def ws_request(headers: str = "") -> bytes:
    return handshake_request("/ws", extra=headers, host="app.test")


def http_identity(address: Address, headers: str = "", prefix: bytes = b"") -> dict[str, Any]:
    """GET / (after `prefix`, e.g. a PROXY header) and the JSON identity the app answered."""
    with connect(address) as sock:
        sock.sendall(prefix + http_request(headers))
        response = read_to_eof(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    return json.loads(body)  # type: ignore[no-any-return]


def ws_identity(address: Address, headers: str = "", prefix: bytes = b"") -> dict[str, Any]:
    """Open a WebSocket (after `prefix`) and the JSON identity of the app's first message."""
    with connect(address) as sock:
        sock.sendall(prefix + ws_request(headers))
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 6:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), data
        message = _text_frame(sock, rest)
        with contextlib.suppress(OSError):
            sock.sendall(client_frame(Opcode.CLOSE, close_payload(1000)))
    return json.loads(message)  # type: ignore[no-any-return]


def _text_frame(sock: socket.socket, data: bytes) -> bytes:
    """The payload of the unmasked text frame (under 64 KiB) at the start of `data`, read on as needed."""
    while True:
        if len(data) >= 2:
            assert data[0] == 0x81 and data[1] <= 126, data  # FIN + TEXT, unmasked, 7- or 16-bit length
            start = 2 if data[1] < 126 else 4
            if len(data) >= start:
                length = data[1] if start == 2 else int.from_bytes(data[2:4], "big")
                if len(data) >= start + length:
                    return data[start:start + length]
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk


def is_closed_without_answer(sock: socket.socket) -> bool:
    """True when the server closes `sock` having sent nothing."""
    return read_to_eof(sock) == b""


def wait_listening(address: Address, process: subprocess.Popen[bytes], log: Path,
                   timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {log.read_text(errors='replace')}")
        try:
            connect(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    output = log.read_text(errors="replace")
    raise AssertionError(f"nothing listening on {address} after {timeout}s: {output}")


@contextlib.contextmanager
def running(command: list[str], address: Address, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` (a proxy in the foreground) until the block ends; its output goes to `log`."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_listening(address, process, log)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def nginx_command(prefix: Path, conf: str) -> list[str]:
    """nginx in the foreground with everything it writes under `prefix`."""
    temp = ""
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / name).mkdir(exist_ok=True)
        temp += f"{name}_temp_path {prefix / name};\n"
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach sockets in a 0700 tmp dir
    (prefix / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\naccess_log off;\n{temp}{conf}\n}}\n"
    )
    return ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")]


def haproxy_command(directory: Path, listen_port: int, server_line: str, mode: str = "tcp",
                    bind_options: str = "") -> list[str]:
    """HAProxy in the foreground (-db) on 127.0.0.1:`listen_port` with one backend server."""
    cfg = directory / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 200\n"
        f"defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend front\n  bind 127.0.0.1:{listen_port} {bind_options}\n  default_backend back\n"
        f"backend back\n  {server_line}\n"
    )
    return ["haproxy", "-db", "-f", str(cfg)]
