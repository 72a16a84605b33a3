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
import os
from dataclasses import dataclass, field
from typing import Any, Literal

LoopSetting = Literal["auto", "uvloop", "asyncio"]
LifespanSetting = Literal["auto", "on", "off"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
ProxyProtocolSetting = Literal["off", "v1", "v2", "auto"]

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
    choices: tuple[str, ...] | None = None,
    multiple: bool = False,
    boolean: bool = False,
    cli: bool = True,
) -> Any:
    """A Config field with what the CLI needs to offer it.

    `flag` overrides the derived option name (`--ws-max-size` from
    `ws_max_size`); `boolean` makes an on/off pair (`--access-log/--no-access-log`);
    `multiple` makes a repeatable option collected into a tuple;
    `default_factory` computes the default at construction (from the environment).
    """
    metadata = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "multiple": multiple,
        "boolean": boolean,
        "cli": cli,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("Config defaults must be immutable; use a tuple")
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


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
    loop: LoopSetting = option("auto", "Event loop implementation.", choices=("auto", "uvloop", "asyncio"))
    lifespan: LifespanSetting = option("auto", "Lifespan protocol.", choices=("auto", "on", "off"))
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
        choices=("off", "v1", "v2", "auto"),
    )
    # Short: an idle keep-alive connection costs a socket and memory, and
    # clients reconnect cheaply. Same value as uvicorn's, so a switch changes nothing.
    timeout_keep_alive: float = option(5.0, "Close idle keep-alive connections after this many seconds.")
    # Long enough for a client on a slow mobile link to send a request head,
    # short enough that a slowloris client ties up a socket for seconds, not forever.
    timeout_handshake: float = option(
        10.0, "Drop a client that has not sent a complete request head within this many seconds."
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
    limit_connections_per_ip: int | None = option(
        None, "Most concurrent connections from one client address (503 past it)."
    )
    # Long enough for a WebSocket close handshake and a typical request, short
    # enough to fit inside `docker stop`'s default 10 s before SIGKILL.
    timeout_graceful_shutdown: float = option(
        8.0, "Seconds to let requests finish and WebSockets close on shutdown before cancelling."
    )

    # -- WebSocket -------------------------------------------------------------------
    # 20 s: below the 30-60 s idle timeouts of common proxies and NATs, so the
    # heartbeat also keeps the path open; python-websockets uses the same.
    ws_ping_interval: float | None = option(20.0, "Send a ping every this many seconds (None: never).")
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
    ws_per_message_deflate: bool = option(True, "Offer permessage-deflate compression.", boolean=True)
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
    log_level: LogLevel = option(
        "info", "Log level.", choices=("critical", "error", "warning", "info", "debug", "trace")
    )
    access_log: bool = option(True, "Log one line per request and per WebSocket handshake.", boolean=True)
    log_config: str | None = option(None, "Logging configuration file (.json, .yaml or .ini).")

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
    ssl_ciphers: str = option("TLSv1", "Ciphers to offer (OpenSSL cipher list syntax).")

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

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        checks: tuple[tuple[bool, str], ...] = (
            (self.workers >= 1, "workers must be at least 1"),
            (0 <= self.port <= 65535, "port must be between 0 and 65535"),
            (self.backlog >= 1, "backlog must be at least 1"),
            (self.ws_max_size >= 1, "ws_max_size must be at least 1"),
            (self.ws_max_queue >= 1, "ws_max_queue must be at least 1"),
            (8 <= self.ws_deflate_window_bits <= 15, "ws_deflate_window_bits must be between 8 and 15"),
            (1 <= self.ws_deflate_memory_level <= 9, "ws_deflate_memory_level must be between 1 and 9"),
            (self.ws_close_timeout > 0, "ws_close_timeout must be positive"),
            (self.timeout_graceful_shutdown >= 0, "timeout_graceful_shutdown must not be negative"),
            (self.ssl_cert_reqs in (0, 1, 2), "ssl_cert_reqs must be 0, 1 or 2"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        from asgiws.protocols.utils import TrustedProxies

        TrustedProxies(self.forwarded_allow_ips)  # raises ValueError naming a bad entry
        if self.proxy_protocol != "off" and self.use_ssl:
            # The header comes before the TLS ClientHello, which the TLS layer would read first.
            raise ValueError("proxy_protocol cannot be combined with TLS: terminate TLS at the proxy")

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (Config itself is immutable)."""
        return dataclasses.replace(self, **changes)

    @property
    def use_ssl(self) -> bool:
        return self.ssl_certfile is not None
