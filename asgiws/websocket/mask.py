"""5.3 masking: XOR the payload with the 4-byte key, repeated.

`apply_mask(data, mask) -> bytes`, `apply_mask_chunks(chunks, mask) -> bytes`
and `PayloadBuffer` come from the optional C helper (`_speedups`) when it is
built, else from the pure-Python twins below; each pair has the same
signature and they are tested against each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["PayloadBuffer", "PyPayloadBuffer", "apply_mask", "apply_mask_chunks", "py_apply_mask",
           "py_apply_mask_chunks"]

Buffer = bytes | bytearray | memoryview


def py_apply_mask(data: Buffer, mask: Buffer) -> bytes:
    """XOR `data` (any bytes-like object) with `mask` (4 bytes) repeated.

    One big-int XOR instead of a per-byte loop: about 50x faster in CPython.
    Raises ValueError if `mask` is not 4 bytes long.
    """
    if len(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    length = len(data)
    if not length:
        return b""
    data_int = int.from_bytes(data, "big")
    mask_repeated = bytes(mask) * ((length + 3) // 4)
    mask_int = int.from_bytes(mask_repeated[:length], "big")
    return (data_int ^ mask_int).to_bytes(length, "big")


def py_apply_mask_chunks(chunks: Sequence[Buffer], mask: Buffer) -> bytes:
    """`apply_mask` of the concatenation of `chunks` (a frame payload that arrived in parts).

    The C twin unmasks into one allocation in one pass; here the join costs a
    copy. Raises ValueError if `mask` is not 4 bytes long.
    """
    return py_apply_mask(b"".join(chunks), mask)


class PyPayloadBuffer:
    """A frame payload of `size` bytes, read into `view()` and unmasked in place.

    The C twin fills the storage of the bytes object that `finish()` returns
    (no copy); this one fills a bytearray and copies it once at the end.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must not be negative")
        self._data: bytearray | None = bytearray(size)

    def view(self) -> memoryview:
        """A writable view of the whole payload. Raises BufferError after finish()."""
        if self._data is None:
            raise BufferError("PayloadBuffer already finished")
        return memoryview(self._data)

    def unmask(self, start: int, end: int, mask: Buffer) -> None:
        """XOR bytes [start:end) in place with `mask`, at the phase of offset `start` (5.3).

        Raises ValueError for a bad mask or a range outside the buffer.
        """
        data = self._data
        if len(mask) != 4:
            raise ValueError("mask must contain 4 bytes")
        if data is None or not 0 <= start <= end <= len(data):
            raise ValueError("unmask range outside the buffer")
        phase = start & 3
        rotated = bytes(mask[phase:]) + bytes(mask[:phase])
        data[start:end] = py_apply_mask(memoryview(data)[start:end], rotated)

    def finish(self) -> bytes:
        """The payload as bytes; the buffer is then spent (ValueError if called twice)."""
        if self._data is None:
            raise ValueError("PayloadBuffer already finished")
        data, self._data = self._data, None
        return bytes(data)


class PayloadBufferLike(Protocol):
    """What the codec uses of either PayloadBuffer twin."""

    def view(self) -> memoryview: ...
    def unmask(self, start: int, end: int, mask: Buffer) -> None: ...
    def finish(self) -> bytes: ...


PayloadBuffer: Callable[[int], PayloadBufferLike]
try:
    from asgiws.websocket._speedups import PayloadBuffer, apply_mask, apply_mask_chunks
except ImportError:
    apply_mask = py_apply_mask
    apply_mask_chunks = py_apply_mask_chunks
    PayloadBuffer = PyPayloadBuffer
