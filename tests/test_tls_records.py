"""tls_records.Records, the C helper and its pure-Python twin, on real OpenSSL sessions in memory.

A client and a server SSLObject shake hands over memory BIOs (trustme's certificate); the server's
records are cut by each twin and read back by the client. Both twins must give the same records
(the same lengths in the same order), the same plaintext and the same exceptions.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme

from asgiws.protocols import tls_records
from asgiws.protocols.tls_records import PyRecords

try:
    from asgiws.protocols import _tlsrecords
except ImportError:  # built without the C helper: only the twin is there to test
    _tlsrecords = None  # type: ignore[assignment]

TWINS = ["python"] + (["c"] if _tlsrecords is not None else [])


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    return server, client


class Session:
    """Both ends of one TLS session in memory, handshake done, the server's BIOs drained."""

    def __init__(self, contexts: tuple[ssl.SSLContext, ssl.SSLContext], twin: str):
        server_context, client_context = contexts
        self.s_in, self.s_out, self.c_in, self.c_out = (ssl.MemoryBIO() for _ in range(4))
        self.server = server_context.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.client = client_context.wrap_bio(self.c_in, self.c_out, server_hostname="127.0.0.1")
        for _ in range(6):
            for end in (self.client, self.server):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            if self.c_out.pending:
                self.s_in.write(self.c_out.read())
            if self.s_out.pending:
                self.c_in.write(self.s_out.read())
        records_type: Any = PyRecords if twin == "python" else _tlsrecords.Records
        self.records = records_type(self.server, self.s_in, self.s_out)

    def client_reads(self, ciphertext: bytes) -> bytes:
        self.c_in.write(ciphertext)
        plaintext = bytearray()
        while True:
            try:
                plaintext += self.client.read(1 << 20)
            except ssl.SSLWantReadError:
                return bytes(plaintext)

    def client_sends(self, plaintext: bytes) -> None:
        self.client.write(plaintext)
        self.s_in.write(self.c_out.read())


def record_lengths(ciphertext: bytes) -> list[int]:
    """Each record's length from its 5-byte header (RFC 8446 5.1)."""
    lengths, at = [], 0
    while at < len(ciphertext):
        length = int.from_bytes(ciphertext[at + 3:at + 5], "big")
        lengths.append(length)
        at += 5 + length
    assert at == len(ciphertext)
    return lengths


KiB = 1024
HEADER = b"\x82\x7f" + (1 << 20).to_bytes(8, "big")  # a WebSocket frame header before its payload
SHAPES = {
    "nothing": [],
    "one empty chunk": [b""],
    "one byte": [b"x"],
    "a 64-byte text frame": [b"\x81\x40", b"m" * 64],
    "exactly one record": [b"a" * (16 * KiB)],
    "one byte over a record": [b"a" * (16 * KiB + 1)],
    "header and 1 MiB payload": [HEADER, bytes(range(256)) * 4096],
    "forty 1000-byte chunks": [bytes([n]) * 1000 for n in range(40)],
    "bytearray and memoryview": [bytearray(b"b" * 20000), memoryview(b"c" * 30000)],
    "empty chunks between": [b"", b"d" * 17000, b"", b"e"],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_both_twins_cut_the_same_full_records_and_the_client_reads_the_message(contexts, shape):
    chunks = SHAPES[shape]
    message = b"".join(bytes(chunk) for chunk in chunks)
    cut = {}
    for twin in TWINS:
        session = Session(contexts, twin)
        ciphertext = b"".join(session.records.encrypt(*chunks))
        assert session.client_reads(ciphertext) == message
        cut[twin] = record_lengths(ciphertext)
    assert len({tuple(lengths) for lengths in cut.values()}) == 1, cut
    lengths = cut["python"]
    # Every record is full but the last: ceil(len / 16 KiB) records, none for nothing.
    assert len(lengths) == -(-len(message) // (16 * KiB))
    assert len(set(lengths[:-1])) <= 1


@pytest.mark.parametrize("twin", TWINS)
def test_a_large_message_comes_in_pieces_no_larger_than_four_records(contexts, twin):
    """One bytes object for a whole 1 MiB message was a fresh mmap per message (tls_records.py)."""
    session = Session(contexts, twin)
    session.client_reads(b"".join(session.records.encrypt(b"w")))  # and the session tickets before it
    pieces = session.records.encrypt(HEADER, b"p" * (1 << 20))
    assert len(pieces) > 1
    assert all(isinstance(piece, bytes) and len(piece) <= 4 * (16 * KiB + 5 + 256) for piece in pieces)
    assert sum(len(record_lengths(piece)) for piece in pieces) == 65


@pytest.mark.parametrize("twin", TWINS)
def test_what_the_outgoing_bio_already_held_goes_first(contexts, twin):
    session = Session(contexts, twin)
    session.server.write(b"written before, ")  # a record left in the BIO (as a KeyUpdate's answer is)
    assert session.s_out.pending
    pieces = session.records.encrypt(b"then the message")
    assert not session.s_out.pending
    assert session.client_reads(b"".join(pieces)) == b"written before, then the message"


@pytest.mark.parametrize("twin", TWINS)
def test_decrypt_into_produces_nothing_until_a_whole_record_is_there(contexts, twin):
    session = Session(contexts, twin)
    buffer = bytearray(64 * KiB)
    assert session.records.decrypt_into(b"", buffer) == (0, 0, False)
    session.client.write(b"q" * 5000)
    record = session.c_out.read()
    assert session.records.decrypt_into(record[:100], buffer) == (100, 0, False)
    assert session.records.decrypt_into(memoryview(record)[100:], buffer) == (len(record) - 100, 5000, False)
    assert buffer[:5000] == b"q" * 5000
    assert session.records.decrypt_into(b"", buffer) == (0, 0, False)


@pytest.mark.parametrize("twin", TWINS)
def test_a_small_buffer_takes_part_and_the_rest_comes_from_the_bio(contexts, twin):
    session = Session(contexts, twin)
    session.client.write(bytes(range(200)))
    record = session.c_out.read()
    first, second = bytearray(150), bytearray(150)
    assert session.records.decrypt_into(record, first) == (len(record), 150, True)
    assert session.records.decrypt_into(b"", memoryview(second)) == (0, 50, False)
    assert bytes(first + second[:50]) == bytes(range(200))
    assert session.records.decrypt_into(b"", bytearray()) == (0, 0, False)


@pytest.mark.parametrize("twin", TWINS)
def test_one_call_decrypts_many_records_and_the_bio_never_holds_more_than_one(contexts, twin):
    session = Session(contexts, twin)
    message = bytes(range(256)) * 400  # 100 KiB: seven records
    session.client.write(message)
    ciphertext = memoryview(session.c_out.read())
    whole = bytearray(256 * KiB)
    assert session.records.decrypt_into(ciphertext, whole) == (len(ciphertext), len(message), False)
    assert whole[:len(message)] == message
    # Into a buffer smaller than the message: the rest of the ciphertext is left to the caller.
    session.client.write(message)
    ciphertext = memoryview(session.c_out.read())
    received = bytearray()
    while ciphertext or session.s_in.pending:
        part = bytearray(30 * KiB)
        consumed, produced, more = session.records.decrypt_into(ciphertext, part)
        assert session.s_in.pending <= tls_records.MAX_RECORD_CIPHERTEXT
        ciphertext = ciphertext[consumed:]
        received += part[:produced]
        if not more:
            assert not ciphertext
            break
    assert received == message


@pytest.mark.parametrize("twin", TWINS)
def test_an_error_after_some_plaintext_is_raised_by_the_next_call(contexts, twin):
    session = Session(contexts, twin)
    session.client.write(b"genuine")
    good = session.c_out.read()
    session.client.write(b"tampered")
    bad = bytearray(session.c_out.read())
    bad[-1] ^= 1
    buffer = bytearray(64 * KiB)
    assert session.records.decrypt_into(good + bad, buffer) == (len(good) + len(bad), 7, True)
    assert buffer[:7] == b"genuine"
    with pytest.raises(ssl.SSLError) as info:
        session.records.decrypt_into(b"", buffer)
    assert info.value.reason == "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"


def _raised(session: Session) -> ssl.SSLError:
    with pytest.raises(ssl.SSLError) as info:
        session.records.decrypt_into(b"", bytearray(64 * KiB))
    return info.value


def test_a_tampered_record_raises_what_the_ssl_module_raises(contexts):
    raised = {}
    for twin in TWINS:
        session = Session(contexts, twin)
        session.client.write(b"genuine")
        record = bytearray(session.c_out.read())
        record[-1] ^= 1
        session.s_in.write(bytes(record))
        raised[twin] = _raised(session)
    for exc in raised.values():
        assert type(exc) is ssl.SSLError
        assert (exc.errno, exc.library, exc.reason) == (1, "SSL", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
        assert str(exc).startswith(
            "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed or bad record mac")


@pytest.mark.parametrize("ours_sent_first", [False, True])
def test_the_peers_close_notify_raises_ssl_zero_return_error_in_both_twins(contexts, ours_sent_first):
    for twin in TWINS:
        session = Session(contexts, twin)
        if ours_sent_first:
            with pytest.raises(ssl.SSLWantReadError):
                session.server.unwrap()
            session.c_in.write(session.s_out.read())
        try:
            session.client.unwrap()  # returns once it has ours too, else waits for it
        except ssl.SSLWantReadError:
            pass
        session.s_in.write(session.c_out.read())
        exc = _raised(session)
        assert type(exc) is ssl.SSLZeroReturnError
        assert exc.errno == 6


def test_the_ciphertext_ending_inside_a_record_raises_ssl_eof_error(contexts):
    for twin in TWINS:
        session = Session(contexts, twin)
        session.client.write(b"cut short")
        session.s_in.write(session.c_out.read()[:10])
        session.s_in.write_eof()
        assert type(_raised(session)) is ssl.SSLEOFError


@pytest.mark.skipif(_tlsrecords is None, reason="the C helper is not built")
class TestTheCHelpersChecks:
    def test_it_is_the_one_the_server_uses(self):
        assert tls_records.Records is _tlsrecords.Records

    def test_records_takes_only_an_sslobject_and_its_own_bios(self, contexts):
        session = Session(contexts, "c")
        with pytest.raises(ValueError, match="not the SSLObject's own incoming and outgoing BIOs"):
            _tlsrecords.Records(session.server, session.s_out, session.s_in)
        with pytest.raises(ValueError, match="not the SSLObject's own"):
            _tlsrecords.Records(session.server, session.s_in, session.c_out)
        with pytest.raises(TypeError):
            _tlsrecords.Records(session.server, session.s_in, object())
        with pytest.raises(AttributeError):
            _tlsrecords.Records(object(), session.s_in, session.s_out)

    def test_bind_refuses_a_probe_that_does_not_match_before_following_its_pointers(self, contexts):
        import _ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        probe = context.wrap_bio(incoming, outgoing, server_side=True)
        other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        make_error = tls_records.make_error
        with pytest.raises(ImportError, match="known layout"):
            _tlsrecords.bind(_ssl.__file__, probe._sslobj, other, incoming, outgoing, make_error)
        with pytest.raises(ImportError, match="known layout"):
            _tlsrecords.bind(_ssl.__file__, probe._sslobj, context, outgoing, incoming, make_error)
        with pytest.raises(ImportError, match="not an _ssl._SSLSocket"):
            _tlsrecords.bind(_ssl.__file__, object(), context, incoming, outgoing, make_error)



def test_a_python_whose_ssl_keeps_its_name_tables_to_itself_names_the_error_alike(contexts, monkeypatch):
    """Python 3.12 dropped _ssl.err_codes_to_names and lib_codes_to_names: the names then come from
    OpenSSL's reason text, and match what the ssl module itself raised (the twin's exception)."""
    import _ssl

    session = Session(contexts, "python")
    session.client.write(b"genuine")
    record = bytearray(session.c_out.read())
    record[-1] ^= 1
    session.s_in.write(bytes(record))
    expected = _raised(session)
    for table in ("err_codes_to_names", "lib_codes_to_names"):
        monkeypatch.delattr(_ssl, table, raising=False)
    # ERR_PACK(ERR_LIB_SSL, 0, SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC)
    code = (20 << 23 | 281) if ssl.OPENSSL_VERSION_INFO >= (3,) else (20 << 24 | 281)
    made = tls_records.make_error(1, code, "decryption failed or bad record mac")
    assert (type(made), made.errno, made.library, made.reason) == (
        type(expected), expected.errno, expected.library, expected.reason)


def _packed(lib: int, reason: int) -> int:
    """ERR_PACK(lib, 0, reason) as this OpenSSL lays an error code out."""
    return (lib << 23 | reason) if ssl.OPENSSL_VERSION_INFO >= (3,) else (lib << 24 | reason)


@pytest.mark.parametrize(("ssl_error", "code", "expected", "errno"), [
    (2, 0, ssl.SSLWantReadError, 2),
    (3, 0, ssl.SSLWantWriteError, 3),
    (6, 0, ssl.SSLZeroReturnError, 6),
    (5, 0, ssl.SSLEOFError, 8),  # OpenSSL 1.1's unexpected EOF: SYSCALL with an empty queue
    (5, _packed(2, 104), ssl.SSLSyscallError, 5),  # SYSCALL with an errno queued
    (1, _packed(20, 294), ssl.SSLEOFError, 8),  # OpenSSL 3.0's SSL_R_UNEXPECTED_EOF_WHILE_READING
    (1, _packed(20, 281), ssl.SSLError, 1),
])
def test_make_error_gives_the_type_and_errno_ssl_c_gives(ssl_error, code, expected, errno):
    exc = tls_records.make_error(ssl_error, code, None)
    assert (type(exc), exc.errno) == (expected, errno)
