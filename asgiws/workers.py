"""One worker process: serve the supervisor's sockets and talk to it over a pipe.

The supervisor forks, and the child calls `run_worker`. The pipe (one end of
a socketpair) carries short text lines:

  supervisor -> worker   "ping"          answer "pong" (from the event loop)
                         "stop <code>"   graceful shutdown; WebSockets get <code>
                         "metrics"       answer "metrics <json>" (--metrics-port scrapes)
  worker -> supervisor   "ready"         the server is accepting connections
                         "pong"
                         "metrics <json>" this worker's counters (asgiws.metrics.snapshot),
                                         also sent once more as it exits after serving
                         "recycle <why>" a limit was reached, replace me: <why> is
                                         max_requests, memory or lifetime
                         "fail <text>"   start-up failed, with the app's error
                         "fatal <text>"  start-up failed and retrying cannot help (the
                                         app's import raised, a setting cannot work)

Newlines inside a line (a traceback) travel as "\\n".

Pings are read with `loop.add_reader`, so they are answered by the event loop
itself: a loop blocked by the app (time.sleep in a handler, a CPU-bound
request) cannot answer, and the supervisor replaces the worker. End of file
on the pipe means the supervisor is gone: the worker shuts down gracefully
rather than serving on as an orphan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import socket
import time
import traceback
from typing import Any

from asgiws.config import Config
from asgiws.metrics import METRICS
from asgiws.websocket.frames import CloseCode

logger = logging.getLogger("asgiws.error")

# How often the worker compares its request count with --limit-max-requests, and its age with
# --limit-max-lifetime (s).
REQUEST_LIMIT_INTERVAL = 0.1
# How often it reads its resident memory for --limit-max-memory (s): one small read of
# /proc/self/statm; memory that grows past the limit costs at most this long.
MEMORY_CHECK_INTERVAL = 2.0
MiB = 1024 * 1024
# How often the worker checks whether the server has started listening.
READY_POLL_INTERVAL = 0.02
# Between "stop accepting" and "close idle connections": a client whose
# connection was accepted just before the stop sends its request within a
# fraction of a round trip; without this pause that request would meet a
# closed connection during every rolling restart.
ACCEPT_GRACE = 0.1


class Channel:
    """Line-oriented, non-blocking end of the supervisor <-> worker socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._buffer = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, line: str) -> bool:
        """Send one line, newlines inside it escaped; False when the peer is gone or the pipe is full."""
        escaped = line.replace("\\", "\\\\").replace("\n", "\\n")
        try:
            self.sock.send(escaped.encode("utf-8", "replace") + b"\n")
        except OSError:
            return False
        return True

    def receive(self) -> list[str] | None:
        """The complete lines that arrived; None at end of file (peer gone)."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [_unescape(line.decode("utf-8", "replace")) for line in lines]

    def close(self) -> None:
        self.sock.close()


def _unescape(line: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), line)


class LastError(logging.Handler):
    """Remembers the last ERROR record, to tell the supervisor why start-up failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message}: {type(exc).__name__}: {exc}"
        self.message = message


def request_limit(config: Config) -> int | None:
    """This worker's --limit-max-requests, with its own random jitter."""
    if config.limit_max_requests is None:
        return None
    return config.limit_max_requests + random.randint(0, max(config.limit_max_requests_jitter, 0))


def lifetime_limit(config: Config) -> float | None:
    """This worker's --limit-max-lifetime in seconds, plus its own random 0..jitter (default: a tenth
    of the lifetime), so that workers started together do not recycle together."""
    lifetime = config.limit_max_lifetime
    if lifetime is None:
        return None
    jitter = config.limit_max_lifetime_jitter
    return lifetime + random.uniform(0.0, lifetime / 10 if jitter is None else jitter)


def resident_memory() -> int | None:
    """This process's resident set size in bytes, from /proc/self/statm (Linux); None elsewhere.

    statm's second field is the resident pages (proc(5)); ru_maxrss would be the peak, which
    never falls, so a worker that freed its memory would still be recycled.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Limits:
    """The recycling limits of one worker: which is reached, if any (`reached`), polled by the link."""

    def __init__(self, config: Config, requests: int | None, started_at: float) -> None:
        self.requests = requests
        self.memory = None if config.limit_max_memory is None else config.limit_max_memory * MiB
        self.lifetime = lifetime_limit(config)
        self.started_at = started_at
        self.next_memory_check = started_at

    @property
    def any(self) -> bool:
        return self.requests is not None or self.memory is not None or self.lifetime is not None

    def reached(self, served: int, now: float) -> str | None:
        """The reason to recycle ("max_requests", "memory", "lifetime"), logged once; else None."""
        pid = os.getpid()
        if self.requests is not None and served >= self.requests:
            logger.info("Worker %d served %d requests: asking to be recycled", pid, self.requests)
            return "max_requests"
        if self.lifetime is not None and now - self.started_at >= self.lifetime:
            logger.info("Worker %d has run %.0fs, past --limit-max-lifetime: asking to be recycled",
                        pid, now - self.started_at)
            return "lifetime"
        if self.memory is not None and now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
            rss = resident_memory()
            if rss is not None and rss > self.memory:
                logger.info("Worker %d uses %d MiB, over --limit-max-memory %d MiB: asking to be recycled",
                            pid, rss // MiB, self.memory // MiB)
                return "memory"
        return None


def run_worker(config: Config, sockets: list[socket.socket], channel_sock: socket.socket) -> int:
    """The body of a forked worker; returns its exit status.

    The supervisor coordinates shutdown and restarts, so SIGINT (a Ctrl-C that
    reaches the whole process group) and SIGHUP (a closed terminal, sent to the
    group) are ignored here; SIGTERM sent to the worker directly still stops it
    gracefully.
    """
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    random.seed()  # the forked child would otherwise share the parent's sequence

    from asgiws.server import run_event_loop

    channel = Channel(channel_sock)
    errors = LastError()
    logger.addHandler(errors)
    link = SupervisorLink(channel, Limits(config, request_limit(config), time.monotonic()))
    try:
        run_event_loop(lambda: link.serve(config, sockets), config.loop)
    except SystemExit as exc:  # e.g. the app failed to import and the server exited
        code = exc.code if isinstance(exc.code, int) else 1
        if not link.ready:
            channel.send(f"fail {errors.message or exc}")
            return code or 3
        return code
    except BaseException as exc:
        if not link.ready:
            reason = errors.message or "".join(traceback.format_exception_only(type(exc), exc)).strip()
            channel.send(f"fail {reason}")
        logger.error("Worker %d stopped on an error", os.getpid(), exc_info=exc)
        return 1
    if not link.ready:
        reason = link.error or errors.message or "the server stopped before it started serving"
        channel.send(f"{'fatal' if link.fatal else 'fail'} {reason}")
        return 3
    link.send_metrics()  # what it counted while draining, so the supervisor's totals keep it
    return 0


class SupervisorLink:
    """The worker's side of the conversation, run on the worker's event loop."""

    def __init__(self, channel: Channel, limits: Limits) -> None:
        self.channel = channel
        self.limits = limits
        self.ready = False
        self.recycle_requested = False
        self.server: Any = None
        self.error: str | None = None
        self.fatal = False  # the start-up error is one another try cannot mend

    async def serve(self, config: Config, sockets: list[socket.socket]) -> None:
        from asgiws.server import Server  # imported in the worker: the supervisor stays lean

        # The request limit is enforced here, not by the server: the worker
        # keeps serving until the supervisor has a replacement ready. The
        # sockets belong to the supervisor: a worker that stops must not
        # unlink the --uds path the others go on serving.
        # The supervisor serves --metrics-port, from every worker's counters.
        self.server = Server(config.replace(limit_max_requests=None, uds=None, fd=None, metrics_port=None))
        # SIGTERM sent to this worker stops it gracefully; SIGINT stays ignored.
        self.server.handled_signals = (signal.SIGTERM,)
        # The supervisor says a start-up error once, however many workers met it.
        self.server.log_startup_error = False
        self.server.log_file_limit_shortfall = False
        loop = asyncio.get_running_loop()
        loop.add_reader(self.channel.fileno(), self._on_readable)
        watcher = loop.create_task(self._watch())
        try:
            await self.server.serve(sockets=sockets)
        finally:
            watcher.cancel()
            loop.remove_reader(self.channel.fileno())
        self.error = self.server.error
        self.fatal = self.server.startup_error_is_fatal

    def _on_readable(self) -> None:
        lines = self.channel.receive()
        if lines is None:
            logger.warning("Worker %d: supervisor is gone, shutting down", os.getpid())
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self._stop(CloseCode.GOING_AWAY)  # the supervisor is gone: a real shutdown
            return
        for line in lines:
            command, _, argument = line.partition(" ")
            if command == "ping":
                self.channel.send("pong")
            elif command == "stop":
                self._stop(int(argument or CloseCode.GOING_AWAY))
            elif command == "metrics":
                self.send_metrics()

    def send_metrics(self) -> None:
        """Send this worker's counters; answered by the event loop, as pings are."""
        self.channel.send("metrics " + json.dumps(METRICS.snapshot(), separators=(",", ":")))

    def _stop(self, close_code: int) -> None:
        self.server.shutdown_close_code = close_code
        if not self.server.started:
            self.server.should_exit = True
            return
        for listener in self.server.servers:
            listener.close()  # other workers take the new connections from now on
        asyncio.get_running_loop().call_later(ACCEPT_GRACE, setattr, self.server, "should_exit", True)

    async def _watch(self) -> None:
        """Report "ready" once serving, then "recycle <why>" once past a recycling limit (Limits).

        The worker watches its own limits rather than the supervisor: it knows its request count
        and reads its own memory for the price of one small read, and the supervisor stays a loop
        that only reacts (a worker too blocked to check is the health check's to replace).
        """
        while not self.server.started:
            await asyncio.sleep(READY_POLL_INTERVAL)
        self.ready = True
        self.channel.send("ready")
        if not self.limits.any:
            return
        while (reason := self.limits.reached(self._requests_served(), time.monotonic())) is None:
            await asyncio.sleep(REQUEST_LIMIT_INTERVAL)
        self.channel.send(f"recycle {reason}")

    def _requests_served(self) -> int:
        state = getattr(self.server, "server_state", None)
        return state.total_requests if state is not None else 0
