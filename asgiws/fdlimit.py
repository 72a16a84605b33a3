"""The open-file limit (RLIMIT_NOFILE): raised at start-up, watched as connections grow.

Every connection holds one file descriptor, so the soft open-file limit is the
most connections a process can hold. Distributions start processes with a soft
limit of 1,024 and a hard limit far above it (systemd: 524,288); the soft limit
may be raised to the hard one without privileges (setrlimit(2): "an unprivileged
process may set only its soft limit to a value in the range from 0 up to the hard
limit"), so every asgiws process does that before it listens.

Past the limit, accept(2) fails with EMFILE (the process) or ENFILE (the system).
What the event loop then does, measured with a listener under a soft limit of 64:

- uvloop (libuv's `uv__emfile_trick`): libuv keeps one spare descriptor open; on
  EMFILE it closes the spare, accepts every pending connection and closes it at
  once, and opens the spare again. The client sees its connection closed before
  any byte; the loop does not spin (0.0 CPU s over 2 s of refused connects) and
  accepts again as soon as a descriptor is free. It says nothing: `OpenFileWatch`
  is what logs it.
- asyncio (`BaseSelectorEventLoop._accept_connection`): stops reading the
  listener for one second and calls the loop's exception handler with "socket.accept()
  out of system resource" and a traceback, every second while the limit lasts; the
  pending connections wait in the kernel's backlog. `OpenFileWatch.loop_exception`
  turns those into one rate-limited line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("asgiws.error")

# Descriptors a worker holds besides its connections: listeners, the loop's epoll
# and self-pipe, libuv's spare, the supervisor's pipe, log files, a Redis broker's
# connections, the app's own files. Counted on top of --limit-concurrency and
# --backlog when judging whether the limit is enough.
SERVER_OWN_FILES = 64
# Warn once open files reach this fraction of the limit: enough head room for an
# operator to act before connections are refused.
NEAR_LIMIT_FRACTION = 0.9
# Within this many descriptors of the limit, every new connection counts the
# process's open files exactly (the estimate from connections may be a few off:
# a TLS handshake is registered twice, the app may hold files of its own).
EXACT_COUNT_MARGIN = 16
# One line per kind (near, reached) per this many seconds: a limit that is hit is
# usually hit by thousands of connections a second.
LOG_INTERVAL = 60.0  # seconds
# Where the limit is raised, for the log lines.
HOW_TO_RAISE = ("raise it with `ulimit -n N` in the shell that starts the server, "
                "`LimitNOFILE=N` in a systemd unit, or `docker run --ulimit nofile=N:N`")
# The loop exception handler's message for EMFILE/ENFILE on accept (asyncio.selector_events).
ASYNCIO_ACCEPT_MESSAGE = "socket.accept() out of system resource"


@dataclass(frozen=True, slots=True)
class OpenFileLimit:
    """The RLIMIT_NOFILE soft limit before and after start-up, and the hard limit (files)."""

    before: int
    soft: int
    hard: int


def raise_open_file_limit() -> OpenFileLimit:
    """Raise this process's soft open-file limit to its hard limit; never raises.

    An unlimited hard limit is not a value setrlimit(2) accepts for the soft
    limit on Linux (it is capped by fs.nr_open), so the soft limit then goes to
    fs.nr_open; where the system refuses (macOS caps it at OPEN_MAX), it is left
    as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if target is None or soft == resource.RLIM_INFINITY or soft >= target:
        return OpenFileLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        logger.debug("Could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return OpenFileLimit(soft, soft, hard)
    return OpenFileLimit(soft, target, hard)


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def files_needed(limit_concurrency: int | None, backlog: int) -> int:
    """Files one worker needs: a connection per --limit-concurrency slot (or per backlog entry, the
    connections the kernel may hand over at once), plus SERVER_OWN_FILES."""
    return max(limit_concurrency or 0, backlog) + SERVER_OWN_FILES


def log_open_file_limit(limit: OpenFileLimit, limit_concurrency: int | None, backlog: int,
                        *, say_shortfall: bool = True) -> None:
    """Log the limit at debug; at info when it is below `files_needed` (and `say_shortfall`)."""
    raised = f" (raised from {limit.before})" if limit.soft != limit.before else ""
    logger.debug("Open-file limit: %d%s, hard limit %s", limit.soft, raised, _show(limit.hard))
    needed = files_needed(limit_concurrency, backlog)
    if say_shortfall and limit.soft < needed:
        what = (f"--limit-concurrency {limit_concurrency}" if limit_concurrency and limit_concurrency >= backlog
                else f"--backlog {backlog}")
        logger.info(
            "Open-file limit %d (hard limit %s) is below the %d files %s needs (one per connection, "
            "%d for the server): past it new connections are refused; %s",
            limit.soft, _show(limit.hard), needed, what, SERVER_OWN_FILES, HOW_TO_RAISE,
        )


def _show(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def count_open_files(limit: int) -> int | None:
    """This process's open descriptors (Linux /proc, macOS /dev/fd); None where neither lists them.

    Listing takes a descriptor of its own: when that fails with EMFILE every one is in use, and the
    count is `limit`.
    """
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # less the descriptor listdir itself opened
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return limit
    return None


class OpenFileWatch:
    """Logs, rate-limited, when a worker's open files near and reach RLIMIT_NOFILE.

    `ServerState.add_connection` calls `connection_opened(n)` only once `n`
    connections reach `watch_from`, so below 90% of the limit it costs one
    integer comparison per connection. Above it, the open files are estimated
    from the connection count and the files the worker held before serving,
    and counted exactly only near the limit and when a line is due.
    """

    __slots__ = ("_clock", "_exact_from", "_next_near", "_next_reached", "baseline", "limit", "watch_from")

    def __init__(self, limit: int, baseline: int, clock: Callable[[], float] = time.monotonic) -> None:
        """`limit`: the soft RLIMIT_NOFILE; `baseline`: files open before the first connection."""
        self.limit = limit
        self.baseline = baseline
        near = int(limit * NEAR_LIMIT_FRACTION)
        self.watch_from = max(near - baseline, 0)
        self._exact_from = max(limit - EXACT_COUNT_MARGIN - baseline, 0)
        self._next_near = 0.0
        self._next_reached = 0.0
        self._clock = clock

    @classmethod
    def for_this_process(cls) -> OpenFileWatch:
        """A watch on the current soft limit, with the files open now as the baseline."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = _nr_open() or 2**31 - 1
        return cls(soft, count_open_files(soft) or 0)

    def connection_opened(self, connections: int) -> None:
        """A connection was registered and `connections` are now open (>= watch_from)."""
        now = self._clock()
        if connections >= self._exact_from and now >= self._next_reached:
            files = count_open_files(self.limit)
            # libuv's spare descriptor is among the open ones: at `limit` the next accept fails.
            if files is not None and files >= self.limit:
                self._next_reached = now + LOG_INTERVAL
                self._say_reached(connections)
                return
        if now >= self._next_near:
            self._next_near = now + LOG_INTERVAL
            files = count_open_files(self.limit)
            shown = files if files is not None else connections + self.baseline
            logger.warning(
                "%d connections open: %d files of the open-file limit %d (RLIMIT_NOFILE); past it new "
                "connections are refused; %s", connections, shown, self.limit, HOW_TO_RAISE,
            )

    def _say_reached(self, connections: int | None) -> None:
        held = f"{connections} connections open, " if connections is not None else ""
        logger.warning(
            "Open-file limit %d reached (%sEMFILE): new connections are refused until some "
            "close; %s", self.limit, held, HOW_TO_RAISE,
        )

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any],
                       default: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]) -> None:
        """A loop exception handler's body: asyncio's accept failures on EMFILE/ENFILE become one
        rate-limited line; everything else goes to `default`."""
        if context.get("message") != ASYNCIO_ACCEPT_MESSAGE:
            default(loop, context)
            return
        now = self._clock()
        if now >= self._next_reached:
            self._next_reached = now + LOG_INTERVAL
            self._say_reached(None)
