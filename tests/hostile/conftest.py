"""Hostile clients rarely answer the server's close frame and never need its
keep-alive pings: the in-thread server here waits 0.5 s for a close, not 5 s,
and sends no pings (those are tested on their own in tests/ws)."""

from __future__ import annotations

import pytest


@pytest.fixture
def run_server(run_server):
    def start(app, **overrides):
        overrides.setdefault("ws_close_timeout", 0.5)
        overrides.setdefault("ws_ping_interval", None)
        return run_server(app, **overrides)
    return start
