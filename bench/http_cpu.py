"""CPU time per HTTP request in HttpProtocol alone: no sockets, no client, no other process.

    python -m bench.http_cpu            # from the checkout to measure

A fake transport takes the response; each round feeds 2000 GETs (300 POSTs of
64 KiB) one at a time through buffer_updated and runs the app task, and the
figure is the least thread CPU time per request over 40 rounds. Thread CPU
time, not wall time: on a shared machine the wall time of a round swings 2x
with other processes, the CPU time it took much less. Run it in two checkouts
one after the other (alternated, more than once) to compare a change.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from asgiws.config import Config
from asgiws.protocols.common import ServerState
from asgiws.protocols.http import HttpProtocol, build_default_headers

ROUNDS = 40
GET = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n" + b"x" * 65536


class FakeTransport(asyncio.Transport):
    """Counts what is written; never closes by itself (tests/http/test_head_fastpath.py records it)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.written += len(chunk)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["method"] == "POST":
        more = True
        while more:
            more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def _cpu_per_request(request: bytes, count: int) -> float:
    config = Config(app=_app, access_log=False)
    state = ServerState()
    state.default_headers = build_default_headers(config)
    loop = asyncio.get_running_loop()
    best = float("inf")
    for _ in range(ROUNDS):
        protocol = HttpProtocol(config=config, server_state=state, app=_app, loop=loop)
        transport = FakeTransport()
        protocol.connection_made(transport)
        start = time.thread_time()
        for _ in range(count):
            state.read_buffer[: len(request)] = request
            protocol.buffer_updated(len(request))
            await asyncio.sleep(0)  # the app task runs
            await asyncio.sleep(0)  # and its response completes
        best = min(best, (time.thread_time() - start) / count)
        protocol.connection_lost(None)
    return best


async def _main() -> None:
    get = await _cpu_per_request(GET, 2000)
    post = await _cpu_per_request(POST, 300)
    print(f"GET {get * 1e6:.1f} us/request, POST 64 KiB {post * 1e6:.1f} us/request (CPU, least of {ROUNDS})")


if __name__ == "__main__":
    uvloop.run(_main())
