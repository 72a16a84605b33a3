"""The Dockerfile, run without Docker so that it cannot silently rot.

No container engine here: the test reads the Dockerfile, checks what an
operator relies on (slim base, non-root user, EXPOSE 8000, exec-form
ENTRYPOINT so SIGTERM reaches asgiws, a HEALTHCHECK), then does what each of
its stages does, with every absolute path moved under a temporary "image"
root: the build stage's COPY of the context (honouring .dockerignore) and
its `pip wheel` (the compiler comes from this machine, as the stage's
apt-get gives it one), then the runtime stage's COPY steps (`--from=build`
included) and `pip install` into a fresh virtualenv. It checks that the
installed asgiws carries the compiled masking helper, starts ENTRYPOINT + CMD
(on a free loopback port instead of 0.0.0.0:8000), runs the HEALTHCHECK
command against it, and stops it with SIGTERM as `docker stop` would.
apt-get and useradd need root and a Debian image: they are checked, not run.
The install needs the package index (as `docker build` does).
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
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


def env_of(parsed: list[tuple[str, str]], build_args: dict[str, str] | None = None) -> dict[str, str]:
    """A stage's ENV, with ${NAME} of its ARGs replaced (by `build_args`, else the ARG's default)."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for name, arguments in parsed:
        if name == "ARG":
            key, _, default = arguments.partition("=")
            args[key] = (build_args or {}).get(key, default)
        elif name == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), value)
    return env


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(part, pattern.removeprefix("**/"))
               for pattern in patterns for prefix, part in zip(prefixes, parts))


def copy_context(source: str, destination: Path) -> None:
    """COPY <source> <dest> from the build context, leaving out what .dockerignore names."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    top = (ROOT / source).resolve()
    for directory, subdirs, files in os.walk(top):
        relative_dir = os.path.relpath(directory, ROOT)
        subdirs[:] = [d for d in subdirs if not ignored(os.path.normpath(os.path.join(relative_dir, d)), patterns)]
        for name in files:
            relative = os.path.normpath(os.path.join(relative_dir, name))
            if not ignored(relative, patterns):
                target = destination / os.path.relpath(Path(directory, name), top)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory, name), target)


def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions split at each FROM (a stage starts with its FROM)."""
    result: list[list[tuple[str, str]]] = []
    for name, arguments in parsed:
        if name == "FROM":
            result.append([])
        result[-1].append((name, arguments))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages(instructions(DOCKERFILE.read_text()))[-1]


def test_dockerfile_declares_what_operators_rely_on():
    every_stage = stages(instructions(DOCKERFILE.read_text()))
    for stage in every_stage:
        base = stage[0][1].split()[0]
        assert base.startswith("python:") and base.endswith("-slim"), base
    parsed = every_stage[-1]
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
    # The C masking helper is compiled in a build stage that has gcc; the
    # compiler stays there: the runtime image installs no Debian packages.
    assert len(every_stage) == 2
    assert any("gcc" in arguments for name, arguments in every_stage[0] if name == "RUN")
    assert not any("apt-get" in arguments for name, arguments in parsed if name == "RUN")
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignore and ".venv" in ignore


class ImageBuild:
    """Runs a Dockerfile's stages with absolute paths moved under `root`."""

    def __init__(self, root: Path, tmp_path: Path) -> None:
        self.root = root
        self.tmp_path = tmp_path
        self.stage_roots: dict[str, Path] = {}
        # Per stage, set by run_stage:
        self.stage_root = root
        self.workdir = str(root)
        self.venv = root
        self.env: dict[str, str] = {}

    def path(self, absolute: str) -> str:
        return str(self.stage_root / absolute.lstrip("/"))

    def map_words(self, words: list[str]) -> list[str]:
        mapped: list[str] = []
        for word in words:
            if word.startswith("/"):
                expanded = sorted(glob.glob(self.path(word))) or [self.path(word)]
                mapped.extend(expanded)
            else:
                mapped.append(word)
        return mapped

    def run_stage(self, stage: list[tuple[str, str]], index: int) -> None:
        _, from_arguments = stage[0]
        words = from_arguments.split()
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(index)
        self.stage_root = self.root / name
        self.stage_root.mkdir(parents=True)
        self.stage_roots[name] = self.stage_root
        self.venv = self.tmp_path / f"venv-{name}"
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, timeout=60)
        self.env = dict(os.environ, **env_of(stage), PATH=f"{self.venv}/bin:{os.environ['PATH']}",
                        VIRTUAL_ENV=str(self.venv))
        self.env.pop("PYTHONPATH", None)
        self.env.pop("PIP_NO_CACHE_DIR", None)  # the image wants no cache; the test wants speed
        for instruction, arguments in stage[1:]:
            if instruction == "COPY":
                self.copy(arguments)
            elif instruction == "RUN":
                for step in arguments.split("&&"):
                    self.run(shlex.split(step))
            elif instruction == "WORKDIR":
                Path(self.path(arguments)).mkdir(parents=True, exist_ok=True)
                self.workdir = self.path(arguments)

    def copy(self, arguments: str) -> None:
        words = arguments.split()
        origin = None
        if words[0].startswith("--from="):
            origin = self.stage_roots[words[0].removeprefix("--from=")]
            words = words[1:]
        source, destination = words
        if origin is None:
            copy_context(source, Path(self.path(destination)))
        else:
            shutil.copytree(origin / source.lstrip("/"), self.path(destination))

    def run(self, words: list[str]) -> None:
        if words[0] == "pip":
            words = [w for w in self.map_words(words[1:]) if w != "--no-cache-dir"]
            subprocess.run([str(self.venv / "bin/pip"), *words, "--quiet"], check=True, env=self.env, timeout=100)
        elif words[0] == "rm":
            subprocess.run(["rm", *self.map_words(words[1:])], check=True, timeout=10)
        else:
            # apt-get (a compiler for the wheel: this machine has one) and useradd
            # need root and a Debian image; what they must achieve is asserted instead.
            assert words[0] in ("apt-get", "useradd"), f"unexpected RUN step {words}"


@pytest.mark.timeout(180)
def test_dockerfile_install_cmd_and_healthcheck_run(tmp_path):
    build = ImageBuild(tmp_path / "image", tmp_path)
    for index, stage in enumerate(stages(instructions(DOCKERFILE.read_text()))):
        build.run_stage(stage, index)
    parsed = final_stage()
    workdir = build.workdir
    assert Path(workdir, "examples/hello.py").exists()
    assert not Path(workdir, ".git").exists()
    assert not Path(build.path("/wheels")).exists(), "the runtime image keeps no wheel files"
    env = build.env
    python = str(build.venv / "bin/python")
    # The point of the build stage: the compiled masking helper is what asgiws uses.
    check = "import asgiws.websocket.mask as m, asgiws.websocket._speedups as c; print(m.apply_mask is c.apply_mask)"
    found = subprocess.run([python, "-c", check], cwd="/", env=env, capture_output=True, text=True, timeout=30)
    assert found.stdout.strip() == "True", found.stderr

    port = free_port()
    command = exec_form(one(parsed, "ENTRYPOINT")) + exec_form(one(parsed, "CMD"))
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"  # loopback only in tests
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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

        probe = healthcheck_command(python)
        env = dict(env, HEALTHCHECK_PORT=str(port))  # as `docker run -e HEALTHCHECK_PORT=...` would
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


def healthcheck_command(python: str) -> list[str]:
    healthcheck = one(final_stage(), "HEALTHCHECK")
    probe = exec_form(healthcheck[healthcheck.index("CMD [") + 4:])
    assert probe[0] == "python"
    return [python, *probe[1:]]


def test_healthcheck_port_and_path_default_to_8000_and_root():
    defaults = env_of(final_stage())
    assert (defaults["HEALTHCHECK_PORT"], defaults["HEALTHCHECK_PATH"]) == ("8000", "/")
    built = env_of(final_stage(), {"HEALTHCHECK_PATH": "/healthz", "HEALTHCHECK_PORT": "9000"})
    assert (built["HEALTHCHECK_PATH"], built["HEALTHCHECK_PORT"]) == ("/healthz", "9000")


def test_healthcheck_follows_the_path_it_is_given(run_server):
    """An app with no / route: unhealthy by default, healthy with HEALTHCHECK_PATH=/healthz."""

    async def app(scope, receive, send):
        status = 200 if scope["path"] == "/healthz" else 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with run_server(app) as server:
        defaults = env_of(final_stage())
        env = {**os.environ, **defaults, "HEALTHCHECK_PORT": str(server.port)}
        probe = healthcheck_command(sys.executable)
        default = subprocess.run(probe, env=env, timeout=15, capture_output=True, text=True, check=False)
        assert default.returncode != 0 and "HTTP Error 404" in default.stderr
        healthz = subprocess.run(probe, env=dict(env, HEALTHCHECK_PATH="/healthz"), timeout=15, check=False)
        assert healthz.returncode == 0
