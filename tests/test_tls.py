"""https:// and wss:// with certificates made at test time (trustme)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect

from asgiws.config import Config
from asgiws.sockets import create_ssl_context
from asgiws.testing import StartupError
from tests.supervisor.cluster import Cluster


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


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_https_get(run_server, ca, certs):
    with run_server(echo_app, **certs) as server:
        response = httpx.get(f"https://127.0.0.1:{server.port}/tls", verify=client_context(ca), timeout=5)
    assert response.status_code == 200
    assert response.text == "https /tls"


def test_wss_echo(run_server, ca, certs):
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


def test_tcp_client_that_never_starts_tls_is_dropped_after_timeout_handshake(run_server, ca, certs):
    # The loop's default is 60 s; --timeout-handshake (1 s here) bounds the TLS handshake too.
    with run_server(echo_app, timeout_handshake=1.0, **certs) as server:
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
