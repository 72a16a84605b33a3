"""A TLS connection's records in and out: `Records(sslobj, incoming, outgoing)`, C helper or twin.

`decrypt_into(ciphertext, buffer)` decrypts into `buffer` until it is full or OpenSSL needs more
ciphertext than is left, and returns `(consumed, produced, more)`: how much of `ciphertext` went to
the incoming BIO (a record's worth at a time, each only once the BIO is empty or OpenSSL asks for
more, so that the BIO never holds much: tls.py's docstring says why), how much plaintext is in
`buffer`, and whether to call again (the buffer is full, or an error waits). Plaintext the BIO
already held comes first, so `decrypt_into(b"", buffer)` delivers what a pause left there. It
raises the ssl module's exceptions (`ssl.SSLZeroReturnError` at the peer's close_notify,
`ssl.SSLError` with OpenSSL's `reason`); one met after some plaintext was produced is raised by the
next call instead, once that plaintext is delivered. `more` is False once all of `ciphertext` is
consumed, or when `buffer` is empty.
`encrypt(*chunks)` returns the chunks' concatenation as TLS records, after anything the outgoing BIO
already held (a handshake's last flight, a KeyUpdate's answer): a list of bytes objects, empty when
there is nothing to send, for the transport's `writelines` (or `write` when there is one).

Records are cut the same way by both: at most 16 KiB of plaintext each (RFC 8446 5.1), all full
but a message's last, a frame header gathered into one record with its payload's start; the
outgoing BIO is drained after each record, so that it never holds more than one (tls.py's
docstring says why). The C helper (`_tlsrecords.Records`, built from `_tlsrecords.c`) does this
without ssl.py's per-call wrappers, slices and exceptions, and a socket read's records in one call
(the wss echo's messages per server CPU second: 1.30x at 64 B, about 1.25x at 1 MiB, in the commits
that brought it). It is used when `bind` finds
this Python's `_ssl` laid out as it expects; else `PyRecords`, which goes through `ssl.SSLObject`,
and both are tested alike.
"""

from __future__ import annotations

import _ssl  # the ssl module's C part: its file (for the C helper) and its tables of OpenSSL's names
import logging
import ssl
from typing import Any, Protocol

logger = logging.getLogger("asgiws.error")

# RFC 8446 5.1: "The length MUST NOT exceed 2^14 bytes" (a record's plaintext).
MAX_RECORD_PLAINTEXT = 16 * 1024
# RFC 8446 5.2: a TLSCiphertext's "length MUST NOT exceed 2^14 + 256 bytes", after its 5-byte header:
# the most ciphertext moved to the incoming BIO at a time.
MAX_RECORD_CIPHERTEXT = 5 + 16 * 1024 + 256

# SSL_get_error's answers (openssl/ssl.h), and the ssl module's exception for each, as _ssl.c raises.
_SSL_ERROR_WANT_READ, _SSL_ERROR_WANT_WRITE, _SSL_ERROR_SYSCALL, _SSL_ERROR_ZERO_RETURN = 2, 3, 5, 6
# (ERR_LIB_SSL, SSL_R_UNEXPECTED_EOF_WHILE_READING): openssl/err.h, sslerr.h (3.0), a FIN with no close_notify
_UNEXPECTED_EOF = (20, 294)
_PY_SSL_ERROR_EOF = 8  # _ssl.c's errno for SSLEOFError
# The answers that need nothing from the error queue: their exception and _ssl.c's message.
_PLAIN_ERRORS: dict[int, tuple[type[ssl.SSLError], str]] = {
    _SSL_ERROR_ZERO_RETURN: (ssl.SSLZeroReturnError, "TLS/SSL connection has been closed (EOF)"),
    _SSL_ERROR_WANT_READ: (ssl.SSLWantReadError, "The operation did not complete (read)"),
    _SSL_ERROR_WANT_WRITE: (ssl.SSLWantWriteError, "The operation did not complete (write)"),
}


class RecordsLike(Protocol):
    """What tls.py uses of either twin."""

    def decrypt_into(self, ciphertext: Any, buffer: Any) -> tuple[int, int, bool]: ...
    def encrypt(self, *chunks: Any) -> list[bytes]: ...


class PyRecords:
    """The pure-Python twin of the C helper's `Records`: the same records, through ssl.SSLObject."""

    __slots__ = ("_deferred", "_incoming", "_outgoing", "_sslobj")

    def __init__(self, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self._sslobj = sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        self._deferred: ssl.SSLError | None = None

    def decrypt_into(self, ciphertext: Any, buffer: Any) -> tuple[int, int, bool]:
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc
        source, target = memoryview(ciphertext), memoryview(buffer)
        incoming, read = self._incoming, self._sslobj.read
        consumed = produced = 0
        while produced < len(target):
            if consumed < len(source) and not incoming.pending:  # SSL_read would only ask for it
                consumed += incoming.write(source[consumed:consumed + MAX_RECORD_CIPHERTEXT])
            try:
                # With a buffer, read answers a count.
                nbytes: int = read(len(target) - produced, target[produced:])  # type: ignore[assignment]
                if not nbytes:
                    # _ssl.c answers the peer's close_notify with 0 unless ours was sent too (then it
                    # raises): the C helper raises in both cases, and so does its twin.
                    raise make_error(_SSL_ERROR_ZERO_RETURN, 0, None)
            except ssl.SSLWantReadError:
                if consumed == len(source):
                    return consumed, produced, False
                consumed += incoming.write(source[consumed:consumed + MAX_RECORD_CIPHERTEXT])
                continue
            except ssl.SSLError as exc:
                if not produced:
                    raise
                self._deferred = exc  # the plaintext before it is delivered first
                return consumed, produced, True
            produced += nbytes
            if consumed == len(source) and not incoming.pending and not self._sslobj.pending():
                return consumed, produced, False  # nothing left to decrypt without more ciphertext
        return consumed, produced, produced > 0  # a full buffer; an empty one would have the caller spin

    def encrypt(self, *chunks: Any) -> list[bytes]:
        write, drain = self._sslobj.write, self._outgoing.read
        records = [drain()] if self._outgoing.pending else []
        stage = bytearray()  # small pieces gathered into one record
        for chunk in chunks:
            view = memoryview(chunk)
            offset, length = 0, len(view)
            while offset < length:
                if stage or length - offset < MAX_RECORD_PLAINTEXT:
                    take = min(MAX_RECORD_PLAINTEXT - len(stage), length - offset)
                    stage += view[offset:offset + take]
                    offset += take
                    if len(stage) < MAX_RECORD_PLAINTEXT:
                        break  # the next chunk may fill it
                    write(stage)
                    stage.clear()
                else:  # a whole record straight from the chunk
                    write(view[offset:offset + MAX_RECORD_PLAINTEXT])
                    offset += MAX_RECORD_PLAINTEXT
                records.append(drain())
        if stage:
            write(stage)
            records.append(drain())
        return records


def make_error(ssl_error: int, code: int, text: str | None) -> ssl.SSLError:
    """The exception _ssl.c raises for SSL_get_error's `ssl_error` and the error queue's last `code`
    (OpenSSL's reason `text` for it), with the same type, errno, `library` and `reason`."""
    if ssl_error in _PLAIN_ERRORS:
        exc_type, message = _PLAIN_ERRORS[ssl_error]
        return exc_type(ssl_error, message)
    lib, reason = _lib_and_reason(code)
    # OpenSSL 1.1 says an unexpected EOF as SYSCALL with an empty queue, 3.0 as an SSL reason.
    eof = not code if ssl_error == _SSL_ERROR_SYSCALL else (lib, reason) == _UNEXPECTED_EOF
    if eof:
        return ssl.SSLEOFError(_PY_SSL_ERROR_EOF, "EOF occurred in violation of protocol")
    if ssl_error == _SSL_ERROR_SYSCALL:
        return ssl.SSLSyscallError(ssl_error, "Some I/O error occurred")
    library, name = _names(lib, reason, text)
    message = text or "A failure in the SSL library occurred"
    if library and name:
        message = f"[{library}: {name}] {message}"
    exc = ssl.SSLError(ssl_error, message)
    # None where OpenSSL names none, as _ssl.c leaves them.
    exc.library, exc.reason = library, name  # type: ignore[assignment]
    return exc


# OpenSSL's library mnemonics (openssl/err.h's ERR_LIB_*), for a Python whose _ssl keeps its tables to
# itself (3.12 and later): the libraries whose errors reach a connection's records.
_LIBRARIES = {2: "SYS", 4: "RSA", 6: "EVP", 9: "PEM", 11: "X509", 13: "ASN1", 15: "CRYPTO", 20: "SSL",
              32: "BIO", 57: "PROV"}


def _names(lib: int, reason: int, text: str | None) -> tuple[str | None, str | None]:
    """The library's and the reason's mnemonics ('SSL', 'DECRYPTION_FAILED_OR_BAD_RECORD_MAC') as _ssl.c
    names them: from its tables where this Python's _ssl has them; else from OpenSSL's reason text,
    which OpenSSL generates from the mnemonic ("decryption failed or bad record mac")."""
    libraries = getattr(_ssl, "lib_codes_to_names", None)
    reasons = getattr(_ssl, "err_codes_to_names", None)
    if libraries is not None and reasons is not None:
        return libraries.get(lib), reasons.get((lib, reason))
    return _LIBRARIES.get(lib), text.upper().replace(" ", "_") if text else None


def _lib_and_reason(code: int) -> tuple[int, int]:
    """ERR_GET_LIB and ERR_GET_REASON (macros in openssl/err.h, so not in the library to call)."""
    if ssl.OPENSSL_VERSION_INFO >= (3,):
        if code & 0x80000000:  # ERR_SYSTEM_FLAG: an errno, in ERR_LIB_SYS
            return 2, code & 0x7FFFFFFF
        return (code >> 23) & 0xFF, code & 0x7FFFFF
    return (code >> 24) & 0xFF, code & 0xFFF


def _c_records() -> type | None:
    """The C helper's Records once `bind` has checked it on a probe; None where it cannot be used."""
    try:
        from asgiws.protocols._tlsrecords import Records as CRecords
        from asgiws.protocols._tlsrecords import bind
    except ImportError:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    probe = context.wrap_bio(incoming, outgoing, server_side=True)
    try:
        sslsock = probe._sslobj  # type: ignore[attr-defined]
        bind(_ssl.__file__, sslsock, context, incoming, outgoing, make_error)
    except (ImportError, AttributeError) as exc:
        logger.debug("TLS records through ssl.py: %s", exc)
        return None
    return CRecords


Records: Any = _c_records() or PyRecords
