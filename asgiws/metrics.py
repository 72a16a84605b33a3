"""The counters of one worker, how they travel to the supervisor, and the text a scrape returns.

The hot paths count into `METRICS`, this process's registry, with plain
integers: `METRICS.ws_opened += 1`, `METRICS.ws_rejected[ORIGIN] += 1`. Labels
are list indexes (the tuples below give each index its label value), so
counting is one attribute load and one add: no call, no lock, no dict lookup
by label. A WebSocket's messages and bytes are not counted here at all: its
codec already counts them in its `tally` (in C on the common frames; the
access log's close line shows them too), so the registry holds the open
sessions (`ws_open`) and adds their tallies when scraped, and moves them into
the totals when the session closes (`websocket_closed`).
Everything else (label names, cumulative buckets, the text) happens only when
somebody scrapes.

A worker's registry leaves the process as a snapshot (`snapshot()`: plain
lists, JSON-able) over the supervisor link; the supervisor adds the snapshots
of its workers (`accumulate`) and writes them out (`render`) in the Prometheus
text format 0.0.4, or OpenMetrics 1.0 when the scraper asks for it. The format
is written here, not by prometheus_client: it is ~100 lines, and the server
then serves /metrics with no extra dependency (the tests read the output with
prometheus_client's own parsers).

This module imports no asyncio: the supervisor (a select() loop) uses it too.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # the type only: the registry imports nothing of the codec at run time
    from asgiws.websocket.fastpath import TallyLike

logger = logging.getLogger("asgiws.error")

# -- label values, by index -------------------------------------------------------

IN, OUT = 0, 1
DIRECTIONS = ("in", "out")  # "in": from the client; "out": to the client

# Who ended a WebSocket: the client's close frame or its dropped TCP, the server (a protocol error,
# a limit, shutdown), the app (websocket.close), or a timer (no pong, close handshake not answered).
CLIENT, SERVER, APP, TIMEOUT = 0, 1, 2, 3
INITIATORS = ("client", "server", "app", "timeout")
INITIATOR_INDEX = {name: index for index, name in enumerate(INITIATORS)}

# Why a WebSocket handshake was refused (the HTTP status goes to asgiws_http_requests_total as well).
ORIGIN, VERSION, BAD_REQUEST, LIMIT, PER_IP, RATE, APP_DENIED = range(7)
REJECT_REASONS = ("origin", "version", "bad_request", "limit", "per_ip", "rate", "app")

# Why the supervisor replaced a worker. "died": it exited while serving; "healthcheck": its loop did
# not answer in --timeout-worker-healthcheck; "max_requests", "memory", "lifetime": the recycling
# limits (--limit-max-requests, --limit-max-memory, --limit-max-lifetime); "sighup" and "reload": a
# rolling restart (SIGHUP, a changed file).
RESTART_REASONS = ("died", "healthcheck", "max_requests", "memory", "lifetime", "sighup", "reload")

# Close codes are 1000-4999 (RFC 6455 7.4.2), with 1005/1006 recorded for "none received" and
# "dropped": one slot per code keeps the close path an index too.
CLOSE_CODE_SLOTS = 5000

# Prometheus's default buckets (client_golang DefBuckets), seconds: from a cached page to a slow report.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Ping round trips, seconds: loopback (under 1 ms) to a congested mobile link across the world
# (seconds); past --ws-ping-timeout (20 s by default) the connection is closed, not observed.
PING_RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# A scraper that has not sent its request head by then is dropped (an endpoint holds no socket
# for a client that never speaks).
REQUEST_TIMEOUT = 10.0
# After answering, the rest of what the client sent is read and dropped for at most this long before
# closing: closing with unread bytes makes the kernel send a reset, which can destroy the answer
# before the client reads it (the "lingering close" of Apache and nginx).
LINGER_TIME = 2.0
# Longest scrape request head read before answering 431 (Prometheus sends ~250 bytes).
MAX_SCRAPE_HEAD = 8 * 1024

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Histogram:
    """Counts of observations per fixed bucket; `counts[i]` holds bounds[i-1] < value <= bounds[i]
    (the last slot: above every bound), not cumulated until rendered."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation (in the histogram's unit, seconds for every histogram here)."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus's "le").
        # Nearly every observation is in the first bucket (a response under 5 ms, a loopback ping
        # under 0.5 ms): one comparison answers it, and the bisect call is half the cost of observing.
        bounds = self.bounds
        self.counts[0 if value <= bounds[0] else bisect_left(bounds, value)] += 1
        self.sum += value


class OpenWebSocket(Protocol):
    """What the registry reads from an open WebSocket session (asgiws.asgi.websocket): its codec's
    tally of messages and bytes each way, on the wire after the handshake."""

    @property
    def tally(self) -> TallyLike: ...


class Metrics:
    """One process's counters. Attributes are the hot path's; names in FAMILIES are the scrape's."""

    __slots__ = (
        "broadcast_deliveries", "broadcast_published", "http_duration", "http_requests", "ws_bytes",
        "ws_closed", "ws_messages", "ws_open", "ws_opened", "ws_ping_rtt", "ws_rejected",
        "ws_slow_consumer_drops",
    )

    def __init__(self) -> None:
        self.http_requests = [0] * 600  # by status code
        self.http_duration = Histogram(HTTP_DURATION_BUCKETS)
        self.ws_open: set[OpenWebSocket] = set()  # accepted and not closed yet
        self.ws_opened = 0
        self.ws_closed = [[0] * CLOSE_CODE_SLOTS for _ in INITIATORS]  # [initiator][code]
        self.ws_rejected = [0] * len(REJECT_REASONS)
        # Of closed WebSockets; the open ones' are added when scraped (ws_totals).
        self.ws_messages = [0, 0]  # [IN], [OUT]
        self.ws_bytes = [0, 0]  # on the wire: frame headers and compressed payloads
        self.ws_slow_consumer_drops = 0
        self.ws_ping_rtt = Histogram(PING_RTT_BUCKETS)
        self.broadcast_published = 0
        self.broadcast_deliveries = 0

    def count_http(self, status: int, seconds: float | None) -> None:
        """One HTTP response of `status`, `seconds` after its request head was read (None: not timed,
        e.g. a 400 answered before there was a request)."""
        self.http_requests[status if 0 <= status < 600 else 0] += 1
        if seconds is not None:
            self.http_duration.observe(seconds)

    def websocket_opened(self, ws: OpenWebSocket) -> None:
        """A handshake was accepted: `ws` counts its own messages and bytes from now on."""
        self.ws_opened += 1
        self.ws_open.add(ws)

    def websocket_closed(self, ws: OpenWebSocket, code: int, initiator: str) -> None:
        """`ws` closed with `code`, begun by `initiator` (one of INITIATORS): its counts join the totals."""
        if ws not in self.ws_open:
            return  # counted already
        self.ws_open.discard(ws)
        tally = ws.tally
        self.ws_messages[IN] += tally.messages_received
        self.ws_messages[OUT] += tally.messages_sent
        self.ws_bytes[IN] += tally.bytes_received
        self.ws_bytes[OUT] += tally.bytes_sent
        slot = code if 0 <= code < CLOSE_CODE_SLOTS else 0
        self.ws_closed[INITIATOR_INDEX.get(initiator, SERVER)][slot] += 1

    def ws_totals(self) -> tuple[list[int], list[int]]:
        """Messages and bytes [IN, OUT] of every WebSocket, the closed and the open ones."""
        messages, wire = list(self.ws_messages), list(self.ws_bytes)
        for ws in self.ws_open:
            tally = ws.tally
            messages[IN] += tally.messages_received
            messages[OUT] += tally.messages_sent
            wire[IN] += tally.bytes_received
            wire[OUT] += tally.bytes_sent
        return messages, wire

    def snapshot(self) -> Snapshot:
        """Every family's samples, as JSON-able lists: {family: [[label values], value]}."""
        return {family.name: [[list(labels), value] for labels, value in family.read(self)]
                for family in FAMILIES if family.read is not None}


# What crosses the supervisor link: family name -> [[label values], value]; a histogram's value is
# [bucket counts..., sum].
Snapshot = dict[str, list[list[Any]]]
# Added up for a scrape: family name -> label values -> value.
Samples = dict[str, dict[tuple[str, ...], Any]]
Kind = Literal["counter", "gauge", "histogram"]


def _indexed(values: list[int], names: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], int]]:
    return (((name,), value) for name, value in zip(names, values))


def _nonzero(values: list[int]) -> Iterable[tuple[tuple[str, ...], int]]:
    return (((str(index),), value) for index, value in enumerate(values) if value)


def _closes(metrics: Metrics) -> Iterable[tuple[tuple[str, ...], int]]:
    for initiator, codes in zip(INITIATORS, metrics.ws_closed):
        for code, value in enumerate(codes):
            if value:
                yield (str(code), initiator), value


def _histogram(histogram: Histogram) -> Iterable[tuple[tuple[str, ...], list[Any]]]:
    return [((), [*histogram.counts, histogram.sum])]


def _one(value: int) -> Iterable[tuple[tuple[str, ...], int]]:
    return [((), value)]


@dataclass(frozen=True)
class Family:
    """One metric as scraped. `name` is the family's (a counter's samples add `_total`); `per_worker`
    gauges get a `worker` label; `read` takes a worker's samples, None for the supervisor's own."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    read: Callable[[Metrics], Iterable[tuple[tuple[str, ...], Any]]] | None = None
    per_worker: bool = False
    bounds: tuple[float, ...] = ()


FAMILIES = (
    Family("asgiws_workers", "gauge", "Worker processes, by state.", ("state",)),
    Family("asgiws_worker_restarts", "counter", "Workers replaced, by reason.", ("reason",)),
    Family("asgiws_http_requests", "counter", "HTTP responses sent, by status code.", ("status",),
           lambda m: _nonzero(m.http_requests)),
    Family("asgiws_http_request_duration_seconds", "histogram",
           "Seconds from a request's head to the end of its response.", (),
           lambda m: _histogram(m.http_duration), bounds=HTTP_DURATION_BUCKETS),
    Family("asgiws_websocket_connections", "gauge", "WebSocket connections open now.", (),
           lambda m: _one(len(m.ws_open)), per_worker=True),
    Family("asgiws_websocket_opened", "counter", "WebSocket handshakes accepted.", (),
           lambda m: _one(m.ws_opened)),
    Family("asgiws_websocket_closed", "counter", "WebSockets closed, by close code and who closed.",
           ("code", "initiator"), _closes),
    Family("asgiws_websocket_rejected", "counter", "WebSocket handshakes refused, by reason.", ("reason",),
           lambda m: _indexed(m.ws_rejected, REJECT_REASONS)),
    Family("asgiws_websocket_messages", "counter", "WebSocket messages, by direction.", ("direction",),
           lambda m: _indexed(m.ws_totals()[0], DIRECTIONS)),
    Family("asgiws_websocket_bytes", "counter", "WebSocket bytes on the wire (frames), by direction.",
           ("direction",), lambda m: _indexed(m.ws_totals()[1], DIRECTIONS)),
    Family("asgiws_websocket_slow_consumer_drops", "counter",
           "WebSockets closed because the client read too slowly (--ws-max-send-queue).", (),
           lambda m: _one(m.ws_slow_consumer_drops)),
    Family("asgiws_websocket_ping_rtt_seconds", "histogram", "Seconds from a ping to its pong.", (),
           lambda m: _histogram(m.ws_ping_rtt), bounds=PING_RTT_BUCKETS),
    Family("asgiws_broadcast_published", "counter", "Messages published with asgiws.broadcast.", (),
           lambda m: _one(m.broadcast_published)),
    Family("asgiws_broadcast_deliveries", "counter",
           "Broadcast messages handed to this server's WebSocket subscribers.", (),
           lambda m: _one(m.broadcast_deliveries)),
)
FAMILY_BY_NAME = {family.name: family for family in FAMILIES}

# This process's registry. A forked worker starts from the supervisor's, which never counts.
METRICS = Metrics()


def accumulate(into: Samples, snapshot: Snapshot, worker: str | None) -> None:
    """Add `snapshot` to `into`. Gauges of one worker are kept apart under its `worker` label;
    with worker None (a worker that is gone) they are dropped: what it had open is closed."""
    for name, samples in snapshot.items():
        family = FAMILY_BY_NAME.get(name)
        if family is None:
            continue  # a worker of another version: skip what this one cannot name
        series = into.setdefault(name, {})
        for labels, value in samples:
            key = tuple(str(label) for label in labels)
            if family.per_worker:
                if worker is None:
                    continue
                key = (worker, *key)
            if family.kind == "histogram":
                old = series.get(key)
                series[key] = value if old is None else [a + b for a, b in zip(old, value)]
            else:
                series[key] = series.get(key, 0) + value


def retire(into: Samples, snapshot: Snapshot) -> None:
    """Keep the counters and histograms of a worker that exited, so totals never go backwards."""
    accumulate(into, {name: samples for name, samples in snapshot.items()
                      if name in FAMILY_BY_NAME and FAMILY_BY_NAME[name].kind != "gauge"}, None)


# -- the text ----------------------------------------------------------------------


def render(samples: Samples, *, openmetrics: bool) -> str:
    """The exposition of `samples`: Prometheus text 0.0.4, or OpenMetrics 1.0 (ending in "# EOF")."""
    lines: list[str] = []
    for family in FAMILIES:
        series = samples.get(family.name, {})
        labels = ("worker", *family.labels) if family.per_worker else family.labels
        # Prometheus text names a counter's family with its _total; OpenMetrics without it.
        typed = family.name + "_total" if family.kind == "counter" and not openmetrics else family.name
        lines.append(f"# HELP {typed} {_escape_help(family.help)}")
        lines.append(f"# TYPE {typed} {family.kind}")
        for key in sorted(series, key=_sort_key):
            pairs = list(zip(labels, key))
            if family.kind == "histogram":
                lines.extend(_histogram_lines(family, pairs, series[key]))
            else:
                suffix = "_total" if family.kind == "counter" else ""
                lines.append(f"{family.name}{suffix}{_labels(pairs)} {_number(series[key])}")
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _histogram_lines(family: Family, pairs: list[tuple[str, str]], value: list[Any]) -> list[str]:
    *counts, total = value
    lines = []
    cumulative = 0
    for bound, count in zip((*family.bounds, math.inf), counts):
        cumulative += count
        lines.append(f"{family.name}_bucket{_labels([*pairs, ('le', _number(bound))])} {cumulative}")
    lines.append(f"{family.name}_count{_labels(pairs)} {cumulative}")
    lines.append(f"{family.name}_sum{_labels(pairs)} {_number(total)}")
    return lines


def _sort_key(key: tuple[str, ...]) -> tuple[Any, ...]:
    # Numbers (status, code, pid) in numeric order: 200 before 1000.
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key)


def _labels(pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs) + "}"


def _escape_label(value: str) -> str:
    # Text format: "label_value can be any sequence of UTF-8 characters, but the backslash (\),
    # double-quote ("), and line feed (\n) characters have to be escaped as \\, \", and \n".
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "+Inf" if value == math.inf else repr(value)


# -- the scrape request --------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """A valid GET (or HEAD) /metrics: which format the scraper asked for."""

    openmetrics: bool
    head_only: bool


def take_request(received: bytes) -> Scrape | bytes | None:
    """What a scraper's bytes so far ask for: None while its request head is incomplete, else
    read_scrape's answer (an error response is logged, with the request line that earned it)."""
    if len(received) > MAX_SCRAPE_HEAD:
        head = received
    elif b"\r\n\r\n" in received or b"\n\n" in received:
        head = received.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    else:
        return None
    request = read_scrape(head)
    if isinstance(request, bytes):
        status = request.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")[2]
        line = head.split(b"\n", 1)[0].strip()[:200].decode("latin-1")
        logger.info("Metrics endpoint: %s for %r", status, line)
    return request


def read_scrape(head: bytes) -> Scrape | bytes:
    """The scrape a request head asks for, or the whole error response (bytes) to answer instead:
    400 for a malformed head, 404 for another path, 405 for another method, 431 when too long."""
    if len(head) > MAX_SCRAPE_HEAD:
        return error_response(431, "Request Header Fields Too Large")
    text = head.decode("latin-1")
    request_line, *fields = text.replace("\r\n", "\n").split("\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return error_response(400, "Bad Request")
    method, target, _ = parts
    if target.partition("?")[0] != "/metrics":
        return error_response(404, "Not Found", "Metrics are served at /metrics\n")
    if method not in ("GET", "HEAD"):
        return error_response(405, "Method Not Allowed", extra=b"allow: GET, HEAD\r\n")
    accept = ",".join(value for name, _, value in (f.partition(":") for f in fields)
                      if name.strip().lower() == "accept")
    return Scrape(openmetrics="application/openmetrics-text" in accept, head_only=method == "HEAD")


def scrape_response(scrape: Scrape, samples: Samples) -> bytes:
    """The whole HTTP/1.1 response to `scrape` (the connection is closed after it)."""
    body = render(samples, openmetrics=scrape.openmetrics).encode("utf-8")
    content_type = OPENMETRICS_TYPE if scrape.openmetrics else PROMETHEUS_TYPE
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode("latin-1")
    return head if scrape.head_only else head + body


def error_response(status: int, reason: str, body: str | None = None, *, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    payload = (body or f"{reason}\n").encode("utf-8")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n").encode("latin-1")
    return head + extra + b"\r\n" + payload
