"""Behind a real HAProxy in mode tcp, sending the PROXY protocol (send-proxy, send-proxy-v2)."""

from __future__ import annotations

import logging
import re
import ssl
import time
from pathlib import Path

import pytest
import trustme

from tests.proxy.apps import whoami
from tests.proxy.wire import (
    connect,
    free_port,
    haproxy_command,
    http_request,
    read_to_eof,
    running,
    ws_request,
)
from tests.supervisor.cluster import Cluster, wait_for


def client_port_seen(port: int, request: bytes) -> tuple[int, bytes]:
    """Send `request` through HAProxy; our own source port and what came back."""
    with connect(port) as sock:
        sock.sendall(request)
        own_port = sock.getsockname()[1]
        data = b""
        while b'"scheme"' not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    return own_port, data


@pytest.mark.parametrize(("setting", "option"), [("v1", "send-proxy"), ("v2", "send-proxy-v2"),
                                                  ("auto", "send-proxy"), ("auto", "send-proxy-v2")])
def test_haproxy_header_names_the_client_for_http_and_websocket(run_server, tmp_path: Path, caplog,
                                                                setting: str, option: str):
    with caplog.at_level(logging.INFO, logger="asgiws.access"):
        with run_server(whoami, proxy_protocol=setting) as server:
            port = free_port()
            command = haproxy_command(tmp_path, port, f"server app 127.0.0.1:{server.port} {option}")
            with running(command, port, tmp_path / "haproxy.log"):
                for request, scheme in ((http_request(), "http"), (ws_request(), "ws")):
                    own_port, data = client_port_seen(port, request)
                    # Our own source port: only the header can have told the server that
                    # (HAProxy's connection to it comes from another port).
                    expected = f'{{"client": ["127.0.0.1", {own_port}], "server": ["127.0.0.1", {port}], ' \
                               f'"scheme": "{scheme}"}}'
                    assert expected.encode() in data
                    access = [r.getMessage() for r in caplog.records if r.name == "asgiws.access"][-1]
                    assert access.startswith(f"127.0.0.1:{own_port} - ")


@pytest.mark.parametrize(("setting", "option"), [("v1", "send-proxy"), ("v2", "send-proxy-v2")])
def test_haproxy_health_checks_with_the_header_are_accepted_quietly(run_server, tmp_path: Path, caplog,
                                                                    setting: str, option: str):
    # check-send-proxy: a v2 LOCAL header, or v1 "PROXY UNKNOWN", then the connection ends.
    with caplog.at_level(logging.WARNING, logger="asgiws.error"):
        with run_server(whoami, proxy_protocol=setting) as server:
            port = free_port()
            line = f"server app 127.0.0.1:{server.port} {option} check inter 100ms check-send-proxy"
            log = tmp_path / "haproxy.log"
            with running(haproxy_command(tmp_path, port, line), port, log):
                time.sleep(1.0)  # about ten checks
                assert b'"client": ["127.0.0.1", ' in read_to_eof_via(port)
    assert [r.getMessage() for r in caplog.records if r.name == "asgiws.error"] == []
    assert "is DOWN" not in log.read_text()


def read_to_eof_via(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(http_request())
        return read_to_eof(sock)


def test_without_send_proxy_the_connection_is_refused_and_logged(run_server, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="asgiws.error"):
        with run_server(whoami, proxy_protocol="auto") as server:
            port = free_port()
            with running(haproxy_command(tmp_path, port, f"server app 127.0.0.1:{server.port}"), port,
                         tmp_path / "haproxy.log"):
                assert read_to_eof_via(port) == b""
    # One line: the connection probing that HAProxy listens ends without a byte, and is not logged.
    [line] = [r.getMessage() for r in caplog.records if r.name == "asgiws.error"]
    assert line.endswith("invalid PROXY protocol header: expected a PROXY protocol v1 or v2 header, "
                         "got b'GET / HTTP/1.1\\r\\n'; closing")


def test_haproxy_to_a_unix_socket_trusted_as_unix(run_server, tmp_path: Path):
    path = str(tmp_path / "app.sock")
    with run_server(whoami, uds=path, proxy_protocol="v2", forwarded_allow_ips="unix:") as _:
        port = free_port()
        with running(haproxy_command(tmp_path, port, f"server app unix@{path} send-proxy-v2"), port,
                     tmp_path / "haproxy.log"):
            own_port, data = client_port_seen(port, http_request())
    assert f'"client": ["127.0.0.1", {own_port}], "server": ["127.0.0.1", {port}]'.encode() in data


def test_cli_workers_behind_haproxy_log_the_original_clients_and_each_refusal(tmp_path: Path):
    # The real command, two workers, HAProxy in front; its output read line by line.
    asgiws = Cluster(tmp_path, "tests.proxy.apps:whoami", "--workers", "2", "--proxy-protocol", "v2")
    try:
        asgiws.wait_ready(2)
        port = free_port()
        own_ports = []
        line = f"server app 127.0.0.1:{asgiws.port} send-proxy-v2"
        with running(haproxy_command(tmp_path, port, line), port, tmp_path / "haproxy.log"):
            for request in (http_request(), ws_request(), http_request()):
                own_port, data = client_port_seen(port, request)
                assert f'"client": ["127.0.0.1", {own_port}]'.encode() in data
                own_ports.append(own_port)
        with connect(asgiws.port) as direct:  # trusted (127.0.0.1) but no header
            direct.sendall(http_request())
            assert read_to_eof(direct) == b""
            direct_port = direct.getsockname()[1]
        wait_for(lambda: "invalid PROXY" in asgiws.log(), 10, "the refusal's log line")
    finally:
        assert asgiws.stop() == 0
    lines = [line.split(None, 1)[1] for line in asgiws.log().splitlines() if " - " in line]
    # The WebSocket's close line comes when its close handshake ends, after the 101 line.
    [closed] = [line for line in lines if '"WebSocket /ws" closed' in line]
    assert lines.index(closed) > 1
    assert re.fullmatch(rf'127\.0\.0\.1:{own_ports[1]} - "WebSocket /ws" closed 1000 by app after \d+\.\d{{3}}s, '
                        r"in: 0 msg \d+ B, out: 1 msg \d+ B", closed), closed
    lines.remove(closed)
    assert lines == [
        f'127.0.0.1:{own_ports[0]} - "GET / HTTP/1.1" 200 OK',
        f'127.0.0.1:{own_ports[1]} - "GET /ws HTTP/1.1" 101 Switching Protocols',
        f'127.0.0.1:{own_ports[2]} - "GET / HTTP/1.1" 200 OK',
        (f"127.0.0.1:{direct_port} - invalid PROXY protocol header: expected a PROXY protocol v2 header, "
         "got b'GET / HTTP/1.1\\r\\n'; closing"),
    ]


def test_haproxy_terminating_tls_with_send_proxy_v2_ssl_gives_https_and_wss(run_server, tmp_path: Path):
    ca = trustme.CA()
    pem = tmp_path / "haproxy.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with run_server(whoami, proxy_protocol="v2") as server:
        port = free_port()
        command = haproxy_command(tmp_path, port, f"server app 127.0.0.1:{server.port} send-proxy-v2-ssl",
                                  bind_options=f"ssl crt {pem}")
        with running(command, port, tmp_path / "haproxy.log"):
            for request, scheme in ((http_request(), "https"), (ws_request(), "wss")):
                with connect(port) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(request)
                    own_port = sock.getsockname()[1]
                    data = b""
                    while b'"scheme"' not in data:
                        chunk = sock.recv(65536)
                        assert chunk, data
                        data += chunk
                assert f'"client": ["127.0.0.1", {own_port}]'.encode() in data
                assert f'"scheme": "{scheme}"'.encode() in data
