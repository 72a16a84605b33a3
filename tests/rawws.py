"""A deliberately dumb WebSocket client on a blocking socket, for sending what
real clients refuse to send (unmasked frames, bad UTF-8, bad close codes) and
reading exactly what the server answers. Frames to send: tests/wire.py."""

from __future__ import annotations

import base64
import socket
import struct

DEFAULT_KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake_request(
    path: str = "/", *, key: str = DEFAULT_KEY, version: str = "13", extra: str = "", host: str = "127.0.0.1"
) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode()


class RawWebSocket:
    def __init__(self, port: int, *, request: bytes | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.sock.sendall(request if request is not None else handshake_request())
        self.status_line, self.headers = self._read_head()

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}; got {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read_head(self) -> tuple[str, dict[str, str]]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return head[0], headers

    def read_body(self) -> bytes:
        """The rest of an HTTP response (the server closes after a rejected upgrade)."""
        length = int(self.headers.get("content-length", "-1"))
        while length < 0 or len(self.buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        return self.buffer

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-frame")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[int, bool, bytes]:
        """(opcode, fin, payload) of the next server frame."""
        b0, b1 = self._read_exact(2)
        assert not b1 & 0x80, "server frames must not be masked (RFC 6455 5.1)"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        return b0 & 0x0F, bool(b0 & 0x80), self._read_exact(length)

    def read_close(self) -> tuple[int, str]:
        """Skip data and ping frames until a close frame; return its code and reason."""
        while True:
            opcode, _, payload = self.read_frame()
            if opcode == 0x8:
                if not payload:
                    return 1005, ""
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the server closes the TCP connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
