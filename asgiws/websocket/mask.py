"""5.3 masking: XOR the payload with the 4-byte key, repeated.

`apply_mask(data, mask) -> bytes` comes from the optional C helper
(`_speedups`) when it is built, else from the pure-Python twin below; both
have the same signature and are tested against each other.
"""

from __future__ import annotations

__all__ = ["apply_mask", "py_apply_mask"]


def py_apply_mask(data: bytes | bytearray | memoryview, mask: bytes | bytearray | memoryview) -> bytes:
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


try:
    from asgiws.websocket._speedups import apply_mask
except ImportError:
    apply_mask = py_apply_mask
