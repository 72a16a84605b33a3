"""docs/broadcast.md: its example app and its test run as written, and its Redis commands do what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import redis

from tests.broadcast.conftest import ROOT, RedisServer

DOC = (Path(ROOT) / "docs" / "broadcast.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, re.DOTALL)


def block(language: str, first_line: str) -> str:
    found = [text for lang, text in BLOCKS if lang == language and text.startswith(first_line)]
    assert len(found) == 1, f"docs/broadcast.md: {len(found)} {language} blocks start with {first_line!r}"
    return found[0]


def test_every_python_example_imports_what_it_uses() -> None:
    for language, text in BLOCKS:
        if language == "python":
            compile(text, "docs/broadcast.md", "exec")
            assert "import" in text, text[:80]


def test_the_example_app_passes_the_example_test(tmp_path: Path) -> None:
    (tmp_path / "chat.py").write_text(block("python", "# chat.py"))
    (tmp_path / "test_chat.py").write_text(block("python", "# test_chat.py"))
    environment = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_chat.py"],
                            cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120,
                            env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout.splitlines()[-1]


def test_the_shell_commands_publish_through_redis(redis_server: RedisServer) -> None:
    commands = block("sh", "python -m asgiws.broadcast publish").splitlines()
    script = block("sh", "SHA=$(")
    url = redis_server.url
    # `python` in the commands is this interpreter.
    environment = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    cli = subprocess.run(["bash", "-c", commands[0].split("#")[0].replace("redis://localhost:6379/0", url)],
                         cwd=ROOT, check=False, capture_output=True, text=True, timeout=60, env=environment)
    assert cli.returncode == 0, cli.stderr
    assert re.fullmatch(r"[0-9a-f]{8}:\d+-1\n", cli.stdout), cli.stdout
    port = url.rsplit(":", 1)[1].split("/")[0]
    evalsha = subprocess.run(["bash", "-c", script.replace("redis://localhost:6379/0", url)],
                             cwd=ROOT, check=False, capture_output=True, text=True, timeout=60,
                             env=environment)
    assert evalsha.returncode == 0, evalsha.stderr
    epoch = cli.stdout.split(":")[0]
    assert re.fullmatch(epoch + r":\d+-2\n", evalsha.stdout), evalsha.stdout
    client = redis.Redis(port=int(port))
    try:
        entries = client.xrange("asgiws:{lobby}:history")
        assert [fields[b"d"] for _, fields in entries] == [b"tnightly report ready"] * 2
    finally:
        client.close()
