"""The fuzz targets in fuzz/ run briefly: under atheris when installed, else a bounded random loop."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.parametrize("target", ["frame_parser", "handshake"])
def test_fuzz_target_finds_no_crash_in_a_bounded_run(target):
    args = ["-max_total_time=3", "-runs=200000"] if HAVE_ATHERIS else ["--random", "20000", "--seconds", "3"]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", f"{target}.py"), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.parametrize("target", ["frame_parser", "handshake"])
def test_fuzz_target_random_loop_finds_no_crash(target):
    sys.path.insert(0, ROOT)
    from fuzz.runner import random_loop

    module = importlib.import_module(f"fuzz.{target}")
    assert random_loop(module.check, 3000, 2.0, seed=7) > 500
