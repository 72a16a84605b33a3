import ssl
from collections.abc import Callable
from typing import Any

class Records:
    def __init__(self, sslobj: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> None: ...
    def read_into(self, buffer: Any) -> int: ...
    def encrypt(self, *chunks: Any) -> list[bytes]: ...

def bind(
    ssl_module_path: str,
    probe: Any,
    context: ssl.SSLContext,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
    error_factory: Callable[[int, int, str | None], BaseException],
) -> None: ...
