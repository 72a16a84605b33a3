"""Logging for asgiws: the TRACE level, the two loggers and the access line.

Loggers: "asgiws.error" (server events, app tracebacks) and "asgiws.access"
(one line per request and per WebSocket handshake).
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

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
        "default": {"format": "%(levelname)s:     %(message)s"},
        "access": {"format": "%(levelname)s:     %(message)s"},
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

# C0 controls, DEL and C1 controls: a client must not be able to forge log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def log_access(
    client: tuple[str, int] | list[Any] | None, method: str, path_with_query: str, http_version: str, status: int
) -> None:
    """Write one access line: `client - "METHOD path HTTP/x" status`.

    Control characters in the path are escaped as \\xNN. Cheap when disabled.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    client_text = f"{client[0]}:{client[1]}" if client else "-"
    access_logger.info(
        '%s - "%s %s HTTP/%s" %d', client_text, method, _escape(path_with_query), http_version, status
    )


def configure_logging(log_config: str | None, log_level: str | None, access_log: bool = True) -> None:
    """Install the default handlers, or the user's file (.json, .yaml/.yml, .ini).

    Raises ValueError for an unreadable or unsupported file.
    """
    if log_config is None:
        logging.config.dictConfig(LOGGING_CONFIG)
    else:
        _load_log_config(log_config)
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
    Control characters in the path are escaped as in log_access. Cheap when disabled.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    client_text = f"{client[0]}:{client[1]}" if client else "-"
    access_logger.info(
        '%s - "WebSocket %s" closed %d by %s after %.3fs, in: %d msg %d B, out: %d msg %d B',
        client_text, _escape(path_with_query), code, closed_by, duration,
        messages_received, bytes_received, messages_sent, bytes_sent,
    )
