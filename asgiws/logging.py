"""Logging for asgiws: the TRACE level, the two loggers and the access line.

Loggers: "asgiws.error" (server events, app tracebacks) and "asgiws.access"
(one line per request and per WebSocket handshake). The default format is
uvicorn's, level prefixes aligned and coloured the same way, so tooling that
parses uvicorn's output parses this one:

    INFO:     Started server process [4242]
    INFO:     127.0.0.1:51234 - "GET /ws?token=[redacted] HTTP/1.1" 200 OK
"""

from __future__ import annotations

import copy
import http
import logging
import logging.config
import re
import sys
import urllib.parse
from typing import Any

import click

from asgiws.config import REDACTED_QUERY_PARAMS

TRACE_LOG_LEVEL = 5
logging.addLevelName(TRACE_LOG_LEVEL, "TRACE")

error_logger = logging.getLogger("asgiws.error")
access_logger = logging.getLogger("asgiws.access")

LOG_LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE_LOG_LEVEL,
}

LOGGING_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {
            "()": "asgiws.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,
        },
        "access": {
            "()": "asgiws.logging.AccessFormatter",
            "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            "use_colors": None,
        },
    },
    "handlers": {
        "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "asgiws": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "asgiws.error": {"level": "INFO"},
        "asgiws.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}

# uvicorn's colours, so a terminal looks the same after the switch.
LEVEL_COLOURS: dict[int, str] = {
    TRACE_LOG_LEVEL: "blue",
    logging.DEBUG: "cyan",
    logging.INFO: "green",
    logging.WARNING: "yellow",
    logging.ERROR: "red",
    logging.CRITICAL: "bright_red",
}
STATUS_COLOURS: dict[int, str] = {1: "bright_white", 2: "green", 3: "yellow", 4: "red", 5: "bright_red"}
# "WARNING:" and "CRITICAL:" are the longest prefixes: messages start in one column, as uvicorn's do.
LEVEL_PREFIX_WIDTH = 9


class DefaultFormatter(logging.Formatter):
    """Adds `%(levelprefix)s`: "INFO:    ", padded so that messages line up, coloured on a terminal.

    `use_colors` None: colour when the handler's stream is a TTY (decided on the
    first record, when the stream is known).
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Any = "%",
        use_colors: bool | None = None,
    ) -> None:
        super().__init__(fmt=fmt, datefmt=datefmt, style=style)
        self.use_colors = use_colors

    def _colours(self) -> bool:
        if self.use_colors is None:
            self.use_colors = sys.stderr.isatty()
        return self.use_colors

    def formatMessage(self, record: logging.LogRecord) -> str:
        name = record.levelname
        padding = " " * max(LEVEL_PREFIX_WIDTH - len(name) - 1, 0)
        if self._colours():
            name = click.style(name, fg=LEVEL_COLOURS.get(record.levelno))
        record.__dict__["levelprefix"] = f"{name}:{padding}"
        return super().formatMessage(record)


class AccessFormatter(DefaultFormatter):
    """Adds uvicorn's access fields from log_access's arguments: `%(client_addr)s`,
    `%(request_line)s` ("GET /path HTTP/1.1") and `%(status_code)s` ("200 OK")."""

    def _colours(self) -> bool:
        if self.use_colors is None:
            self.use_colors = sys.stdout.isatty()
        return self.use_colors

    def formatMessage(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client_addr, method, target, http_version, status = args
            status_code = status_line(int(status))  # type: ignore[call-overload]
            if self._colours():
                status_code = click.style(status_code, fg=STATUS_COLOURS.get(int(status) // 100))  # type: ignore[call-overload]
            record.__dict__.update(
                client_addr=client_addr,
                request_line=f"{method} {target} HTTP/{http_version}",
                status_code=status_code,
            )
        return super().formatMessage(record)


def status_line(status: int) -> str:
    """ "200 OK", "404 Not Found"; a status without a registered phrase is the number alone."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


# C0 controls, DEL and C1 controls: a client must not be able to forge log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

REDACTED = "[redacted]"
_redacted_names: frozenset[str] = frozenset(REDACTED_QUERY_PARAMS)


def set_redacted_query_params(names: tuple[str, ...]) -> None:
    """Set the query parameters whose values redact_target hides (names compared case-insensitively)."""
    global _redacted_names
    _redacted_names = frozenset(name.lower() for name in names)


def redact_target(target: str) -> str:
    """`target` ("/ws?token=abc&room=1") with the values of credential parameters replaced:
    "/ws?token=[redacted]&room=1". The names are Config.log_redact_query_params.

    Browsers cannot set headers on a WebSocket, so its tokens travel in the
    query string; access logs are kept and shipped far more widely than the
    tokens should be.
    """
    path, sep, query = target.partition("?")
    if not sep or not query or not _redacted_names:
        return target
    pairs = query.split("&")
    for index, pair in enumerate(pairs):
        name, equals, value = pair.partition("=")
        if equals and value and urllib.parse.unquote_plus(name).lower() in _redacted_names:
            pairs[index] = f"{name}={REDACTED}"
    return f"{path}?{'&'.join(pairs)}"


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def log_access(
    client: tuple[str, int] | list[Any] | None, method: str, path_with_query: str, http_version: str, status: int
) -> None:
    """Write one access line: `client - "METHOD path HTTP/x" status` (the formatter adds the phrase).

    Credentials in the query string are redacted (redact_target) and control
    characters escaped as \\xNN. Cheap when disabled. The arguments are uvicorn's,
    in uvicorn's order, so log configs written for uvicorn's access format work.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    client_text = f"{client[0]}:{client[1]}" if client else "-"
    target = _escape(redact_target(path_with_query))
    access_logger.info('%s - "%s %s HTTP/%s" %d', client_text, method, target, http_version, status)


def configure_logging(
    log_config: Any, log_level: str | None, access_log: bool = True, use_colors: bool | None = None
) -> None:
    """Install the default handlers, or the user's: a file (.json, .yaml/.yml, .ini), a dictConfig
    dict, a ConfigParser or an open .ini file. `use_colors` applies to the default handlers
    (None: colour on a terminal).

    Raises ValueError for an unreadable or unsupported configuration.
    """
    if log_config is None:
        config = copy.deepcopy(LOGGING_CONFIG)
        for formatter in config["formatters"].values():
            formatter["use_colors"] = use_colors
        logging.config.dictConfig(config)
    elif isinstance(log_config, dict):
        logging.config.dictConfig(log_config)
    elif isinstance(log_config, str):
        _load_log_config(log_config)
    else:
        logging.config.fileConfig(log_config, disable_existing_loggers=False)
    if log_level is not None:
        level = LOG_LEVELS[log_level]
        logging.getLogger("asgiws").setLevel(level)
        error_logger.setLevel(level)
        access_logger.setLevel(level)
    if not access_log:
        access_logger.handlers = []
        access_logger.propagate = False
        access_logger.setLevel(logging.CRITICAL + 1)


def _load_log_config(path: str) -> None:
    try:
        if path.endswith(".json"):
            import json

            with open(path) as file:
                logging.config.dictConfig(json.load(file))
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise ValueError(f"cannot read {path}: install PyYAML for YAML log configs") from None
            with open(path) as file:
                logging.config.dictConfig(yaml.safe_load(file))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot load log config {path}: {exc}") from exc


def log_websocket_close(
    client: tuple[str, int] | list[Any] | None, path_with_query: str, code: int, closed_by: str,
    duration: float, messages_received: int, bytes_received: int, messages_sent: int, bytes_sent: int,
) -> None:
    """Write the access line of a WebSocket's end, beside the `101` line of its start.

    `closed_by` is "client", "server", "app" or "timeout"; `duration` in
    seconds since the accept; bytes are on the wire, frame headers included.
    The path is redacted and escaped as in log_access. The record carries the
    access format's fields (client_addr, request_line "WebSocket /path", and
    status_code the rest), so the default format and `%(message)s` print the
    same line. Cheap when disabled.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    client_text = f"{client[0]}:{client[1]}" if client else "-"
    request_line = f"WebSocket {_escape(redact_target(path_with_query))}"
    outcome = (f"closed {code} by {closed_by} after {duration:.3f}s, in: {messages_received} msg "
               f"{bytes_received} B, out: {messages_sent} msg {bytes_sent} B")
    access_logger.info('%s - "%s" %s', client_text, request_line, outcome,
                       extra={"client_addr": client_text, "request_line": request_line, "status_code": outcome})
