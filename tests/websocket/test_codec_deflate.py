"""permessage-deflate (RFC 7692): negotiation, round trips, context takeover, bounds."""

from __future__ import annotations

import itertools
import tracemalloc
import zlib

import pytest

from asgiws.websocket import (
    BinaryMessage,
    Opcode,
    PerMessageDeflate,
    ProtocolFailure,
    TextMessage,
    negotiate_extensions,
)
from asgiws.websocket.extensions import parse_extensions_header
from tests.websocket.codec_helpers import (
    client_frame,
    deflate_factory,
    feed,
    feed_every_way,
    parse_server_frames,
    server_connection,
)
from tests.wire import RSV1, RSV2

TAIL = b"\x00\x00\xff\xff"


def negotiate(header: bytes, **factory_kwargs: object) -> tuple[bytes | None, list]:
    return negotiate_extensions([header], [deflate_factory(**factory_kwargs)])  # type: ignore[arg-type]


def response_params(response: bytes) -> dict[str, str | None]:
    ((name, params),) = parse_extensions_header([response])
    assert name == "permessage-deflate"
    return dict(params)


class Client:
    """The peer's side of permessage-deflate, from zlib directly."""

    def __init__(self, params: dict[str, str | None]) -> None:
        self.params = params
        self.deflate_bits = max(int(params.get("client_max_window_bits") or 15), 9)
        self.compressor = zlib.compressobj(wbits=-self.deflate_bits)
        server_bits = int(params.get("server_max_window_bits") or 15)
        self.inflate_bits = max(server_bits, 9)
        self.decompressor = zlib.decompressobj(wbits=-self.inflate_bits)

    def compress(self, data: bytes) -> bytes:
        out = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        if "client_no_context_takeover" in self.params:
            self.compressor = zlib.compressobj(wbits=-self.deflate_bits)
        assert out.endswith(TAIL)
        return out[:-4]

    def decompress(self, data: bytes) -> bytes:
        out = self.decompressor.decompress(data + TAIL)
        if "server_no_context_takeover" in self.params:
            self.decompressor = zlib.decompressobj(wbits=-self.inflate_bits)
        return out


# -- negotiation ----------------------------------------------------------------------------


def test_plain_offer_is_accepted_with_server_window() -> None:
    response, extensions = negotiate(b"permessage-deflate")
    assert response == b"permessage-deflate; server_max_window_bits=12"
    assert isinstance(extensions[0], PerMessageDeflate)


def test_no_offer_gives_no_header() -> None:
    assert negotiate_extensions([], [deflate_factory()]) == (None, [])
    assert negotiate(b"x-webkit-deflate-frame") == (None, [])


def test_quoted_values_are_unquoted() -> None:
    response, _ = negotiate(b'permessage-deflate; client_max_window_bits="10"; server_max_window_bits="9"')
    assert response_params(response) == {"server_max_window_bits": "9", "client_max_window_bits": "10"}


def test_comma_inside_quoted_value_does_not_split_offers() -> None:
    offers = parse_extensions_header([b'foo; a="x,y", permessage-deflate'])
    assert [name for name, _ in offers] == ["permessage-deflate"]  # "x,y" is not a token: foo skipped


@pytest.mark.parametrize(
    "offer",
    [
        b"permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        b"permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
        b"permessage-deflate; server_max_window_bits",
        b"permessage-deflate; server_max_window_bits=7",
        b"permessage-deflate; server_max_window_bits=16",
        b"permessage-deflate; server_max_window_bits=010",
        b"permessage-deflate; client_max_window_bits=abc",
        b"permessage-deflate; server_no_context_takeover=1",
        b"permessage-deflate; unknown_param",
        b'permessage-deflate; client_max_window_bits="1 0"',
    ],
)
def test_invalid_or_duplicated_params_decline_the_offer(offer: bytes) -> None:
    assert negotiate(offer) == (None, [])


def test_first_acceptable_of_several_offers_wins() -> None:
    header = (b"permessage-deflate; server_max_window_bits=20, "
              b"permessage-deflate; server_max_window_bits=10; client_no_context_takeover, permessage-deflate")
    response, extensions = negotiate(header)
    assert response_params(response) == {"client_no_context_takeover": None, "server_max_window_bits": "10"}
    assert len(extensions) == 1


def test_offers_spread_over_several_headers() -> None:
    response, _ = negotiate_extensions([b"foo", b"permessage-deflate; server_max_window_bits=11"],
                                       [deflate_factory()])
    assert response == b"permessage-deflate; server_max_window_bits=11"


def test_malformed_header_never_fails_the_handshake() -> None:
    for header in [b";;;", b",,,", b'permessage-deflate; a="', b"\xff\xfe", b"permessage-deflate;=3", b""]:
        negotiate(header)


def test_server_no_context_takeover_setting_is_announced() -> None:
    response, _ = negotiate(b"permessage-deflate", server_no_context_takeover=True, window_bits=15)
    assert response == b"permessage-deflate; server_no_context_takeover"


def test_client_max_window_bits_without_value_gets_server_window() -> None:
    response, _ = negotiate(b"permessage-deflate; client_max_window_bits")
    assert response_params(response)["client_max_window_bits"] == "12"


# -- round trips with every parameter combination ----------------------------------------------

PARAMS = ["server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits=8",
          "server_max_window_bits=15", "client_max_window_bits", "client_max_window_bits=9"]
COMBINATIONS = [
    combo for size in range(len(PARAMS) + 1) for combo in itertools.combinations(PARAMS, size)
    if len({p.split("=")[0] for p in combo}) == len(combo)
]


@pytest.mark.parametrize("combo", COMBINATIONS, ids="; ".join)
@pytest.mark.parametrize("window_bits", [8, 12, 15])
def test_round_trip_with_parameters(combo: tuple[str, ...], window_bits: int) -> None:
    offer = "; ".join(("permessage-deflate",) + combo).encode()
    response, extensions = negotiate(offer, window_bits=window_bits, min_size=0)
    assert response is not None
    client = Client(response_params(response))
    conn = server_connection(extensions=extensions)
    messages = [b"hello " * 50, bytes(range(256)) * 20, b"hello " * 50, b"", b"x"]
    for message in messages:
        payload = client.compress(message)
        assert conn.receive_data(client_frame(Opcode.BINARY, payload, rsv=RSV1)) == [BinaryMessage(message)]
        conn.send_binary(message)
        ((opcode, _, rsv, body),) = parse_server_frames(conn.data_to_send())
        assert (opcode, rsv) == (Opcode.BINARY, RSV1)
        assert client.decompress(body) == message


def test_compressed_fragmented_text_split_at_every_offset() -> None:
    _, extensions = negotiate(b"permessage-deflate; client_no_context_takeover")
    client = Client({"client_no_context_takeover": None})
    text = "fragmented ☃ text " * 3
    payload = client.compress(text.encode())
    third = len(payload) // 3
    data = (client_frame(Opcode.TEXT, payload[:third], fin=False, rsv=RSV1) + client_frame(Opcode.PING, b"")
            + client_frame(Opcode.CONTINUATION, payload[third : 2 * third], fin=False)
            + client_frame(Opcode.CONTINUATION, payload[2 * third :]))
    assert feed_every_way(data, extensions=extensions) == [TextMessage(text)]


def test_uncompressed_message_passes_when_deflate_negotiated() -> None:
    _, extensions = negotiate(b"permessage-deflate")
    assert feed(client_frame(Opcode.TEXT, b"plain"), extensions=extensions)[1] == [TextMessage("plain")]


def test_small_messages_are_sent_uncompressed() -> None:
    _, extensions = negotiate(b"permessage-deflate", min_size=128)
    conn = server_connection(extensions=extensions)
    conn.send_text("x" * 127)
    conn.send_text("x" * 128)
    (small, large) = parse_server_frames(conn.data_to_send())
    assert small[2] == 0 and small[3] == b"x" * 127
    assert large[2] == RSV1 and len(large[3]) < 128


@pytest.mark.parametrize("takeover", [True, False])
def test_context_takeover(takeover: bool) -> None:
    _, extensions = negotiate(b"permessage-deflate", server_no_context_takeover=not takeover, min_size=0)
    conn = server_connection(extensions=extensions)
    message = "a fairly repetitive JSON-like message {'key': 'value'} " * 3
    conn.send_text(message)
    conn.send_text(message)
    first, second = parse_server_frames(conn.data_to_send())
    if takeover:
        assert len(second[3]) < len(first[3]) / 2  # refers back to the first message
    else:
        assert second[3] == first[3]


def test_compressor_is_dropped_after_each_message_without_context_takeover() -> None:
    _, (extension,) = negotiate(b"permessage-deflate; client_no_context_takeover", server_no_context_takeover=True,
                                min_size=0)
    conn = server_connection(extensions=[extension])
    conn.send_binary(b"abc" * 100)
    assert extension._compressor is None
    conn.receive_data(client_frame(Opcode.BINARY, Client({}).compress(b"abc"), rsv=RSV1))
    assert extension._decompressor is None


# -- failures -------------------------------------------------------------------------------------


def test_rsv1_on_continuation_frame_fails_1002() -> None:
    _, extensions = negotiate(b"permessage-deflate")
    client = Client({})
    data = (client_frame(Opcode.TEXT, client.compress(b"ab"), fin=False, rsv=RSV1)
            + client_frame(Opcode.CONTINUATION, b"", rsv=RSV1))
    assert feed(data, extensions=extensions)[1][-1].code == 1002


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_rsv1_on_control_frame_fails_1002(opcode: int) -> None:
    _, extensions = negotiate(b"permessage-deflate")
    assert feed(client_frame(opcode, b"", rsv=RSV1), extensions=extensions)[1][-1].code == 1002


def test_rsv2_is_not_claimed_by_deflate_fails_1002() -> None:
    _, extensions = negotiate(b"permessage-deflate")
    assert feed(client_frame(Opcode.TEXT, b"x", rsv=RSV2), extensions=extensions)[1][-1].code == 1002


def test_invalid_utf8_in_compressed_text_fails_1007() -> None:
    _, extensions = negotiate(b"permessage-deflate")
    payload = Client({}).compress("κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 100)
    (failure,) = feed(client_frame(Opcode.TEXT, payload, rsv=RSV1), extensions=extensions)[1]
    assert failure.code == 1007


def test_corrupt_compressed_data_fails() -> None:
    _, extensions = negotiate(b"permessage-deflate")
    (failure,) = feed(client_frame(Opcode.BINARY, b"\xff\xff\xff\xff", rsv=RSV1), extensions=extensions)[1]
    assert isinstance(failure, ProtocolFailure)


def test_compressed_message_over_max_size_fails_1009() -> None:
    _, extensions = negotiate(b"permessage-deflate")
    payload = Client({}).compress(b"a" * 1025)
    (failure,) = feed(client_frame(Opcode.BINARY, payload, rsv=RSV1), max_size=1024, extensions=extensions)[1]
    assert failure.code == 1009
    _, extensions = negotiate(b"permessage-deflate")
    payload = Client({}).compress(b"a" * 1024)
    events = feed(client_frame(Opcode.BINARY, payload, rsv=RSV1), max_size=1024, extensions=extensions)[1]
    assert events == [BinaryMessage(b"a" * 1024)]


@pytest.fixture(scope="module")
def gigabyte_bomb() -> bytes:
    """1 GiB of zeros, deflated (about 1 MiB), built without ever holding the GiB.

    A full flush resets the compressor, so every 1 MiB block of zeros
    deflates to the same bytes: compress one, repeat it 1024 times.
    """
    compressor = zlib.compressobj(level=9, wbits=-15, strategy=zlib.Z_RLE)
    block = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert zlib.decompressobj(wbits=-15).decompress(block * 2) == bytes(2**21)
    return block * 1024


@pytest.mark.parametrize("chunk_size", [None, 65536])
def test_decompression_bomb_of_1_gib_fails_1009_without_inflating(gigabyte_bomb: bytes, chunk_size: int | None) -> None:
    _, extensions = negotiate(b"permessage-deflate")
    conn = server_connection(max_size=16 * 2**20, extensions=extensions)
    frame = client_frame(Opcode.BINARY, gigabyte_bomb, rsv=RSV1)
    chunks = [frame] if chunk_size is None else [frame[i : i + chunk_size] for i in range(0, len(frame), chunk_size)]
    tracemalloc.start()
    events = []
    try:
        for chunk in chunks:
            events += conn.receive_data(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(e) for e in events] == [ProtocolFailure] and events[0].code == 1009
    assert peak < 3 * 16 * 2**20 + 2 * len(frame)


def test_two_extensions_claiming_rsv1_only_first_is_accepted() -> None:
    response, extensions = negotiate_extensions([b"permessage-deflate"],
                                                [deflate_factory(), deflate_factory()])
    assert response == b"permessage-deflate; server_max_window_bits=12"
    assert len(extensions) == 1


def test_compressed_frame_over_max_size_on_the_wire_fails_1009_from_header_alone() -> None:
    _, extensions = negotiate(b"permessage-deflate")
    conn = server_connection(max_size=1024, extensions=extensions)
    header_only = client_frame(Opcode.BINARY, b"", rsv=RSV1, length=2000)[:8]
    (failure,) = conn.receive_data(header_only)
    assert failure.code == 1009


def test_server_max_window_bits_8_is_run_as_9_and_inflates_with_9() -> None:
    response, (extension,) = negotiate(b"permessage-deflate; server_max_window_bits=8", min_size=0)
    assert response_params(response)["server_max_window_bits"] == "8"
    conn = server_connection(extensions=[extension])
    message = bytes(range(256)) * 8
    conn.send_binary(message)
    ((_, _, rsv, body),) = parse_server_frames(conn.data_to_send())
    assert rsv == RSV1
    assert zlib.decompressobj(wbits=-9).decompress(body + TAIL) == message
