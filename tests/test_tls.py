"""https:// and wss:// with certificates made at test time (trustme)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect

from asgiws.config import Config
from asgiws.protocols import tls
from asgiws.protocols.tls_records import PyRecords
from asgiws.sockets import create_ssl_context
from asgiws.testing import StartupError
from tests.supervisor.cluster import Cluster, free_port, wait_for


async def echo_app(scope, receive, send):
    if scope["type"] == "http":
        body = f"{scope['scheme']} {scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            reply = f"{scope['scheme']}:{message.get('text')}"
            await send({"type": "websocket.send", "text": reply})


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ssl_certfile": tmp_path / "cert.pem", "ssl_keyfile": tmp_path / "key.pem"}
    cert.cert_chain_pems[0].write_to_path(paths["ssl_certfile"])
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(paths["ssl_certfile"], append=True)
    cert.private_key_pem.write_to_path(paths["ssl_keyfile"])
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(params=["c", "python"] if tls.Records is not PyRecords else ["python"])
def records_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The in-process server's TLS records through the C helper or its twin (tests/test_tls_records.py
    checks the two alike on their own)."""
    if request.param == "python":
        monkeypatch.setattr(tls, "Records", PyRecords)
    return str(request.param)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_https_get(run_server, ca, certs, records_twin):
    with run_server(echo_app, **certs) as server:
        response = httpx.get(f"https://127.0.0.1:{server.port}/tls", verify=client_context(ca), timeout=5)
    assert response.status_code == 200
    assert response.text == "https /tls"


def test_wss_echo(run_server, ca, certs, records_twin):
    async def main(port: int) -> None:
        async with connect(f"wss://127.0.0.1:{port}/", ssl=client_context(ca), open_timeout=5) as ws:
            await ws.send("hello")
            assert await ws.recv() == "wss:hello"
            await ws.send("é" * 10_000)
            assert await ws.recv() == "wss:" + "é" * 10_000

    with run_server(echo_app, **certs) as server:
        asyncio.run(asyncio.wait_for(main(server.port), 10))


def test_plain_http_client_on_tls_port_is_refused_without_harm(run_server, ca, certs):
    with run_server(echo_app, **certs) as server:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/", timeout=5)
        response = httpx.get(f"https://127.0.0.1:{server.port}/", verify=client_context(ca), timeout=5)
        assert response.status_code == 200


def test_client_certificate_required(run_server, ca, certs, tmp_path):
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_path)
    options = dict(certs, ssl_ca_certs=str(ca_path), ssl_cert_reqs=ssl.CERT_REQUIRED)
    client_cert = ca.issue_cert("client@example.com")
    with run_server(echo_app, **options) as server:
        url = f"https://127.0.0.1:{server.port}/"
        with pytest.raises(httpx.HTTPError):
            # TLS 1.3 reports the missing certificate at the first read.
            httpx.get(url, verify=client_context(ca), timeout=5)
        with_cert = client_context(ca)
        client_cert.configure_cert(with_cert)
        assert httpx.get(url, verify=with_cert, timeout=5).status_code == 200


def test_context_from_settings_with_encrypted_key(ca, certs, tmp_path):
    key = serialization.load_pem_private_key(Path(certs["ssl_keyfile"]).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    ))
    config = Config(app="x:y", ssl_certfile=certs["ssl_certfile"], ssl_keyfile=str(encrypted),
                    ssl_keyfile_password="s3cret", ssl_cert_reqs=1)
    context = create_ssl_context(config)
    assert context is not None
    assert context.verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ssl.SSLError):
        create_ssl_context(config.replace(ssl_keyfile_password="wrong"))
    assert create_ssl_context(Config(app="x:y")) is None


def test_https_and_wss_through_the_supervisor(ca, certs, tmp_path):
    """Two forked workers serving the supervisor's socket with TLS."""
    server = Cluster(tmp_path, "tests.supervisor.apps:app", "--workers", "2",
                     "--ssl-certfile", certs["ssl_certfile"], "--ssl-keyfile", certs["ssl_keyfile"])
    try:
        server.wait_ready(2)
        assert "Listening on https://127.0.0.1:" in server.log()
        context = client_context(ca)
        pids = {int(httpx.get(f"https://127.0.0.1:{server.port}/", verify=context, timeout=5).text)
                for _ in range(10)}
        assert pids <= set(server.workers())

        async def main() -> None:
            async with connect(f"wss://127.0.0.1:{server.port}/", ssl=context, open_timeout=5) as ws:
                await ws.send("tls")
                assert await ws.recv() == "tls"

        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        assert server.stop() == 0


def test_unreadable_key_is_a_one_line_startup_error(run_server, certs, tmp_path):
    missing = str(tmp_path / "missing-key.pem")
    with pytest.raises(StartupError, match="could not load the TLS certificate or key"):
        with run_server(echo_app, ssl_certfile=certs["ssl_certfile"], ssl_keyfile=missing):
            pass
    server = Cluster(tmp_path, "tests.supervisor.apps:app", "--workers", "2",
                     "--ssl-certfile", certs["ssl_certfile"], "--ssl-keyfile", missing)
    try:
        assert server.process.wait(15) == 1
    finally:
        server.stop()
    # Found by the supervisor before any worker starts, and said once.
    assert server.log().splitlines() == [
        f"ERROR:    could not load the TLS certificate or key: {missing}: no such file or directory"
    ]


def test_tcp_client_that_never_starts_tls_is_dropped_after_timeout_handshake(run_server, ca, certs, caplog):
    # The loop's default is 60 s; --timeout-handshake (1 s here) bounds the TLS handshake too.
    with caplog.at_level(logging.INFO, logger="asgiws.error"), \
            run_server(echo_app, timeout_handshake=1.0, **certs) as server:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        half = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the first bytes of a ClientHello, then nothing
        try:
            for sock in (silent, half):
                try:
                    assert sock.recv(1024) == b""  # closed by the server (within 30 s, not 60)
                except ConnectionResetError:
                    pass
        finally:
            silent.close()
            half.close()
        # The listener still serves TLS clients.
        response = httpx.get(f"https://127.0.0.1:{server.port}/", verify=client_context(ca), timeout=5)
        assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "asgiws.error"]
    assert sum(line.endswith("- no TLS handshake within 1 s; closing") for line in lines) == 2, lines


def test_bench_certificate_serves_wss_to_the_unverifying_bench_client(run_server, tmp_path):
    """bench/tls.py: the certificate the wss scenarios make, and the client context they connect with."""
    from bench.tls import client_context as bench_client_context
    from bench.tls import make_certificate

    cert, key = make_certificate(str(tmp_path))

    async def main(port: int) -> None:
        url = f"wss://127.0.0.1:{port}/bench"
        async with connect(url, ssl=bench_client_context(), open_timeout=5) as ws:
            await ws.send("x" * 64)
            assert await ws.recv() == "wss:" + "x" * 64

    with run_server(echo_app, ssl_certfile=cert, ssl_keyfile=key) as server:
        asyncio.run(asyncio.wait_for(main(server.port), 10))


def test_plain_http_on_tls_port_is_logged_with_openssls_reason(run_server, ca, certs, caplog):
    with caplog.at_level(logging.WARNING, logger="asgiws.error"):
        with run_server(echo_app, **certs) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):  # until the server closes (an alert may come first)
                    answer += chunk
                assert b"HTTP/" not in answer
            # The server still serves TLS afterwards.
            response = httpx.get(f"https://127.0.0.1:{server.port}/", verify=client_context(ca), timeout=5)
            assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "asgiws.error"]
    assert any("- TLS handshake failed: " in line and line.endswith("; closing") for line in lines), lines


def test_graceful_shutdown_ends_a_connection_still_in_its_tls_handshake(run_server, certs):
    with run_server(echo_app, timeout_handshake=60, timeout_graceful_shutdown=30, **certs) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        time.sleep(0.2)  # accepted
        started = time.monotonic()
    # Leaving the block shut the server down: the half-open TLS connection did not hold it for 30 s.
    assert time.monotonic() - started < 20
    assert sock.recv(1) == b""
    sock.close()


def test_large_messages_both_ways_over_wss(run_server, ca, certs, records_twin):
    """1 MiB and 5 MiB binary messages through the TLS layer, byte for byte, several in flight."""

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "bytes": message["bytes"]})

    async def main(port: int) -> None:
        async with connect(f"wss://127.0.0.1:{port}/", ssl=client_context(ca), open_timeout=5,
                           max_size=None) as ws:
            payloads = [bytes([n]) * (1 << 20) + os.urandom(n * 1000) for n in range(1, 4)]
            payloads.append(os.urandom(5 << 20))
            for payload in payloads:
                await ws.send(payload)
            for payload in payloads:
                assert await ws.recv() == payload

    with run_server(app, **certs) as server:
        asyncio.run(asyncio.wait_for(main(server.port), 60))


def test_a_wss_app_that_reads_late_gets_every_message_in_order_through_the_pause(run_server, ca, certs,
                                                                                records_twin):
    """The app sleeps while the client sends 300 messages of 20 KiB (several records each): reading
    pauses at ws_max_queue, so ciphertext a socket read brought waits in the incoming BIO, and
    everything comes out in order once the app reads again."""

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(1.0)
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "bytes": message["bytes"][:8]})

    async def main(port: int) -> None:
        async with connect(f"wss://127.0.0.1:{port}/", ssl=client_context(ca), open_timeout=5,
                           max_size=None) as ws:
            for n in range(300):
                await ws.send(n.to_bytes(8, "big") + os.urandom(20 * 1024))
            for n in range(300):
                assert await ws.recv() == n.to_bytes(8, "big")

    with run_server(app, ws_max_queue=4, **certs) as server:
        asyncio.run(asyncio.wait_for(main(server.port), 60))


def _rss_kib(pid: int) -> int:
    """RSS of the process and its descendants (the command may run its worker under a supervisor), KiB."""
    with open(f"/proc/{pid}/status") as status:
        own = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listing:
            children += [int(child) for child in listing.read().split()]
    return own + sum(_rss_kib(child) for child in children)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_idle_wss_connection_holds_no_256_kib_read_buffer(certs, tmp_path, loop):
    """CPython's TLS transport zeroes a 256 KiB read buffer per connection (uvloop's reserves one);
    the server's own TLS layer reads into the worker's one buffer, so 200 idle wss connections
    cost well under 100 KiB each on either loop (about 279 KiB each on asyncio's transport)."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiws", "tests.test_tls:echo_app", "--port", str(port), "--loop", loop,
         "--log-level", "warning", "--no-access-log", "--lifespan", "off",
         "--ssl-certfile", certs["ssl_certfile"], "--ssl-keyfile", certs["ssl_keyfile"]],
        cwd=str(Path(__file__).resolve().parents[1]), stdout=log, stderr=subprocess.STDOUT,
    )
    conns = 200

    async def hold(context: ssl.SSLContext) -> tuple[int, int]:
        url = f"wss://127.0.0.1:{port}/"
        for _ in range(5):  # warm-up: imports and first allocations are not per connection
            async with connect(url, ssl=context, open_timeout=10) as ws:
                await ws.send("x")
                await ws.recv()
        await asyncio.sleep(0.3)
        before = _rss_kib(process.pid)
        held = [await connect(url, ssl=context, open_timeout=10, ping_interval=None) for _ in range(conns)]
        for ws in held:
            await ws.send("x")
            assert await ws.recv() == "wss:x"
        await asyncio.sleep(0.5)
        after = _rss_kib(process.pid)
        for ws in held:
            await ws.close()
        return before, after

    try:
        wait_for(lambda: _accepts(port), 20, "the server to listen")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        before, after = asyncio.run(asyncio.wait_for(hold(context), 120))
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    per_connection = (after - before) / conns
    assert per_connection < 100, f"{per_connection:.1f} KiB per idle wss connection on {loop}"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _tls_client(port: int) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


def _upgrade(sock: ssl.SSLSocket) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed before answering the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 ")
    assert head.endswith(b"\r\n\r\n"), "nothing may follow the 101 before the client speaks"


def test_failure_close_over_tls_half_closes_with_close_notify_instead_of_waiting_the_close_timeout(
        run_server, certs, records_twin):
    """After a failure close (1009 here) the session half-closes. Over TLS that is close_notify (RFC 8446
    6.1), which the client reads as the end of the stream at once; before, TLS could not half-close and the
    client heard nothing more until ws_close_timeout (60 s here) dropped TCP."""
    with (run_server(echo_app, ws_max_size=1000, ws_close_timeout=60, **certs) as server,
          _tls_client(server.port) as sock):
        _upgrade(sock)
        # A masked text frame declaring 2,000 bytes: past ws_max_size from its header alone.
        sock.sendall(bytes([0x81, 0x80 | 126]) + (2000).to_bytes(2, "big") + b"\x00" * 4)
        received = b""
        while chunk := sock.recv(4096):  # b"" is the server's close_notify; the 10 s socket timeout raises
            received += chunk
        assert received[0] == 0x88 and received[2:4] == (1009).to_bytes(2, "big"), received
        sock.unwrap()  # our close_notify answers theirs: the server then closes TCP
        assert sock.recv(1) == b""


def test_wss_client_sending_after_the_failure_close_still_gets_close_notify(run_server, certs, caplog, records_twin):
    """Records of a message the client was still streaming when the server failed the connection arrive
    after the close frame: they are read and dropped, close_notify follows once they stop, and the
    server logs no TLS error for them."""
    with (caplog.at_level(logging.INFO, logger="asgiws.error"),
          run_server(echo_app, ws_max_size=1000, ws_close_timeout=60, **certs) as server,
          _tls_client(server.port) as sock):
        _upgrade(sock)
        # The frame's header is past ws_max_size; its 256 KiB payload keeps coming in many records.
        payload_size = 256 * 1024
        sock.sendall(bytes([0x82, 0x80 | 127]) + payload_size.to_bytes(8, "big") + b"\x00" * 4)
        for _ in range(16):
            sock.sendall(b"\x00" * (payload_size // 16))
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        assert received[0] == 0x88 and received[2:4] == (1009).to_bytes(2, "big"), received
        sock.unwrap()
    tls_errors = [r.getMessage() for r in caplog.records if r.name == "asgiws.error" and "TLS" in r.getMessage()]
    assert tls_errors == []


def _live_rss_kib() -> int:
    """This process's RSS after glibc gives freed memory back (malloc_trim), KiB."""
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


_HOLDING_CLIENT = """
import socket, ssl, sys
conns, size, port = (int(arg) for arg in sys.argv[1:])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
held = []
for _ in range(conns):
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))
    sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n")
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += sock.recv(4096)
    # one binary message of `size` bytes, mask 0: the server's echo app sends it back
    sock.sendall(bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big") + bytes(4) + bytes(size))
    want, got = 10 + size, 0
    while got < want:
        got += len(sock.recv(1 << 20))
    held.append(sock)
print("held", flush=True)
sys.stdin.read()
"""


def test_wss_connection_that_echoed_1_mib_keeps_no_megabyte_of_tls_buffers(run_server, certs, records_twin):
    """OpenSSL's memory BIOs keep the largest size they grew to until freed: one 1 MiB SSL_write left
    each connection holding about 1.3 MiB of outgoing BIO for life, and a 256 KiB socket read up to
    340 KiB of incoming BIO. Through the BIOs a record at a time, 16 connections that each echoed 1 MiB
    hold well under 256 KiB each once idle (about 1.6 MiB each before)."""

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "bytes": message.pop("bytes")})
            del message  # an app holding its last message would hold 1 MiB per connection itself

    conns = 16
    with run_server(app, **certs) as server:
        warm = subprocess.run([sys.executable, "-c", _HOLDING_CLIENT, "2", str(1 << 20), str(server.port)],
                              input="", capture_output=True, text=True, timeout=60, check=False)
        assert warm.stdout == "held\n", warm.stderr
        time.sleep(0.3)
        before = _live_rss_kib()
        client = subprocess.Popen([sys.executable, "-c", _HOLDING_CLIENT, str(conns), str(1 << 20),
                                   str(server.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout is not None
            assert client.stdout.readline() == "held\n"
            time.sleep(0.3)
            per_connection = (_live_rss_kib() - before) / conns
        finally:
            client.communicate("", timeout=30)
    assert per_connection < 256, f"{per_connection:.0f} KiB per idle wss connection after a 1 MiB echo"
