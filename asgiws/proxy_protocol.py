"""The PROXY protocol (HAProxy's proxy-protocol.txt), versions 1 and 2: sans-I/O.

A layer-4 load balancer (HAProxy `send-proxy` / `send-proxy-v2`, AWS NLB,
GCP, Envoy) writes one header in front of the client's bytes, naming the
client's and the listener's addresses. `ProxyHeaderReader` is fed the
connection's first bytes, in pieces of any size, until it returns the header;
whatever followed it (`remainder`) belongs to HTTP. It never imports asyncio:
`asgiws.protocols.proxy` is the glue.

Every malformed, truncated or oversized header raises `ProxyHeaderError`
with a reason fit for a log line; the connection is then closed, since the
spec leaves nothing else to do ("the receiver MUST ... drop the connection").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Family = Literal["TCP4", "TCP6", "UNIX", "UNKNOWN"]

# 2.1: 'The line always starts with "PROXY" ... followed by exactly one space.'
V1_PREFIX = b"PROXY "
# 2.1: "a 108-byte buffer is always enough to store all the line and a trailing
# zero": 107 bytes with the CRLF. Longer is not a v1 header.
V1_MAX_SIZE = 107
# 2.2: "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"; it cannot begin an
# HTTP request (the NUL after an empty line) nor a TLS record.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_SIZE = 16  # signature, version/command, family/transport, 16-bit length
# The largest address block (two UNIX paths, 216 bytes) plus TLVs: what HAProxy
# sends with every proxy-v2-options value, AWS NLB and GCP all stay under 1 KiB.
# The length field allows 64 KiB; past this bound the header is refused before
# its body is buffered.
V2_MAX_SIZE = V2_FIXED_SIZE + 4096

# 2.2, the 14th byte's high nibble: address family, and its address block size.
_V2_ADDRESS_SIZES: dict[int, tuple[Family, int]] = {
    0x1: ("TCP4", 12),  # AF_INET: 4 + 4 address bytes, 2 + 2 port bytes
    0x2: ("TCP6", 36),  # AF_INET6: 16 + 16, 2 + 2
    0x3: ("UNIX", 216),  # AF_UNIX: two 108-byte paths
}
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_UNSPEC_TRANSPORT, _V2_STREAM = 0x0, 0x1
# 2.2.5: PP2_TYPE_SSL, whose value starts with a `client` bit field (then a
# 32-bit `verify` and sub-TLVs); PP2_CLIENT_SSL: "client connected over SSL/TLS".
_PP2_TYPE_SSL = 0x20
_PP2_CLIENT_SSL = 0x01
_PP2_SSL_FIXED_SIZE = 5
_V1_FAMILIES: dict[bytes, tuple[Family, int]] = {b"TCP4": ("TCP4", 4), b"TCP6": ("TCP6", 6)}
# 2.1: the line is US-ASCII; anything else before its CRLF means it is not one.
_V1_CHARACTERS = frozenset(range(0x20, 0x7F))


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header; str() is the reason, for the log."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What one header said.

    `local` is True when the connection's own addresses stand (v2 LOCAL, the
    proxy's health check; v1 UNKNOWN; v2 AF_UNSPEC): `client` and `server` are
    then None. Otherwise `client` is the original (host, port), or None for a
    client on a UNIX socket, and `server` is the address the client connected
    to: (host, port), or (path, None) for a UNIX socket. `size` is the header's
    length in bytes. `tls` is True when a v2 PP2_TYPE_SSL TLV says the client
    connected to the proxy over TLS (HAProxy's send-proxy-v2-ssl).
    """

    version: int
    family: Family
    local: bool
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    size: int
    tls: bool = False


def sniff(data: bytes | bytearray) -> int | None:
    """1 or 2 when `data` begins with that version's signature, 0 when it cannot be a PROXY
    header at all, None when it is too short to tell (a prefix of a signature)."""
    for version, signature in ((1, V1_PREFIX), (2, V2_SIGNATURE)):
        if data[: len(signature)] == signature:
            return version
        if len(data) < len(signature) and signature.startswith(data):
            return None
    return 0


class ProxyHeaderReader:
    """Reads one PROXY protocol header from the start of a connection.

    `versions` are those accepted: {1}, {2} or {1, 2} (--proxy-protocol v1, v2, auto).
    """

    __slots__ = ("_buffer", "remainder", "versions")

    def __init__(self, versions: frozenset[int]) -> None:
        self.versions = versions
        self.remainder = b""  # the bytes that followed the header, once it is complete
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> ProxyHeader | None:
        """Add `data`; the header once complete (then `remainder` holds what followed it), else None.

        Raises ProxyHeaderError as soon as the bytes cannot begin a valid header
        of an accepted version: a wrong signature, a bad field, a v1 line past
        107 bytes, a v2 length past V2_MAX_SIZE (all decided before the rest arrives).
        """
        buffer = self._buffer
        buffer += data
        version = sniff(buffer)
        if version is None:
            return None
        if version not in self.versions:
            raise ProxyHeaderError(self._wrong_signature(version))
        header = _read_v1(buffer) if version == 1 else _read_v2(buffer)
        if header is not None:
            self.remainder = bytes(buffer[header.size:])
            buffer.clear()
        return header

    def _wrong_signature(self, found: int) -> str:
        expected = " or ".join(f"v{version}" for version in sorted(self.versions))
        if found == 0:
            return f"expected a PROXY protocol {expected} header, got {bytes(self._buffer[:16])!r}"
        return f"expected a PROXY protocol {expected} header, got a v{found} header"


def _read_v1(buffer: bytearray) -> ProxyHeader | None:
    """The v1 header at the start of `buffer`, None while its line is not complete."""
    end = buffer.find(b"\r", 0, V1_MAX_SIZE)
    scanned = buffer[: end if end >= 0 else V1_MAX_SIZE]
    if not _V1_CHARACTERS.issuperset(scanned):
        raise ProxyHeaderError("PROXY v1 header holds a byte that is not printable US-ASCII")
    if end < 0:
        if len(buffer) >= V1_MAX_SIZE:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX_SIZE} bytes")
        return None
    if len(buffer) == end + 1:
        return None
    if buffer[end + 1] != 0x0A:
        raise ProxyHeaderError("PROXY v1 header line does not end in CRLF")
    size = end + 2
    fields = bytes(buffer[len(V1_PREFIX):end]).split(b" ")
    if fields[0] == b"UNKNOWN":
        # 2.1: "the receiver must ignore anything presented before the CRLF is
        # found" and use the connection's own addresses.
        return ProxyHeader(1, "UNKNOWN", True, None, None, size)
    known = _V1_FAMILIES.get(fields[0])
    if known is None:
        raise ProxyHeaderError(f"PROXY v1 protocol {fields[0][:8]!r} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 5:
        raise ProxyHeaderError("PROXY v1 header needs exactly: protocol, 2 addresses, 2 ports")
    family, ip_version = known
    source, destination = (_v1_address(text, ip_version) for text in fields[1:3])
    source_port, destination_port = (_v1_port(text) for text in fields[3:5])
    return ProxyHeader(1, family, False, (source, source_port), (destination, destination_port), size)


def _v1_address(text: bytes, ip_version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address {text[:40]!r} is not an IP address") from None
    if address.version != ip_version:
        raise ProxyHeaderError(f"PROXY v1 address {text[:40]!r} is not IPv{ip_version}")
    return str(address)


def _v1_port(text: bytes) -> int:
    # 2.1: a decimal number in [0..65535]; no sign, no leading zero.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30) or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {text[:8]!r} is not a number from 0 to 65535")
    return int(text)


def _read_v2(buffer: bytearray) -> ProxyHeader | None:
    """The v2 header at the start of `buffer`, None while it is not complete."""
    if len(buffer) < V2_FIXED_SIZE:
        return None
    version_command, family_transport = buffer[12], buffer[13]
    # 2.2: "Receivers must drop connections presenting unexpected values here."
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 version nibble is {version_command >> 4}, not 2")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    size = V2_FIXED_SIZE + int.from_bytes(buffer[14:16], "big")
    if size > V2_MAX_SIZE:
        raise ProxyHeaderError(f"PROXY v2 header of {size} bytes is over the {V2_MAX_SIZE}-byte limit")
    if len(buffer) < size:
        return None
    if command == _V2_LOCAL:
        # 2.2: "the receiver must accept this connection as valid and must use the
        # real connection endpoints and discard the protocol block including the
        # family which is ignored."
        return ProxyHeader(2, "UNKNOWN", True, None, None, size)
    family_code, transport = family_transport >> 4, family_transport & 0x0F
    if family_code == 0:
        # 2.2, AF_UNSPEC: "the receiver is free to accept the connection anyway and
        # use the real endpoint addresses".
        return ProxyHeader(2, "UNKNOWN", True, None, None, size)
    known = _V2_ADDRESS_SIZES.get(family_code)
    if known is None:
        raise ProxyHeaderError(f"PROXY v2 address family {family_code} is not INET, INET6 or UNIX")
    if transport != _V2_STREAM:
        raise ProxyHeaderError(f"PROXY v2 transport {transport} is not STREAM (this server speaks TCP)")
    family, address_size = known
    body = bytes(buffer[V2_FIXED_SIZE:size])
    if len(body) < address_size:
        raise ProxyHeaderError(f"PROXY v2 {family} address block is {len(body)} bytes, not {address_size}")
    tls = _read_tlvs(body, address_size)
    client, server = _v2_addresses(family, body)
    return ProxyHeader(2, family, False, client, server, size, tls)


def _v2_addresses(family: Family, body: bytes) -> tuple[tuple[str, int] | None, tuple[str, int | None]]:
    if family == "UNIX":
        destination = body[108:216].partition(b"\0")[0].decode("utf-8", "replace")
        return None, (destination, None)
    width = 4 if family == "TCP4" else 16
    source = str(ipaddress.ip_address(body[:width]))
    destination = str(ipaddress.ip_address(body[width:2 * width]))
    ports = body[2 * width:2 * width + 4]
    return (source, int.from_bytes(ports[:2], "big")), (destination, int.from_bytes(ports[2:], "big"))


def _read_tlvs(body: bytes, offset: int) -> bool:
    """Walk the TLVs after the address block; True when PP2_TYPE_SSL says the client used TLS.

    Every other type is skipped by its length (2.2.7: unknown types must be
    ignored); one whose length runs past the header means the header is corrupt.
    """
    tls = False
    while offset < len(body):
        if len(body) - offset < 3:
            raise ProxyHeaderError("PROXY v2 TLV header is truncated")
        kind = body[offset]
        start = offset + 3
        end = start + int.from_bytes(body[offset + 1:start], "big")
        if end > len(body):
            raise ProxyHeaderError(f"PROXY v2 TLV of type 0x{kind:02x} runs past the header")
        if kind == _PP2_TYPE_SSL:
            if end - start < _PP2_SSL_FIXED_SIZE:
                size = end - start
                raise ProxyHeaderError(f"PROXY v2 SSL TLV of {size} bytes is shorter than its 5 fixed bytes")
            tls = bool(body[start] & _PP2_CLIENT_SSL)
        offset = end
    return tls
