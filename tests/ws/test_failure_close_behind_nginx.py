"""A failure close reaches a client behind nginx (issue 15 section 2b).

The test starts its own nginx (the Debian package's binary) with a generated
configuration on free loopback ports, proxying WebSocket upgrades to asgiws.
Before the fix, asgiws closed TCP over nginx's unread input; the kernel's RST
made nginx drop the client's connection, so the client saw no close frame.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.proxy.wire import free_port, running
from tests.rawws import RawWebSocket
from tests.wire import client_frame

# Debian installs it in /usr/sbin, which is not on every user's PATH.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

BINARY = 0x2

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_in_front_of(upstream: int, directory: Path) -> Iterator[int]:
    """Run nginx on a free port, proxying to 127.0.0.1:`upstream`; yield its port."""
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(CONFIG.format(dir=directory, port=port, upstream=upstream))
    with running([NGINX, "-c", str(config), "-p", str(directory)], port, directory / "nginx.out"):
        yield port


def _stream_until_stopped(sock: socket.socket, stop: threading.Event) -> None:
    chunk = b"\0" * 65536
    with contextlib.suppress(OSError):
        while not stop.is_set():
            sock.sendall(chunk)


def test_client_behind_nginx_streaming_past_max_size_reads_the_1009_close_every_time(run_server, tmp_path):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    with run_server(app, ws_max_size=100_000, ws_close_timeout=5) as server, \
            nginx_in_front_of(server.port, tmp_path) as port:
        for _ in range(5):
            ws = RawWebSocket(port, timeout=10)
            assert ws.status == 101
            ws.send(client_frame(BINARY, b"", length=1 << 20)[:14])
            stop = threading.Event()
            sender = threading.Thread(target=_stream_until_stopped, args=(ws.sock, stop), daemon=True)
            sender.start()
            try:
                assert ws.read_close() == (1009, "message over 100000 bytes")
            finally:
                stop.set()
                sender.join(10)
                ws.close()
