"""The supervisor: N worker processes, each in a slot with its own listener.

It binds the listeners once (one per slot in an SO_REUSEPORT group on
host:port, so the kernel spreads connections evenly; one shared socket with
--fd or --uds; asgiws.sockets), forks the workers, and then only watches: a
single-threaded select() loop over the signal wake-up pipe, one pipe per
worker and (with --reload) the file watcher's pipe. It starts no thread and no
event loop, so forking stays safe for the whole life of the process, and it
never closes a listening socket while it runs: connections wait in the slot's
accept queue while its worker is being replaced, and the slot's next worker
inherits the queue.

Signal handlers only queue the signal number; the loop dispatches it to
`handle_<name>` (handle_sigterm, handle_sighup, ...), where acting is safe.

Worker lifecycle: STARTING (forked, importing the app, lifespan start-up) ->
READY (said "ready" over its pipe; now health-checked) -> DRAINING (told
"stop <code>"; killed if it outlives its deadline). Everything else follows
from one rule applied on every tick (`_reconcile`): keep one worker of the
current generation READY in each of the `target` slots, start at most one
replacement at a time, and drain an old or surplus worker only once another
is READY to serve its listeners.
SIGHUP and --reload start a new generation; a worker past --limit-max-requests,
--limit-max-memory or --limit-max-lifetime says "recycle <why>" and is marked for
replacement: the slot's next worker starts first, then the old one drains
(asgiws.drain: 1012, closes spread over --ws-close-spread).
"""

from __future__ import annotations

import enum
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asgiws.config import Config
from asgiws.fdlimit import log_open_file_limit, raise_open_file_limit
from asgiws.sockets import bind_error, bind_listeners, describe, join_group, reuse_port_applies
from asgiws.websocket.frames import CloseCode
from asgiws.workers import ACCEPT_GRACE, Channel, run_worker

if TYPE_CHECKING:
    from asgiws.reload import Watcher
    from asgiws.supervisor_metrics import MetricsEndpoint

logger = logging.getLogger("asgiws.error")

# Close code for WebSocket clients of a worker that is replaced while the
# service goes on (restart, recycle, reload): CloseCode.SERVICE_RESTART (1012)
# tells them to reconnect; CloseCode.GOING_AWAY (1001) is for a real shutdown.

# What a worker's "recycle <why>" names, as the log says it.
RECYCLE_LIMITS = {
    "max_requests": "--limit-max-requests",
    "memory": "--limit-max-memory",
    "lifetime": "--limit-max-lifetime",
}

# Start-up failures back off from 0.5 s, doubling to at most 30 s: slow enough
# that a broken app costs nothing, fast enough to recover from a blip.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
# Pings go out at most this often; a worker has timeout_worker_healthcheck to answer.
PING_INTERVAL_MAX = 1.0
# A draining worker gets timeout_graceful_shutdown plus this much (lifespan
# shutdown, interpreter exit) before it is SIGKILLed.
DRAIN_MARGIN = 5.0
# The loop wakes at least this often even when nothing happens.
TICK = 0.25
# Exit status after a second SIGINT/SIGTERM killed the workers (asgiws.server.FORCED_EXIT).
FORCED_EXIT = 3

HANDLED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass(eq=False)
class Worker:
    pid: int
    channel: Channel
    generation: int
    started_at: float
    slot: int = 0
    listeners: tuple[int, ...] = (0,)  # indexes into Supervisor.sockets: what it accepts on
    state: State = State.STARTING
    replace: bool = False  # asked to be recycled (--limit-max-requests, -memory, -lifetime)
    replace_reason: str = "max_requests"  # which limit, for the log and the restart counter
    ping_sent_at: float | None = None
    next_ping_at: float = 0.0
    drain_deadline: float = float("inf")
    failure: str | None = None  # what it reported when start-up failed
    fatal: bool = False  # and retrying cannot help (the app does not import)


class Supervisor:
    """Runs until SIGTERM/SIGINT; `run()` returns the process exit status."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket] | None = None,
        *,
        watcher: Watcher | None = None,
        worker_target: Callable[[Config, list[socket.socket], socket.socket], int] = run_worker,
    ) -> None:
        self.config = config
        self.sockets = sockets if sockets is not None else bind_listeners(config, config.workers)
        # One listener per slot only when they are an SO_REUSEPORT group (bind_listeners on host:port).
        self.reuse_port = reuse_port_applies(config) and all(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in self.sockets
        )
        self.worker_target = worker_target
        self.watcher = watcher
        self.target = config.workers
        self.generation = 0
        self.workers: dict[int, Worker] = {}
        self.signal_queue: list[int] = []
        self.stopping = False
        self.exit_code = 0
        self.ever_ready = False
        self.failures = 0  # start-up failures since a worker last became ready
        self.last_failure: str | None = None  # the last multi-line failure logged (said once)
        self.spawn_not_before = 0.0
        self.selector = selectors.DefaultSelector()
        self.metrics: MetricsEndpoint | None = None  # --metrics-port (serve_metrics)
        self.restart_reason = "sighup"  # why the current generation started, for the restart counter
        self._wakeup_r, self._wakeup_w = socket.socketpair()

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        # Raised here too: the supervisor holds a pipe per worker and the listeners, and its workers
        # inherit the raised limit. The shortfall line is said here, once for every worker.
        log_open_file_limit(raise_open_file_limit(), self.config.limit_concurrency, self.config.backlog)
        tls = self.config.use_ssl
        for where in dict.fromkeys(describe(sock, tls=tls) for sock in self.sockets):
            logger.log(self._detail, "Listening on %s", where)
        logger.log(self._detail, "%s", self._spread_line())
        logger.log(self._detail, "Started parent process [%d]", os.getpid())
        logger.log(self._detail, "Supervisor %d starting %d worker(s)", os.getpid(), self.target)
        if self.watcher is not None:
            self.selector.register(self.watcher, selectors.EVENT_READ, self._on_watcher)
        try:
            while not (self.stopping and not self.workers):
                self._tick()
        finally:
            self._cleanup()
        logger.log(self._detail, "Supervisor %d stopped", os.getpid())
        logger.log(self._detail, "Stopping parent process [%d]", os.getpid())
        return self.exit_code

    @property
    def _detail(self) -> int:
        """The level of the supervisor's own bookkeeping lines: with one worker (the default, where the
        supervisor is there for SIGHUP restarts) they would double the worker's, so they are DEBUG."""
        return logging.INFO if self.target > 1 or self.watcher is not None else logging.DEBUG

    def _tick(self) -> None:
        for key, _ in self.selector.select(self._timeout()):
            key.data(key.fileobj)
        while self.signal_queue:
            self._dispatch(self.signal_queue.pop(0))
        self._reap()
        now = time.monotonic()
        self._check_health(now)
        self._tick_metrics(now)
        if not self.stopping:
            self._reconcile(now)

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + TICK]
        if self.spawn_not_before > now:  # a spawn held back by the backoff; past it, _reconcile runs each tick
            deadlines.append(self.spawn_not_before)
        timeout = self.config.timeout_worker_healthcheck
        for worker in self.workers.values():
            if worker.state is State.DRAINING:
                deadlines.append(worker.drain_deadline)
            elif worker.state is State.READY:
                sent = worker.ping_sent_at
                deadlines.append(worker.next_ping_at if sent is None else sent + timeout)
        return max(0.0, min(deadlines) - now)

    # -- signals -----------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._wakeup_w.setblocking(False)
        self._wakeup_r.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._drain_wakeup)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, frame: object) -> None:
        # Runs between two bytecodes of the loop: only record it.
        self.signal_queue.append(signum)

    def _drain_wakeup(self, sock: object) -> None:
        try:
            while self._wakeup_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name.lower()
        getattr(self, f"handle_{name}")()

    def handle_sigterm(self) -> None:
        self._stop_or_force("SIGTERM")

    def handle_sigint(self) -> None:
        self._stop_or_force("SIGINT")

    def _stop_or_force(self, name: str) -> None:
        """The first SIGINT/SIGTERM stops gracefully; a second one kills the workers at whatever stage
        they are (lifespan startup or shutdown included) and the exit status says so."""
        if not self.stopping:
            self._begin_stop(name)
            return
        logger.warning("Second %s: forcing exit", name)
        self.exit_code = FORCED_EXIT
        self._kill_all(f"second {name}")

    def handle_sighup(self) -> None:
        self._restart("SIGHUP")

    def handle_sigttin(self) -> None:
        self.target += 1
        logger.info("SIGTTIN: now %d worker(s)", self.target)
        self._add_listeners()

    def handle_sigttou(self) -> None:
        if self.target <= 1:
            logger.info("SIGTTOU ignored: keeping the last worker")
            return
        self.target -= 1
        logger.info("SIGTTOU: now %d worker(s)", self.target)

    def handle_sigchld(self) -> None:
        self._reap()

    def _restart(self, why: str) -> None:
        if self.stopping:
            return
        self.generation += 1
        self.spawn_not_before = 0.0  # a new generation deserves a prompt try
        self.restart_reason = "sighup" if why == "SIGHUP" else "reload"
        logger.info("%s: rolling restart of %d worker(s)", why, self.target)

    def _begin_stop(self, why: str) -> None:
        if self.stopping:
            return
        logger.log(self._detail, "%s: stopping %d worker(s) gracefully", why, len(self.workers))
        self.stopping = True
        for worker in self.workers.values():
            if worker.state is not State.DRAINING:
                self._drain(worker, CloseCode.GOING_AWAY)

    # -- workers -----------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        listeners = self._slot_listeners(slot)
        sockets = [self.sockets[index] for index in listeners]
        parent_end, child_end = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                parent_end.close()
                self._close_in_child(sockets)
                status = self.worker_target(self.config, sockets, child_end)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        child_end.close()
        now = time.monotonic()
        worker = Worker(pid, Channel(parent_end), self.generation, now, slot, listeners)
        self.workers[pid] = worker
        self.selector.register(worker.channel.sock, selectors.EVENT_READ, self._on_channel)
        logger.log(self._detail, "Started worker %d", pid)

    def _close_in_child(self, kept: list[socket.socket]) -> None:
        """Drop the supervisor's own descriptors in a freshly forked worker, and the listeners of the
        other slots (closing them here closes nothing in the supervisor, which keeps every queue)."""
        for sock in self.sockets:
            if sock not in kept:
                sock.close()
        for worker in self.workers.values():
            worker.channel.close()
        self.selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()
        if self.metrics is not None:
            self.metrics.sock.close()
        if self.watcher is not None:
            self.watcher.close_in_child()

    def _on_channel(self, sock: socket.socket) -> None:
        worker = next((w for w in self.workers.values() if w.channel.sock is sock), None)
        if worker is None:
            return
        lines = worker.channel.receive()
        if lines is None:  # the worker is exiting; _reap collects it
            self.selector.unregister(sock)
            return
        self._dispatch_lines(worker, lines)

    def _dispatch_lines(self, worker: Worker, lines: list[str]) -> None:
        for line in lines:
            command, _, argument = line.partition(" ")
            handler = getattr(self, f"_on_{command}", None)
            if handler is not None:
                handler(worker, argument)

    def _on_ready(self, worker: Worker, argument: str) -> None:
        if worker.state is not State.STARTING:
            return
        worker.state = State.READY
        worker.next_ping_at = time.monotonic() + self._ping_interval()
        self.ever_ready = True
        self.failures = 0
        logger.log(self._detail, "Worker %d is ready", worker.pid)
        if self.stopping:
            self._drain(worker, CloseCode.GOING_AWAY)

    def _on_pong(self, worker: Worker, argument: str) -> None:
        worker.ping_sent_at = None
        worker.next_ping_at = time.monotonic() + self._ping_interval()

    def _on_recycle(self, worker: Worker, argument: str) -> None:
        reason = argument if argument in RECYCLE_LIMITS else "max_requests"
        logger.info("Worker %d reached %s: replacing it", worker.pid, RECYCLE_LIMITS[reason])
        worker.replace = True
        worker.replace_reason = reason

    def _on_fail(self, worker: Worker, argument: str) -> None:
        worker.failure = argument

    def _on_fatal(self, worker: Worker, argument: str) -> None:
        """Start-up failed in a way another try cannot mend (the app's import, a setting)."""
        worker.failure = argument
        worker.fatal = True

    def _drain(self, worker: Worker, close_code: int) -> None:
        worker.state = State.DRAINING
        worker.drain_deadline = time.monotonic() + self._drain_allowance()
        worker.channel.send(f"stop {int(close_code)}")

    def _drain_allowance(self) -> float:
        """Seconds a draining worker may take before it is SIGKILLed (inf without a graceful bound).

        Its own shutdown (server.py) takes at most: the accept grace, --ws-drain-time,
        --ws-close-spread, --timeout-graceful-shutdown for the close handshakes and requests, then
        lifespan shutdown as long again (lifespan.py); DRAIN_MARGIN is for the interpreter's exit.
        """
        config = self.config
        grace = config.timeout_graceful_shutdown
        if grace is None:
            return float("inf")
        return ACCEPT_GRACE + config.ws_drain_time + config.ws_close_spread + 2 * grace + DRAIN_MARGIN

    def _on_watcher(self, watcher: Watcher) -> None:
        changed = watcher.read_changes()
        if changed is None:
            logger.error("The --reload watcher stopped; no more reloads")
            self.selector.unregister(watcher)
            return
        if changed:
            shown = ", ".join(os.path.relpath(p) for p in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            self._restart(f"Change in {shown}{more}")

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:  # e.g. the reload watcher
                continue
            self._forget(worker)
            self._on_exit(worker, os.waitstatus_to_exitcode(status))

    def _forget(self, worker: Worker) -> None:
        # What it said just before exiting ("fail <why>") may still be unread: the exit can be reaped
        # before select() reports the channel readable. Read it, or the reason is lost.
        try:
            self.selector.unregister(worker.channel.sock)
        except (KeyError, ValueError):
            pass
        while (lines := worker.channel.receive()):
            self._dispatch_lines(worker, lines)
        worker.channel.close()
        if self.metrics is not None:
            self.metrics.on_exit(worker.pid)

    def _on_exit(self, worker: Worker, code: int) -> None:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if worker.state is State.DRAINING:
            logger.log(self._detail, "Worker %d stopped (%s)", worker.pid, how)
        elif worker.state is State.READY:
            logger.error("Worker %d died (%s): replacing it", worker.pid, how)
            self._count_restart("died")
        else:
            self._on_startup_failure(worker, how)

    def _on_startup_failure(self, worker: Worker, how: str) -> None:
        if self.stopping:
            return  # the same failure, from a worker started beside the first one that failed
        reason = self._say_failure(worker.failure or how)
        self.failures += 1
        if worker.fatal:
            self._on_fatal_failure(reason)
            return
        if not self.ever_ready and not self._active() and self.watcher is None:
            logger.error("Worker failed to start: %s", reason)
            logger.error("Every worker failed to start: exiting")
            self.exit_code = 1
            self.stopping = True
            return
        if self.watcher is not None:
            # Development: retrying the same broken code helps nobody.
            logger.error("Worker failed to start: %s; waiting for a file change", reason)
            self.spawn_not_before = float("inf")
            return
        delay = min(BACKOFF_INITIAL * 2 ** (self.failures - 1), BACKOFF_MAX)
        logger.error("Worker failed to start: %s; retrying in %.1fs", reason, delay)
        self.spawn_not_before = time.monotonic() + delay

    def _say_failure(self, reason: str) -> str:
        """Log a multi-line reason (a traceback) once; return its one-line summary."""
        if "\n" not in reason:
            return reason
        if reason != self.last_failure:
            logger.error("%s", reason)
            self.last_failure = reason
        return reason.rstrip().splitlines()[-1]

    def _on_fatal_failure(self, reason: str) -> None:
        if not self.ever_ready and self.watcher is None:
            if self.last_failure is None or not self.last_failure.rstrip().endswith(reason):
                logger.error("%s", reason)  # else the traceback ending in it was just logged
            self.exit_code = 1
            self._begin_stop_quietly()
            return
        # Keep what serves now; trying the same code again cannot help.
        self.spawn_not_before = float("inf")
        waiting = "a file change" if self.watcher is not None else "SIGHUP"
        logger.error(
            "Worker failed to start: %s; keeping the running workers, waiting for %s", reason, waiting
        )

    def _begin_stop_quietly(self) -> None:
        self.stopping = True
        for worker in self.workers.values():
            if worker.state is not State.DRAINING:
                self._drain(worker, CloseCode.GOING_AWAY)

    def _kill_all(self, why: str) -> None:
        for worker in self.workers.values():
            logger.warning("Killing worker %d: %s", worker.pid, why)
            _kill(worker.pid)

    # -- health ------------------------------------------------------------------

    def _ping_interval(self) -> float:
        return min(PING_INTERVAL_MAX, self.config.timeout_worker_healthcheck / 2)

    def _check_health(self, now: float) -> None:
        timeout = self.config.timeout_worker_healthcheck
        for worker in list(self.workers.values()):
            if worker.state is State.DRAINING:
                if now >= worker.drain_deadline:
                    logger.warning("Worker %d did not stop in time: killing it", worker.pid)
                    _kill(worker.pid)
                    worker.drain_deadline = float("inf")
                continue
            if worker.state is not State.READY:
                continue
            if worker.ping_sent_at is not None:
                if now - worker.ping_sent_at > timeout:
                    logger.error(
                        "Worker %d did not answer a health check within %.1fs (event loop blocked): "
                        "killing it", worker.pid, timeout,
                    )
                    _kill(worker.pid)
                    self._count_restart("healthcheck")
                    worker.state = State.DRAINING  # replaced now; reaped when it dies
                    worker.drain_deadline = float("inf")
            elif now >= worker.next_ping_at:
                worker.ping_sent_at = now
                worker.channel.send("ping")

    # -- the rule ----------------------------------------------------------------

    def _active(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state is not State.DRAINING]

    def _outdated(self, worker: Worker) -> bool:
        return (
            worker.replace
            or worker.generation < self.generation
            or worker.listeners != self._slot_listeners(worker.slot)
        )

    def _slot_workers(self, slot: int) -> list[Worker]:
        return [w for w in self._active() if w.slot == slot]

    def _reconcile(self, now: float) -> None:
        if now >= self.spawn_not_before:
            self._spawn_for_slots()
        self._drain_surplus()

    def _spawn_for_slots(self) -> None:
        """A worker in every empty slot; otherwise one replacement at a time, in the first slot whose
        workers are all outdated (it must be ready before the next starts)."""
        empty = [slot for slot in range(self.target) if not self._slot_workers(slot)]
        for slot in empty:
            self._spawn(slot)
        if empty or any(w.state is State.STARTING for w in self._active()):
            return
        for slot in range(self.target):
            if all(self._outdated(w) for w in self._slot_workers(slot)):
                self._spawn(slot)
                return

    def _drain_surplus(self) -> None:
        """Drain the other workers of a slot once it has a current READY one, and the workers of slots
        beyond `target` (SIGTTOU); each only while its listeners stay served by another READY worker."""
        for slot in range(self.target):
            workers = self._slot_workers(slot)
            current = [w for w in workers if w.state is State.READY and not self._outdated(w)]
            keeper = max(current, key=lambda w: w.started_at, default=None)
            if keeper is None:
                continue
            for worker in workers:
                if worker is not keeper and worker.state is State.READY:
                    self._drain_if_covered(worker)
        for worker in self._active():
            if worker.slot >= self.target and worker.state is State.READY:
                self._drain_if_covered(worker)

    def _drain_if_covered(self, leaving: Worker) -> None:
        """Drain `leaving` unless one of its listeners would be left without a READY worker: a queue
        nobody accepts from delays its connections until a worker comes."""
        served = {index for w in self._active() if w is not leaving and w.state is State.READY
                  for index in w.listeners}
        if set(leaving.listeners) <= served:
            reason = (leaving.replace_reason if leaving.replace else self.restart_reason
                      if self._outdated(leaving) else None)
            logger.info("Draining worker %d%s", leaving.pid, f" ({reason})" if reason else "")
            if reason is not None:
                self._count_restart(reason)
            self._drain(leaving, CloseCode.SERVICE_RESTART)

    # -- listeners ---------------------------------------------------------------

    def _slot_listeners(self, slot: int) -> tuple[int, ...]:
        """The listeners (indexes into self.sockets) a worker of `slot` accepts on: its own, plus
        those of slots beyond `target` after SIGTTOU (a listener is never closed while the supervisor
        runs, or its queued connections would be reset, so a remaining slot takes over its queue).
        With one shared socket, every slot has it."""
        count = len(self.sockets)
        own = tuple(index for index in range(count) if index % self.target == slot)
        return own or (slot % count,)

    def _add_listeners(self) -> None:
        """A listener for each new slot (SIGTTIN), in the SO_REUSEPORT group of the first one."""
        while self.reuse_port and len(self.sockets) < self.target:
            try:
                self.sockets.append(join_group(self.sockets[0], self.config.backlog))
            except OSError as exc:
                slot = len(self.sockets)
                logger.error(
                    "Could not add a listener for worker slot %d (%s): it shares listener %d",
                    slot, exc.strerror or exc, slot % len(self.sockets),
                )
                return

    def _spread_line(self) -> str:
        """What the operator is told about how connections reach the workers."""
        if self.reuse_port:
            return (f"Spreading connections over {len(self.sockets)} listener(s), one per worker "
                    "(SO_REUSEPORT)")
        return "Workers share one listening socket (SO_REUSEPORT applies to host:port only)"

    # -- metrics (--metrics-port) ---------------------------------------------------

    def serve_metrics(self, sock: socket.socket) -> None:
        """Answer /metrics on the bound `sock` from this loop, summed over the workers."""
        from asgiws.supervisor_metrics import MetricsEndpoint

        self.metrics = MetricsEndpoint(sock, self.selector, self._ask_for_metrics, self._worker_states)
        self.metrics.start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        logger.info("Metrics on http://%s:%d/metrics", shown, port)

    def _ask_for_metrics(self) -> set[int]:
        """Send "metrics" to every worker that serves (a starting one has counted nothing yet)."""
        asked = set()
        for worker in self.workers.values():
            if worker.state is not State.STARTING and worker.channel.send("metrics"):
                asked.add(worker.pid)
        return asked

    def _worker_states(self) -> dict[str, int]:
        counts = {state.value: 0 for state in State}
        for worker in self.workers.values():
            counts[worker.state.value] += 1
        return counts

    def _on_metrics(self, worker: Worker, argument: str) -> None:
        if self.metrics is not None:
            self.metrics.on_snapshot(worker.pid, argument)

    def _count_restart(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.count_restart(reason)

    def _tick_metrics(self, now: float) -> None:
        if self.metrics is not None:
            self.metrics.tick(now)

    # -- the end -----------------------------------------------------------------

    def _cleanup(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        if self.watcher is not None:
            self.watcher.stop()
        for sock in self.sockets:
            if sock.family == socket.AF_UNIX and self.config.uds:
                try:
                    os.unlink(self.config.uds)
                except OSError:
                    pass
            sock.close()
        if self.metrics is not None:
            self.metrics.close()
        self.selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _bind_metrics(config: Config) -> socket.socket | None:
    """The --metrics-port socket, bound before any worker starts; None without the option.

    Raises OSError (a port in use, an address not on this machine) after logging it.
    """
    if config.metrics_port is None:
        return None
    from asgiws.supervisor_metrics import bind_metrics_socket

    try:
        return bind_metrics_socket(config.metrics_host, config.metrics_port)
    except OSError as exc:
        logger.error("Cannot serve metrics on %s:%d: %s", config.metrics_host, config.metrics_port,
                     exc.strerror or exc)
        raise


def run_supervisor(config: Config, sockets: list[socket.socket] | None = None) -> int:
    """Serve `config` with config.workers processes (and --reload); returns the exit status.

    What can be checked without the app is checked here, before any worker
    starts, and said once: the TLS files, the --header values and the address.
    """
    from asgiws.protocols.response import build_default_headers
    from asgiws.sockets import create_ssl_context, tls_error

    try:
        create_ssl_context(config)
        build_default_headers(config)
    except OSError as exc:
        logger.error("%s", tls_error(config, exc))
        return 1
    except ValueError as exc:  # a --header no response could carry
        logger.error("%s", exc)
        return 1
    try:
        metrics_sock = _bind_metrics(config)
    except OSError:
        return 1
    if sockets is None:
        try:
            sockets = bind_listeners(config, config.workers)
        except OSError as exc:
            logger.error("%s", bind_error(config, exc))
            if metrics_sock is not None:
                metrics_sock.close()
            return 1
    watcher = None
    if config.reload:
        from asgiws.reload import Watcher

        watcher = Watcher(config)
    supervisor = Supervisor(config, sockets, watcher=watcher)
    if metrics_sock is not None:
        supervisor.serve_metrics(metrics_sock)
    if watcher is not None:
        watcher.start()
    return supervisor.run()
