"""docs/broadcast.md beyond what tests/test_docs.py runs: complete imports, and the Redis script call it gives."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
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


def test_the_cli_and_the_script_call_publish_through_redis(redis_server: RedisServer) -> None:
    url = redis_server.url
    # `python` in the command is this interpreter.
    environment = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    command = block("sh", "python -m asgiws.broadcast publish").splitlines()[0].split("#")[0]
    cli = subprocess.run(["bash", "-c", command.replace("redis://localhost:6379/0", url)],
                         cwd=ROOT, check=False, capture_output=True, text=True, timeout=60, env=environment)
    assert cli.returncode == 0, cli.stderr
    assert re.fullmatch(r"[0-9a-f]{8}:\d+-1\n", cli.stdout), cli.stdout
    # The call shape the page gives other services, placeholders filled in as it says.
    script = subprocess.run([sys.executable, "-m", "asgiws.broadcast", "script"], cwd=ROOT, check=True,
                            capture_output=True, text=True, timeout=60).stdout
    client = redis.Redis.from_url(url)
    try:
        sha = client.script_load(script)
        words = shlex.split(block("text", "EVALSHA <sha1>"))
        filled = {"<sha1>": sha, "<epoch>": os.urandom(4).hex(), "<id>": os.urandom(6).hex(),
                  "<ms>": str(int(time.time() * 1000))}
        offset = client.execute_command(*[filled.get(word, word) for word in words])
        epoch = cli.stdout.split(":")[0]
        assert re.fullmatch(epoch + r":\d+-2", offset.decode()), offset
        entries = client.xrange("asgiws:{lobby}:history")
        assert [fields[b"d"] for _, fields in entries] == [b"tnightly report ready"] * 2
    finally:
        client.close()
