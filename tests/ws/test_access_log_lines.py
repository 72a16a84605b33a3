"""The WebSocket access lines as the asgiws command prints them (issue 13 section 3)."""

from __future__ import annotations

import asyncio
import re

from websockets.asyncio.client import connect

from tests.test_cli import running

ROOT_ARGS = ("examples.hello:app", "--port", "0")


def _talk(port: int) -> int:
    """Two echoes and a client close (1000); returns the client's local port."""

    async def main() -> int:
        async with connect(f"ws://127.0.0.1:{port}/chat?room=1", compression=None, ping_interval=None) as ws:
            for text in ("hello", "world"):
                await ws.send(text)
                assert await ws.recv() == text
            local_port: int = ws.local_address[1]
        return local_port

    return asyncio.run(asyncio.wait_for(main(), 20))


def _lines(lines: list[str]) -> list[str]:
    return [line for line in "".join(lines).splitlines() if line.strip()]


def test_open_and_close_lines_at_info():
    # Both in the default access format (uvicorn's); the close line's "status" is its outcome.
    with running(*ROOT_ARGS) as (port, _, lines):
        client_port = _talk(port)
    output = _lines(lines)
    client = f"127.0.0.1:{client_port}"
    opened = f'INFO:     {client} - "GET /chat?room=1 HTTP/1.1" 101 Switching Protocols'
    assert opened in output
    [closed] = [line for line in output if f'{client} - "WebSocket' in line]
    # In: two masked 5-byte text frames (11 B each) and the client's close (8 B);
    # out: two echoes (7 B each) and our close (4 B).
    assert re.fullmatch(
        rf'INFO:     {client} - "WebSocket /chat\?room=1" closed 1000 by client after \d+\.\d{{3}}s, '
        r"in: 2 msg 30 B, out: 2 msg 18 B",
        closed,
    ), closed
    assert output.index(opened) < output.index(closed)
    assert not any(line.startswith(("DEBUG:", "TRACE:")) or "Logging error" in line for line in output)


def test_debug_adds_the_handshake_and_the_lifecycle():
    with running(*ROOT_ARGS, "--log-level", "debug") as (port, _, lines):
        client_port = _talk(port)
    output = _lines(lines)
    client = f"127.0.0.1:{client_port}"
    assert f"DEBUG:    WebSocket {client} /chat?room=1 accepted: subprotocol=None, extensions=None, origin=None" \
        in output
    lifecycle = [line for line in output if line.startswith(f"DEBUG:    WebSocket {client}: ")]
    assert lifecycle == [
        f"DEBUG:    WebSocket {client}: CONNECTING -> OPEN",
        f"DEBUG:    WebSocket {client}: OPEN -> CLOSED",
    ]
    assert not any(" CLOSE code=" in line for line in output)


def test_trace_shows_close_frames_with_code_and_reason():
    with running(*ROOT_ARGS, "--log-level", "trace") as (port, _, lines):
        client_port = _talk(port)
    output = _lines(lines)
    client = f"127.0.0.1:{client_port}"
    closes = [line for line in output if " CLOSE code=" in line]
    assert closes == [
        f"TRACE:    {client} < CLOSE code=1000 reason=''",
        f"TRACE:    {client} > CLOSE code=1000 reason=''",
    ]
