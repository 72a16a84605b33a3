"""/metrics served by the worker itself: `asgiws.run(app_object)` has no supervisor to ask.

The request is read and answered by the same functions as the supervisor's
endpoint (asgiws.metrics.read_scrape, scrape_response), so both say the same
things in the same words; only the transport differs.
"""

from __future__ import annotations

import asyncio
import os

from asgiws.metrics import (
    LINGER_TIME,
    METRICS,
    REQUEST_TIMEOUT,
    RESTART_REASONS,
    Samples,
    accumulate,
    scrape_response,
    take_request,
)


def own_samples() -> Samples:
    """This process's counters as a scrape shows them: one worker, which is this one, and which no
    supervisor ever restarts."""
    samples: Samples = {}
    accumulate(samples, METRICS.snapshot(), str(os.getpid()))
    samples["asgiws_workers"] = {("starting",): 0, ("ready",): 1, ("draining",): 0}
    samples["asgiws_worker_restarts"] = {(reason,): 0 for reason in RESTART_REASONS}
    return samples


class MetricsProtocol(asyncio.Protocol):
    """One scraper's connection: read a request head, answer it, close."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's: an asyncio.Transport
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self.answered:
            return  # past the answer: read and dropped until the client closes (LINGER_TIME)
        self.received += data
        request = take_request(self.received)
        if request is None:
            return
        self.answered = True
        answer = request if isinstance(request, bytes) else scrape_response(request, own_samples())
        self.transport.write(answer)
        self.transport.write_eof()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(LINGER_TIME, self.transport.close)

    def eof_received(self) -> bool:
        if self.transport is not None:
            self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
