"""`asgiws.run()`: configure logging, then serve one worker or hand over to the supervisor."""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import Any

from asgiws.config import Config
from asgiws.logging import configure_logging
from asgiws.server import Server

logger = logging.getLogger("asgiws.error")


def run(app: Any, **options: Any) -> int:
    """Serve `app` (an ASGI app or "module:attr") with Config options; return the exit code.

    Takes every keyword of uvicorn.run() (the signature below lists them: it is
    Config's). Raises ValueError (ConfigError) for invalid options.
    """
    config = Config(app=app, **options)
    configure_logging(config.log_config, config.log_level, config.access_log, config.use_colors)
    return run_config(config)


def _run_signature() -> inspect.Signature:
    """run(app, *, <every Config field>): what editors and inspect.signature show, and what the
    comparison with uvicorn.run checks."""
    fields = inspect.signature(Config).parameters
    keywords = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in fields.items() if name != "app"]
    app = inspect.Parameter("app", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Any")
    return inspect.Signature([app, *keywords], return_annotation="int")


run.__signature__ = _run_signature()  # type: ignore[attr-defined]


def run_config(config: Config) -> int:
    """Run a Config whose logging is already configured; return the process exit code.

    An import string is always served by the supervisor, with one worker by
    default: SIGHUP then restarts onto new code without refusing a connection
    (the listening socket stays with the supervisor), in every mode. An app
    object can only be served in this process.
    """
    if isinstance(config.app, str) and importlib.util.find_spec("asgiws.supervisor") is not None:
        from asgiws import supervisor

        return int(supervisor.run_supervisor(config) or 0)
    if config.workers > 1 or config.reload:
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
