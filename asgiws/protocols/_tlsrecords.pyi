import ssl
from collections.abc import Callable
from typing import Any

class Records:
    def __init__(self, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None: ...
    def decrypt_into(self, ciphertext: Any, buffer: Any) -> tuple[int, int, bool]: ...
    def encrypt(self, *chunks: Any) -> list[bytes]: ...

def bind(
    ssl_module_path: str,
    probe: Any,
    context: ssl.SSLContext,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
    error_factory: Callable[[int, int, str | None], BaseException],
) -> None: ...
