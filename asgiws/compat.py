"""What uvicorn's options mean here: app interfaces (ASGI 2, WSGI) and one log line per option
that asgiws accepts for compatibility but answers in its own way.

docs/migrating-from-uvicorn.md is the table for people; `compatibility_notes` is the same
table for the log.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import Any

from asgiws.config import Config
from asgiws.types import ASGIApp, Receive, Scope, Send

# --ws values that name another library: asgiws has one WebSocket implementation (RFC 6455/7692).
_OTHER_WS = ("websockets", "websockets-sansio", "wsproto")


class StartupSettingError(Exception):
    """A setting that cannot work in this environment (e.g. --interface wsgi without its adapter)."""


def compatibility_notes(config: Config) -> list[str]:
    """One line for each uvicorn setting that asgiws answers differently, for the start-up log.

    A line that starts with "WARNING " is logged as a warning (the user asked for
    something that is not there), the others as information.
    """
    notes: list[str] = []
    if config.http != "auto" and config.http != "httptools":
        notes.append(f"--http {config.http}: asgiws serves HTTP/1.1 with its own parser on httptools")
    if config.http2:
        notes.append(
            "WARNING --http2: HTTP/2 is not supported; serving HTTP/1.1 (TLS ALPN offers http/1.1 only)"
        )
    if config.ws in _OTHER_WS:
        notes.append(f"--ws {config.ws}: asgiws uses its own WebSocket implementation (RFC 6455, RFC 7692)")
    if config.ws == "none":
        notes.append("--ws none: WebSocket disabled; upgrade requests are served as plain HTTP")
    if config.loop == "zuvloop":
        notes.append("--loop zuvloop: not available in asgiws; using uvloop where installed, else asyncio")
    if config.h11_max_incomplete_event_size is not None:
        notes.append(
            f"--h11-max-incomplete-event-size: applied as --max-header-size {config.max_header_size} "
            "(asgiws parses with httptools, not h11)"
        )
    if config.callback_notify is not None:
        notes.append("callback_notify is not called: asgiws's supervisor health-checks its workers itself")
    return notes


def is_asgi2(app: Any) -> bool:
    """True for an ASGI 2 "double callable": app(scope) returns the coroutine function (uvicorn's test).

    A class is ASGI 3 when its instances are awaitable (the class itself is then the app);
    anything else is ASGI 3 when it, or its __call__, is a coroutine function.
    """
    if inspect.isclass(app):
        return not hasattr(app, "__await__")
    if inspect.iscoroutinefunction(app):  # functions, methods, partials of them
        return False
    if inspect.isfunction(app) or inspect.ismethod(app):
        return True
    return not inspect.iscoroutinefunction(type(app).__call__)


class ASGI2App:
    """Runs an ASGI 2 app as ASGI 3; its scope says `asgi.version` "2.0".

    ASGI spec, "Legacy Applications": the server calls app(scope), then awaits instance(receive, send).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["asgi"] = {**scope.get("asgi", {}), "version": "2.0"}
        instance = self.app(scope)
        await instance(receive, send)


class FreshContextApp:
    """--reset-contextvars: each call runs in a new, empty contextvars.Context, so a value the
    lifespan (or a previous request on the connection) set is not seen."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        # A task copies the context current at its creation: create it inside an empty one.
        task = contextvars.Context().run(asyncio.ensure_future, self.app(scope, receive, send))
        await task


def _wsgi(app: Any) -> ASGIApp:
    try:
        from a2wsgi import WSGIMiddleware
    except ImportError:
        raise StartupSettingError(
            "--interface wsgi needs a WSGI adapter: pip install 'asgiws[wsgi]' (installs a2wsgi)"
        ) from None
    wrapped: ASGIApp = WSGIMiddleware(app)  # type: ignore[assignment]  # a2wsgi types its scopes
    return wrapped


def adapt_app(app: Any, config: Config) -> ASGIApp:
    """`app` as an ASGI 3 callable, per --interface (auto: ASGI 2 detected) and --reset-contextvars.

    Raises StartupSettingError for --interface wsgi without a2wsgi installed.
    """
    interface = config.interface
    if interface == "auto":
        interface = "asgi2" if is_asgi2(app) else "asgi3"
    adapted: ASGIApp
    if interface == "wsgi":
        adapted = _wsgi(app)
    elif interface == "asgi2":
        adapted = ASGI2App(app)
    else:
        adapted = app
    return FreshContextApp(adapted) if config.reset_contextvars else adapted
