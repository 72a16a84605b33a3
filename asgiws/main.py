"""`asgiws.run()`: configure logging, then serve one worker or hand over to the supervisor."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from asgiws.config import Config
from asgiws.logging import configure_logging
from asgiws.server import Server

logger = logging.getLogger("asgiws.error")


def run(app: Any, **options: Any) -> int:
    """Serve `app` (an ASGI app or "module:attr") with Config options; return the exit code.

    Raises ValueError for invalid options (from Config).
    """
    config = Config(app=app, **options)
    configure_logging(config.log_config, config.log_level, config.access_log)
    return run_config(config)


def run_config(config: Config) -> int:
    """Run a Config whose logging is already configured; return the process exit code."""
    if config.workers > 1 or config.reload:
        if isinstance(config.app, str) and importlib.util.find_spec("asgiws.supervisor") is not None:
            from asgiws import supervisor

            return int(supervisor.run_supervisor(config) or 0)
        if not isinstance(config.app, str):
            logger.warning("--workers and --reload need an import string; running 1 worker.")
        else:
            logger.warning("The supervisor is not available; running 1 worker.")
        config = config.replace(workers=1, reload=False)
    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if server.exit_code:
        return server.exit_code
    return 0
