"""The abuse controls of issue 7 that go beyond the happy path in tests/ws:
cross-site WebSocket hijacking (--ws-allowed-origins), one address holding
too many connections (--limit-connections-per-ip), a client flooding messages
(--ws-max-message-rate), and what each of them logs.
"""

from __future__ import annotations

import logging
import time

import pytest

from asgiws.protocols.origins import origin_allowed
from tests.hostile.apps import ws_echo as echo_app
from tests.rawws import RawWebSocket, handshake_request
from tests.wire import Opcode, client_frame

# Hostile clients rarely answer the server's close frame and never need its
# keep-alive pings: wait 0.5 s for a close, not 5 s, and send no pings (pings
# are tested on their own in tests/ws).
pytestmark = pytest.mark.server_defaults(ws_close_timeout=0.5, ws_ping_interval=None)


def upgrade(server, origin: str | None = None) -> RawWebSocket:
    extra = f"Origin: {origin}\r\n" if origin is not None else ""
    return RawWebSocket(server.port, request=handshake_request(extra=extra))


# -- cross-site WebSocket hijacking ---------------------------------------------------------

ALLOWED = ("https://app.example.com", "https://*.example.org")


@pytest.mark.parametrize("origin", [
    "https://app.example.com",
    "HTTPS://APP.EXAMPLE.COM",  # RFC 6454 origins compare case-insensitively
    "https://a.example.org",
    "https://deep.sub.example.org",
])
def test_origin_on_the_list_or_matching_a_wildcard_is_allowed(origin):
    assert origin_allowed(origin, ALLOWED)


@pytest.mark.parametrize("origin", [
    None,                                   # not a browser: a list is a promise about who may connect
    "null",                                 # sandboxed iframe or file:// page
    "http://app.example.com",               # same host, other scheme
    "https://app.example.com:8443",         # same host, other port
    "https://app.example.com.evil.test",    # the allowed host as a prefix of an attacker's
    "https://evilapp.example.com",          # exact entries are not suffix matches
    "https://example.org",                  # a wildcard needs a subdomain
    "https://evilexample.org",              # ... and a dot before the suffix
    "https://evil.test/.example.org",       # a path smuggled in front of the suffix
    "http://a.example.org",                 # the wildcard keeps its scheme
])
def test_origin_off_the_list_is_refused(origin):
    assert not origin_allowed(origin, ALLOWED)


def test_no_list_allows_any_origin_and_none():
    assert origin_allowed("https://anything.test", ())
    assert origin_allowed(None, ())


def test_cross_site_upgrade_gets_403_before_the_app_runs_and_is_logged(run_server, caplog):
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await echo_app(scope, receive, send)

    with caplog.at_level(logging.WARNING, logger="asgiws.error"):
        with run_server(app, ws_allowed_origins=ALLOWED) as server:
            for origin in (None, "https://evil.test"):
                ws = upgrade(server, origin)
                assert ws.status == 403
                assert ws.at_eof()
            good = upgrade(server, "https://app.example.com")
            assert good.status == 101
            good.send(client_frame(Opcode.TEXT, b"hi"))
            assert good.read_frame() == (Opcode.TEXT, True, b"hi")
            good.close()
    assert len(scopes) == 1
    assert any("https://evil.test" in r.getMessage() and "not allowed" in r.getMessage() for r in caplog.records)


# -- one address holding too many connections --------------------------------------------------


def test_upgrade_over_the_per_ip_limit_gets_503_and_is_logged(run_server, caplog):
    with caplog.at_level(logging.WARNING, logger="asgiws.error"):
        with run_server(echo_app, limit_connections_per_ip=2) as server:
            held = [upgrade(server), upgrade(server)]
            assert [ws.status for ws in held] == [101, 101]
            refused = upgrade(server)
            assert refused.status == 503
            assert refused.at_eof()
            # The held sockets are untouched by the refusal.
            held[0].send(client_frame(Opcode.TEXT, b"still here"))
            assert held[0].read_frame() == (Opcode.TEXT, True, b"still here")
            for ws in held:
                ws.close()
            # Their slots come back once the server has seen them go.
            deadline = time.monotonic() + 5
            while server.call(lambda: dict(server.server_state.connections_per_ip)) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert upgrade(server).status == 101
    assert any("Too many connections from 127.0.0.1" in r.getMessage() for r in caplog.records)


# -- a client flooding messages ---------------------------------------------------------------


def test_burst_within_the_allowance_is_echoed_then_a_flood_closes_1008(run_server, caplog):
    with caplog.at_level(logging.INFO, logger="asgiws.error"):
        with run_server(echo_app, ws_max_message_rate=5, ws_max_message_burst=4) as server:
            ws = upgrade(server)
            ws.send(b"".join(client_frame(Opcode.TEXT, b"%d" % i) for i in range(4)))
            assert [ws.read_frame()[2] for _ in range(4)] == [b"0", b"1", b"2", b"3"]
            ws.send(b"".join(client_frame(Opcode.TEXT, b"flood") for _ in range(20)))
            assert ws.read_close()[0] == 1008
            assert ws.at_eof()
    assert any("rate" in r.getMessage().lower() for r in caplog.records)
