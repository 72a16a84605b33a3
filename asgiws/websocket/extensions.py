"""The extension hook (RFC 6455 9) and Sec-WebSocket-Extensions negotiation.

An `Extension` is one negotiated extension on one connection. The codec asks
it, per data message, whether it applies (`begin_message`, from the RSV bits
of the first frame), then feeds it the payload as it arrives (`decode`, with
a bound on how much it may produce) and gives it whole outgoing messages
(`encode`), or a large one frame by frame (`encode_fragment`). Only message-level extensions fit (permessage-*, RFC 7692): RSV
bits on control and continuation frames are always a protocol error.
"""

from __future__ import annotations

import re

__all__ = ["Extension", "Params", "ServerExtensionFactory", "negotiate_extensions", "parse_extensions_header"]

Params = list[tuple[str, "str | None"]]


class Extension:
    """One negotiated extension. Subclasses set `name` and `rsv_mask` (the RSV bits they claim)."""

    name: str = ""
    rsv_mask: int = 0

    def begin_message(self, opcode: int, rsv: int) -> bool:
        """Whether this extension decodes the message whose first frame has these RSV bits.

        An extension with a nonzero `rsv_mask` decodes only messages that have
        one of its bits set (RFC 6455 5.2: the bits signal the extension), so
        the codec does not ask it about messages whose RSV bits are all clear.
        """
        raise NotImplementedError

    def decode(self, data: bytes, *, end: bool, max_length: int) -> bytes:
        """Decode part of a message's payload (`end`: its last part).

        Returns at most `max_length` bytes: returning exactly `max_length`
        means the message is over budget (callers pass budget + 1).
        Raises `ProtocolError` for undecodable input.
        """
        raise NotImplementedError

    def encode(self, opcode: int, data: bytes) -> tuple[int, bytes]:
        """Encode a whole outgoing message: (RSV bits for its first frame, payload)."""
        raise NotImplementedError

    def encode_fragment(self, data: bytes, *, first: bool, end: bool) -> tuple[int, bytes]:
        """Encode one frame's part of a fragmented outgoing message: (RSV bits for this frame, payload).

        `first`: the message's first frame (the only one that may carry RSV
        bits); `end`: its last.
        """
        raise NotImplementedError


class ServerExtensionFactory:
    """Decides, from a client's offers for one extension name, what the server accepts."""

    name: str = ""

    def negotiate(self, offers: list[Params]) -> tuple[str, Extension] | None:
        """Accept the first acceptable offer: (response params, e.g. "a=1; b", extension), or None."""
        raise NotImplementedError


# RFC 7230 3.2.6 token and quoted-string, as used by RFC 6455 9.1.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_TOKEN_RE = re.compile(_TOKEN)
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*(?:=\s*({_TOKEN}|{_QUOTED}))?\s*")
_UNESCAPE_RE = re.compile(r"\\(.)")


def _parse_element(element: str) -> tuple[str, Params] | None:
    parts = element.split(";")
    name = parts[0].strip()
    if not _TOKEN_RE.fullmatch(name):
        return None
    params: Params = []
    for part in parts[1:]:
        match = _PARAM_RE.fullmatch(part)
        if match is None:
            return None
        key, value = match.group(1), match.group(2)
        if value is not None and value.startswith('"'):
            value = _UNESCAPE_RE.sub(r"\1", value[1:-1])
            # 9.1: a quoted value must still be a token once unquoted.
            if not _TOKEN_RE.fullmatch(value):
                return None
        params.append((key.lower(), value))
    return name.lower(), params


def _split_offers(value: str) -> list[str]:
    """Split on commas outside quoted strings (a quoted value may hold one)."""
    elements: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append(value[start:index])
            start = index + 1
    elements.append(value[start:])
    return elements


def parse_extensions_header(header_values: list[bytes]) -> list[tuple[str, Params]]:
    """Every well-formed offer in the Sec-WebSocket-Extensions values, in order.

    Malformed elements and empty list items are skipped: an offer we cannot
    read is an offer we decline, never a failed handshake.
    """
    offers: list[tuple[str, Params]] = []
    for raw in header_values:
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        for element in _split_offers(value):
            if not element.strip():
                continue
            parsed = _parse_element(element)
            if parsed is not None:
                offers.append(parsed)
    return offers


def negotiate_extensions(
    header_values: list[bytes], factories: list[ServerExtensionFactory]
) -> tuple[bytes | None, list[Extension]]:
    """The Sec-WebSocket-Extensions response value (None: no header) and the accepted extensions.

    Each factory sees all offers for its name, in the client's order of
    preference, and accepts at most one. A factory whose extension claims RSV
    bits already taken by an accepted one is skipped.
    """
    offers = parse_extensions_header(header_values)
    accepted: list[Extension] = []
    responses: list[str] = []
    rsv_taken = 0
    for factory in factories:
        mine = [params for name, params in offers if name == factory.name]
        if not mine:
            continue
        result = factory.negotiate(mine)
        if result is None:
            continue
        params, extension = result
        if extension.rsv_mask & rsv_taken:
            continue
        rsv_taken |= extension.rsv_mask
        accepted.append(extension)
        responses.append(f"{factory.name}; {params}" if params else factory.name)
    if not accepted:
        return None, []
    return ", ".join(responses).encode("ascii"), accepted
