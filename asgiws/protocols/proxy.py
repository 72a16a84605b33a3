"""--proxy-protocol: the first stage of a connection, before HTTP sees a byte.

With the option off nothing here runs: the listener's factory makes
HttpProtocol directly, so a read costs what it always did. With it on, each
connection starts with a `ProxyProtocolStage`, which reads the PROXY header
(asgiws.proxy_protocol) and then gives the transport to its HttpProtocol with
the addresses the header named, together with the bytes that followed it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from asgiws.config import Config
from asgiws.protocols.common import ServerState
from asgiws.protocols.http import HttpProtocol
from asgiws.protocols.utils import get_remote_addr, peer_name
from asgiws.proxy_protocol import ProxyHeader, ProxyHeaderError, ProxyHeaderReader, sniff

logger = logging.getLogger("asgiws.error")

# --proxy-protocol -> the header versions accepted.
VERSIONS: dict[str, frozenset[int]] = {
    "v1": frozenset({1}),
    "v2": frozenset({2}),
    "auto": frozenset({1, 2}),
}


def connection_factory(
    config: Config, make_http: Callable[[], HttpProtocol]
) -> Callable[[], asyncio.BaseProtocol]:
    """The listener's protocol factory: `make_http` itself with --proxy-protocol off."""
    versions = VERSIONS.get(config.proxy_protocol)
    if versions is None:
        return make_http
    return lambda: ProxyProtocolStage(make_http(), versions)


class ProxyProtocolStage(asyncio.Protocol):
    """Reads a connection's PROXY header, then hands the transport to HTTP.

    A peer in --forwarded-allow-ips must send a header ("the receiver MUST be
    configured to only receive the protocol described in this specification
    and MUST not try to guess whether the protocol header is present or not"):
    without a valid one, complete within --timeout-handshake, the connection is
    closed and logged. Another peer is served as itself, and a PROXY header from
    it (it would be lying about who it is) closes the connection, logged too.
    """

    __slots__ = (
        "_done", "_peer_text", "_pending", "_reader", "_seen", "_timer", "_trusted", "http", "transport",
    )

    def __init__(self, http: HttpProtocol, versions: frozenset[int]) -> None:
        self.http = http
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._reader = ProxyHeaderReader(versions)
        self._pending = b""  # an untrusted peer's first bytes, while too few to tell
        self._trusted = False
        self._peer_text = "-"
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # handed over or closed: nothing more to do here
        self._seen = False  # a byte has arrived

    @property
    def _state(self) -> ServerState:
        return self.http.server_state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        remote = get_remote_addr(transport)
        peer = remote[0] if remote is not None else peer_name(transport)
        if peer is None:
            # getpeername() failed: the peer reset the connection before it was
            # accepted (HAProxy's health checks end with a reset). Nobody to serve.
            self._done = True
            transport.close()
            return
        self._peer_text = f"{remote[0]}:{remote[1]}" if remote is not None else peer
        self._trusted = self.http.trusted.trusts_peer(peer)
        # Registered for graceful shutdown and --limit-concurrency; the per-IP count
        # waits for the header, which names the address to count.
        self._state.add_connection(self, None)
        timeout = self.http.config.timeout_handshake
        self._timer = self.http.loop.call_later(timeout, self._on_timeout)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._seen = True
        if not self._trusted:
            self._from_untrusted(data)
            return
        try:
            header = self._reader.feed(data)
        except ProxyHeaderError as exc:
            self._refuse(f"invalid PROXY protocol header: {exc}")
            return
        if header is not None:
            self._hand_over(header, self._reader.remainder)

    def _from_untrusted(self, data: bytes) -> None:
        """Serve an untrusted peer as itself, unless its first bytes are a PROXY header."""
        pending = self._pending + data
        version = sniff(pending)
        if version is None:
            self._pending = pending  # "PRO" or "\r\n\r": too short to tell
            return
        if version:
            self._refuse(f"PROXY protocol v{version} header from a peer not in --forwarded-allow-ips")
            return
        self._hand_over(None, pending)

    def _hand_over(self, header: ProxyHeader | None, first_bytes: bytes) -> None:
        self._finish()
        transport, http = self.transport, self.http
        self._state.remove_connection(self, None)
        transport.set_protocol(http)
        if header is None or header.local:
            http.connection_made(transport)
        else:
            client = header.client
            http.connection_made_as(transport, client, header.server, client[0] if client else None,
                                    tls=header.tls)
        if first_bytes:
            # What a read would have given HttpProtocol (it reads into its own buffer from now on).
            http._receive(first_bytes, len(first_bytes))

    def _refuse(self, reason: str) -> None:
        logger.warning("%s - %s; closing", self._peer_text, reason)
        self._finish()
        self.transport.close()

    def _on_timeout(self) -> None:
        self._timer = None
        if not self._done:
            seconds = self.http.config.timeout_handshake
            self._refuse(f"no complete PROXY protocol header within {seconds:g} s")

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool | None:
        if not self._done and self._trusted and self._seen:
            # Without a byte it is a plain TCP health check (HAProxy's `check`): nothing to log.
            self._refuse("connection ended inside its PROXY protocol header")
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        # Only called while this stage is the transport's protocol (never after the hand-over).
        self._finish()
        self._state.remove_connection(self, None)

    def shutdown(self, close_code: int) -> None:
        """Graceful close: nothing was said on this connection yet, so it simply ends."""
        self._finish()
        self.transport.close()
