"""The `cluster` fixture: real `asgiws --workers N` process trees, stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.supervisor.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`cluster(app, *cli_args)` starts `asgiws app --port <free> *cli_args`; stopped at teardown."""
    started: list[Cluster] = []

    def start(app: str = "tests.supervisor.apps:app", *args: str, **kwargs: Any) -> Cluster:
        started.append(Cluster(tmp_path, app, *args, **kwargs))
        return started[-1]

    yield start
    for running in started:
        running.stop()
