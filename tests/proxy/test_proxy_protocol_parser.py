"""The sans-I/O PROXY protocol reader: every header fed whole, split at every offset and byte by byte."""

from __future__ import annotations

import ast
import ipaddress
import itertools
import pathlib
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asgiws.proxy_protocol
from asgiws.proxy_protocol import (
    V1_MAX_SIZE,
    V2_MAX_SIZE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
    sniff,
)

BOTH = frozenset({1, 2})
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(command: int = 0x1, family: int = 0x11, body: bytes = b"", *, version: int = 2,
       length: int | None = None) -> bytes:
    """A v2 header: version/command byte, family/transport byte, length, then `body`."""
    declared = len(body) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", declared) + body


def inet4(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    return (ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
            + struct.pack("!HH", source_port, destination_port))


def inet6(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    return (ipaddress.IPv6Address(source).packed + ipaddress.IPv6Address(destination).packed
            + struct.pack("!HH", source_port, destination_port))


ADDRESSES = inet4("1.2.3.4", "5.6.7.8", 1, 2)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def read_every_way(data: bytes, versions: frozenset[int] = BOTH) -> tuple[ProxyHeader, bytes]:
    """The header and what followed it, from `data` fed whole, split at each offset and byte
    by byte; asserts they all agree and that no split returns a header early."""
    whole = _read(data, [data], versions)
    for split in range(1, len(data)):
        assert _read(data, [data[:split], data[split:]], versions) == whole, f"split at {split}"
    bytewise = [data[index:index + 1] for index in range(len(data))]
    assert _read(data, bytewise, versions) == whole
    return whole


def _read(data: bytes, pieces: list[bytes], versions: frozenset[int]) -> tuple[ProxyHeader, bytes]:
    reader = ProxyHeaderReader(versions)
    fed = 0
    for piece in pieces:
        header = reader.feed(piece)
        fed += len(piece)
        if header is not None:
            # What followed the header in the piece that completed it, plus the rest of the input.
            return header, reader.remainder + data[fed:]
    raise AssertionError("no header from the whole input")


def error_every_way(data: bytes, versions: frozenset[int] = BOTH, *, same_reason: bool = True) -> str:
    """The reason `data` fed whole is refused; refused too split at each offset and byte by byte,
    for the same reason unless `same_reason` is False (a reason quoting the bytes seen so far)."""
    reasons = []
    for pieces in ([data], *([data[:s], data[s:]] for s in range(1, len(data))),
                   [data[i:i + 1] for i in range(len(data))]):
        reader = ProxyHeaderReader(versions)
        with pytest.raises(ProxyHeaderError) as caught:
            for piece in pieces:
                assert reader.feed(piece) is None, "a header from refused input"
        reasons.append(str(caught.value))
    if same_reason:
        assert set(reasons) == {reasons[0]}, set(reasons)
    return reasons[0]


# -- v1 -------------------------------------------------------------------------------------


def test_v1_tcp4_names_client_and_server_and_leaves_the_request() -> None:
    header, rest = read_every_way(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n" + REQUEST)
    assert header == ProxyHeader(1, "TCP4", False, ("203.0.113.7", 56324), ("192.0.2.1", 443), 44)
    assert rest == REQUEST


def test_v1_tcp6_addresses_are_normalised() -> None:
    header, rest = read_every_way(b"PROXY TCP6 2001:DB8:0:0::7 2001:db8::1 1 65535\r\n")
    assert (header.family, header.client, header.server) == (
        "TCP6", ("2001:db8::7", 1), ("2001:db8::1", 65535))
    assert rest == b""


def test_v1_longest_line_of_107_bytes_is_read() -> None:
    address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {address} {address} 65535 65535\r\n".encode()
    assert len(line) == 104  # the spec's worst case for an address line
    header, _ = read_every_way(line)
    assert header.client == (address, 65535)
    padded = b"PROXY UNKNOWN " + b"x" * (V1_MAX_SIZE - 16) + b"\r\n"
    assert len(padded) == V1_MAX_SIZE
    assert read_every_way(padded)[0].local


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown_keeps_the_connection_addresses(line: bytes) -> None:
    header, rest = read_every_way(line + REQUEST)
    assert header == ProxyHeader(1, "UNKNOWN", True, None, None, len(line))
    assert rest == REQUEST


@pytest.mark.parametrize(("line", "reason"), [
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1 protocol b'TCP5' is not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "PROXY v1 header needs exactly: protocol, 2 addresses, 2 ports"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1 header needs exactly: protocol, 2 addresses, 2 ports"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "PROXY v1 address b'::1' is not IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "PROXY v1 address b'1.2.3.4' is not IPv6"),
    (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "PROXY v1 address b'1.2.3.999' is not an IP address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1 address b'01.2.3.4' is not an IP address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", "PROXY v1 port b'99999' is not a number from 0 to 65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "PROXY v1 port b'080' is not a number from 0 to 65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "PROXY v1 port b'+1' is not a number from 0 to 65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "PROXY v1 header holds a byte that is not printable US-ASCII"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "PROXY v1 header line does not end in CRLF"),
    (b"PROXY TCP4 1.2.3.\xc3\xa9 5.6.7.8 1 2\r\n",
     "PROXY v1 header holds a byte that is not printable US-ASCII"),
    (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "PROXY v1 header longer than 107 bytes"),
])
def test_v1_malformed_header_is_refused_with_its_reason(line: bytes, reason: str) -> None:
    assert error_every_way(line + REQUEST) == reason


def test_v1_line_without_crlf_is_refused_at_107_bytes_not_buffered_on() -> None:
    reader = ProxyHeaderReader(BOTH)
    assert reader.feed(b"PROXY UNKNOWN " + b"x" * (V1_MAX_SIZE - 15)) is None  # 106 bytes: may still end
    with pytest.raises(ProxyHeaderError, match="longer than 107 bytes"):
        reader.feed(b"x")


def test_v1_truncated_header_waits_for_the_rest() -> None:
    reader = ProxyHeaderReader(BOTH)
    assert reader.feed(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r") is None


# -- v2 -------------------------------------------------------------------------------------


def test_v2_tcp4_names_client_and_server_and_leaves_the_request() -> None:
    data = v2(body=inet4("203.0.113.7", "192.0.2.1", 56324, 443))
    header, rest = read_every_way(data + REQUEST)
    assert header == ProxyHeader(2, "TCP4", False, ("203.0.113.7", 56324), ("192.0.2.1", 443), 28)
    assert rest == REQUEST


def test_v2_tcp6() -> None:
    header, _ = read_every_way(v2(family=0x21, body=inet6("2001:db8::7", "2001:db8::1", 40000, 8443)))
    assert (header.family, header.client, header.server) == (
        "TCP6", ("2001:db8::7", 40000), ("2001:db8::1", 8443))


def test_v2_unix_has_no_client_address_and_the_listener_path_as_server() -> None:
    body = b"/run/client.sock".ljust(108, b"\0") + b"/run/haproxy.sock".ljust(108, b"\0")
    header, _ = read_every_way(v2(family=0x31, body=body))
    assert (header.family, header.local, header.client, header.server) == (
        "UNIX", False, None, ("/run/haproxy.sock", None))


def test_v2_local_command_keeps_the_connection_addresses_whatever_follows() -> None:
    # HAProxy's health checks: 2.2 "the receiver must ... discard the protocol block including the family".
    for family, body in ((0x00, b""), (0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2)), (0x77, b"junk")):
        header, rest = read_every_way(v2(command=0x0, family=family, body=body) + REQUEST)
        assert (header.local, header.client, header.server) == (True, None, None)
        assert rest == REQUEST


def test_v2_unspec_family_keeps_the_connection_addresses() -> None:
    header, _ = read_every_way(v2(family=0x00))
    assert header.local and header.family == "UNKNOWN"


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    # NOOP, AUTHORITY, CRC32C (not checked: optional for receivers) and an unknown type.
    tlvs = (tlv(0x04, b"") + tlv(0x02, b"app.example.com") + tlv(0x03, b"\x12\x34\x56\x78")
            + tlv(0xEE, b"x" * 300))
    data = v2(body=inet4("203.0.113.7", "192.0.2.1", 1, 2) + tlvs)
    header, rest = read_every_way(data + REQUEST)
    assert header.client == ("203.0.113.7", 1) and header.size == len(data)
    assert rest == REQUEST


def test_v2_ssl_tlv_with_the_client_bit_says_the_client_spoke_tls() -> None:
    # HAProxy's send-proxy-v2-ssl: client bits, 32-bit verify result, then sub-TLVs (version, cipher).
    ssl = tlv(0x20, b"\x07" + b"\0\0\0\0" + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_256_GCM_SHA384"))
    header, rest = read_every_way(v2(body=ADDRESSES + tlv(0x04, b"") + ssl) + REQUEST)
    assert header.tls and rest == REQUEST
    assert not read_every_way(v2(body=ADDRESSES + tlv(0x20, b"\x00\0\0\0\0")))[0].tls  # a plain TCP client
    assert not read_every_way(v2(body=ADDRESSES))[0].tls
    assert error_every_way(v2(body=ADDRESSES + tlv(0x20, b"\x01\0\0"))) == (
        "PROXY v2 SSL TLV of 3 bytes is shorter than its 5 fixed bytes")


def test_v2_header_of_the_largest_size_allowed_is_read() -> None:
    address = inet4("203.0.113.7", "192.0.2.1", 1, 2)
    padding = tlv(0x04, b"\0" * (V2_MAX_SIZE - 16 - len(address) - 3))
    data = v2(body=address + padding)
    assert len(data) == V2_MAX_SIZE
    header, _ = _read(data, [data], BOTH)  # every split of 4 KiB is slow and proves nothing more
    assert header.client == ("203.0.113.7", 1)


@pytest.mark.parametrize(("data", "reason"), [
    (v2(version=1), "PROXY v2 version nibble is 1, not 2"),
    (v2(version=3), "PROXY v2 version nibble is 3, not 2"),
    (v2(command=0x2), "PROXY v2 command 2 is neither LOCAL nor PROXY"),
    (v2(family=0x41, body=b"\0" * 12), "PROXY v2 address family 4 is not INET, INET6 or UNIX"),
    (v2(family=0x12, body=ADDRESSES), "PROXY v2 transport 2 is not STREAM (this server speaks TCP)"),
    (v2(family=0x10, body=ADDRESSES), "PROXY v2 transport 0 is not STREAM (this server speaks TCP)"),
    (v2(family=0x11, body=b"\0" * 11), "PROXY v2 TCP4 address block is 11 bytes, not 12"),
    (v2(family=0x21, body=b"\0" * 12), "PROXY v2 TCP6 address block is 12 bytes, not 36"),
    (v2(family=0x31, body=b"\0" * 108), "PROXY v2 UNIX address block is 108 bytes, not 216"),
    (v2(body=ADDRESSES + b"\x02\x00"), "PROXY v2 TLV header is truncated"),
    (v2(body=ADDRESSES + b"\x02\x00\x05abc"), "PROXY v2 TLV of type 0x02 runs past the header"),
])
def test_v2_malformed_header_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    assert error_every_way(data + REQUEST) == reason


def test_v2_oversized_length_is_refused_from_the_fixed_part_before_the_body_arrives() -> None:
    reader = ProxyHeaderReader(BOTH)
    limit = f"over the {V2_MAX_SIZE}-byte limit"
    with pytest.raises(ProxyHeaderError, match=f"PROXY v2 header of 65551 bytes is {limit}"):
        reader.feed(v2(length=65535))  # 16 bytes: nothing of the declared body was sent
    assert error_every_way(v2(length=V2_MAX_SIZE - 15)) == (
        f"PROXY v2 header of {V2_MAX_SIZE + 1} bytes is over the {V2_MAX_SIZE}-byte limit")


def test_v2_truncated_header_waits_for_the_rest() -> None:
    data = v2(body=inet4("203.0.113.7", "192.0.2.1", 1, 2))
    reader = ProxyHeaderReader(BOTH)
    assert reader.feed(data[:-1]) is None
    assert reader.feed(data[-1:]) is not None


# -- versions and signatures ----------------------------------------------------------------


def test_only_the_configured_version_is_accepted() -> None:
    v1_line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    v2_header = v2(body=inet4("1.2.3.4", "5.6.7.8", 1, 2))
    assert error_every_way(v1_line, frozenset({2})) == "expected a PROXY protocol v2 header, got a v1 header"
    assert error_every_way(v2_header, frozenset({1})) == (
        "expected a PROXY protocol v1 header, got a v2 header")
    assert read_every_way(v1_line, frozenset({1}))[0].version == 1
    assert read_every_way(v2_header, frozenset({2}))[0].version == 2


@pytest.mark.parametrize("data", [REQUEST, b"\r\n" + REQUEST, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                                  b"PROPFIND / HTTP/1.1\r\n", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
def test_bytes_that_are_not_a_proxy_header_are_refused(data: bytes) -> None:
    # Refused at the first byte that differs from both signatures, quoting what had come.
    reason = error_every_way(data, same_reason=False)
    assert reason == f"expected a PROXY protocol v1 or v2 header, got {data[:16]!r}"


def test_sniff_tells_a_header_from_other_bytes_at_the_first_byte_that_differs() -> None:
    assert [sniff(b"PROXY "[:n]) for n in range(6)] == [None] * 6
    assert sniff(b"PROXY ") == 1 and sniff(b"PROXY TCP4") == 1
    assert [sniff(V2_SIGNATURE[:n]) for n in range(12)] == [None] * 12
    assert sniff(V2_SIGNATURE) == 2
    assert [sniff(data) for data in (b"GET ", b"PROPFIND", b"\r\n\r\nG", b"\r\n\r\n\0\r\nX")] == [0] * 4


def test_parser_module_imports_no_io_library() -> None:
    path = pathlib.Path(asgiws.proxy_protocol.__file__)
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "ipaddress", "dataclasses", "typing"}
    code = (
        "import sys, types; pkg = types.ModuleType('asgiws'); "
        f"pkg.__path__ = [{str(path.parent)!r}]; sys.modules['asgiws'] = pkg; "
        "import asgiws.proxy_protocol; "
        "print(sorted(m for m in ('asyncio', 'uvloop', 'httptools', 'click') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- any bytes ------------------------------------------------------------------------------

_PREFIXES = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIGNATURE,
                             V2_SIGNATURE + b"\x21\x11", V2_SIGNATURE + b"\x20", V2_SIGNATURE + b"\x21\x31"])


@settings(max_examples=300, deadline=None)
@given(prefix=_PREFIXES, tail=st.binary(max_size=300), cuts=st.lists(st.integers(0, 320), max_size=4))
def test_any_bytes_give_a_header_or_a_proxy_header_error_and_never_more_than_was_fed(
    prefix: bytes, tail: bytes, cuts: list[int]
) -> None:
    data = prefix + tail
    bounds = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    reader = ProxyHeaderReader(BOTH)
    try:
        for start, end in itertools.pairwise(bounds):
            header = reader.feed(data[start:end])
            if header is not None:
                assert header.size + len(reader.remainder) == end
                assert data[header.size:end] == reader.remainder
                break
    except ProxyHeaderError:
        pass
