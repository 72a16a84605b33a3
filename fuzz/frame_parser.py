"""Fuzz target: the WebSocket frame parser (asgiws.websocket.ServerConnection).

Any input bytes, split at fuzzer-chosen points, with or without
permessage-deflate, must give events and at most one ProtocolFailure with a
valid close code; no exception may escape, and no message may exceed max_size.

    python fuzz/frame_parser.py -max_total_time=60          # atheris (libFuzzer flags)
    python fuzz/frame_parser.py --random 20000 --seconds 5  # without atheris
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asgiws.asgi.websocket import server_deflate_factory  # noqa: E402
from asgiws.config import Config  # noqa: E402
from asgiws.websocket import (  # noqa: E402
    BinaryMessage,
    CloseReceived,
    Pong,
    ProtocolFailure,
    ServerConnection,
    TextMessage,
    negotiate_extensions,
)

MAX_SIZE = 4096
# 7.4.1 codes a server may send when failing a connection.
FAILURE_CODES = {1002, 1007, 1008, 1009, 1011}


def check(data: bytes) -> None:
    """Run one input; raise AssertionError on a broken invariant."""
    if not data:
        return
    deflate = data[0] & 1
    cuts = data[1] if len(data) > 1 else 0
    stream = data[2:]
    extensions = []
    if deflate:
        _, extensions = negotiate_extensions([b"permessage-deflate"], [server_deflate_factory(Config())])
    conn = ServerConnection(max_size=MAX_SIZE, extensions=extensions)
    step = max(1, len(stream) // (cuts % 8 + 1))
    failures = 0
    for start in range(0, len(stream), step):
        for event in conn.receive_data(stream[start:start + step]):
            if isinstance(event, ProtocolFailure):
                failures += 1
                assert event.code in FAILURE_CODES, event
            elif isinstance(event, (TextMessage, BinaryMessage)):
                assert len(event.data) <= MAX_SIZE, len(event.data)
            else:
                assert isinstance(event, (CloseReceived, Pong)), event
        conn.data_to_send()
    assert failures <= 1
    conn.receive_eof()


def main() -> None:
    from fuzz.runner import run

    run(check, sys.argv)


if __name__ == "__main__":
    main()
