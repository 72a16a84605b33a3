"""--reload: watch source files and tell the supervisor when they change.

The watching happens in a small child process forked by the supervisor, so
the supervisor itself never starts a thread (watchfiles runs a Rust thread)
and can keep forking workers safely. The child writes one line per batch of
changed paths to a pipe, which the supervisor's select() loop reads; on a
change the supervisor restarts its workers (rolling, WebSocket clients get
1012 "service restart").

watchfiles (the `reload` extra) is used when importable; otherwise the child
polls modification times every --reload-delay seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterable, Iterator
from fnmatch import fnmatch
from pathlib import Path

from asgiws.config import Config

logger = logging.getLogger("asgiws.error")

# How often the watchfiles child looks up from its wait to check that the
# supervisor is still alive, in milliseconds.
PARENT_CHECK_MS = 500


def _matches(path: Path, patterns: Iterable[str]) -> bool:
    return any(fnmatch(path.name, pattern) or path.match(pattern) for pattern in patterns)


class FileFilter:
    """Which paths under the watched directories count as source files.

    A file counts when its name (or path) matches an include glob and neither
    it nor any directory between it and the watched root matches an exclude
    glob (so the default ".*" skips .git and .venv entirely).
    """

    def __init__(self, roots: Iterable[Path], includes: Iterable[str], excludes: Iterable[str]) -> None:
        self.roots = [root.resolve() for root in roots]
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)

    def excluded_dir(self, directory: Path) -> bool:
        return _matches(directory, self.excludes)

    def __call__(self, path: Path) -> bool:
        path = path.resolve()
        if not _matches(path, self.includes) or _matches(path, self.excludes):
            return False
        for root in self.roots:
            if path.is_relative_to(root):
                return not any(fnmatch(part, pattern) for part in path.relative_to(root).parts[:-1]
                               for pattern in self.excludes)
        return True


class PollingScanner:
    """The fallback: compare modification times of the watched files between two scans."""

    def __init__(self, file_filter: FileFilter) -> None:
        self.filter = file_filter
        self.mtimes = self._scan()

    def _files(self) -> Iterator[Path]:
        for root in self.filter.roots:
            for directory, subdirs, files in os.walk(root):
                subdirs[:] = [d for d in subdirs if not self.filter.excluded_dir(Path(directory, d))]
                for name in files:
                    path = Path(directory, name)
                    if self.filter(path):
                        yield path

    def _scan(self) -> dict[Path, int]:
        mtimes = {}
        for path in self._files():
            try:
                mtimes[path] = path.stat().st_mtime_ns
            except OSError:  # removed between listing and stat
                continue
        return mtimes

    def changes(self) -> list[Path]:
        """Paths added, removed or modified since the last call."""
        current = self._scan()
        changed = [p for p, mtime in current.items() if self.mtimes.get(p) != mtime]
        changed += [p for p in self.mtimes if p not in current]
        self.mtimes = current
        return sorted(changed)


def watched_dirs(config: Config) -> list[Path]:
    return [Path(d) for d in (config.reload_dirs or (os.getcwd(),))]


def _watch_with_watchfiles(file_filter: FileFilter, delay: float, parent: int) -> Iterator[list[Path]]:
    import watchfiles

    def accept(change: object, path: str) -> bool:
        return file_filter(Path(path))

    for changes in watchfiles.watch(
        *file_filter.roots,
        watch_filter=accept,
        debounce=max(50, int(delay * 1000)),
        rust_timeout=PARENT_CHECK_MS,
        yield_on_timeout=True,
        raise_interrupt=False,
    ):
        if os.getppid() != parent:
            return
        yield sorted({Path(path) for _, path in changes})


def _watch_by_polling(file_filter: FileFilter, delay: float, parent: int) -> Iterator[list[Path]]:
    scanner = PollingScanner(file_filter)
    while os.getppid() == parent:
        time.sleep(delay)
        yield scanner.changes()


def watchfiles_available() -> bool:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True


class Watcher:
    """The supervisor's handle on the watching child: a readable pipe of changes."""

    def __init__(self, config: Config, *, use_watchfiles: bool | None = None) -> None:
        self.filter = FileFilter(watched_dirs(config), config.reload_includes, config.reload_excludes)
        self.delay = config.reload_delay
        self.use_watchfiles = watchfiles_available() if use_watchfiles is None else use_watchfiles
        self.pid: int | None = None
        self._read_fd: int | None = None
        self._buffer = b""

    def start(self) -> None:
        """Fork the watching child. Call before any worker is started."""
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            status = 0
            try:
                self._child(write_fd, parent)
            except BaseException:
                logger.exception("The --reload watcher failed")
                status = 1
            finally:
                os._exit(status)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.pid, self._read_fd = pid, read_fd
        how = "watchfiles" if self.use_watchfiles else f"polling every {self.delay}s"
        logger.info("Watching %s for changes (%s)", ", ".join(map(str, self.filter.roots)), how)

    def _child(self, write_fd: int, parent: int) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Keep nothing of the supervisor's: above all not its listening sockets.
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, 65536)
        watch = _watch_with_watchfiles if self.use_watchfiles else _watch_by_polling
        for changed in watch(self.filter, self.delay, parent):
            if changed:
                os.write(write_fd, ("\0".join(map(str, changed)) + "\n").encode())

    def fileno(self) -> int:
        assert self._read_fd is not None
        return self._read_fd

    def read_changes(self) -> list[str] | None:
        """Changed paths reported since the last call; None when the watcher is gone."""
        try:
            data = os.read(self.fileno(), 65536)
        except BlockingIOError:
            return []
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [path for line in lines for path in line.decode(errors="replace").split("\0")]

    def close_in_child(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = None
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
