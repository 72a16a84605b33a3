"""The `cluster` fixture of tests/supervisor: real `asgiws --workers N` process trees."""

from __future__ import annotations

from tests.supervisor.conftest import cluster  # noqa: F401
