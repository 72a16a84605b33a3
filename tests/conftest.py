"""The one in-process server fixture: `run_server`, on asgiws.testing.serve_in_thread.

    with run_server(app, ws_max_size=1024) as server:   # server: asgiws.testing.LiveServer
        sock = server.connect(); ...

The app's lifespan is off unless a test asks for it (most test apps here are
bare WebSocket or HTTP callables). A module sets its own defaults for every
server it starts with `pytestmark = pytest.mark.server_defaults(name=value)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from asgiws.testing import LiveServer, serve_in_thread
from tests.broadcast.conftest import redis_server  # noqa: F401 (a real redis-server, for tests in any folder)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_defaults(**config): Config values for every run_server() of the test"
    )


@pytest.fixture
def run_server(
    request: pytest.FixtureRequest,
) -> Callable[..., contextlib.AbstractContextManager[LiveServer]]:
    """`with run_server(app, **config_overrides) as server: server.port`; raises StartupError."""
    defaults: dict[str, Any] = {"lifespan": "off"}
    for marker in reversed(list(request.node.iter_markers("server_defaults"))):
        defaults.update(marker.kwargs)

    def start(app: Any, **overrides: Any) -> contextlib.AbstractContextManager[LiveServer]:
        return serve_in_thread(app, **{**defaults, **overrides})

    return start
