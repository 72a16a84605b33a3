"""--metrics-port: /metrics from the supervisor, summed over real workers, read by Prometheus's parsers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from asgiws.metrics import Histogram, Metrics, accumulate, render, retire
from asgiws.websocket.fastpath import Tally
from tests.rawws import RawWebSocket, handshake_request
from tests.supervisor.cluster import ROOT, Cluster, free_port, get, wait_for

pytestmark = pytest.mark.timeout(90)

APP = "tests.metrics.apps:app"
ORIGIN = "https://app.example"  # the one --ws-allowed-origin of the WebSocket session test


def scrape(port: int, *, openmetrics: bool = False) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics with httpx; every sample as {(name, sorted labels): value}, parsed by
    prometheus_client (the format the response's content-type names)."""
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"accept": accept}, timeout=10)
    assert response.status_code == 200
    expected = "application/openmetrics-text" if openmetrics else "text/plain; version=0.0.4"
    assert response.headers["content-type"].startswith(expected)
    parse = parse_openmetrics if openmetrics else parse_prometheus
    samples = {}
    for family in parse(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def workers_of(samples: dict[Any, float]) -> set[str]:
    return {dict(labels)["worker"] for name, labels in samples if name == "asgiws_websocket_connections"}


def start(cluster: Callable[..., Cluster], *args: str) -> tuple[Cluster, int]:
    metrics_port = free_port()
    server = cluster(APP, "--workers", "2", "--metrics-port", str(metrics_port), "--lifespan", "off", *args)
    server.wait_ready(2)
    return server, metrics_port


def test_http_requests_are_counted_by_status_over_both_workers(cluster: Callable[..., Cluster]) -> None:
    server, metrics_port = start(cluster)
    pids = set()
    for _ in range(12):
        status, body = get(server.port, "/")
        assert status == 200
        pids.add(body)
    for _ in range(3):
        assert get(server.port, "/missing")[0] == 404
    assert get(server.port, "/boom")[0] == 500
    samples = scrape(metrics_port)
    assert value(samples, "asgiws_http_requests_total", status="200") == 12
    assert value(samples, "asgiws_http_requests_total", status="404") == 3
    assert value(samples, "asgiws_http_requests_total", status="500") == 1
    assert value(samples, "asgiws_http_request_duration_seconds_count") == 16
    assert value(samples, "asgiws_http_request_duration_seconds_bucket", le="+Inf") == 16
    assert value(samples, "asgiws_workers", state="ready") == 2
    assert value(samples, "asgiws_workers", state="starting") == 0
    assert workers_of(samples) == {str(pid) for pid in server.workers()}
    for reason in ("died", "healthcheck", "max_requests", "sighup", "reload"):
        assert value(samples, "asgiws_worker_restarts_total", reason=reason) == 0
    # The same numbers in OpenMetrics, for a scraper that asks for it.
    assert scrape(metrics_port, openmetrics=True) == samples


def test_a_killed_workers_counters_stay_and_its_restart_is_counted(cluster: Callable[..., Cluster]) -> None:
    server, metrics_port = start(cluster)
    for _ in range(10):
        assert get(server.port, "/")[0] == 200
    assert value(scrape(metrics_port), "asgiws_http_requests_total", status="200") == 10
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.workers() and len(server.workers()) == 2, 15, "a replacement")
    server.wait_ready(3)
    samples = scrape(metrics_port)
    # What the killed worker had counted (it answered the scrape before) is still in the total.
    assert value(samples, "asgiws_http_requests_total", status="200") == 10
    assert value(samples, "asgiws_worker_restarts_total", reason="died") == 1
    assert str(victim) not in workers_of(samples)
    assert workers_of(samples) == {str(pid) for pid in server.workers()}
    assert get(server.port, "/")[0] == 200
    assert value(scrape(metrics_port), "asgiws_http_requests_total", status="200") == 11


def test_sighup_counts_one_restart_per_worker_and_keeps_the_old_generations_counts(
    cluster: Callable[..., Cluster],
) -> None:
    server, metrics_port = start(cluster)
    for _ in range(6):
        assert get(server.port, "/missing")[0] == 404
    old = set(server.workers())
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.log().count("stopped (exit status 0)") >= 2, 30,
             f"the old generation to stop:\n{server.log()}")
    samples = scrape(metrics_port)
    assert value(samples, "asgiws_worker_restarts_total", reason="sighup") == 2
    assert value(samples, "asgiws_worker_restarts_total", reason="died") == 0
    # The old workers sent their counters as they exited.
    assert value(samples, "asgiws_http_requests_total", status="404") == 6
    assert not workers_of(samples) & {str(pid) for pid in old}


@pytest.mark.parametrize(("request_head", "status_line", "log_line"), [
    (b"GET /other HTTP/1.1\r\n\r\n", b"HTTP/1.1 404 Not Found",
     "Metrics endpoint: 404 Not Found for 'GET /other HTTP/1.1'"),
    (b"POST /metrics HTTP/1.1\r\ncontent-length: 0\r\n\r\n", b"HTTP/1.1 405 Method Not Allowed",
     "Metrics endpoint: 405 Method Not Allowed for 'POST /metrics HTTP/1.1'"),
    (b"hello\r\n\r\n", b"HTTP/1.1 400 Bad Request", "Metrics endpoint: 400 Bad Request for 'hello'"),
    (b"GET /metrics HTTP/1.1\r\nx: " + b"a" * 9000, b"HTTP/1.1 431 Request Header Fields Too Large",
     "Metrics endpoint: 431 Request Header Fields Too Large for 'GET /metrics HTTP/1.1'"),
])
def test_a_request_the_endpoint_cannot_answer_gets_its_status_and_a_log_line(
    cluster: Callable[..., Cluster], request_head: bytes, status_line: bytes, log_line: str,
) -> None:
    server, metrics_port = start(cluster)
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as sock:
        sock.sendall(request_head)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.split(b"\r\n", 1)[0] == status_line
    wait_for(lambda: log_line in server.log(), 10, f"{log_line!r} in:\n{server.log()}")
    assert value(scrape(metrics_port), "asgiws_workers", state="ready") == 2  # and it still serves


def test_a_metrics_port_in_use_stops_start_up_with_exit_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "asgiws", APP, "--port", str(free_port()), "--metrics-port", str(port)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"ERROR:    Cannot serve metrics on 127.0.0.1:{port}: Address already in use"]


def test_asgiws_run_with_an_app_object_serves_metrics_from_its_own_process(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(f"""
        import asgiws
        from tests.metrics.apps import app
        asgiws.run(app, port={port}, metrics_port={metrics_port}, lifespan="off")
    """))
    process = subprocess.Popen([sys.executable, str(script)], cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _answers(port), 20, "the server")
        for _ in range(4):
            assert get(port, "/")[0] == 200
        samples = scrape(metrics_port)
        assert value(samples, "asgiws_http_requests_total", status="200") == 4
        assert workers_of(samples) == {str(process.pid)}
        assert value(samples, "asgiws_workers", state="ready") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert f"INFO:     Metrics on http://127.0.0.1:{metrics_port}/metrics" in output.splitlines()


def _answers(port: int) -> bool:
    try:  # /missing: the 200s counted are the test's own
        return get(port, "/missing", timeout=1)[0] == 404
    except OSError:
        return False


# -- the registry and the text, without sockets ---------------------------------------------


def test_a_value_on_a_bucket_bound_is_counted_in_that_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for observed in (0.1, 0.5, 1.0, 7.0):
        histogram.observe(observed)
    assert histogram.counts == [1, 2, 1]
    assert histogram.sum == pytest.approx(8.6)


def test_label_values_are_escaped_as_the_text_format_says() -> None:
    samples: Any = {"asgiws_worker_restarts": {('a"b\\c\nd',): 1}}
    text = render(samples, openmetrics=False)
    assert 'asgiws_worker_restarts_total{reason="a\\"b\\\\c\\nd"} 1' in text.splitlines()
    [family] = [f for f in parse_prometheus(text) if f.name == "asgiws_worker_restarts"]
    assert family.samples[0].labels == {"reason": 'a"b\\c\nd'}


def test_retired_counters_add_up_and_gauges_of_the_dead_are_dropped() -> None:
    first, second = Metrics(), Metrics()
    first.http_requests[200] += 2
    first.websocket_opened(_Session(1, 2, 10, 20))
    second.http_requests[200] += 3
    second.websocket_opened(_Session(0, 0, 0, 0))
    total: Any = {}
    retire(total, first.snapshot())
    accumulate(total, second.snapshot(), "42")
    assert total["asgiws_http_requests"] == {("200",): 5}
    assert total["asgiws_websocket_connections"] == {("42",): 1}
    # The open WebSocket's messages count while it is open, and once when it closes.
    assert total["asgiws_websocket_messages"] == {("in",): 1, ("out",): 2}


def test_a_websockets_counts_move_into_the_totals_once_when_it_closes() -> None:
    metrics, session = Metrics(), _Session(3, 4, 30, 40)
    metrics.websocket_opened(session)
    session.tally.messages_received += 1
    assert metrics.ws_totals() == ([4, 4], [30, 40])
    metrics.websocket_closed(session, 1000, "client")
    metrics.websocket_closed(session, 1000, "client")
    assert metrics.ws_totals() == ([4, 4], [30, 40])
    closes = [[labels, n] for labels, n in metrics.snapshot()["asgiws_websocket_closed"]]
    assert closes == [[["1000", "client"], 1]]
    assert metrics.snapshot()["asgiws_websocket_connections"] == [[[], 0]]


class _Session:
    def __init__(self, received: int, sent: int, bytes_received: int, bytes_sent: int) -> None:
        self.tally = Tally()
        self.tally.messages_received, self.tally.messages_sent = received, sent
        self.tally.bytes_received, self.tally.bytes_sent = bytes_received, bytes_sent


# -- WebSocket counters ---------------------------------------------------------------------


def _echo(port: int, texts: list[str], close_code: int) -> None:
    """A websockets client without compression (so the byte counts are exact): send, read each echo, close."""
    with ws_connect(f"ws://127.0.0.1:{port}/echo", compression=None, open_timeout=10,
                    origin=ORIGIN) as ws:  # type: ignore[arg-type]
        for text in texts:
            ws.send(text)
            assert ws.recv(timeout=10) == text
        ws.close(close_code)


def _wait_for_no_open_websockets(metrics_port: int) -> dict[Any, float]:
    def settled() -> dict[Any, float] | None:
        samples = scrape(metrics_port)
        open_now = sum(v for (name, _), v in samples.items() if name == "asgiws_websocket_connections")
        return samples if open_now == 0 and samples[("asgiws_websocket_opened_total", ())] == 3 else None
    return wait_for(settled, 20, "every WebSocket closed")


def test_a_short_websocket_session_is_counted_exactly_over_both_workers(
    cluster: Callable[..., Cluster],
) -> None:
    server, metrics_port = start(cluster, "--ws-allowed-origin", ORIGIN,
                                 "--ws-ping-interval", "none")
    for _ in range(5):
        assert get(server.port, "/")[0] == 200
    # Bytes on the wire: a client frame is 2 + 4 (mask) + payload, a server frame 2 + payload; a close
    # frame's payload is its 2-byte code. In: 3 x 11 + 8, out: 3 x 7 + 4.
    _echo(server.port, ["hello", "hello", "hello"], 1000)
    _echo(server.port, ["hi", "yo"], 4001)  # in: 2 x 8 + 8, out: 2 x 4 + 4
    # out: the app's close, 4 bytes; in: the client's answer, 8.
    with ws_connect(f"ws://127.0.0.1:{server.port}/close/4003", compression=None, open_timeout=10,
                    origin=ORIGIN) as ws, \
            pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    with pytest.raises(InvalidStatus) as denied:
        ws_connect(f"ws://127.0.0.1:{server.port}/deny", open_timeout=10, origin=ORIGIN)  # type: ignore[arg-type]
    assert denied.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as foreign:
        ws_connect(f"ws://127.0.0.1:{server.port}/echo", origin="https://evil.example",  # type: ignore[arg-type]
                   open_timeout=10)
    assert foreign.value.response.status_code == 403
    origin = f"Origin: {ORIGIN}\r\n"
    assert RawWebSocket(server.port, request=handshake_request("/echo", version="8", extra=origin)).status == 426
    assert RawWebSocket(server.port, request=handshake_request("/echo", key="short", extra=origin)).status == 400
    samples = _wait_for_no_open_websockets(metrics_port)
    expected = {
        ("asgiws_websocket_opened_total", ()): 3,
        ("asgiws_websocket_closed_total", (("code", "1000"), ("initiator", "client"))): 1,
        ("asgiws_websocket_closed_total", (("code", "4001"), ("initiator", "client"))): 1,
        ("asgiws_websocket_closed_total", (("code", "4003"), ("initiator", "app"))): 1,
        ("asgiws_websocket_rejected_total", (("reason", "origin"),)): 1,
        ("asgiws_websocket_rejected_total", (("reason", "version"),)): 1,
        ("asgiws_websocket_rejected_total", (("reason", "bad_request"),)): 1,
        ("asgiws_websocket_rejected_total", (("reason", "app"),)): 1,
        ("asgiws_websocket_rejected_total", (("reason", "limit"),)): 0,
        ("asgiws_websocket_rejected_total", (("reason", "per_ip"),)): 0,
        ("asgiws_websocket_rejected_total", (("reason", "rate"),)): 0,
        ("asgiws_websocket_messages_total", (("direction", "in"),)): 5,
        ("asgiws_websocket_messages_total", (("direction", "out"),)): 5,
        ("asgiws_websocket_bytes_total", (("direction", "in"),)): 41 + 24 + 8,
        ("asgiws_websocket_bytes_total", (("direction", "out"),)): 25 + 12 + 4,
        ("asgiws_websocket_slow_consumer_drops_total", ()): 0,
        ("asgiws_websocket_ping_rtt_seconds_count", ()): 0,
        ("asgiws_http_requests_total", (("status", "200"),)): 5,
        ("asgiws_http_requests_total", (("status", "101"),)): 3,
        ("asgiws_http_requests_total", (("status", "403"),)): 2,
        ("asgiws_http_requests_total", (("status", "426"),)): 1,
        ("asgiws_http_requests_total", (("status", "400"),)): 1,
        ("asgiws_workers", (("state", "ready"),)): 2,
    }
    assert {key: samples.get(key) for key in expected} == expected
    closes = [labels for name, labels in samples if name == "asgiws_websocket_closed_total"]
    assert len(closes) == 3  # and no other code or initiator
    assert workers_of(samples) == {str(pid) for pid in server.workers()}


def test_ping_round_trips_and_a_client_that_never_answers_are_counted(
    cluster: Callable[..., Cluster],
) -> None:
    server, metrics_port = start(cluster, "--ws-ping-interval", "0.2", "--ws-ping-timeout", "1")
    with ws_connect(f"ws://127.0.0.1:{server.port}/echo", compression=None, open_timeout=10) as ws:
        wait_for(lambda: value(scrape(metrics_port), "asgiws_websocket_ping_rtt_seconds_count") >= 2, 20,
                 "two pings answered")
        ws.close()
    silent = RawWebSocket(server.port, request=handshake_request("/echo"), timeout=10)
    assert silent.status == 101
    assert silent.read_close() == (1011, "")  # it read the pings but never answered one
    silent.close()
    def timeout_counted() -> dict[Any, float] | None:
        samples = scrape(metrics_port)
        key = ("asgiws_websocket_closed_total", (("code", "1011"), ("initiator", "timeout")))
        timeouts = samples.get(key)
        return samples if timeouts == 1 else None
    samples = wait_for(timeout_counted, 20, "the timeout close counted")
    rtt_count = value(samples, "asgiws_websocket_ping_rtt_seconds_count")
    assert value(samples, "asgiws_websocket_ping_rtt_seconds_bucket", le="+Inf") == rtt_count >= 2
    # On the event loop's clock (uvloop's ticks in milliseconds): a loopback round trip may read 0.
    assert 0 <= value(samples, "asgiws_websocket_ping_rtt_seconds_sum") < rtt_count * 1.0
    assert value(samples, "asgiws_websocket_closed_total", code="1000", initiator="client") == 1


def test_a_scrape_answers_with_the_last_values_of_a_worker_whose_loop_is_blocked(
    cluster: Callable[..., Cluster],
) -> None:
    metrics_port = free_port()
    server = cluster("tests.supervisor.apps:app", "--workers", "2", "--metrics-port", str(metrics_port))
    server.wait_ready(2)
    for _ in range(6):
        assert get(server.port, "/")[0] == 200
    assert value(scrape(metrics_port), "asgiws_http_requests_total", status="200") == 6
    blocker = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        blocker.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")  # one worker's loop sleeps 60 s
        def late_worker_named() -> bool:
            samples = scrape(metrics_port)  # answered, after the scrape timeout, with what it last said
            assert value(samples, "asgiws_http_requests_total", status="200") == 6
            return "did not answer within 2.0s; showing their last values" in server.log()
        wait_for(late_worker_named, 30, f"the late worker's warning in:\n{server.log()}")
    finally:
        blocker.close()


def test_limit_max_requests_counts_its_recycles(cluster: Callable[..., Cluster]) -> None:
    server, metrics_port = start(cluster, "--limit-max-requests", "3")
    first = set(server.workers())
    # A bound in time, not in requests: on a quiet machine 200 requests take less than the two
    # replacements' start-up (each new worker starts, gets ready, then the old one drains).
    deadline, sent = time.monotonic() + 30, 0
    while first & set(server.workers()):  # which worker takes a request is the kernel's choice
        assert time.monotonic() < deadline, f"the first workers were not recycled:\n{server.log()}"
        assert get(server.port, "/")[0] == 200
        sent += 1
    # Each one replaced is drained once its replacement is ready, and counted then (a later one that
    # reached the limit too may still be draining: wait until the log and the counter agree).
    def settled() -> dict[Any, float] | None:
        samples = scrape(metrics_port)
        drained = server.log().count("Draining worker")
        restarts = value(samples, "asgiws_worker_restarts_total", reason="max_requests")
        return samples if restarts == drained == server.log().count("Draining worker") else None
    samples = wait_for(settled, 30, f"the restarts counted:\n{server.log()}")
    assert value(samples, "asgiws_worker_restarts_total", reason="max_requests") >= 2
    assert value(samples, "asgiws_http_requests_total", status="200") == sent


def test_a_client_that_does_not_read_is_counted_as_a_slow_consumer_drop(cluster: Callable[..., Cluster]) -> None:
    server, metrics_port = start(cluster, "--ws-max-send-queue", str(1024 * 1024))
    reader = RawWebSocket(server.port, request=handshake_request("/flood"), timeout=10)
    reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        def dropped() -> dict[Any, float] | None:
            samples = scrape(metrics_port)
            return samples if value(samples, "asgiws_websocket_slow_consumer_drops_total") == 1 else None
        samples = wait_for(dropped, 30, f"the slow consumer dropped:\n{server.log()}")
    finally:
        reader.close()
    assert value(samples, "asgiws_websocket_closed_total", code="1008", initiator="server") == 1


def test_broadcasts_are_counted_once_published_and_once_per_subscriber_delivered(
    cluster: Callable[..., Cluster], redis_server: Any,
) -> None:
    server, metrics_port = start(cluster, "--broadcast-url", redis_server.url)
    with contextlib.ExitStack() as stack:
        listeners = [stack.enter_context(ws_connect(f"ws://127.0.0.1:{server.port}/room", open_timeout=10))
                     for _ in range(3)]
        wait_for(lambda: sum(v for (name, _), v in scrape(metrics_port).items()
                             if name == "asgiws_websocket_connections") == 3, 20, "three subscribers")
        listeners[0].send("hello")  # /room publishes what it receives, to the 3 of them on either worker
        assert [listener.recv(timeout=10) for listener in listeners] == ["hello"] * 3
        samples = scrape(metrics_port)
    assert value(samples, "asgiws_broadcast_published_total") == 1
    assert value(samples, "asgiws_broadcast_deliveries_total") == 3
