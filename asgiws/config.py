"""Every setting asgiws has, written once.

`Config` is a frozen dataclass: each field carries its default, its unit and
the reason for its value, and the CLI (`asgiws.cli`) builds its options from
these fields, so a default is never typed twice. Runtime objects derived from
a Config (the loaded app, the SSL context, the bound sockets) live elsewhere.

Units: sizes are bytes (`*_size`), durations are seconds (`timeout_*`,
`*_timeout`, `*_interval`, `*_delay`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import ssl
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# The choices of an option are its Literal's values (the CLI and the checks read them from here).
# "zuvloop", "zttp", "h11", "websockets", "websockets-sansio" and "wsproto" are uvicorn's names: accepted
# so that a uvicorn command line runs unchanged, each answered with one log line (asgiws.compat).
LoopSetting = Literal["auto", "uvloop", "asyncio", "zuvloop"]
LifespanSetting = Literal["auto", "on", "off"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
HttpSetting = Literal["auto", "httptools", "h11", "zttp"]
WsSetting = Literal["auto", "websockets", "websockets-sansio", "wsproto", "none"]
InterfaceSetting = Literal["auto", "asgi3", "asgi2", "wsgi"]
ProxyProtocolSetting = Literal["off", "v1", "v2", "auto"]

# Query parameters whose values the access log replaces with "[redacted]": browsers cannot set headers
# on a WebSocket, so tokens travel in the query string, and access logs are kept and shipped widely.
REDACTED_QUERY_PARAMS = (
    "token", "access_token", "refresh_token", "id_token", "auth", "authorization", "api_key", "apikey",
    "key", "secret", "client_secret", "password", "passwd", "signature", "sig", "session", "sessionid",
    "jwt", "code", "ticket",
)

KiB = 1024
MiB = 1024 * KiB

# Outgoing WebSocket messages longer than this (bytes, or characters of text)
# are sent as frames of this size, one per event-loop step: deflating 1 MiB
# takes ~10 ms, where one 16 MiB message in one zlib call stalled every other
# connection for 150-250 ms (issue 4). Smaller messages go out in one frame.
WS_FRAGMENT_SIZE = 1 * MiB


# Bytes one socket read takes for HTTP (one buffer shared by a worker's HTTP
# connections): uvloop's own read size, so a 1 MiB upload is 4-5 reads, and
# the largest body piece the server holds past http_read_high_water.
HTTP_READ_SIZE = 256 * KiB


def option(
    default: Any,
    help: str,
    *,
    default_factory: Any = None,
    flag: str | None = None,
    multiple: bool = False,
    boolean: bool = False,
    boolean_value: bool = False,
    cli: bool = True,
) -> Any:
    """A Config field with what the CLI needs to offer it.

    The option's type comes from the field's annotation (a Literal gives the
    choices, `X | None` also accepts "none"). `flag` overrides the derived
    option name (`--ws-max-size` from `ws_max_size`); `boolean` makes an on/off
    pair (`--access-log/--no-access-log`); `boolean_value` also takes uvicorn's
    value form (`--ws-per-message-deflate false`); `multiple` makes a repeatable
    option collected into a tuple; `default_factory` computes the default at
    construction (from the environment).
    """
    metadata = {
        "help": help,
        "flag": flag,
        "multiple": multiple,
        "boolean": boolean or boolean_value,
        "boolean_value": boolean_value,
        "cli": cli,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("Config defaults must be immutable; use a tuple")
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class ConfigError(ValueError):
    """A setting that cannot work: `name` is the Config field, `rule` what it must be.

    str() is "ws_max_size must be at least 1"; the CLI says the flag instead
    ("--ws-max-size must be at least 1").
    """

    def __init__(self, name: str, rule: str) -> None:
        super().__init__(f"{name} {rule}")
        self.name = name
        self.rule = rule


def origin_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` can never match a browser's Origin header, or None when it can.

    RFC 6454 7: Origin is serialised as scheme "://" host [":" port], so an entry without a
    scheme (a bare host, "*.example.com") would refuse every browser.
    """
    scheme, sep, rest = pattern.partition("://")
    if pattern == "null":
        return None
    if not sep or not scheme or not rest:
        hint = f"https://{pattern}" if not sep else "https://app.example.com"
        return f"entry {pattern!r} has no scheme: browsers send Origin as scheme://host, e.g. {hint}"
    if "*" in rest and not (rest.startswith("*.") and "*" not in rest[2:]):
        return f"entry {pattern!r}: a wildcard may only stand for the leftmost labels, as in https://*.example.com"
    if "/" in rest:
        return f"entry {pattern!r}: an Origin has no path"
    return None


def _default_workers() -> int:
    # Same convention as gunicorn and uvicorn: platforms such as Heroku set it.
    return int(os.environ.get("WEB_CONCURRENCY", "1") or 1)


def _default_forwarded_allow_ips() -> str:
    return os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


@dataclass(frozen=True, slots=True)
class Config:
    """The settings of one asgiws server (and of its supervisor).

    `app` is an ASGI 3 application or an import string "module:attribute".
    """

    app: Any = option(None, "The ASGI app, or an import string MODULE:ATTR.", cli=False)

    # -- where to listen ---------------------------------------------------------
    host: str = option("127.0.0.1", "Bind socket to this host.")
    port: int = option(8000, "Bind socket to this port. 0 picks a free port and logs it.")
    uds: str | None = option(None, "Bind to a UNIX domain socket at this path.")
    fd: int | None = option(None, "Serve an inherited, already bound socket (socket activation).")
    # 2048 is the kernel's usual somaxconn ceiling; uvicorn and gunicorn use it too.
    backlog: int = option(2048, "Maximum number of pending connections.")

    # -- processes and event loop ------------------------------------------------
    workers: int = option(
        None, default_factory=_default_workers, help="Number of worker processes. Defaults to $WEB_CONCURRENCY or 1."
    )
    loop: LoopSetting = option("auto", "Event loop implementation (auto: uvloop where installed).")
    lifespan: LifespanSetting = option("auto", "Lifespan protocol.")
    factory: bool = option(False, "Treat APP as a factory: call it with no arguments to get the app.", boolean=True)
    app_dir: str = option(".", "Look for the app in this directory (put on sys.path).")
    env_file: str | None = option(None, "Load environment variables from this file first.")

    # -- HTTP ----------------------------------------------------------------------
    root_path: str = option("", "ASGI root_path, for apps mounted below a path prefix.")
    proxy_headers: bool = option(
        True, "Honour X-Forwarded-Proto/For (and with --forwarded-host, Host) from --forwarded-allow-ips.",
        boolean=True,
    )
    forwarded_allow_ips: str = option(
        None,
        default_factory=_default_forwarded_allow_ips,
        help="Comma-separated IPs, networks, 'unix:' (peers on a UNIX socket) or '*' (any peer) trusted "
        "to send proxy headers and PROXY protocol headers. Defaults to $FORWARDED_ALLOW_IPS or 127.0.0.1.",
    )
    # Off: nginx and HAProxy pass a client's own X-Forwarded-Host on unless told
    # to set or clear it, and uvicorn does not read it at all.
    forwarded_host: bool = option(
        False, "Also take scope['server'] from X-Forwarded-Host (only if the proxy sets or clears it).",
        boolean=True,
    )
    # Off: the PROXY protocol spec forbids guessing whether a header comes, so it
    # is switched on only where a load balancer is known to send one.
    proxy_protocol: ProxyProtocolSetting = option(
        "off",
        "Expect a PROXY protocol header (v1 text, v2 binary, or auto: either) from "
        "--forwarded-allow-ips peers; their connections without one are closed.",
    )
    # Short: an idle keep-alive connection costs a socket and memory, and
    # clients reconnect cheaply. Same value as uvicorn's, so a switch changes nothing.
    timeout_keep_alive: float = option(5.0, "Close idle keep-alive connections after this many seconds.")
    # Long enough for a client on a slow mobile link to send a request head,
    # short enough that a slowloris client ties up a socket for seconds, not forever.
    timeout_handshake: float = option(
        10.0, "Drop a client that has not completed its TLS handshake, or not sent a complete request "
        "head, within this many seconds (each)."
    )
    headers: tuple[str, ...] = option((), "Extra response header NAME:VALUE (repeatable).", flag="--header", multiple=True)
    server_header: bool = option(True, "Send a Server header.", boolean=True)
    date_header: bool = option(True, "Send a Date header.", boolean=True)
    # 8 KiB: RFC 9112 3 recommends supporting at least 8000 octets; nginx's
    # large_client_header_buffers uses the same bound per line.
    max_request_line_size: int = option(8 * KiB, "Longest request line accepted (414 past it).")
    # 64 KiB and 100 fields: far above what browsers send (a few KiB, ~20 fields),
    # small enough that 1,000 hostile requests cost little memory.
    max_header_size: int = option(64 * KiB, "Largest request header block accepted (431 past it).")
    max_header_count: int = option(100, "Most request header fields accepted (431 past it).")
    # None: bodies are streamed to the app, never buffered whole by the server,
    # so the app (which knows what an upload may be) sets its own bound.
    limit_request_body: int | None = option(None, "Largest request body accepted in bytes (413 past it).")
    # Reading pauses once this much request body is waiting for the app.
    http_read_high_water: int = option(64 * KiB, "Request body buffered before reading pauses.", cli=False)
    # Pipelined requests held before reading pauses: enough for clients that
    # pipeline (rare), few enough that a flood costs nothing.
    max_pipelined_requests: int = option(16, "Pipelined requests queued before reading pauses.", cli=False)

    # -- limits and timeouts ---------------------------------------------------------
    limit_concurrency: int | None = option(
        None, "Most concurrent connections and tasks; past it requests and upgrades get 503."
    )
    limit_max_requests: int | None = option(None, "Recycle a worker after this many requests.")
    limit_max_requests_jitter: int = option(
        0, "Add a random 0..N to --limit-max-requests per worker so they do not all recycle at once."
    )
    # Recycling that long-lived WebSockets reach (--limit-max-requests counts handshakes, which a
    # worker holding 10,000 day-long connections barely moves): each goes through the drain path.
    limit_max_memory: int | None = option(
        None, "Recycle a worker whose resident memory (RSS) passes this many MiB (checked every 2 s)."
    )
    limit_max_lifetime: float | None = option(None, "Recycle a worker after this many seconds.")
    # None: a tenth of --limit-max-lifetime, so workers started together (a deploy) leave spread
    # over a tenth of their lifetime instead of all in the same second.
    limit_max_lifetime_jitter: float | None = option(
        None, "Add a random 0..N seconds to --limit-max-lifetime per worker (default: a tenth of it)."
    )
    limit_connections_per_ip: int | None = option(
        None, "Most concurrent connections from one client address (503 past it)."
    )
    # Long enough for a WebSocket close handshake and a typical request, short
    # enough to fit inside `docker stop`'s default 10 s before SIGKILL.
    timeout_graceful_shutdown: float | None = option(
        8.0,
        "Seconds to let requests finish and WebSockets close on shutdown before cancelling (none: no bound).",
    )

    # 0: the closes begin at once, as before the option existed. An app that listens for the drain
    # (scope["extensions"]["asgiws.drain"]) wants a few seconds to tell its clients to move; a
    # default above 0 would delay every deploy, and docker stop's 10 s leave no room for it.
    ws_drain_time: float = option(
        0.0, "On shutdown or restart, seconds WebSockets keep serving after the app is told to drain."
    )
    # 1 s: 2,000 clients reconnecting within the ~50 ms it takes to close them all is a storm
    # (40,000 handshakes/s on the next server); over 1 s it is 2,000/s, and 1 s plus the close
    # handshake still fits inside docker stop's 10 s beside --timeout-graceful-shutdown's 8 s.
    ws_close_spread: float = option(
        1.0, "Spread the shutdown/restart closes of WebSockets evenly over this many seconds (0: at once)."
    )

    # -- WebSocket -------------------------------------------------------------------
    # 20 s: below the 30-60 s idle timeouts of common proxies and NATs, so the
    # heartbeat also keeps the path open; python-websockets uses the same.
    ws_ping_interval: float | None = option(20.0, "Send a ping every this many seconds (none: never).")
    ws_ping_timeout: float | None = option(20.0, "Close with 1011 when no pong comes within this many seconds.")
    # 16 MiB: the usual largest message in practice, and a bounded cost per
    # connection; also uvicorn's default, so a switch changes nothing.
    ws_max_size: int = option(16 * MiB, "Largest incoming message in bytes (close 1009 past it).")
    # Messages parsed but not yet received by the app before reading pauses.
    ws_max_queue: int = option(32, "Incoming messages held for the app before reading pauses.")
    # Enough for a peer across the world to answer; the close handshake is a
    # courtesy, not worth holding a socket for longer.
    ws_close_timeout: float = option(5.0, "Seconds to wait for the close handshake before dropping TCP.")
    # 4 MiB: several large messages in flight to a slow reader, then it is cut
    # off rather than the server buffering without bound.
    ws_max_send_queue: int = option(4 * MiB, "Bytes queued to one slow client before closing it with 1008.")
    ws_max_message_rate: float | None = option(
        None, "Messages per second one connection may send (token bucket); past it close 1008."
    )
    ws_max_message_burst: int = option(50, "Messages a connection may send at once before the rate applies.")
    ws_allowed_origins: tuple[str, ...] = option(
        (),
        "Origin allowed to open a WebSocket: exact, or a pattern like https://*.example.com "
        "(repeatable; default: any). Others get 403.",
        flag="--ws-allowed-origin",
        multiple=True,
    )

    # -- permessage-deflate (RFC 7692) -------------------------------------------------
    ws_per_message_deflate: bool = option(True, "Offer permessage-deflate compression.", boolean_value=True)
    # 12 bits (4 KiB window) instead of zlib's 15 (32 KiB): compression ratio on
    # typical JSON messages drops by only a few percent, while each compressor
    # costs ~1/8 the memory (zlib needs about 2**(wbits+2) + 2**(memlevel+9) bytes).
    ws_deflate_window_bits: int = option(12, "Server LZ77 window bits, 8..15.")
    # 5 instead of zlib's 8: 16 KiB of hash state instead of 128 KiB per
    # compressor; speed and ratio barely change for messages under a few KiB.
    ws_deflate_memory_level: int = option(5, "zlib memory level for compression, 1..9.")
    # Below ~100 bytes the deflate framing overhead often exceeds the saving.
    ws_deflate_min_size: int = option(128, "Messages smaller than this are sent uncompressed.")
    ws_deflate_server_no_context_takeover: bool = option(
        False, "Reset the compressor after every message (less memory, worse ratio).", boolean=True
    )

    # -- logging ----------------------------------------------------------------------
    # None (Python API): leave the levels to --log-config.
    log_level: LogLevel | None = option("info", "Log level.")
    access_log: bool = option(True, "Log one line per request and per WebSocket handshake.", boolean=True)
    # From the Python API also a dictConfig dict, a ConfigParser or an open file, as uvicorn takes.
    log_config: Any = option(None, "Logging configuration file (.json, .yaml or .ini).")

    # -- supervisor, health and reload --------------------------------------------------
    # A loop that cannot answer within 30 s is stuck, not busy: gunicorn's
    # worker timeout has the same default.
    timeout_worker_healthcheck: float = option(
        30.0, "Replace a worker whose event loop does not answer a health check within this many seconds."
    )
    reload: bool = option(False, "Restart the server when source files change (development).", boolean=True)
    reload_dirs: tuple[str, ...] = option((), "Directory to watch (repeatable).", flag="--reload-dir", multiple=True)
    reload_includes: tuple[str, ...] = option(
        ("*.py",), "Glob of files to watch (repeatable).", flag="--reload-include", multiple=True
    )
    reload_excludes: tuple[str, ...] = option(
        (".*", ".py[cod]", ".sw.*", "~*"), "Glob of files to ignore (repeatable).", flag="--reload-exclude", multiple=True
    )
    reload_delay: float = option(0.25, "Seconds between checks for changed files.")

    # -- TLS --------------------------------------------------------------------------
    ssl_keyfile: str | None = option(None, "TLS private key file.")
    ssl_certfile: str | None = option(None, "TLS certificate file.")
    ssl_keyfile_password: str | None = option(None, "Password of the TLS private key.")
    ssl_ca_certs: str | None = option(None, "CA certificates file, to verify client certificates.")
    # 0 is ssl.CERT_NONE: clients are not asked for certificates unless configured.
    ssl_cert_reqs: int = option(0, "Client certificate requirement (0 none, 1 optional, 2 required).")
    # None: OpenSSL's own defaults (AES-GCM and ChaCha20 first), as uvicorn since #2940; uvicorn's old
    # "TLSv1" left TLS 1.2 clients only CBC suites with SHA-1 here, anonymous AECDH ones included.
    ssl_ciphers: str | None = option(
        None, "Ciphers to offer (OpenSSL cipher list syntax; default: OpenSSL's)."
    )

    # -- uvicorn's options, and logging details --------------------------------------------
    # Accepted with uvicorn's names and syntax so that a uvicorn command line or uvicorn.run() call works
    # unchanged; docs/migrating-from-uvicorn.md says what each one does here.
    http: HttpSetting = option(
        "auto", "HTTP implementation: asgiws's own HTTP/1.1 on httptools whatever is named."
    )
    http2: bool = option(False, "HTTP/2: not supported (logged); HTTP/1.1 is served.", boolean=True)
    ws: WsSetting = option(
        "auto", "WebSocket implementation: asgiws's own whatever is named; none disables WebSocket."
    )
    interface: InterfaceSetting = option(
        "auto", "Application interface; auto tells ASGI 3 from ASGI 2. wsgi needs asgiws[wsgi]."
    )
    use_colors: bool | None = option(
        None, "Colour the log level names (default: when the output is a terminal).", boolean=True
    )
    # PROTOCOL_TLS_SERVER (17): negotiates the highest version both sides speak; uvicorn's default too.
    ssl_version: int = option(int(ssl.PROTOCOL_TLS_SERVER), "SSL version to use (see stdlib ssl module's).")
    h11_max_incomplete_event_size: int | None = option(
        None, "uvicorn's h11 request-head bound: applied as --max-header-size."
    )
    reset_contextvars: bool = option(
        False, "Run each request and WebSocket in a fresh contextvars.Context.", boolean=True
    )
    log_redact_query_params: tuple[str, ...] = option(
        REDACTED_QUERY_PARAMS,
        "Query parameter whose value the access log shows as [redacted] (repeatable; replaces the list; "
        "'' for none).",
        flag="--log-redact-query-param",
        multiple=True,
    )
    # uvicorn.Config keywords without a meaning here: the supervisor health-checks workers itself
    # (--timeout-worker-healthcheck), and there is no gunicorn worker class to notify.
    timeout_notify: int = option(30, "Not used (uvicorn's gunicorn-worker notify timeout).", cli=False)
    callback_notify: Any = option(None, "Not used (uvicorn's gunicorn-worker notify callback).", cli=False)
    # Called as ssl_context_factory(config, default) where default() builds the context from ssl_*.
    ssl_context_factory: Any = option(None, "Builds the TLS context: f(config, default_factory).", cli=False)

    # -- broadcast ---------------------------------------------------------------------
    broadcast_url: str | None = option(
        None, "Pub/sub backend shared by workers, e.g. redis://localhost:6379/0 (default: in-process)."
    )
    # History lets a client that reconnects within a few minutes resume where it
    # left off (Broadcast.subscribe(since=...)). Redis memory per channel, measured
    # with MEMORY USAGE on Redis 7.0: 100 messages of 64 B take 14 KiB, of 1 KiB
    # 136 KiB, plus a 150 B meta hash; 0 turns history off (offsets remain).
    broadcast_history_size: int = option(
        100, "Messages of history kept per broadcast channel, for resume (0: none)."
    )
    # Five minutes covers a phone changing networks, a laptop waking and a rolling
    # restart; past it a resume says recovered=False and the app reloads state.
    broadcast_history_ttl: float = option(
        300.0, "Seconds a broadcast message stays in history (0: no age limit, only the size)."
    )

    # -- metrics ----------------------------------------------------------------------
    metrics_port: int | None = option(
        None, "Serve Prometheus/OpenMetrics /metrics on this port, summed over every worker (default: off)."
    )
    # Loopback: the counters say how busy the service is and who it refuses; expose them on
    # purpose (--metrics-host 0.0.0.0 for a scraper on another machine), not by default.
    metrics_host: str = option("127.0.0.1", "Address the --metrics-port endpoint listens on.")

    def __post_init__(self) -> None:
        for name, normalise in _NORMALISE.items():
            object.__setattr__(self, name, normalise(getattr(self, name)))
        if self.h11_max_incomplete_event_size is not None:
            object.__setattr__(self, "max_header_size", self.h11_max_incomplete_event_size)
        self._validate()

    def _validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        for name, allowed in _literal_choices().items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)} (got {value!r})")
        for ok, name, rule in self._checks():
            if not ok:
                raise ConfigError(name, rule)
        for origin in self.ws_allowed_origins:
            problem = origin_pattern_problem(origin)
            if problem:
                raise ConfigError("ws_allowed_origins", problem)
        from asgiws.protocols.utils import TrustedProxies

        TrustedProxies(self.forwarded_allow_ips)  # raises ValueError naming the flag and the bad entry
        if self.proxy_protocol != "off" and self.use_ssl:
            # The header comes before the TLS ClientHello, which the TLS layer would read first.
            raise ConfigError("proxy_protocol", "cannot be combined with TLS: terminate TLS at the proxy")

    def _checks(self) -> tuple[tuple[bool, str, str], ...]:
        grace = self.timeout_graceful_shutdown
        return (
            (self.workers >= 1, "workers", "must be at least 1"),
            (0 <= self.port <= 65535, "port", "must be between 0 and 65535"),
            (self.metrics_port is None or 0 <= self.metrics_port <= 65535, "metrics_port",
             "must be between 0 and 65535"),
            (self.backlog >= 1, "backlog", "must be at least 1"),
            (self.ws_max_size >= 1, "ws_max_size", "must be at least 1"),
            (self.ws_max_queue >= 1, "ws_max_queue", "must be at least 1"),
            (8 <= self.ws_deflate_window_bits <= 15, "ws_deflate_window_bits", "must be between 8 and 15"),
            (1 <= self.ws_deflate_memory_level <= 9, "ws_deflate_memory_level", "must be between 1 and 9"),
            (self.ws_close_timeout > 0, "ws_close_timeout", "must be positive"),
            (grace is None or grace >= 0, "timeout_graceful_shutdown", "must not be negative"),
            (self.ws_drain_time >= 0, "ws_drain_time", "must not be negative"),
            (self.ws_close_spread >= 0, "ws_close_spread", "must not be negative"),
            (self.limit_max_memory is None or self.limit_max_memory >= 1, "limit_max_memory",
             "must be at least 1 (MiB)"),
            (self.limit_max_lifetime is None or self.limit_max_lifetime > 0, "limit_max_lifetime",
             "must be positive"),
            (self.limit_max_lifetime_jitter is None or self.limit_max_lifetime_jitter >= 0,
             "limit_max_lifetime_jitter", "must not be negative"),
            (self.ssl_cert_reqs in (0, 1, 2), "ssl_cert_reqs", "must be 0, 1 or 2"),
        )

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (Config itself is immutable)."""
        return dataclasses.replace(self, **changes)

    @property
    def use_ssl(self) -> bool:
        return self.ssl_certfile is not None or self.ssl_context_factory is not None


def _literal_choices() -> dict[str, tuple[str, ...]]:
    """Each Config field typed with a Literal (optionally `| None`) and its allowed values."""
    return {name: choices for name, (_, choices, _) in field_types().items() if choices}


@functools.cache
def field_types() -> dict[str, tuple[type, tuple[str, ...], bool]]:
    """(base type, Literal choices, nullable) of every Config field, read from its annotation.

    The annotations are strings (`from __future__ import annotations`): they are
    evaluated here once, so the CLI never parses type names.
    """
    result: dict[str, tuple[type, tuple[str, ...], bool]] = {}
    for name, hint in typing.get_type_hints(Config).items():
        args = typing.get_args(hint)
        nullable = type(None) in args
        if nullable:
            [hint] = [arg for arg in args if arg is not type(None)]
        if typing.get_origin(hint) is Literal:
            result[name] = (str, typing.get_args(hint), nullable)
        elif typing.get_origin(hint) is tuple:
            result[name] = (tuple, (), nullable)
        else:
            result[name] = (hint if isinstance(hint, type) else object, (), nullable)
    return result


def _as_tuple(value: Any) -> tuple[str, ...]:
    """uvicorn takes a str or a list where asgiws keeps a tuple."""
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        return (os.fspath(value),)
    return tuple(os.fspath(item) for item in value)


def _as_header_lines(value: Any) -> tuple[str, ...]:
    """uvicorn's headers=[(name, value)] as asgiws's "NAME:VALUE" strings."""
    return tuple(item if isinstance(item, str) else f"{item[0]}:{item[1]}" for item in value or ())


def _as_path(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _as_log_level(value: Any) -> Any:
    """uvicorn takes a logging level number too (logging.DEBUG, 5 for trace)."""
    if isinstance(value, int) and not isinstance(value, bool):
        names = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical", 5: "trace"}
        return names.get(value, value)
    return value.lower() if isinstance(value, str) else value


def _or_default(default: Any) -> Any:
    """None (uvicorn's "not set") means asgiws's default, computed at construction."""
    return lambda value: default() if value is None else value


# Values uvicorn's keywords accept, turned into the one form asgiws keeps (applied in __post_init__).
_NORMALISE: dict[str, Any] = {
    "workers": _or_default(_default_workers),
    "forwarded_allow_ips": lambda value: _default_forwarded_allow_ips() if value is None
    else value if isinstance(value, str) else ",".join(value),
    "app_dir": lambda value: "." if value is None else os.fspath(value),
    "headers": _as_header_lines,
    "reload_dirs": _as_tuple,
    "reload_includes": lambda value: ("*.py",) if value is None else _as_tuple(value),
    "reload_excludes": lambda value: (".*", ".py[cod]", ".sw.*", "~*") if value is None else _as_tuple(value),
    "ws_allowed_origins": _as_tuple,
    "log_redact_query_params": lambda value: tuple(name.lower() for name in _as_tuple(value) if name),
    "log_level": _as_log_level,
    "log_config": _as_path,
    "env_file": _as_path,
    "ssl_keyfile": _as_path,
    "ssl_certfile": _as_path,
    "ssl_ca_certs": _as_path,
    "ssl_cert_reqs": int,
    "ssl_version": int,
}
