"""The server side of a WebSocket connection, sans I/O (RFC 6455 5-7).

Bytes in (`receive_data`), events out; method calls in (`send_*`), bytes out
(`data_to_send`). Completed data messages are built by the caller's message
types (`TextMessage` and `BinaryMessage` unless told otherwise), and go to the
caller's queue when `receive_data` is given one. Peer errors never raise: they become one `ProtocolFailure`
event carrying the close code, after which input is ignored. The codec never
sends a close frame by itself: the caller decides when (after delivering the
messages that came before the error).
"""

from __future__ import annotations

import codecs
import functools
import struct
from collections.abc import Callable, Iterator
from typing import Any

from asgiws.websocket.events import BinaryMessage, CloseReceived, Event, Pong, ProtocolFailure, TextMessage
from asgiws.websocket.extensions import Extension
from asgiws.websocket.fastpath import Sink, Tally, TallyLike, parse_messages, small_text_frame
from asgiws.websocket.frames import (
    MAX_CONTROL_PAYLOAD,
    CloseCode,
    ConnectionClosedError,
    Opcode,
    ProtocolError,
    close_payload,
    frame_header,
    is_valid_close_code,
)
from asgiws.websocket.mask import PayloadBuffer, PayloadBufferLike, apply_mask, apply_mask_chunks

__all__ = ["ServerConnection", "Trace"]

# trace(direction "<" in / ">" out, opcode, fin, rsv bits, masked, payload length)
Trace = Callable[[str, Opcode, bool, int, bool, int], None]

# Payloads up to this size are joined to their header in one chunk; larger
# ones are returned as a separate chunk rather than copied.
_JOIN_LIMIT = 4096

# Undecoded binary frames from this size on are read straight into the bytes
# object the app will get (payload_buffer). Below it, the reads are kept and
# unmasked together at the end of the frame: a few reads at most.
_DIRECT_READ_MIN = 64 * 1024
# The last bytes of such a frame come through receive_data, copied: by then
# no reader holds a view of the payload, so its bytes object can be handed
# out as it is (PayloadBuffer.finish copies while a view is exported).
_DIRECT_TAIL = 4096

_OPCODES: dict[int, Opcode] = {int(op): op for op in Opcode}
# A final pong frame's first byte: FIN, no RSV bits, opcode 0xA.
_LONE_PONG = 0x80 | Opcode.PONG
# Enum members as module globals: Opcode.TEXT is a class attribute lookup
# through the enum machinery (~85 ns on CPython 3.11), a global is ~10 ns.
_CONTINUATION = Opcode.CONTINUATION
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_pack_small_header = struct.Struct("!BB").pack
_new_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _failure_for(opcode: int, fin: bool, rsv: int, length_code: int, allowed_rsv: int) -> str | None:
    """Why a frame's first two bytes are a protocol error (5.2, 5.5), or None."""
    if opcode not in _OPCODES:
        return f"reserved opcode {opcode:#x}"
    if opcode >= 0x8:
        if not fin:
            return "fragmented control frame"  # 5.5: "Control frames MUST NOT be fragmented"
        if length_code > MAX_CONTROL_PAYLOAD:
            return "control frame payload over 125 bytes"
        if rsv:
            return "RSV bits set on a control frame"
    elif rsv & ~allowed_rsv:
        # 5.2: "If a nonzero value is received and none of the negotiated
        # extensions defines the meaning of such a nonzero value, the
        # receiving endpoint MUST _Fail the WebSocket Connection_."
        return "RSV bits not claimed by an extension"
    return None


@functools.cache  # one table per set of RSV bits (at most 8), shared by every connection
def _first_byte_table(allowed_rsv: int) -> bytes:
    """For each first header byte: 1 if it can start a valid frame (5.2), else 0.

    One index per frame instead of the checks in _failure_for; the control
    frame length limit depends on the second byte and is checked apart.
    """
    return bytes(
        _failure_for(b0 & 0x0F, b0 & 0x80 != 0, b0 & 0x70, 0, allowed_rsv) is None for b0 in range(256)
    )


class ServerConnection:
    """One server-side WebSocket connection after a successful handshake.

    `max_size`: largest incoming message in bytes (after decompression), the
    config's ws_max_size (no default here: the config holds it, once);
    `extensions`: negotiated `Extension` objects; `trace`: called once per
    frame each way, or None; `text_message(str)` and `binary_message(bytes)`:
    what a completed message becomes (the ASGI session passes builders of its
    `websocket.receive` message, fastpath.receive_text and receive_bytes).
    """

    # One per open WebSocket: slots, not a __dict__. With 30 attributes the instance dict no longer
    # shares its keys (CPython 3.11 shares at most 30), and each codec carried its own 800-byte
    # table: 1.45 KiB more per idle connection in the memory benchmark when `tally` was added.
    __slots__ = (
        "_allowed_rsv", "_binary_message", "_buffer", "_direct", "_direct_filled", "_direct_view", "_done",
        "_frame_chunks", "_frame_deferred", "_frame_fin", "_frame_mask", "_frame_offset", "_frame_remaining",
        "_message_extensions", "_message_opcode", "_message_parts", "_message_size", "_message_wire_size",
        "_out", "_text_message", "_utf8", "_valid_first_byte", "_whole_messages", "close_received",
        "close_sent", "extensions", "max_size", "payload_pending", "tally", "trace",
    )

    def __init__(self, *, max_size: int, extensions: list[Extension] | None = None,
                 trace: Trace | None = None, text_message: Callable[[str], Any] = TextMessage,
                 binary_message: Callable[[bytes], Any] = BinaryMessage,
                 tally: TallyLike | None = None) -> None:
        self.max_size = max_size
        # Messages and bytes each way (the caller's, to read them after this codec is gone). Bytes
        # count when their frame is parsed: a frame cut by the end of the connection counts at EOF.
        self.tally = Tally() if tally is None else tally
        self._text_message = text_message
        self._binary_message = binary_message
        self.extensions = list(extensions or ())
        self.trace = trace
        self.close_sent = False
        self.close_received = False
        self._allowed_rsv = 0
        for extension in self.extensions:
            self._allowed_rsv |= extension.rsv_mask
        self._valid_first_byte = _first_byte_table(self._allowed_rsv)
        # Extensions that may decode a message with no RSV bit set (see
        # Extension.begin_message); while there are none, such a message
        # can take the fast path in _parse.
        rsv0_decoders = any(not extension.rsv_mask for extension in self.extensions)
        # parse_messages may take whole messages: nothing to trace, and no
        # extension that could decode a message without an RSV bit.
        self._whole_messages = trace is None and not rsv0_decoders
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._done = False  # no more input parsed (close received, or failure)
        # The data frame whose payload is being read (streamed as it arrives).
        self._frame_remaining = 0
        self._frame_mask = b""
        self._frame_offset = 0  # bytes of this frame's payload already unmasked
        self._frame_fin = False
        self._frame_deferred = False  # payload kept masked until the frame ends
        self._frame_chunks: list[bytes | memoryview] = []  # that payload, as it arrived
        # A large binary frame read in place (see payload_buffer), and how much of it arrived.
        self._direct: PayloadBufferLike | None = None
        self._direct_view: memoryview | None = None
        self._direct_filled = 0
        # True while the next bytes read can go to payload_buffer().
        self.payload_pending = False
        # The data message being assembled (None: between messages).
        self._message_opcode: Opcode | None = None
        self._message_parts: list[Any] = []
        self._message_size = 0  # bytes after decoding
        self._message_wire_size = 0  # bytes as received
        self._message_extensions: list[Extension] = []
        self._utf8: codecs.IncrementalDecoder | None = None

    # -- input -----------------------------------------------------------------

    def receive_data(self, data: bytes, messages: Sink | None = None) -> list[Any]:
        """Parse `data`; return the events it completed, in order (maybe []).

        With `messages` (a list, or the session's MessageQueue), completed data messages are
        appended to it instead, and the events returned are the rest (pongs,
        then at most one close or failure, always after every message of this
        read); without it, the messages are among the events, in order.
        """
        if self._done:
            self.tally.bytes_received += len(data)
            return []
        events: list[Any] = []
        if messages is None:
            messages = events
        buffer = self._buffer
        if buffer:
            # A header (or control frame) cut by the previous read: at most
            # 131 bytes wait here, since data payloads are taken as they come;
            # one copy of the read, and the bytearray itself never grows.
            data = bytes(buffer) + data
            buffer.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        pos = 0
        if self._whole_messages and self._message_opcode is None and not self._frame_remaining:
            # The common read, whole messages and nothing else, in one call (see _parse).
            pos = parse_messages(data, 0, messages, self.max_size, self._text_message, self._binary_message,
                                 self.tally)  # counts the frames it takes
            if pos == len(data):
                return events
        # The other common read: the pong to our heartbeat ping, whole and alone (what an
        # idle connection sends), taken without the general parse.
        lone_pong = len(data) - pos >= 6 and data[pos] == _LONE_PONG
        if lone_pong and not self._frame_remaining and self.trace is None:
            length = data[pos + 1] ^ 0x80  # the payload's length when masked, else 128 and up
            if length <= MAX_CONTROL_PAYLOAD and len(data) - pos == 6 + length:
                events.append(Pong(apply_mask(data[pos + 6 :], data[pos + 2 : pos + 6])))
                self.tally.bytes_received += 6 + length
                return events
        # The bytes from `pos` on are counted here, by assignment: parse_messages, called again by
        # _parse for whole messages between other frames, counts its frames' bytes as well.
        tally = self.tally
        counted = tally.bytes_received
        try:
            consumed = self._parse(data, pos, events, messages)
        except ProtocolError as exc:
            tally.bytes_received = counted + len(data) - pos
            self._fail(exc, events)
            return events
        if consumed < len(data) and not self._done:
            buffer += memoryview(data)[consumed:]
            tally.bytes_received = counted + consumed - pos  # the cut frame counts when it is parsed
        else:
            tally.bytes_received = counted + len(data) - pos
        return events

    def payload_buffer(self) -> memoryview | None:
        """Where the next read should go while `payload_pending`, else None.

        A writable view of payload bytes the current (large, binary) frame
        still expects, inside the bytes object the message will be: the caller
        reads into it (e.g. asyncio.BufferedProtocol.get_buffer), reports with
        `payload_received`, and drops the view. The frame's last few KiB and
        anything after it go to `receive_data` (`payload_pending` turns
        False), so no message is completed while a view is in use.
        """
        if not self.payload_pending:
            return None
        assert self._direct_view is not None
        start = self._direct_filled
        return self._direct_view[start : start + self._frame_remaining - _DIRECT_TAIL]

    def payload_received(self, nbytes: int) -> None:
        """`nbytes` (at most the length of the view) were read into `payload_buffer()`."""
        if not self.payload_pending:
            return
        direct = self._direct
        assert direct is not None
        if not 0 <= nbytes <= self._frame_remaining - _DIRECT_TAIL:
            raise ValueError(f"{nbytes} bytes cannot have been read into the payload buffer")
        start = self._direct_filled
        end = self._direct_filled = start + nbytes
        self.tally.bytes_received += nbytes
        direct.unmask(start, end, self._frame_mask)
        self._frame_remaining -= nbytes
        self.payload_pending = self._frame_remaining > _DIRECT_TAIL

    def _fail(self, exc: ProtocolError, events: list[Event]) -> None:
        self._done = True
        self._buffer.clear()
        self._frame_chunks = []
        self._drop_direct()
        events.append(ProtocolFailure(exc.code, exc.reason))

    def _drop_direct(self) -> None:
        if self._direct_view is not None:
            self._direct_view.release()
        self._direct = self._direct_view = None
        self.payload_pending = False

    def _finish_direct(self) -> bytes:
        direct = self._direct
        assert direct is not None
        self._drop_direct()
        return direct.finish()

    def receive_eof(self) -> list[Event]:
        """The peer closed TCP; nothing more is parsed. The caller reports 1006 if no close came."""
        self._done = True
        self.tally.bytes_received += len(self._buffer)  # a frame the peer cut short
        self._buffer.clear()
        self._frame_chunks = []
        self._drop_direct()
        return []

    def _parse(self, data: bytes, pos: int, events: list[Any], messages: Sink) -> int:
        """Parse whole frames and partial data payloads from `data[pos:]`; return the offset reached.

        Control events go to `events`, completed data messages to `messages`.

        One loop over the frame kinds (header, control frame, data payload), hence the length.
        """
        end = len(data)
        # Whole unfragmented, undecoded messages (5.4: a frame with FIN and a
        # nonzero opcode is a message of its own) are taken by parse_messages,
        # many per call; any other frame, and any error, is parsed below.
        # receive_data has already run it up to where this call starts.
        first = pos
        whole_messages = self._whole_messages
        while not self._done:
            if whole_messages and pos != first and self._message_opcode is None and not self._frame_remaining:
                pos = parse_messages(data, pos, messages, self.max_size, self._text_message,
                                     self._binary_message, self.tally)
            if self._frame_remaining:
                take = min(self._frame_remaining, end - pos)
                if not take:
                    break
                if take == end:
                    chunk: bytes | memoryview = data  # the whole read is payload: no copy
                elif take > _JOIN_LIMIT:
                    chunk = memoryview(data)[pos : pos + take]
                else:
                    chunk = data[pos : pos + take]
                pos += take
                self._payload(chunk, messages)
                continue
            if end - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            fin = b0 & 0x80 != 0
            rsv = b0 & 0x70
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if not self._valid_first_byte[b0] or (opcode >= 0x8 and length > MAX_CONTROL_PAYLOAD):
                problem = _failure_for(opcode, fin, rsv, length, self._allowed_rsv)
                assert problem is not None
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, problem)
            if not b1 & 0x80:
                # 5.1: "The server MUST close the connection upon receiving a
                # frame that is not masked."
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unmasked client frame")
            header_size = 6
            if length == 126:
                header_size = 8
                if end - pos < header_size:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif length == 127:
                header_size = 14
                if end - pos < header_size:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "64-bit length with the top bit set")
            elif end - pos < header_size:
                break
            if opcode >= 0x8:
                if end - pos < header_size + length:
                    break  # control frames are at most 131 bytes: wait for all of it
                mask = data[pos + header_size - 4 : pos + header_size]
                start = pos + header_size
                pos = start + length
                if self.trace is not None:
                    self.trace("<", _OPCODES[opcode], fin, rsv, True, length)
                self._control(opcode, apply_mask(data[start:pos], mask), events)
                continue
            self._start_data_frame(opcode, fin, rsv, length)
            mask = data[pos + header_size - 4 : pos + header_size]
            pos += header_size
            if self.trace is not None:
                self.trace("<", _OPCODES[opcode], fin, rsv, True, length)
            self._frame_remaining = length
            self._frame_mask = mask
            self._frame_offset = 0
            self._frame_fin = fin
            # Undecoded binary payloads are kept as they arrive (views of the
            # reads, no copy) and unmasked once, whole, when the frame ends.
            # Text is unmasked as it comes, for its UTF-8 check; decoded
            # (compressed) data too, to bound its decompression.
            self._frame_deferred = self._utf8 is None and not self._message_extensions
            if self._frame_deferred and length >= _DIRECT_READ_MIN:
                direct = self._direct = PayloadBuffer(length)
                self._direct_view = direct.view()
                self._direct_filled = 0
            if not length:
                self._payload(b"", messages)
        return pos

    def _start_data_frame(self, opcode: int, fin: bool, rsv: int, length: int) -> None:
        """Check a data frame header against the message in progress and the size budget."""
        if opcode == _CONTINUATION:
            if self._message_opcode is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
            if rsv:
                # RFC 7692 6.1: RSV1 is set only on the first frame of a message.
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV bits set on a continuation frame")
        else:
            if self._message_opcode is not None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new data frame inside a fragmented message")
            self._message_opcode = _OPCODES[opcode]
            self._message_parts = []
            self._message_size = 0
            self._message_wire_size = 0
            self._message_extensions = [ext for ext in self.extensions if ext.begin_message(opcode, rsv)]
            self._utf8 = _new_utf8_decoder() if opcode == _TEXT else None
        # Decided from the header, before any of the payload is buffered. For a
        # decoded (compressed) message, the wire size is bounded too, and the
        # decoded size by the decoder's own budget.
        already = self._message_wire_size if self._message_extensions else self._message_size
        if already + length > self.max_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")

    def _payload(self, chunk: bytes | memoryview, messages: Sink) -> None:
        """Take in part (or all) of the current data frame's payload, still masked."""
        length = len(chunk)
        self._frame_remaining -= length
        direct = self._direct
        if direct is not None:
            # The part of a large frame that came with its header (or before
            # the caller switched to payload_buffer): copied to its place.
            assert self._direct_view is not None
            start = self._direct_filled
            end = self._direct_filled = start + length
            self._direct_view[start:end] = chunk
            direct.unmask(start, end, self._frame_mask)
            self.payload_pending = self._frame_remaining > _DIRECT_TAIL
            if self._frame_remaining:
                return
            data = self._finish_direct()
        elif self._frame_deferred:
            if length:
                self._frame_chunks.append(chunk)
            if self._frame_remaining:
                return
            chunks, self._frame_chunks = self._frame_chunks, []
            if len(chunks) == 1:
                data = apply_mask(chunks[0], self._frame_mask)
            else:
                data = apply_mask_chunks(chunks, self._frame_mask)
        else:
            offset = self._frame_offset & 3
            mask = self._frame_mask
            if offset:
                mask = mask[offset:] + mask[:offset]
            data = apply_mask(chunk, mask)
            self._frame_offset += length
        self._take(data, messages)

    def _take(self, data: bytes, messages: Sink) -> None:
        """Add unmasked payload to the message; complete it at the end of its last frame."""
        message_end = self._frame_fin and not self._frame_remaining
        self._message_wire_size += len(data)
        for extension in self._message_extensions:
            data = extension.decode(
                data, end=message_end, max_length=self.max_size - self._message_size + 1
            )
        self._message_size += len(data)
        if self._message_size > self.max_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
        if self._utf8 is not None:
            try:
                # Checked as it arrives, so bad UTF-8 fails at its first byte.
                text = self._utf8.decode(data, message_end)
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8 in text message") from None
            if text:
                self._message_parts.append(text)
        elif data:
            self._message_parts.append(data)
        if message_end:
            self.tally.messages_received += 1
            if self._utf8 is not None:
                messages.append(self._text_message("".join(self._message_parts)))
            else:
                messages.append(self._binary_message(b"".join(self._message_parts)))
            self._message_opcode = None
            self._message_parts = []
            self._message_extensions = []
            self._utf8 = None

    def _control(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == Opcode.PING:
            # 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a
            # Pong frame in response ... [with] the same Application data".
            if not self.close_sent:
                self._write(Opcode.PONG, payload)
        elif opcode == Opcode.PONG:
            events.append(Pong(payload))
        else:
            events.append(self._close_event(payload))
            self.close_received = True
            # 5.5.1: nothing after a close frame is parsed. The parse loop
            # stops on _done; what it would have read is dropped here.
            self._done = True
            self._buffer.clear()

    @staticmethod
    def _close_event(payload: bytes) -> CloseReceived:
        """5.5.1 / 7.1.5: the code and reason of a close frame; raises ProtocolError if invalid."""
        if not payload:
            return CloseReceived(CloseCode.NO_STATUS_RCVD, "")
        if len(payload) == 1:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = (payload[0] << 8) | payload[1]
        if not is_valid_close_code(code):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8 in close reason") from None
        return CloseReceived(code, reason)

    # -- output ----------------------------------------------------------------

    def send_text(self, data: str) -> None:
        """Queue a text message. Raises ConnectionClosedError after our close frame."""
        self._send_message(_TEXT, data.encode())

    def text_frame(self, data: str) -> bytes | None:
        """The frame of a short text message, to be written now instead of queued; else None.

        The most common message (an echo, or a fan-out's to each subscriber):
        _send_message and _write inlined, and nothing queued. None when the
        frame would not be one chunk under 126 bytes, or when other output is
        queued, an extension applies, our close frame is sent or a trace is
        set: the caller then uses `send_text`.
        """
        if self._out or self.extensions or self.close_sent or self.trace is not None:
            return None
        return small_text_frame(data, self.tally)  # header and payload in one allocation; counted

    def send_binary(self, data: bytes) -> None:
        """Queue a binary message. Raises ConnectionClosedError after our close frame."""
        self._send_message(_BINARY, bytes(data))

    def send_fragments(self, data: str | bytes, fragment_size: int) -> Iterator[None]:
        """Queue a text (str) or binary message as frames of `fragment_size` characters or bytes.

        A generator: each step encodes, compresses and queues one frame, so
        the caller can write it and let others run between steps (5.4
        fragmentation; RFC 7692 7.2.1: one deflate stream across the frames).
        Send nothing else until it is exhausted; a step after our close frame
        raises ConnectionClosedError.
        """
        text = isinstance(data, str)
        opcode = Opcode.TEXT if text else Opcode.BINARY
        total = len(data)
        self.tally.messages_sent += 1
        for start in range(0, total or 1, fragment_size):
            if self.close_sent:
                raise ConnectionClosedError("cannot send a message after the close frame")
            chunk = data[start : start + fragment_size]
            # Slicing a str never splits a code point, so each slice encodes alone.
            payload = chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
            fin = start + fragment_size >= total
            rsv = 0
            for extension in self.extensions:
                bits, payload = extension.encode_fragment(payload, first=opcode != Opcode.CONTINUATION, end=fin)
                rsv |= bits
            self._write(opcode, payload, rsv, fin)
            opcode = Opcode.CONTINUATION
            yield

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping (payload up to 125 bytes, else ValueError; ConnectionClosedError after close)."""
        self._send_control(Opcode.PING, payload)

    def send_pong(self, payload: bytes) -> None:
        """Queue an unsolicited pong (payload up to 125 bytes)."""
        self._send_control(Opcode.PONG, payload)

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Queue our close frame; no-op if one was already sent.

        1005 sends a close frame without a payload; the reason is cut to fit
        125 bytes. Raises ValueError for a code that may not be sent.
        """
        if self.close_sent:
            return
        payload = close_payload(code, reason)
        self.close_sent = True
        self._write(Opcode.CLOSE, payload)

    def data_to_send(self) -> list[bytes]:
        """The chunks waiting to be written, in order; clears them."""
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    @property
    def frame_remaining(self) -> int:
        """Payload bytes of the frame being received that have not arrived yet (0 between frames)."""
        return self._frame_remaining

    @property
    def handshake_complete(self) -> bool:
        """Close frames went both ways: the server should now close TCP (7.1.1)."""
        return self.close_sent and self.close_received

    def _send_message(self, opcode: Opcode, payload: bytes) -> None:
        if self.close_sent:
            # 5.5.1: "the endpoint MUST NOT send any further data frames".
            raise ConnectionClosedError("cannot send a message after the close frame")
        self.tally.messages_sent += 1
        if not self.extensions:
            self._write(opcode, payload)
            return
        rsv = 0
        for extension in self.extensions:
            bits, payload = extension.encode(opcode, payload)
            rsv |= bits
        self._write(opcode, payload, rsv)

    def _send_control(self, opcode: Opcode, payload: bytes) -> None:
        if self.close_sent:
            raise ConnectionClosedError("cannot send a control frame after the close frame")
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("control frame payload must be 125 bytes or less")
        self._write(opcode, bytes(payload))

    def _write(self, opcode: Opcode, payload: bytes, rsv: int = 0, fin: bool = True) -> None:
        # 5.1: "A server MUST NOT mask any frames that it sends to the client."
        length = len(payload)
        if length < 126 and fin:
            # The most common frame: a 2-byte header (frame_header, inlined).
            self._out.append(_pack_small_header(0x80 | rsv | opcode, length) + payload)
            self.tally.bytes_sent += 2 + length
        elif length <= _JOIN_LIMIT:
            frame = frame_header(opcode, length, fin, rsv) + payload
            self._out.append(frame)
            self.tally.bytes_sent += len(frame)
        else:
            header = frame_header(opcode, length, fin, rsv)
            self._out.append(header)
            self._out.append(payload)
            self.tally.bytes_sent += len(header) + length
        if self.trace is not None:
            self.trace(">", opcode, fin, rsv, False, length)
