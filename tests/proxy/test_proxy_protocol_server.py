"""--proxy-protocol on a real server, over raw sockets: what a load balancer sends, and worse."""

from __future__ import annotations

import logging
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

from asgiws import Config
from asgiws.protocols.proxy import connection_factory
from tests.proxy.apps import whoami
from tests.proxy.test_proxy_protocol_parser import inet4, inet6, tlv, v2
from tests.proxy.wire import (
    connect,
    http_identity,
    http_request,
    is_closed_without_answer,
    read_to_eof,
    ws_identity,
)

V1_CLIENT = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"
V2_CLIENT = v2(body=inet4("203.0.113.7", "192.0.2.1", 56324, 443))
V2_CLIENT6 = v2(family=0x21, body=inet6("2001:db8::7", "2001:db8::1", 40000, 8443))
WARNINGS = "asgiws.error"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WARNINGS and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize(("setting", "header"), [("v1", V1_CLIENT), ("v2", V2_CLIENT), ("auto", V1_CLIENT),
                                                  ("auto", V2_CLIENT)])
def test_header_from_a_trusted_peer_names_the_client_of_http_and_websocket(run_server, loop, setting, header):
    with run_server(whoami, proxy_protocol=setting, loop=loop) as server:
        assert http_identity(server.port, prefix=header) == {
            "client": ["203.0.113.7", 56324], "server": ["192.0.2.1", 443], "scheme": "http"}
        assert ws_identity(server.port, prefix=header) == {
            "client": ["203.0.113.7", 56324], "server": ["192.0.2.1", 443], "scheme": "ws"}


def test_v2_ssl_tlv_makes_the_scheme_https_and_wss(run_server):
    tls_client = v2(body=inet4("203.0.113.7", "192.0.2.1", 56324, 443) + tlv(0x20, b"\x01\0\0\0\0"))
    with run_server(whoami, proxy_protocol="v2") as server:
        assert http_identity(server.port, prefix=tls_client)["scheme"] == "https"
        assert ws_identity(server.port, prefix=tls_client)["scheme"] == "wss"


def test_header_and_request_in_separate_reads_and_keep_alive_after_it(run_server):
    with run_server(whoami, proxy_protocol="v2") as server, connect(server.port) as sock:
        sock.sendall(V2_CLIENT6[:7])
        time.sleep(0.05)
        sock.sendall(V2_CLIENT6[7:])
        time.sleep(0.05)
        keep_alive = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(keep_alive + keep_alive + http_request())
        answers = read_to_eof(sock)
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    assert answers.count(b'"client": ["2001:db8::7", 40000], "server": ["2001:db8::1", 8443]') == 3


def test_access_log_names_the_original_client(run_server, caplog):
    with caplog.at_level(logging.INFO, logger="asgiws.access"):
        with run_server(whoami, proxy_protocol="v1") as server:
            http_identity(server.port, prefix=V1_CLIENT)
            ws_identity(server.port, prefix=V1_CLIENT)
    lines = [r.getMessage() for r in caplog.records if r.name == "asgiws.access"]
    assert lines[:2] == ['203.0.113.7:56324 - "GET / HTTP/1.1" 200', '203.0.113.7:56324 - "GET /ws HTTP/1.1" 101']
    # The WebSocket's close line names the original client too.
    [closed] = lines[2:]
    assert re.fullmatch(r'203\.0\.113\.7:56324 - "WebSocket /ws" closed \d+ by \w+ after \d+\.\d{3}s, '
                        r"in: \d+ msg \d+ B, out: \d+ msg \d+ B", closed), closed


@pytest.mark.parametrize("header", [v2(command=0x0, family=0x00), b"PROXY UNKNOWN\r\n"])
def test_local_and_unknown_headers_keep_the_connection_addresses(run_server, header):
    setting = "v1" if header.startswith(b"PROXY") else "v2"
    with run_server(whoami, proxy_protocol=setting) as server, connect(server.port) as sock:
        sock.sendall(header + http_request())
        port = sock.getsockname()[1]
        body = read_to_eof(sock).partition(b"\r\n\r\n")[2]
    assert f'"client": ["127.0.0.1", {port}]'.encode() in body


def test_per_ip_limit_counts_the_client_the_header_names_over_http_and_websocket(run_server):
    other = b"PROXY TCP4 198.51.100.9 192.0.2.1 1000 443\r\n"
    with run_server(whoami, proxy_protocol="v1", limit_connections_per_ip=1) as server:
        with connect(server.port) as held:
            held.sendall(V1_CLIENT + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive: holds its slot
            assert held.recv(65536).startswith(b"HTTP/1.1 200")
            counted = server.call(lambda: dict(server.server_state.connections_per_ip))
            assert counted == {"203.0.113.7": 1}  # not 127.0.0.1, the load balancer's address
            assert http_identity(server.port, prefix=other)["client"] == ["198.51.100.9", 1000]
            for request in (http_request(), b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"):
                with connect(server.port) as refused:
                    refused.sendall(V1_CLIENT + request)
                    assert read_to_eof(refused).startswith(b"HTTP/1.1 503")
        counts = lambda: server.call(lambda: dict(server.server_state.connections_per_ip))
        deadline = time.monotonic() + 10
        while counts() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ws_identity(server.port, prefix=V1_CLIENT)["client"] == ["203.0.113.7", 56324]
        while counts() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counts() == {}


def test_x_forwarded_for_from_the_original_client_is_not_trusted(run_server):
    with run_server(whoami, proxy_protocol="v1") as server:
        identity = http_identity(server.port, "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n",
                                 prefix=V1_CLIENT)
    assert identity == {"client": ["203.0.113.7", 56324], "server": ["192.0.2.1", 443], "scheme": "http"}


def test_trusted_peer_without_a_header_is_closed_and_logged(run_server, caplog):
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        with run_server(whoami, proxy_protocol="auto") as server, connect(server.port) as sock:
            sock.sendall(http_request())
            assert is_closed_without_answer(sock)
            port = sock.getsockname()[1]
    assert warnings(caplog) == [
        (f"127.0.0.1:{port} - invalid PROXY protocol header: expected a PROXY protocol v1 or v2 header, "
         "got b'GET / HTTP/1.1\\r\\n'; closing")]


@pytest.mark.parametrize(("setting", "data", "reason"), [
    ("v1", b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 443\r\n",
     "PROXY v1 port b'99999' is not a number from 0 to 65535"),
    ("v1", b"PROXY UNKNOWN " + b"x" * 200, "PROXY v1 header longer than 107 bytes"),
    ("v2", v2(length=65535) + b"\0" * 1000, "PROXY v2 header of 65551 bytes is over the 4112-byte limit"),
    ("v2", v2(command=0x3), "PROXY v2 command 3 is neither LOCAL nor PROXY"),
    ("v2", V1_CLIENT, "expected a PROXY protocol v2 header, got a v1 header"),
    ("v1", V2_CLIENT, "expected a PROXY protocol v1 header, got a v2 header"),
])
def test_malformed_or_oversized_header_is_closed_and_logged(run_server, caplog, setting, data, reason):
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        with run_server(whoami, proxy_protocol=setting) as server, connect(server.port) as sock:
            sock.sendall(data + http_request())
            assert is_closed_without_answer(sock)
            port = sock.getsockname()[1]
            assert server.call(lambda: len(server.server_state.connections)) == 0
    assert warnings(caplog) == [f"127.0.0.1:{port} - invalid PROXY protocol header: {reason}; closing"]


def test_truncated_header_then_eof_is_closed_and_logged(run_server, caplog):
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        with run_server(whoami, proxy_protocol="v2") as server, connect(server.port) as sock:
            sock.sendall(V2_CLIENT[:20])
            sock.shutdown(1)  # SHUT_WR: the client is done sending
            assert is_closed_without_answer(sock)
            port = sock.getsockname()[1]
    assert warnings(caplog) == [
        f"127.0.0.1:{port} - connection ended inside its PROXY protocol header; closing"]


def test_slow_header_is_cut_off_by_the_handshake_timeout(run_server, caplog):
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        with (run_server(whoami, proxy_protocol="v1", timeout_handshake=0.5) as server,
              connect(server.port) as sock):
            for byte in V1_CLIENT[:40]:  # a byte every 100 ms: the deadline does not move
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # dropped while trickling
                time.sleep(0.1)
            assert is_closed_without_answer(sock)
            port = sock.getsockname()[1]
    assert warnings(caplog) == [f"127.0.0.1:{port} - no complete PROXY protocol header within 0.5 s; closing"]


def test_header_from_an_untrusted_peer_is_closed_and_logged(run_server, caplog):
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        with run_server(whoami, proxy_protocol="auto", forwarded_allow_ips="10.9.9.9") as server:
            for header in (V1_CLIENT, V2_CLIENT[:3], V2_CLIENT):
                with connect(server.port) as sock:
                    sock.sendall(header)
                    if len(header) < 12:
                        time.sleep(0.1)
                        sock.sendall(V2_CLIENT[3:] + http_request())
                    assert is_closed_without_answer(sock)
    assert [line.split(" - ", 1)[1] for line in warnings(caplog)] == [
        "PROXY protocol v1 header from a peer not in --forwarded-allow-ips; closing",
        "PROXY protocol v2 header from a peer not in --forwarded-allow-ips; closing",
        "PROXY protocol v2 header from a peer not in --forwarded-allow-ips; closing",
    ]


def test_untrusted_peer_without_a_header_is_served_as_itself(run_server):
    with run_server(whoami, proxy_protocol="auto", forwarded_allow_ips="10.9.9.9") as server:
        with connect(server.port) as sock:
            port = sock.getsockname()[1]
            sock.sendall(b"\r\n")  # empty lines before a request: too few bytes to tell at first
            time.sleep(0.05)
            sock.sendall(http_request())
            body = read_to_eof(sock).partition(b"\r\n\r\n")[2]
        assert f'"client": ["127.0.0.1", {port}]'.encode() in body
        assert ws_identity(server.port)["client"][0] == "127.0.0.1"


def test_with_the_option_off_the_listener_makes_http_protocols_directly():
    # Nothing stands between a read and HttpProtocol: the per-read (and per-connection) cost is unchanged.
    def make_http() -> None:
        raise AssertionError("not called")

    assert connection_factory(Config(app=whoami), make_http) is make_http
    assert connection_factory(Config(app=whoami, proxy_protocol="v1"), make_http) is not make_http


def test_with_the_option_off_a_header_is_not_read(run_server):
    with run_server(whoami) as server, connect(server.port) as sock:
        sock.sendall(V1_CLIENT + http_request())
        assert read_to_eof(sock).startswith(b"HTTP/1.1 400 Bad Request")


def test_shutdown_closes_a_connection_still_waiting_for_its_header(run_server):
    with run_server(whoami, proxy_protocol="v1") as server:
        sock = connect(server.port)
        sock.sendall(b"PROXY ")
        deadline = time.monotonic() + 10
        while server.call(lambda: len(server.server_state.connections)) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.server.should_exit = True
        assert is_closed_without_answer(sock)
        sock.close()


def test_proxy_protocol_with_tls_is_refused_at_start():
    with pytest.raises(ValueError, match="proxy_protocol cannot be combined with TLS"):
        Config(app=whoami, proxy_protocol="v2", ssl_certfile="cert.pem", ssl_keyfile="key.pem")


def test_cli_offers_the_four_settings_and_refuses_another():
    result = subprocess.run(
        [sys.executable, "-m", "asgiws", "tests.proxy.apps:whoami", "--proxy-protocol", "v3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--proxy-protocol': 'v3' is not one of 'off', 'v1', 'v2', 'auto'.")
    result = subprocess.run(
        [sys.executable, "-m", "asgiws", "tests.proxy.apps:whoami", "--proxy-protocol", "v1",
         "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: --proxy-protocol cannot be combined with TLS: terminate TLS at the proxy")


def test_connections_that_end_or_reset_before_a_byte_are_not_logged(run_server, caplog):
    # A load balancer's plain TCP health check connects and leaves, often with a reset.
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        with run_server(whoami, proxy_protocol="v2") as server:
            for reset in (False, True, False, True):
                sock = connect(server.port)
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            deadline = time.monotonic() + 10
            while server.call(lambda: len(server.server_state.connections)) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.call(lambda: len(server.server_state.connections)) == 0
            assert http_identity(server.port, prefix=V2_CLIENT)["client"] == ["203.0.113.7", 56324]
    assert warnings(caplog) == []
