"""The worker's one ping timer (asgiws.protocols.heartbeat.PingWheel), on a real event loop and a real server."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from typing import Any

import pytest

from asgiws.protocols.heartbeat import PingWheel
from tests.rawws import RawWebSocket
from tests.wire import client_frame

PING, PONG = 0x9, 0xA


class Counted:
    """A connection that records when its pings were due and asks for the next one, as a WebSocket does."""

    def __init__(self, wheel: PingWheel, loop: asyncio.AbstractEventLoop) -> None:
        self.wheel, self.loop = wheel, loop
        self.pinged_at: list[float] = []
        self.slot = wheel.schedule(self)

    def on_heartbeat(self, due: float) -> None:
        assert due <= self.loop.time() + self.wheel.tick / 2
        self.pinged_at.append(self.loop.time())
        self.slot = self.wheel.schedule(self)


def test_every_connection_is_pinged_once_per_interval_and_a_cancelled_one_never() -> None:
    async def scenario() -> tuple[list[Counted], Counted, float, int]:
        loop = asyncio.get_running_loop()
        wheel = PingWheel(loop, 0.2)
        start = loop.time()
        connections = []
        for _ in range(50):
            connections.append(Counted(wheel, loop))
            await asyncio.sleep(0.002)  # spread over several slots, as connections arrive
        gone = Counted(wheel, loop)
        wheel.cancel(gone, gone.slot)
        await asyncio.sleep(0.2 * 3 + 0.1)
        return connections, gone, start, len(wheel)

    connections, gone, start, waiting = asyncio.run(scenario())
    assert gone.pinged_at == []
    assert waiting == 50  # every live one is scheduled again, the cancelled one is not
    for connection in connections:
        times = connection.pinged_at
        assert len(times) >= 2, times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Never early (the loop may wake a hair before the slot), at most a tick and scheduling late.
        assert all(gap >= 0.2 - 0.01 for gap in gaps), gaps
    assert all(c.pinged_at[0] >= start + 0.2 - 0.01 for c in connections)


def test_tick_is_a_twentieth_of_the_interval_at_most_a_second() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert PingWheel(loop, 20.0).tick == 1.0
        assert PingWheel(loop, 60.0).tick == 1.0
        assert PingWheel(loop, 0.2).tick == pytest.approx(0.01)
    finally:
        loop.close()


def test_server_pings_many_connections_at_the_interval_and_closed_ones_stop(run_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    with run_server(app, ws_ping_interval=0.3, ws_ping_timeout=5.0) as server:
        clients = [RawWebSocket(server.port) for _ in range(20)]
        closed = clients.pop()
        closed.sock.close()  # its slot is forgotten: the server must not fail pinging it
        deadline = time.monotonic() + 30
        for ws in clients:
            pings = 0
            while pings < 2:
                assert time.monotonic() < deadline, "pings did not come"
                opcode, _, payload = ws.read_frame()
                assert opcode == PING
                pings += 1
                ws.send(client_frame(PONG, payload))
        for ws in clients:
            ws.sock.shutdown(socket.SHUT_RDWR)
            ws.sock.close()
