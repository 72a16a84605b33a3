"""Every codec test runs twice: on the C speedups and on their pure-Python twins.

DESIGN.md: "an optional C helper with a pure-Python twin, both always tested".
The `speedups` parameter swaps the twins in where the codec looks them up
(connection.py's and fastpath.py's module globals), so the whole suite checks
that both give the same events, errors and close codes. A test that takes one
twin as its own parameter (and already runs on each) runs once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgiws.websocket import connection, fastpath, mask

# (module, name, pure-Python twin): every place the codec calls a speedup.
PYTHON_TWINS = [
    (connection, "apply_mask", mask.py_apply_mask),
    (connection, "apply_mask_chunks", mask.py_apply_mask_chunks),
    (connection, "PayloadBuffer", mask.PyPayloadBuffer),
    (connection, "parse_messages", fastpath.py_parse_messages),
    (connection, "small_text_frame", fastpath.py_small_text_frame),
    (connection, "Tally", fastpath.PyTally),
    (fastpath, "apply_mask", mask.py_apply_mask),
]
# Parameters of the tests that pass a twin in themselves (test_codec_frames, test_codec_fastpath).
TWIN_PARAMETERS = {"apply_mask", "apply_mask_chunks", "payload_buffer", "parse_messages", "queue_type"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "speedups" in metafunc.fixturenames:
        twins = ["c"] if TWIN_PARAMETERS & set(metafunc.fixturenames) else ["c", "python"]
        metafunc.parametrize("speedups", twins, indirect=True)


@pytest.fixture(autouse=True)
def speedups(request: pytest.FixtureRequest) -> Iterator[str]:
    """'c' (the speedups as built) or 'python' (their twins swapped in for the test)."""
    if request.param == "c":
        # The test environment must build the helper (pip install -e .): never pass on the twins alone.
        assert mask.apply_mask is not mask.py_apply_mask, "asgiws.websocket._speedups is not built"
        assert fastpath.parse_messages is not fastpath.py_parse_messages
        yield "c"
        return
    saved = [(module, name, getattr(module, name)) for module, name, _ in PYTHON_TWINS]
    for module, name, twin in PYTHON_TWINS:
        setattr(module, name, twin)
    try:
        yield "python"
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
