"""parse_messages: whole unfragmented messages in one call, C and pure-Python twins.

Each twin must take exactly the frames it may take (FIN, no RSV, TEXT or
BINARY, masked, within max_size, whole, valid UTF-8) and stop at the first
other frame, leaving it (and its error, if any) to the full parser.
"""

from __future__ import annotations

import collections
import gc
import os
import sys
import tracemalloc
import weakref

import pytest

from asgiws.websocket import (
    BinaryMessage,
    CloseReceived,
    Opcode,
    Pong,
    ProtocolFailure,
    ServerConnection,
    TextMessage,
    fastpath,
)
from tests.websocket.codec_helpers import MASK, client_frame, feed, feed_every_way, server_connection
from tests.wire import RSV1

IMPLEMENTATIONS = [pytest.param(fastpath.py_parse_messages, id="python")]
try:
    from asgiws.websocket._speedups import parse_messages as c_parse_messages

    IMPLEMENTATIONS.append(pytest.param(c_parse_messages, id="c"))
except ImportError:  # the test env must build it: fail loudly below
    c_parse_messages = None


def test_c_parse_messages_is_built_and_used() -> None:
    assert c_parse_messages is not None, "build with `pip install -e .`"
    assert fastpath.parse_messages is c_parse_messages


def run(parse_messages, data: bytes, pos: int = 0, max_size: int = 2**20) -> tuple[int, list[object]]:
    events: list[object] = []
    return parse_messages(data, pos, events, max_size, TextMessage, BinaryMessage), events


TAKEN = [
    (client_frame(Opcode.TEXT, b""), TextMessage("")),
    (client_frame(Opcode.TEXT, "héllo wörld €𝄞".encode()), TextMessage("héllo wörld €𝄞")),
    (client_frame(Opcode.BINARY, b"\x00\xff" * 62 + b"x"), BinaryMessage(b"\x00\xff" * 62 + b"x")),
    (client_frame(Opcode.TEXT, b"a" * 126), TextMessage("a" * 126)),
    (client_frame(Opcode.TEXT, "é".encode() * 600), TextMessage("é" * 600)),  # over the C stack buffer
    (client_frame(Opcode.BINARY, b"b" * 65535), BinaryMessage(b"b" * 65535)),
    (client_frame(Opcode.BINARY, b"c" * 65536), BinaryMessage(b"c" * 65536)),
    (client_frame(Opcode.TEXT, b"z" * 70000), TextMessage("z" * 70000)),
]

# Frames parse_messages must leave to the full parser.
LEFT = {
    "ping": client_frame(Opcode.PING, b"p"),
    "close": client_frame(Opcode.CLOSE, b"\x03\xe8"),
    "first fragment": client_frame(Opcode.TEXT, b"ab", fin=False),
    "continuation": client_frame(Opcode.CONTINUATION, b"ab"),
    "rsv1": client_frame(Opcode.TEXT, b"ab", rsv=RSV1),
    "reserved opcode": client_frame(0x3, b"ab"),
    "unmasked": client_frame(Opcode.TEXT, b"ab", masked=False),
    "invalid utf-8": client_frame(Opcode.TEXT, b"ok\xff"),
    "surrogate": client_frame(Opcode.TEXT, b"\xed\xa0\x80"),
    "overlong": client_frame(Opcode.TEXT, b"\xc0\xaf"),
    "truncated utf-8": client_frame(Opcode.TEXT, "€".encode()[:2]),
}


@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
def test_takes_every_whole_message_frame_in_a_read(parse_messages) -> None:
    data = b"".join(frame for frame, _ in TAKEN)
    assert run(parse_messages, data) == (len(data), [event for _, event in TAKEN])


@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", sorted(LEFT))
def test_stops_at_the_first_frame_it_may_not_take(parse_messages, name: str) -> None:
    head = client_frame(Opcode.TEXT, b"before") + client_frame(Opcode.BINARY, b"\x01")
    tail = client_frame(Opcode.TEXT, b"after")
    data = head + LEFT[name] + tail
    assert run(parse_messages, data) == (len(head), [TextMessage("before"), BinaryMessage(b"\x01")])
    assert run(parse_messages, data, pos=len(head)) == (len(head), [])


# Frames not all there yet: left to the full parser, which streams the payload.
CUT = {
    "cut payload": client_frame(Opcode.BINARY, b"abcdef")[:-1],
    "cut 16-bit header": client_frame(Opcode.BINARY, b"a" * 200)[:5],
    "cut 64-bit header": client_frame(Opcode.BINARY, b"a" * 70000)[:9],
    "cut mask": client_frame(Opcode.TEXT, b"a")[:5],
    "one byte": b"\x81",
}


@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", sorted(CUT))
def test_stops_at_a_frame_cut_by_the_end_of_the_read(parse_messages, name: str) -> None:
    head = client_frame(Opcode.TEXT, b"before")
    assert run(parse_messages, head + CUT[name]) == (len(head), [TextMessage("before")])


@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
def test_max_size_is_checked_from_the_header(parse_messages) -> None:
    frame = client_frame(Opcode.BINARY, b"x" * 100)
    assert run(parse_messages, frame, max_size=100) == (len(frame), [BinaryMessage(b"x" * 100)])
    assert run(parse_messages, frame, max_size=99) == (0, [])
    assert run(parse_messages, frame, max_size=-1) == (0, [])
    assert run(parse_messages, frame, max_size=2**70) == (len(frame), [BinaryMessage(b"x" * 100)])
    declared_huge = client_frame(Opcode.BINARY, b"", length=2**40)
    assert run(parse_messages, declared_huge, max_size=2**64) == (0, [])


@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
def test_random_payloads_at_every_start_offset(parse_messages) -> None:
    sizes = (0, 1, 3, 7, 8, 9, 125, 300)
    frames = [client_frame(Opcode.BINARY, os.urandom(n), mask=os.urandom(4)) for n in sizes]
    data = b"".join(frames)
    offset = 0
    for index, frame in enumerate(frames):
        pos, events = run(parse_messages, data, pos=offset)
        assert pos == len(data)
        assert len(events) == len(frames) - index
        offset += len(frame)


@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
def test_rejects_bad_arguments(parse_messages) -> None:
    with pytest.raises(ValueError):
        run(parse_messages, b"\x81\x80" + MASK, pos=7)
    with pytest.raises(ValueError):
        run(parse_messages, b"", pos=-1)


def full_parse(data: bytes, **kwargs: object) -> list[object]:
    """Events from a codec that takes no fast path (a trace is set), whole and split."""
    return feed_every_way(data, trace=lambda *args: None, **kwargs)


@pytest.mark.parametrize("name", sorted(LEFT))
def test_codec_gives_the_events_of_the_full_parser_whichever_twin(name: str) -> None:
    # Messages before the frame first, then what the full parser makes of
    # it (an error, a fragment, a close...), split at every offset too.
    data = client_frame(Opcode.TEXT, b"before") + LEFT[name] + client_frame(Opcode.TEXT, b"after")
    events = feed_every_way(data, max_size=2**64)
    assert events == full_parse(data, max_size=2**64)
    assert events[0] == TextMessage("before")


@pytest.mark.parametrize("name", ["invalid utf-8", "surrogate", "overlong", "truncated utf-8"])
def test_codec_fails_1007_on_invalid_utf8_in_a_whole_frame_whichever_twin(name: str) -> None:
    data = client_frame(Opcode.TEXT, b"before") + LEFT[name] + client_frame(Opcode.TEXT, b"after")
    assert feed(data)[1] == [TextMessage("before"), ProtocolFailure(1007, "invalid UTF-8 in text message")]


def test_codec_takes_small_frames_split_at_every_offset_whichever_twin() -> None:
    data = (client_frame(Opcode.TEXT, "ünïcode".encode()) + client_frame(Opcode.PING, b"x")
            + client_frame(Opcode.BINARY, b"\x00" * 130) + client_frame(Opcode.PONG, b"y"))
    assert feed_every_way(data) == [TextMessage("ünïcode"), BinaryMessage(b"\x00" * 130), Pong(b"y")]


def test_codec_fails_1009_on_an_oversized_whole_frame_whichever_twin() -> None:
    data = client_frame(Opcode.TEXT, b"ok") + client_frame(Opcode.BINARY, b"x" * 2000)
    events = feed(data, max_size=1024)[1]
    assert events == [TextMessage("ok"), ProtocolFailure(1009, "message over 1024 bytes")]


def test_codec_with_trace_parses_frames_in_full() -> None:
    seen = []
    conn = server_connection(trace=lambda *args: seen.append(args))
    data = client_frame(Opcode.TEXT, b"a") + client_frame(Opcode.BINARY, b"b")
    assert conn.receive_data(data) == [TextMessage("a"), BinaryMessage(b"b")]
    assert [args[1] for args in seen] == [Opcode.TEXT, Opcode.BINARY]


def test_the_codec_runs_on_the_twin_its_parameter_names(speedups: str) -> None:
    # The conftest's swap reaches the codec: a 300 KB frame is read in place by
    # PayloadBuffer, a small one by parse_messages, each from the named twin.
    from asgiws.websocket import connection, mask

    python = speedups == "python"
    assert (connection.PayloadBuffer is mask.PyPayloadBuffer) is python
    assert (connection.parse_messages is fastpath.py_parse_messages) is python
    assert (fastpath.apply_mask is mask.py_apply_mask) is python
    assert feed(client_frame(Opcode.BINARY, b"x" * 300_000))[1] == [BinaryMessage(b"x" * 300_000)]


# -- the app's messages built in the codec, and the small text frame out --------------------------------

try:
    from asgiws.websocket import _speedups
except ImportError:  # test_c_parse_messages_is_built_and_used fails loudly
    _speedups = None  # type: ignore[assignment]
BUILDERS = [pytest.param((fastpath.py_receive_text, fastpath.py_receive_bytes, fastpath.py_small_text_frame),
                         id="python")]
if _speedups is not None:
    BUILDERS.append(pytest.param(
        (_speedups.receive_text, _speedups.receive_bytes, _speedups.small_text_frame), id="c"))


def test_c_builders_are_built_and_used() -> None:
    assert _speedups is not None, "build with `pip install -e .`"
    assert fastpath.receive_text is _speedups.receive_text
    assert fastpath.receive_bytes is _speedups.receive_bytes
    assert fastpath.small_text_frame is _speedups.small_text_frame


@pytest.mark.parametrize("builders", BUILDERS)
def test_builders_make_the_asgi_receive_message(builders) -> None:
    receive_text, receive_bytes, _ = builders
    assert receive_text("héllo") == {"type": "websocket.receive", "text": "héllo"}
    assert receive_bytes(b"\x00\xff") == {"type": "websocket.receive", "bytes": b"\x00\xff"}
    first, second = receive_text("a"), receive_text("a")
    assert first is not second  # a fresh dict each: the app may keep or change it
    first["text"] = "changed"
    assert second == {"type": "websocket.receive", "text": "a"}


SMALL_TEXTS = ["", "x", "x" * 64, "x" * 125, "é" * 62, "€" * 41, "𝄞" * 31]
TOO_BIG_TEXTS = ["x" * 126, "é" * 63, "€" * 42, "𝄞" * 32, "x" * 100_000]


@pytest.mark.parametrize("builders", BUILDERS)
def test_small_text_frame_is_the_unmasked_fin_text_frame(builders) -> None:
    small_text_frame = builders[2]
    for text in SMALL_TEXTS:
        payload = text.encode()
        assert small_text_frame(text) == bytes((0x81, len(payload))) + payload, text[:3]
    for text in TOO_BIG_TEXTS:
        assert small_text_frame(text) is None, len(text.encode())
    with pytest.raises(UnicodeEncodeError):
        small_text_frame("lone \ud800 surrogate")


@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
@pytest.mark.parametrize("builders", BUILDERS)
def test_parse_messages_appends_built_messages_to_a_deque(parse_messages, builders) -> None:
    from collections import deque

    receive_text, receive_bytes, _ = builders
    queue: deque[object] = deque([{"type": "websocket.connect"}])
    data = client_frame(Opcode.TEXT, b"one") + client_frame(Opcode.BINARY, b"\x02") + LEFT["ping"]
    assert parse_messages(data, 0, queue, 2**20, receive_text, receive_bytes) == len(data) - len(LEFT["ping"])
    assert list(queue) == [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "one"},
        {"type": "websocket.receive", "bytes": b"\x02"},
    ]
    with pytest.raises(AttributeError):
        parse_messages(data, 0, object(), 2**20, receive_text, receive_bytes)


def test_codec_puts_messages_in_the_callers_queue_and_returns_the_rest_whichever_twin() -> None:
    # Every way a message completes (the fast path, a fragmented message, a
    # frame cut across reads) lands in the queue, built by the caller's
    # message types; pongs and the close come back as events, in order.
    from collections import deque

    conn = ServerConnection(max_size=2**20, text_message=fastpath.receive_text,
                            binary_message=fastpath.receive_bytes)
    queue: deque[object] = deque()
    whole = client_frame(Opcode.TEXT, b"whole") + client_frame(Opcode.PONG, b"p")
    fragments = client_frame(Opcode.TEXT, b"frag", fin=False) + client_frame(Opcode.CONTINUATION, b"ments")
    cut = client_frame(Opcode.BINARY, b"c" * 300)
    close = client_frame(Opcode.CLOSE, b"\x03\xe8")
    assert conn.receive_data(whole + fragments + cut[:100], queue) == [Pong(b"p")]
    assert conn.receive_data(cut[100:] + close, queue) == [CloseReceived(1000, "")]
    assert list(queue) == [
        {"type": "websocket.receive", "text": "whole"},
        {"type": "websocket.receive", "text": "fragments"},
        {"type": "websocket.receive", "bytes": b"c" * 300},
    ]
    # Without a queue the messages are events among the others, in order.
    plain = ServerConnection(max_size=2**20)
    assert plain.receive_data(whole + close) == [TextMessage("whole"), Pong(b"p"), CloseReceived(1000, "")]


def test_codec_frames_a_small_text_message_in_one_chunk_whichever_twin(speedups: str) -> None:
    from asgiws.websocket import connection

    assert (connection.small_text_frame is fastpath.py_small_text_frame) is (speedups == "python")
    conn = server_connection()
    assert conn.text_frame("hi") == b"\x81\x02hi"
    assert conn.text_frame("é" * 63) is None  # 126 bytes: framed in full by send_text
    conn.send_close(1000, "")
    assert conn.text_frame("hi") is None  # 5.5.1: no data frame after our close


# -- the tally: the frames the fast paths take are counted in C, without a Python statement each ----

TALLIED = [pytest.param(fastpath.py_parse_messages, fastpath.PyTally, fastpath.py_small_text_frame, id="python")]
if c_parse_messages is not None:
    TALLIED.append(pytest.param(c_parse_messages, _speedups.Tally, _speedups.small_text_frame, id="c"))


@pytest.mark.parametrize(("parse_messages", "tally_type", "small_text_frame"), TALLIED)
def test_parse_messages_counts_the_frames_it_takes_and_no_other(parse_messages, tally_type,
                                                                small_text_frame) -> None:
    taken = b"".join(frame for frame, _ in TAKEN)
    data = client_frame(Opcode.PING, b"p") + taken  # parse_messages stops at the ping: nothing counted
    tally = tally_type()
    assert parse_messages(data, 0, [], 2**20, TextMessage, BinaryMessage, tally) == 0
    assert (tally.messages_received, tally.bytes_received) == (0, 0)
    start = len(client_frame(Opcode.PING, b"p"))
    data += LEFT["ping"]
    assert parse_messages(data, start, [], 2**20, TextMessage, BinaryMessage, tally) == start + len(taken)
    assert (tally.messages_received, tally.bytes_received) == (len(TAKEN), len(taken))
    assert parse_messages(data, 0, [], 2**20, TextMessage, BinaryMessage, None) == 0  # None: not counted


@pytest.mark.parametrize(("parse_messages", "tally_type", "small_text_frame"), TALLIED)
def test_parse_messages_counts_what_it_appended_when_the_sink_fails(parse_messages, tally_type,
                                                                    small_text_frame) -> None:
    class FullSink:
        def __init__(self) -> None:
            self.items: list[object] = []

        def append(self, item: object) -> None:
            if len(self.items) == 2:
                raise OverflowError("full")
            self.items.append(item)

    frame = client_frame(Opcode.TEXT, b"abc")
    tally = tally_type()
    with pytest.raises(OverflowError):
        parse_messages(frame * 3, 0, FullSink(), 2**20, TextMessage, BinaryMessage, tally)
    assert (tally.messages_received, tally.bytes_received) == (2, 2 * len(frame))


@pytest.mark.parametrize(("parse_messages", "tally_type", "small_text_frame"), TALLIED)
def test_small_text_frame_counts_each_frame_it_makes(parse_messages, tally_type, small_text_frame) -> None:
    tally = tally_type()
    frames = [small_text_frame(text, tally) for text in SMALL_TEXTS]
    assert (tally.messages_sent, tally.bytes_sent) == (len(SMALL_TEXTS), sum(map(len, frames)))
    for text in TOO_BIG_TEXTS:
        assert small_text_frame(text, tally) is None
    assert (tally.messages_sent, tally.bytes_sent) == (len(SMALL_TEXTS), sum(map(len, frames)))


def test_the_c_helpers_take_only_their_own_tally() -> None:
    assert c_parse_messages is not None, "build with `pip install -e .`"
    with pytest.raises(TypeError, match="tally"):
        c_parse_messages(b"", 0, [], 10, TextMessage, BinaryMessage, fastpath.PyTally())
    with pytest.raises(TypeError, match="tally"):
        _speedups.small_text_frame("x", object())
    tally = _speedups.Tally()
    tally.bytes_sent += 2**40  # 64-bit: a long-lived connection's byte count does not wrap at 2**31
    assert tally.bytes_sent == 2**40


# -- MessageQueue: the session's queue for the app, collections.deque's interface in far less memory ---

QUEUES = [pytest.param(collections.deque, id="deque")]
if c_parse_messages is not None:
    QUEUES.append(pytest.param(_speedups.MessageQueue, id="c"))


def test_message_queue_is_the_c_helpers_when_built() -> None:
    assert fastpath.MessageQueue is _speedups.MessageQueue


@pytest.mark.parametrize("queue_type", QUEUES)
def test_message_queue_is_first_in_first_out_as_a_deque(queue_type) -> None:
    queue = queue_type([{"type": "websocket.connect"}])
    assert len(queue) == 1 and queue and queue[0] == {"type": "websocket.connect"}
    assert queue.popleft() == {"type": "websocket.connect"}
    assert len(queue) == 0 and not queue and list(queue) == []
    with pytest.raises(IndexError):
        queue.popleft()
    with pytest.raises(IndexError):
        queue[0]
    # Interleaved appends and pops, past every growth and every move to the front.
    expected: collections.deque[int] = collections.deque()
    for step in range(2000):
        for n in range(step % 7):
            queue.append(step * 10 + n)
            expected.append(step * 10 + n)
        for _ in range(step % 5):
            if expected:
                assert queue.popleft() == expected.popleft()
        assert len(queue) == len(expected) and list(queue) == list(expected)
        if expected:
            assert queue[0] == expected[0] and queue[-1] == expected[-1]
    queue.clear()
    assert len(queue) == 0 and not queue
    queue.append(1)
    assert queue.popleft() == 1


@pytest.mark.parametrize("queue_type", QUEUES)
def test_message_queue_holds_references_and_lets_cycles_be_collected(queue_type) -> None:
    class Message(dict):
        pass

    message = Message(type="websocket.receive")
    alive = weakref.ref(message)
    queue = queue_type()
    queue.append(message)
    del message
    assert alive() is not None
    assert queue.popleft() is alive()  # the reference passes to the caller
    gc.collect()
    assert alive() is None
    cycle = queue_type()
    cycle.append(cycle)  # a queue holding itself, and a message only the cycle keeps
    cycle.append(Message(type="websocket.receive"))
    alive = weakref.ref(cycle[1])
    del cycle
    gc.collect()
    assert alive() is None


def test_c_message_queue_is_small_and_gives_a_burst_back() -> None:
    # An empty deque is 760 bytes; an idle connection's queue is most of the time empty.
    assert sys.getsizeof(_speedups.MessageQueue()) <= 64 < sys.getsizeof(collections.deque()) // 10
    tracemalloc.start()
    try:
        queue = _speedups.MessageQueue()
        queue.append(0)
        queue.popleft()
        before = tracemalloc.get_traced_memory()[0]
        message = {"type": "websocket.receive", "text": ""}
        for _ in range(43_000):  # a 256 KiB read of empty frames
            queue.append(message)
        burst = tracemalloc.get_traced_memory()[0]
        while queue:
            queue.popleft()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The array held a pointer for each (336 KiB), and went back once the queue emptied; the
    # margin is for what other threads of the test process allocate meanwhile (xdist's).
    assert burst - before > 43_000 * 8
    assert after - before < 16 * 1024


@pytest.mark.parametrize("queue_type", QUEUES)
@pytest.mark.parametrize("parse_messages", IMPLEMENTATIONS)
def test_parse_messages_appends_to_the_session_queue(parse_messages, queue_type) -> None:
    taken = b"".join(frame for frame, _ in TAKEN)
    queue = queue_type(["earlier"])
    into_list: list[object] = []
    assert parse_messages(taken, 0, queue, 2**20, TextMessage, BinaryMessage) == len(taken)
    assert parse_messages(taken, 0, into_list, 2**20, TextMessage, BinaryMessage) == len(taken)
    assert list(queue) == ["earlier", *into_list] and into_list == [message for _, message in TAKEN]
