"""The Dockerfile, run without Docker so that it cannot silently rot.

No container engine here: the test reads the Dockerfile, checks what an
operator relies on (slim base, non-root user, EXPOSE 8000, exec-form
ENTRYPOINT so SIGTERM reaches asgiws, a HEALTHCHECK), then does what the file
does: copies the build context (honouring .dockerignore) to a WORKDIR,
runs its `pip install` step into a fresh virtualenv, starts its ENTRYPOINT +
CMD (on a free loopback port instead of 0.0.0.0:8000), runs its HEALTHCHECK
command against it, and stops it with SIGTERM as `docker stop` would.
The install needs the package index (as `docker build` does).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.supervisor.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def one(parsed: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for name, arguments in parsed if name == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def env_of(parsed: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in parsed:
        if name == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(part, pattern.removeprefix("**/"))
               for pattern in patterns for prefix, part in zip(prefixes, parts))


def copy_context(destination: Path) -> None:
    """COPY . <dest>, leaving out what .dockerignore names."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for directory, subdirs, files in os.walk(ROOT):
        relative_dir = os.path.relpath(directory, ROOT)
        subdirs[:] = [d for d in subdirs if not ignored(os.path.normpath(os.path.join(relative_dir, d)), patterns)]
        for name in files:
            relative = os.path.normpath(os.path.join(relative_dir, name))
            if not ignored(relative, patterns):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory, name), target)


def test_dockerfile_declares_what_operators_rely_on():
    parsed = instructions(DOCKERFILE.read_text())
    assert parsed[0][0] == "FROM" and parsed[0][1].startswith("python:") and parsed[0][1].endswith("-slim")
    user = one(parsed, "USER")
    assert user not in ("root", "0")
    assert [name for name, _ in parsed].index("USER") > max(i for i, (n, _) in enumerate(parsed) if n == "RUN")
    assert one(parsed, "EXPOSE") == "8000"
    assert exec_form(one(parsed, "ENTRYPOINT")) == ["asgiws"]
    command = exec_form(one(parsed, "CMD"))
    assert command[0] == "examples.hello:app"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    healthcheck = one(parsed, "HEALTHCHECK")
    assert "CMD [" in healthcheck and "curl" not in healthcheck  # no curl in slim images
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignore and ".venv" in ignore


@pytest.mark.timeout(120)
def test_dockerfile_install_cmd_and_healthcheck_run(tmp_path):
    parsed = instructions(DOCKERFILE.read_text())
    workdir = one(parsed, "WORKDIR")
    image = tmp_path / "image"

    def in_image(text: str) -> str:
        return text.replace(workdir, str(image / workdir.lstrip("/")))

    source, destination = one(parsed, "COPY").split()
    assert source == "."
    copy_context(Path(in_image(destination)))
    assert (image / workdir.lstrip("/") / "examples/hello.py").exists()
    assert not (image / workdir.lstrip("/") / ".git").exists()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    env = dict(os.environ, **env_of(parsed), PATH=f"{venv}/bin:{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    env.pop("PYTHONPATH", None)
    env.pop("PIP_NO_CACHE_DIR", None)  # the image wants no cache; the test wants speed
    for name, arguments in parsed:
        if name != "RUN":
            continue
        for step in arguments.split("&&"):
            words = shlex.split(in_image(step))
            if words[0] == "pip":  # user creation needs root: checked above, not run here
                words = [w for w in words if w != "--no-cache-dir"]
                subprocess.run([str(venv / "bin/pip"), *words[1:], "--quiet"], check=True, env=env, timeout=100)

    port = free_port()
    command = exec_form(one(parsed, "ENTRYPOINT")) + exec_form(one(parsed, "CMD"))
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"  # loopback only in tests
    server = subprocess.Popen(command, cwd=in_image(workdir), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert response.read() == b"Hello, world!\n"
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)

        healthcheck = one(parsed, "HEALTHCHECK")
        probe = exec_form(healthcheck[healthcheck.index("CMD [") + 4:])
        probe = [part.replace("8000", str(port)) for part in probe]
        probe[0] = str(venv / "bin" / probe[0])
        assert subprocess.run(probe, check=False, env=env, timeout=15).returncode == 0

        server.send_signal(signal.SIGTERM)  # what `docker stop` sends to PID 1
        assert server.wait(15) == 0
        assert subprocess.run(probe, check=False, env=env, timeout=15, capture_output=True).returncode != 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
        output = server.stdout.read().decode(errors="replace") if server.stdout else ""
    assert "Shutting down" in output
