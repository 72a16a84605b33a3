"""TLS on memory BIOs under the HTTP and WebSocket protocols.

Why not `loop.create_server(ssl=...)`: both uvloop's and CPython's TLS
transports reserve a 256 KiB read buffer per connection. CPython's zeroes it
(`bytearray(max_size)`), so every idle wss connection holds 256 KiB of touched
memory; uvloop's is malloc'd and touched only as far as reads reach (about
8 KiB per idle connection, measured). Here the ciphertext is read into one
buffer per worker (`tls_factory`'s) and moved into the connection's incoming
`ssl.MemoryBIO` as OpenSSL asks for it; the plaintext is decrypted into the
worker's shared read buffer (`ServerState.read_buffer`), or into the buffer a
BufferedProtocol hands out, as many records at a time as it takes, through
`tls_records.Records` (a C helper where this Python's ssl module allows it). What stays
per connection is OpenSSL's own state: the SSL object and its two memory BIOs,
about 17 KiB after a handshake (`SSL_MODE_RELEASE_BUFFERS`, which CPython sets,
already frees OpenSSL's record buffers between reads).

A memory BIO never gives memory back: its buffer (a BUF_MEM) keeps the largest
size it ever grew to, 4/3 of the most it held at once, until the BIO is freed.
So bytes go through both BIOs one record at a time: plaintext is encrypted at
most one record per SSL_write and the outgoing BIO drained after each, and the
ciphertext read from the socket is written to the incoming BIO a record's worth
at a time, each only once the one before is decrypted. A connection that once sent a 1 MiB
message then holds about 20 KiB of BIO buffer, not 1.3 MiB for its life.

`TLSProtocol` is the raw TCP transport's protocol for the connection's whole
life; the protocols above it (HttpProtocol, then WebSocketProtocol) see a
`TLSTransport`, which encrypts what they write and forwards flow control.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from asgiws.config import HTTP_READ_SIZE
from asgiws.protocols.common import ServerState
from asgiws.protocols.tls_records import MAX_RECORD_CIPHERTEXT, Records, RecordsLike
from asgiws.protocols.utils import get_remote_addr

logger = logging.getLogger("asgiws.error")

# What OpenSSL calls a peer that stopped talking TLS properly; logged, not raised.
_TLS_FAILURES = (ssl.SSLError, ssl.CertificateError)



class TLSProtocol(asyncio.BufferedProtocol):
    """Server side of one TLS connection: handshake, then records both ways.

    The handshake must finish within `handshake_timeout` seconds (the server's
    --timeout-handshake), or the connection is closed and logged. A peer that
    sends something that is not TLS (plain HTTP on the TLS port) or fails the
    handshake (no client certificate where one is required) is logged and
    aborted; the protocol above never sees it.
    """

    __slots__ = (
        "_app", "_app_buffered", "_ciphertext_buffer", "_close_notify_sent", "_closing", "_handshaking", "_incoming", "_outgoing", "_paused_by_app",
        "_protocol_factory", "_records", "_state", "_timer", "_tls_transport", "_write_closed", "handshake_timeout", "loop",
        "sslobj", "transport",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        server_state: ServerState,
        handshake_timeout: float,
        loop: asyncio.AbstractEventLoop,
        ciphertext_buffer: bytearray,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._records: RecordsLike = Records(self.sslobj, self._incoming, self._outgoing)
        self._ciphertext_buffer = ciphertext_buffer
        self._protocol_factory = protocol_factory
        self._state = server_state
        self.handshake_timeout = handshake_timeout
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._app: asyncio.BaseProtocol | None = None
        self._app_buffered = False
        self._tls_transport: TLSTransport | None = None
        self._handshaking = True
        self._closing = False
        self._write_closed = False  # the protocol above half-closed: no more plaintext from it
        self._close_notify_sent = False
        self._paused_by_app = False  # the protocol above asked for no more data
        self._timer: asyncio.TimerHandle | None = None

    # -- the raw transport's callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Registered while handshaking, for graceful shutdown; HttpProtocol registers itself after.
        self._state.add_connection(self, None)
        self._timer = self.loop.call_later(self.handshake_timeout, self._on_handshake_timeout)

    def get_buffer(self, sizehint: int) -> bytearray:
        # Ciphertext is in the incoming BIO or decrypted before the next read: one buffer per worker is
        # enough. Not the shared read buffer: plaintext is decrypted into that while the rest of this
        # read is still to go to the BIO.
        return self._ciphertext_buffer

    def buffer_updated(self, nbytes: int) -> None:
        ciphertext = memoryview(self._ciphertext_buffer)[:nbytes]
        while self._handshaking:  # a record's worth at a time (the module's docstring says why)
            if self._closing:
                return
            self._incoming.write(ciphertext[:MAX_RECORD_CIPHERTEXT])
            ciphertext = ciphertext[MAX_RECORD_CIPHERTEXT:]
            if not self._handshake() and not ciphertext:
                return  # more handshake bytes to come (a failure set _closing)
        self._deliver(ciphertext)

    def eof_received(self) -> bool | None:
        # A TCP FIN without close_notify: the protocol above hears of it as the end of the stream.
        if self._app is not None and not self._closing:
            return self._app.eof_received()  # type: ignore[attr-defined, no-any-return]
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._handshaking:
            self._state.remove_connection(self, None)
        if self._app is not None:
            self._app.connection_lost(exc)
            self._app = None
        if self._tls_transport is not None:
            self._tls_transport.protocol = None

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # -- handshake -----------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is done and the protocol above is connected."""
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except _TLS_FAILURES as exc:
            self._fail(f"TLS handshake failed: {_reason(exc)}")
            return False
        self._flush()
        self._handshaking = False
        self._cancel_timer()
        self._state.remove_connection(self, None)
        self._tls_transport = TLSTransport(self)
        self._set_app(self._protocol_factory())
        assert self._app is not None
        self._app.connection_made(self._tls_transport)
        return True

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if self._handshaking:
            self._fail(f"no TLS handshake within {self.handshake_timeout:g} s", level=logging.INFO)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self, close_code: int) -> None:
        """Graceful close while handshaking: nothing was said yet, so the connection simply ends."""
        self._cancel_timer()
        self._closing = True
        self.transport.close()

    # -- records -------------------------------------------------------------------------

    def _set_app(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol
        self._app_buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def _deliver(self, ciphertext: memoryview | bytes = b"") -> None:
        """Decrypt what the incoming BIO holds, then `ciphertext` (a socket read's), and hand the plaintext
        to the protocol above, as much as its buffer takes at a time, until it pauses; what it has not
        taken then waits in the BIO (the ciphertext buffer is another connection's on the next read)."""
        decrypt_into = self._records.decrypt_into  # (ciphertext consumed, plaintext produced, more)
        shared = self._state.read_buffer
        more = True
        while more and not self._paused_by_app and not self._closing:
            app = self._app
            if app is None:
                return
            buffered = self._app_buffered  # an upgrade may swap the protocol inside the call below
            try:
                buffer = app.get_buffer(-1) if buffered else shared  # type: ignore[attr-defined]
                consumed, nbytes, more = decrypt_into(ciphertext, buffer)
                ciphertext = ciphertext[consumed:]
                if nbytes and buffered:
                    app.buffer_updated(nbytes)  # type: ignore[attr-defined]
                elif nbytes:
                    app.data_received(bytes(memoryview(shared)[:nbytes]))  # type: ignore[attr-defined]
            except ssl.SSLZeroReturnError:
                # close_notify: the peer will send nothing more (RFC 8446 6.1).
                self._peer_closed()
                break
            except _TLS_FAILURES as exc:
                self._fail(f"TLS error: {_reason(exc)}")
                break
        if ciphertext and not self._closing:
            self._incoming.write(ciphertext)
        if self._write_closed and not self._close_notify_sent:
            self._send_close_notify()
        # Reading may have produced records to send (key updates, alerts, close_notify).
        self._flush()

    def _peer_closed(self) -> None:
        app = self._app
        keep_open = app.eof_received() if app is not None else None  # type: ignore[attr-defined]
        if not keep_open:
            self.close()

    def _flush(self) -> None:
        """Write whatever OpenSSL has put in the outgoing BIO to the socket."""
        # A write on a transport the peer already closed would only be logged by the loop as an error.
        if self._outgoing.pending and not self.transport.is_closing():
            self.transport.write(self._outgoing.read())

    def _fail(self, reason: str, level: int = logging.WARNING) -> None:
        remote = get_remote_addr(self.transport) if self.transport is not None else None
        peer = f"{remote[0]}:{remote[1]}" if remote is not None else "-"
        logger.log(level, "%s - %s; closing", peer, reason)
        self._cancel_timer()
        self._closing = True
        self._flush()  # an alert OpenSSL queued for the peer
        self.transport.abort()

    # -- what TLSTransport calls ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._write_closed or not data:
            return
        self._send(self._records.encrypt(data))

    def writelines(self, chunks: Any) -> None:
        # A frame header and its payload, a response head and its body: gathered into full records.
        if self._closing or self._write_closed:
            return
        self._send(self._records.encrypt(*chunks))

    def _send(self, pieces: list[bytes]) -> None:
        if not pieces or self.transport.is_closing():
            return
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        else:
            self.transport.writelines(pieces)

    def close(self) -> None:
        """Send close_notify (RFC 8446 6.1: "Each party MUST send a close_notify alert before closing
        its write side"), then close the socket once what is queued is written."""
        if self._closing:
            return
        self._closing = True
        if not self._close_notify_sent:
            self._close_notify_sent = True
            try:
                self.sslobj.unwrap()
            except (ssl.SSLWantReadError, *_TLS_FAILURES):
                pass  # the peer's close_notify is not waited for: the read side closes with the socket
            self._flush()
        self.transport.close()

    def write_eof(self) -> None:
        """Half-close: close_notify now, and keep reading. RFC 8446 6.1: close_notify "does not have any
        effect on its read side of the connection", and the peer answers with its own, which ends the
        connection (`_peer_closed`) without waiting for a timeout."""
        if self._closing or self._write_closed:
            return
        self._write_closed = True
        self._send_close_notify()
        self._flush()

    def _send_close_notify(self) -> None:
        # SSL_shutdown also looks for the peer's close_notify in the incoming BIO, and a whole record of
        # application data there fails it (APPLICATION_DATA_AFTER_CLOSE_NOTIFY) and the records after
        # it: the alert waits until _deliver has emptied the BIO.
        if self._incoming.pending:
            return
        self._close_notify_sent = True
        try:
            self.sslobj.unwrap()
        except (ssl.SSLWantReadError, *_TLS_FAILURES):
            pass  # sent; the peer's close_notify arrives through _deliver

    def pause_reading_for_app(self) -> None:
        self._paused_by_app = True
        self.transport.pause_reading()

    def resume_reading_for_app(self) -> None:
        if not self._paused_by_app:
            return
        self._paused_by_app = False
        self.transport.resume_reading()
        # Plaintext decrypted before the pause (or records still in the BIO) is delivered now.
        self.loop.call_soon(self._deliver)


class TLSTransport(asyncio.Transport):
    """The transport the HTTP and WebSocket protocols see on a TLS connection."""

    __slots__ = ("protocol", "tls")

    def __init__(self, tls: TLSProtocol) -> None:
        super().__init__()
        self.tls = tls
        self.protocol: TLSProtocol | None = tls

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.tls.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.tls.writelines(list_of_data)

    def close(self) -> None:
        self.tls.close()

    def abort(self) -> None:
        self.tls._closing = True
        self.tls.transport.abort()

    def is_closing(self) -> bool:
        return self.tls._closing or self.tls.transport.is_closing()

    def can_write_eof(self) -> bool:
        return True  # close_notify closes our write side only (TLSProtocol.write_eof)

    def write_eof(self) -> None:
        self.tls.write_eof()

    def pause_reading(self) -> None:
        self.tls.pause_reading_for_app()

    def resume_reading(self) -> None:
        self.tls.resume_reading_for_app()

    def is_reading(self) -> bool:
        return not self.tls._paused_by_app and self.tls.transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.tls._set_app(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        app = self.tls._app
        assert app is not None
        return app

    def get_write_buffer_size(self) -> int:
        return self.tls.transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.tls.transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.tls.transport.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self.tls.sslobj
        tls_info: dict[str, Callable[[], Any]] = {
            "sslcontext": lambda: sslobj.context,
            "ssl_object": lambda: sslobj,
            "peercert": sslobj.getpeercert,
            "cipher": sslobj.cipher,
            "compression": sslobj.compression,
        }
        if name in tls_info:
            return tls_info[name]()
        return self.tls.transport.get_extra_info(name, default)


def _reason(exc: BaseException) -> str:
    """OpenSSL's short reason ('WRONG_VERSION_NUMBER') when it has one, else the message."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


def tls_factory(
    context: ssl.SSLContext,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    server_state: ServerState,
    handshake_timeout: float,
    loop: asyncio.AbstractEventLoop,
) -> Callable[[], TLSProtocol]:
    """The listener's protocol factory: TLS first, then `protocol_factory`'s protocol above it."""

    ciphertext_buffer = bytearray(HTTP_READ_SIZE)  # one per worker and listener (TLSProtocol.get_buffer)

    def factory() -> TLSProtocol:
        return TLSProtocol(context, protocol_factory, server_state, handshake_timeout, loop, ciphertext_buffer)

    return factory
