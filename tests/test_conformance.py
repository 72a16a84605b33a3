"""Fast Autobahn TestSuite subset against asgiws, through conformance/run.py.

Runs ``python -m conformance.run`` (which starts ``python -m asgiws`` serving
``examples.hello:app`` and drives kosoku's fuzzingclient) over a small,
quick selection of cases and requires exit 0: every case OK or INFORMATIONAL.
The whole suite is run by hand / in CI with ``python -m conformance.run``.

CONFORMANCE_EXTRA_ARGS (shell syntax) is appended to the command line, e.g. to
check the harness against the peer:
``CONFORMANCE_EXTRA_ARGS="--server uvicorn -x 5.15 -x 6.4.*" pytest tests/test_conformance.py``
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Framing, pings/pongs, reserved bits/opcodes, fragmentation, UTF-8 incl.
# fail-fast on invalid UTF-8 in fragments (6.4.*), close handling, and one
# permessage-deflate exchange. ~10 s on 2 cores.
FAST_CASES = [
    "1.*", "2.*", "3.*", "4.*", "5.*",
    "6.1.*", "6.2.*", "6.3.*", "6.4.*",
    "7.1.*", "7.3.*", "7.5.1", "7.7.*", "7.9.*",
    "10.1.1", "12.1.1", "13.1.1",
]


def test_autobahn_fast_subset(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "conformance.run", "--timeout", "100", "-o", str(tmp_path / "reports")]
    for pattern in FAST_CASES:
        cmd += ["--include", pattern]
    cmd += shlex.split(os.environ.get("CONFORMANCE_EXTRA_ARGS", ""))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=115)
    assert proc.returncode == 0, (
        f"conformance run failed (exit {proc.returncode})\n"
        f"$ {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    )
