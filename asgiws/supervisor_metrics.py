"""The supervisor's /metrics (--metrics-port): one listening socket in its select() loop.

A scrape asks every worker for its counters over the supervisor link
("metrics" -> "metrics <json>", asgiws.workers) and answers once all have
replied, or after SCRAPE_TIMEOUT with the last values of those that did not
(a worker blocked by its app still has its counters counted). The counters
of a worker that exited are kept (`retire`), so a total never goes backwards
when a worker dies or is replaced; its gauges (connections open now) go with it.

No thread, no event loop: like the rest of the supervisor, so forking stays safe.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from asgiws.metrics import (
    LINGER_TIME,
    MAX_SCRAPE_HEAD,
    REQUEST_TIMEOUT,
    RESTART_REASONS,
    Samples,
    Scrape,
    Snapshot,
    accumulate,
    retire,
    scrape_response,
    take_request,
)

logger = logging.getLogger("asgiws.error")

# How long a scrape waits for the workers' counters: far below Prometheus's default 10 s scrape
# timeout, far above what an idle event loop takes to answer (well under a millisecond).
SCRAPE_TIMEOUT = 2.0


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    received: bytes = b""
    outgoing: bytes = b""
    scrape: Scrape | None = None
    lingering: bool = False  # answered; reading what is left until the client closes
    waiting: set[int] = field(default_factory=set)  # workers whose counters it still waits for


class MetricsEndpoint:
    """Serves GET /metrics on `sock` from inside the supervisor's selector.

    `ask_workers()` sends "metrics" to every live worker and returns their pids;
    `worker_states()` gives the number of workers in each state for asgiws_workers.
    """

    def __init__(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector,
        ask_workers: Callable[[], set[int]],
        worker_states: Callable[[], dict[str, int]],
    ) -> None:
        self.sock = sock
        self.selector = selector
        self.ask_workers = ask_workers
        self.worker_states = worker_states
        self.snapshots: dict[int, Snapshot] = {}  # each live worker's last answer
        self.retired: Samples = {}  # what the workers that exited had counted
        self.restarts = dict.fromkeys(RESTART_REASONS, 0)
        self.clients: list[_Client] = []

    def start(self) -> None:
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, self._on_accept)

    def close(self) -> None:
        for client in list(self.clients):
            self._drop(client)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()

    # -- what the supervisor tells it ------------------------------------------------

    def count_restart(self, reason: str) -> None:
        """A worker is being replaced for `reason` (one of RESTART_REASONS)."""
        self.restarts[reason] += 1

    def on_snapshot(self, pid: int, text: str) -> None:
        """A worker's "metrics <json>" answer."""
        try:
            snapshot = json.loads(text)
        except ValueError:
            logger.warning("Worker %d sent unreadable metrics; keeping its previous values", pid)
            snapshot = None
        if isinstance(snapshot, dict):
            self.snapshots[pid] = snapshot
        self._answered(pid)

    def on_exit(self, pid: int) -> None:
        """A worker was reaped (after its last words were read): keep its counters, stop waiting."""
        snapshot = self.snapshots.pop(pid, None)
        if snapshot is not None:
            retire(self.retired, snapshot)
        self._answered(pid)

    def tick(self, now: float) -> None:
        """Answer scrapes whose workers are late; drop scrapers that never sent a request."""
        for client in list(self.clients):
            if now < client.deadline:
                continue
            if client.scrape is not None and not client.outgoing and not client.lingering:
                self._respond(client)
            else:
                self._drop(client)

    def samples(self) -> Samples:
        """Everything a scrape shows now."""
        samples: Samples = {}
        for name, series in self.retired.items():
            samples[name] = dict(series)
        for pid, snapshot in self.snapshots.items():
            accumulate(samples, snapshot, str(pid))
        states = self.worker_states()
        samples["asgiws_workers"] = {(state,): count for state, count in states.items()}
        samples["asgiws_worker_restarts"] = {(reason,): count for reason, count in self.restarts.items()}
        return samples

    # -- the scrapers ----------------------------------------------------------------

    def _on_accept(self, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # EMFILE: the next tick tries again
            logger.warning("Metrics endpoint could not accept a connection: %s", exc)
            return
        conn.setblocking(False)
        client = _Client(conn, time.monotonic() + REQUEST_TIMEOUT)
        self.clients.append(client)
        self.selector.register(conn, selectors.EVENT_READ, lambda _: self._on_readable(client))

    def _on_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_SCRAPE_HEAD + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        if client.scrape is not None:
            return  # a second request on the same connection is not read: the answer closes it
        client.received += data
        request = take_request(client.received)
        if request is None:
            return
        if isinstance(request, bytes):
            self._write(client, request)
            return
        client.scrape = request
        client.waiting = self.ask_workers()
        client.deadline = time.monotonic() + SCRAPE_TIMEOUT
        if not client.waiting:
            self._respond(client)

    def _answered(self, pid: int) -> None:
        for client in list(self.clients):
            if pid in client.waiting:
                client.waiting.discard(pid)
                if not client.waiting and client.scrape is not None and not client.outgoing:
                    self._respond(client)

    def _respond(self, client: _Client) -> None:
        if client.waiting:
            late = ", ".join(str(pid) for pid in sorted(client.waiting))
            logger.warning("Metrics: worker(s) %s did not answer within %.1fs; showing their last values",
                           late, SCRAPE_TIMEOUT)
            client.waiting = set()
        assert client.scrape is not None
        self._write(client, scrape_response(client.scrape, self.samples()))

    def _write(self, client: _Client, data: bytes) -> None:
        client.outgoing = data
        client.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.selector.modify(client.sock, selectors.EVENT_WRITE, lambda _: self._on_writable(client))
        self._on_writable(client)

    def _on_writable(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            self._linger(client)

    def _linger(self, client: _Client) -> None:
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(client)
            return
        client.lingering = True
        client.deadline = time.monotonic() + LINGER_TIME
        self.selector.modify(client.sock, selectors.EVENT_READ, lambda _: self._on_lingering(client))

    def _on_lingering(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()


def bind_metrics_socket(host: str, port: int) -> socket.socket:
    """A listening socket for --metrics-host/--metrics-port; raises OSError as bind() does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock

