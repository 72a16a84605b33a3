"""5.3 masking: XOR the payload with the 4-byte key, repeated.

`apply_mask(data, mask) -> bytes` and `apply_mask_chunks(chunks, mask) -> bytes`
come from the optional C helper (`_speedups`) when it is built, else from the
pure-Python twins below; each pair has the same signature and they are tested
against each other.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["apply_mask", "apply_mask_chunks", "py_apply_mask", "py_apply_mask_chunks"]

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


try:
    from asgiws.websocket._speedups import apply_mask, apply_mask_chunks
except ImportError:
    apply_mask = py_apply_mask
    apply_mask_chunks = py_apply_mask_chunks
