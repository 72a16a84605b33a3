"""Serve one HTTP request and one WebSocket from an installed asgiws (run outside the checkout).

A packaging mistake (a module or data file missing from the wheel) fails here, where the test suite,
run from the checkout, would not see it. Exit status 0 when both answered as expected.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

APP = '''
async def app(scope, receive, send):
    if scope["type"] == "http":
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"installed"})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        await send({"type": "websocket.close", "code": 1000})
'''


def main() -> int:
    """argv[1], when given, is "yes" or "no": whether the wheel must carry the C helper."""
    import asgiws

    assert "site-packages" in asgiws.__file__, f"not the installed package: {asgiws.__file__}"
    print(f"asgiws {asgiws.__version__} from {os.path.dirname(asgiws.__file__)}; C speedups: {_speedups()}")
    if len(sys.argv) > 1:
        assert _speedups() == (sys.argv[1] == "yes"), f"C speedups expected: {sys.argv[1]}"
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "smokeapp.py"), "w") as file:
            file.write(APP)
        command = [sys.executable, "-m", "asgiws", "smokeapp:app", "--port", "0"]
        server = subprocess.Popen(command, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        try:
            port = _port(server)
            _check_http(port)
            _check_websocket(port)
        finally:
            server.terminate()
            server.wait(15)
    print("installed wheel: HTTP and WebSocket OK")
    return 0


def _speedups() -> bool:
    """Every C helper built and in use (the TLS one is used only once it has bound to _ssl), or none."""
    import importlib.util

    from asgiws.protocols import tls_records
    from asgiws.protocols.http import head

    codec = importlib.util.find_spec("asgiws.websocket._speedups") is not None
    records = tls_records.Records is not tls_records.PyRecords
    heads = head.WHOLE_REQUESTS
    assert codec == records == heads, f"some C helpers without others: codec {codec}, TLS records {records}, " \
        f"request heads {heads}"
    return codec


def _port(server: subprocess.Popen[str]) -> int:
    assert server.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        print("  server:", line.rstrip())
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
    raise SystemExit("the installed server did not start")


def _check_http(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"installed"), response


def _check_websocket(port: int) -> None:
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        mask = os.urandom(4)
        payload = b"hello"
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)  # RFC 6455 5.3: clients mask
        frame = sock.recv(2 + len(payload))
        assert frame == bytes([0x81, len(payload)]) + payload, frame


if __name__ == "__main__":
    sys.exit(main())
