"""X-Forwarded-* trust: which peer may send them, and which address in the chain is the client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asgiws import Config
from asgiws.protocols.utils import TrustedProxies, client_from_forwarded_for, forwarded_address
from tests.proxy.apps import whoami
from tests.proxy.wire import connect, http_identity, http_request, read_to_eof, ws_identity

SPOOF = "X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n"  # what nginx's $proxy_add_x_forwarded_for makes of a lie


def client(chain: list[str], spec: str) -> str | None:
    return client_from_forwarded_for([value.encode() for value in chain], TrustedProxies(spec))


# -- the chain, without sockets ---------------------------------------------------------------


def test_client_is_the_right_most_address_that_is_not_a_trusted_hop() -> None:
    assert client(["6.6.6.6, 203.0.113.7"], "127.0.0.1") == "203.0.113.7"
    assert client(["6.6.6.6, 203.0.113.7, 10.0.0.2"], "10.0.0.0/8") == "203.0.113.7"
    assert client(["6.6.6.6, 203.0.113.7, 10.0.0.2, 10.0.0.3"], "10.0.0.2, 10.0.0.3") == "203.0.113.7"


def test_star_and_unix_trust_the_peer_but_no_hop_so_a_client_cannot_choose_its_address() -> None:
    # The bug: with '*' every hop was trusted and the left-most, client-written, address won.
    assert client(["6.6.6.6, 203.0.113.7"], "*") == "203.0.113.7"
    assert client(["6.6.6.6, 203.0.113.7"], "unix:") == "203.0.113.7"
    trusted = TrustedProxies("*")
    assert trusted.trusts_peer("192.0.2.1") and trusted.trusts_peer("unix:") and not trusted.trusts_peer(None)
    assert not trusted.trusts_hop("192.0.2.1")
    unix = TrustedProxies("unix:")
    assert unix.trusts_peer("unix:") and not unix.trusts_peer("127.0.0.1")


def test_several_field_lines_are_one_list_in_order() -> None:
    # RFC 9110 5.3; HAProxy's option forwardfor adds its own line after the client's.
    assert client(["6.6.6.6", "203.0.113.7"], "127.0.0.1") == "203.0.113.7"
    assert client(["6.6.6.6, 203.0.113.7", "10.0.0.2"], "10.0.0.2") == "203.0.113.7"


def test_when_every_hop_is_trusted_the_left_most_is_the_client() -> None:
    assert client(["10.0.0.9, 10.0.0.2"], "10.0.0.0/8") == "10.0.0.9"


def test_an_item_that_is_not_an_address_keeps_the_peer() -> None:
    assert client(["unknown"], "127.0.0.1") is None
    assert client(["6.6.6.6, <script>"], "127.0.0.1") is None
    assert client([""], "127.0.0.1") is None


def test_addresses_with_ports_and_brackets_are_normalised() -> None:
    assert forwarded_address("192.0.2.1:4711") == "192.0.2.1"
    assert forwarded_address("[2001:DB8::1]:4711") == "2001:db8::1"
    assert forwarded_address("2001:db8:0:0::1") == "2001:db8::1"
    assert forwarded_address("unix:") is None
    assert client(["6.6.6.6, [2001:db8::7]:1234, 10.0.0.2:80"], "10.0.0.2") == "2001:db8::7"


def test_a_bad_forwarded_allow_ips_entry_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'localhost' is not an IP address, a network, 'unix:' or '\\*'"):
        Config(app=whoami, forwarded_allow_ips="127.0.0.1, localhost")
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not a network"):
        Config(app=whoami, forwarded_allow_ips="10.0.0.0/33")


def test_cli_names_the_bad_entry() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asgiws", "tests.proxy.apps:whoami",
         "--forwarded-allow-ips", "proxy.internal"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: --forwarded-allow-ips: 'proxy.internal' is not an IP address, a network, 'unix:' or '*'")


# -- a real server, raw sockets ------------------------------------------------------------------


@pytest.mark.parametrize("allow", ["unix:", "*"])
def test_unix_socket_peer_is_one_trusted_hop_for_http_and_websocket(run_server, tmp_path: Path, allow: str):
    path = str(tmp_path / "app.sock")
    with run_server(whoami, uds=path, forwarded_allow_ips=allow) as _:
        for identity in (http_identity(path, SPOOF), ws_identity(path, SPOOF)):
            assert identity["client"] == ["203.0.113.7", 0]
        assert http_identity(path)["client"] is None  # no header: a UNIX peer has no address


def test_unix_socket_peer_is_not_trusted_unless_listed(run_server, tmp_path: Path):
    path = str(tmp_path / "app.sock")
    with run_server(whoami, uds=path) as _:  # default: 127.0.0.1 only
        assert http_identity(path, SPOOF + "X-Forwarded-Proto: https\r\n") == {
            "client": None, "server": [path, None], "scheme": "http"}


def test_tcp_peer_with_star_gets_the_right_most_address_for_http_and_websocket(run_server):
    with run_server(whoami, forwarded_allow_ips="*") as server:
        assert http_identity(server.port, SPOOF)["client"] == ["203.0.113.7", 0]
        assert ws_identity(server.port, SPOOF + "X-Forwarded-Proto: https\r\n") == {
            "client": ["203.0.113.7", 0], "server": ["127.0.0.1", server.port], "scheme": "wss"}


def test_x_forwarded_host_is_ignored_unless_opted_in(run_server):
    header = "X-Forwarded-Host: evil.test:8443\r\n"
    with run_server(whoami) as server:
        assert http_identity(server.port, header)["server"] == ["127.0.0.1", server.port]
        assert ws_identity(server.port, header)["server"] == ["127.0.0.1", server.port]
    with run_server(whoami, forwarded_host=True) as server:
        assert http_identity(server.port, header)["server"] == ["evil.test", 8443]
        assert ws_identity(server.port, "X-Forwarded-Host: app.test\r\n")["server"] == ["app.test", 80]
    with run_server(whoami, forwarded_host=True, forwarded_allow_ips="10.9.9.9") as server:
        assert http_identity(server.port, header)["server"] == ["127.0.0.1", server.port]


def test_per_ip_limit_counts_the_tcp_peer_not_x_forwarded_for(run_server):
    with run_server(whoami, limit_connections_per_ip=1) as server, connect(server.port) as held:
        held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")  # kept alive
        assert b'"client": ["203.0.113.7", 0]' in held.recv(65536)
        assert server.call(lambda: dict(server.server_state.connections_per_ip)) == {"127.0.0.1": 1}
        with connect(server.port) as refused:
            refused.sendall(http_request("X-Forwarded-For: 198.51.100.9\r\n"))
            assert read_to_eof(refused).startswith(b"HTTP/1.1 503")
