"""Every command the docs show is run, or checked another way when it cannot run here.

The pages: README.md, docs/*.md, examples/*/README.md, bench/README.md. Their
shell blocks (```sh, ```bash) are split into commands, and each command goes
to the one rule for its program (COMMAND_RULES): an asgiws command is started
on a free loopback port and must answer a request and stop cleanly on SIGTERM;
a `pip install` must name only extras pyproject.toml has; a benchmark's flags
must be in its --help; docker, kubectl and systemctl commands are checked
through the Dockerfile, the Kubernetes YAML and the systemd units the page
shows. A command no rule knows fails the test: a new kind of command needs a
way to be checked.

Files a page shows (a fenced block whose first line is `# name.py` or `;
name.ini`, or that follows a line "`name`:") are written into the command's
working directory first, so `--log-config log-json.json` and `python -m
pytest test_app.py` run what the page shows. `myapp.main:app` and
`myapp:app`, the README's placeholder app, are a small module made here.
"""

from __future__ import annotations

import configparser
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from tests.broadcast.conftest import RedisServer, free_port, redis_binary

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([
    ROOT / "README.md", ROOT / "bench" / "README.md",
    *ROOT.glob("docs/*.md"), *ROOT.glob("examples/*/README.md"),
])
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
# The start-up line that names the address ("... running on URL", "Listening on URL").
LISTENING = r"(?:running|[Ll]istening) on (http://127\.0\.0\.1:\d+)"
START_TIMEOUT = 45.0  # seconds for a server (several workers on a shared, busy machine) to answer
STOP_TIMEOUT = 30.0

MYAPP = '''\
"""The docs' placeholder app: HTTP 200 on every path, lifespan supported."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"myapp"})


def create_app():
    return app
'''


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str
    filename: str | None


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the file name each shows (if any)."""
    text = page.read_text()
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        language, body = match.group(1), match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        caption = re.fullmatch(r"`(?:/[\w/.-]+/)?([\w.-]+)`:", before)
        first = re.fullmatch(r"(?:#|;) ([\w-]+\.(?:py|ini|json|yaml|yml))", body.split("\n", 1)[0])
        filename = caption.group(1) if caption else first.group(1) if first else None
        found.append(Block(page, line, language, body, filename))
    return found


def page_files(page: Path) -> dict[str, str]:
    return {block.filename: block.text for block in blocks(page) if block.filename}


def commands(page: Path) -> Iterator[tuple[int, str]]:
    """(line number, command) of every shell line of a page; continuation lines joined."""
    for block in blocks(page):
        if block.language not in SHELL_LANGUAGES:
            continue
        pending, start = "", block.line
        for offset, line in enumerate(block.text.splitlines(), start=1):
            if not pending:
                start = block.line + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            full, pending = pending + line, ""
            if shlex.split(full, comments=True):
                yield start, full.strip()


def every_command() -> list[tuple[Path, int, str]]:
    return [(page, line, command) for page in PAGES for line, command in commands(page)]


# -- running what a page shows ------------------------------------------------------------


@dataclass
class Context:
    page: Path
    workdir: Path
    env: dict[str, str]
    redis: Callable[[], RedisServer]


def program(word: str) -> str:
    """`.benchvenv/bin/pip` -> pip, `python3` -> python."""
    name = os.path.basename(word)
    return "python" if re.fullmatch(r"python3?(\.\d+)?", name) else name


def steps(command: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    """(environment assignments, words) of each `&&`-joined step."""
    words = shlex.split(command, comments=True)
    step: list[str] = []
    for word in [*words, "&&"]:
        if word != "&&":
            step.append(word)
            continue
        env = {}
        while step and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", step[0]):
            key, _, value = step.pop(0).partition("=")
            env[key] = value
        if step:
            yield env, step
        step = []


def check_pip(words: list[str], context: Context) -> None:
    """Only extras pyproject.toml has; no machine paths; everything else a valid requirement."""
    assert words[:1] == ["install"], words
    for word in words[1:]:
        if word.startswith("-"):
            continue
        match = re.fullmatch(r"(\.|asgiws)(?:\[([\w,-]+)\])?", word)
        if match:
            extras = set(filter(None, (match.group(2) or "").split(",")))
            assert extras <= EXTRAS, f"{word}: no extra {sorted(extras - EXTRAS)} in pyproject.toml"
            continue
        assert not word.startswith("/"), f"{word}: a path on one machine"
        Requirement(word)  # raises InvalidRequirement


def run_venv(words: list[str], context: Context) -> None:
    assert words[0] == "-m" and words[1] == "venv", words
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", *words[2:]], cwd=context.workdir,
                   check=True, timeout=60)


def check_help_flags(module: str, words: list[str]) -> None:
    """A long benchmark: its module runs, and every flag the page uses is in its --help."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for word in words:
        if word.startswith("-"):
            flag = word.split("=")[0]
            assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", result.stdout), f"{module} has no {flag}"


class Server:
    """A docs command serving on 127.0.0.1: its output, read as it comes, and a stop."""

    def __init__(self, argv: list[str], context: Context, pass_fds: tuple[int, ...] = ()) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            argv, cwd=context.workdir, env=context.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True, pass_fds=pass_fds,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None, "exited:\n" + "\n".join(self.output)
                continue
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "\n".join(self.output))

    def wait_workers_ready(self, args: list[str]) -> None:
        """With --workers N, until all N say they are ready: a worker still starting when
        SIGTERM comes is not what these commands test (it is slow to stop, and then killed)."""
        if "--workers" in args:
            for _ in range(int(args[args.index("--workers") + 1])):
                self.wait_for(r"Worker \d+ is ready")

    def get(self, url: str, timeout: float = START_TIMEOUT) -> httpx.Response:
        """GET until a worker answers (workers start after the supervisor listens)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return httpx.get(url, timeout=5)
            except httpx.TransportError:
                assert time.monotonic() < deadline and self.process.poll() is None, "\n".join(self.output)
                time.sleep(0.1)

    def stop(self) -> list[str]:
        """SIGTERM (Ctrl-C, docker stop, systemctl stop); must exit 0. All output lines."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.reader.join(5)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        assert code == 0, f"exit {code}:\n" + "\n".join(self.output)
        return self.output


def serve_command(args: list[str], env: dict[str, str], context: Context) -> list[str]:
    """Run an asgiws command on a free loopback port; one GET /; SIGTERM. Returns its output."""
    args = list(args)
    for flag, value in (("--host", "127.0.0.1"),):
        if flag in args:
            args[args.index(flag) + 1] = value
    port = str(free_port())
    if "--port" in args:
        if args[args.index("--port") + 1] != "0":  # 0: the server picks, and logs it
            args[args.index("--port") + 1] = port
    elif "ASGIWS_PORT" in env:
        env = {**env, "ASGIWS_PORT": port}
    else:
        args += ["--port", port]
    if "--broadcast-url" in args:
        args[args.index("--broadcast-url") + 1] = context.redis().url
    metrics_url = None
    if "--metrics-port" in args:
        metrics_port = str(free_port())
        args[args.index("--metrics-port") + 1] = metrics_port
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    server = Server([sys.executable, "-m", "asgiws", *args], Context(context.page, context.workdir,
                                                                      {**context.env, **env}, context.redis))
    try:
        found = server.wait_for(LISTENING)
        server.wait_workers_ready(args)
        response = server.get(found.group(1) + "/")
        assert response.status_code < 500, response
        if metrics_url is not None:  # docs/metrics.md: what the page says a scrape shows
            metrics = server.get(metrics_url)
            assert metrics.status_code == 200 and "asgiws_http_requests_total{" in metrics.text, metrics.text
    finally:
        output = server.stop()
    return output


def run_asgiws(words: list[str], env: dict[str, str], context: Context) -> None:
    output = serve_command(words, env, context)
    for name, check in OUTPUT_CHECKS.items():
        if name in words:
            check(output, context)


def run_python(words: list[str], env: dict[str, str], context: Context) -> None:
    assert words[0] == "-m", words
    module = words[1]
    if module == "asgiws":
        run_asgiws(words[2:], env, context)
    elif module == "venv":
        run_venv(words, context)
    elif module == "pip":
        check_pip(words[2:], context)
    elif module == "pytest" and len(words) == 2:
        # The whole suite (this test is part of it): CI's command, checked by tests/test_readme.py.
        assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()
    elif module == "pytest":
        result = subprocess.run([sys.executable, *words, "-p", "no:cacheprovider"], cwd=context.workdir,
                                env={**context.env, **env}, capture_output=True, text=True, timeout=300,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"\d+ passed", result.stdout) and "failed" not in result.stdout, result.stdout
    elif module in ("bench.run", "conformance.run", "examples.chat.fanout_bench", "bench.broadcast_redis",
                    "bench.idle", "bench.echo_instructions", "bench.combine", "bench.drain",
                    "bench.tls_memory"):
        check_help_flags(module, words[2:])
    elif module == "bench.uncounted":
        run_uncounted(words[2:], context)
    elif module == "asgiws.broadcast":
        run_broadcast_command(words[2:], env, context)
    else:
        raise AssertionError(f"no rule checks `python -m {module}`")


def run_uncounted(words: list[str], context: Context) -> None:
    """`python -m bench.uncounted [--control] DIR`: written into the page's own directory, and importable."""
    dest = context.workdir / Path(words[-1]).name
    result = subprocess.run([sys.executable, "-m", "bench.uncounted", *words[:-1], str(dest)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert ("kept (control)" if "--control" in words else "taken out") in result.stdout, result.stdout
    check = subprocess.run([sys.executable, "-c", "import asgiws.asgi.websocket, asgiws.websocket.connection"],
                           cwd=dest, env={**context.env, "PYTHONPATH": str(dest)}, capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr


def run_broadcast_command(words: list[str], env: dict[str, str], context: Context) -> None:
    """`python -m asgiws.broadcast publish URL CHANNEL MESSAGE`, through a real Redis: prints the offset."""
    words = [context.redis().url if word.startswith("redis://") else word for word in words]
    result = subprocess.run([sys.executable, "-m", "asgiws.broadcast", *words], cwd=context.workdir,
                            env={**context.env, **env}, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    if words[0] == "publish":
        assert re.fullmatch(r"[0-9a-f]{8}:\d+-\d+\n", result.stdout), result.stdout


def check_docker(words: list[str], env: dict[str, str], context: Context) -> None:
    """No engine here: `build` needs the Dockerfile (tests/test_dockerfile.py runs its stages);
    `run IMAGE ARGS` runs ARGS as the image's ENTRYPOINT (asgiws) would."""
    if words[0] == "build":
        assert words[-1] == "." and (ROOT / "Dockerfile").exists()
        return
    assert words[0] == "run", words
    index, takes_value = 1, {"-p", "-v", "-w", "-e", "--name", "-t", "--stop-timeout"}
    while words[index].startswith("-"):
        index += 2 if words[index] in takes_value else 1
    image, args = words[index], words[index + 1:]
    assert image in ("asgiws", "myapp"), image
    if args:
        assert '"asgiws"' in (ROOT / "Dockerfile").read_text().split("ENTRYPOINT", 1)[1].split("\n")[0]
        serve_command(args, env, context)


def check_kubectl(words: list[str], env: dict[str, str], context: Context) -> None:
    assert words[:2] == ["apply", "-f"], words
    assert words[2] in page_files(context.page), f"{words[2]} is not shown on {context.page.name}"


def check_systemctl(words: list[str], env: dict[str, str], context: Context) -> None:
    units = page_files(context.page)
    for word in words:
        if word.endswith((".socket", ".service")):
            assert word in units, f"{word} is not shown on {context.page.name}"
        else:
            assert word in ("daemon-reload", "enable", "--now", "restart", "reload"), word


def check_apt(words: list[str], env: dict[str, str], context: Context) -> None:
    assert words[0] == "install", words
    for package in words[1:]:
        if not package.startswith("-"):
            found = subprocess.run(["dpkg-query", "-W", package], capture_output=True, check=False)
            assert found.returncode == 0, f"Debian package {package} is not installed"


COMMAND_RULES: dict[str, Callable[[list[str], dict[str, str], Context], None]] = {
    "asgiws": run_asgiws,
    "python": run_python,
    "pip": lambda words, env, context: check_pip(words, context),
    "docker": check_docker,
    "kubectl": check_kubectl,
    "systemctl": check_systemctl,
    "apt-get": check_apt,
}


# -- what docs/logging.md says the lines look like ----------------------------------------


def lines_of(output: list[str], logger: str) -> list[str]:
    return [line for line in output if f" {logger}: " in line or f'"logger": "{logger}"' in line]


def timestamps_on_every_line(output: list[str], context: Context) -> None:
    assert output and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (INFO|WARNING) ", line)
                          for line in output), output
    assert lines_of(output, "asgiws.access") and 'GET / HTTP/1.1" 200' in lines_of(output, "asgiws.access")[0]


def app_logger_shown(output: list[str], context: Context) -> None:
    assert [line.split(" app: ")[1] for line in lines_of(output, "app")] == ["serving /"], output


def json_lines(output: list[str], context: Context) -> None:
    records = [json.loads(line) for line in output]
    assert all(set(record) == {"time", "level", "logger", "message"} for record in records), records
    assert {"asgiws.error", "asgiws.access", "app"} <= {record["logger"] for record in records}


def access_log_in_a_file(output: list[str], context: Context) -> None:
    assert not lines_of(output, "asgiws.access") and lines_of(output, "asgiws.error"), output
    access = (context.workdir / "access.log").read_text().splitlines()
    assert len(access) == 1 and " asgiws.access: 127.0.0.1:" in access[0], access
    assert access[0].endswith('"GET / HTTP/1.1" 200'), access


OUTPUT_CHECKS: dict[str, Callable[[list[str], Context], None]] = {
    "log-timestamps.json": timestamps_on_every_line,
    "log-app.json": app_logger_shown,
    "log-json.json": json_lines,
    "log-access-file.ini": access_log_in_a_file,
}


@pytest.fixture
def context(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Context]:
    page: Path = request.node.callspec.params["page"]
    workdir = tmp_path / "work"
    (workdir / "myapp").mkdir(parents=True)
    (workdir / "myapp" / "main.py").write_text(MYAPP)
    (workdir / "myapp" / "__init__.py").write_text("from myapp.main import app, create_app\n")
    for name, text in page_files(page).items():
        (workdir / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WEB_CONCURRENCY", None)
    started: list[RedisServer] = []

    def redis() -> RedisServer:
        if not started:
            started.append(RedisServer(redis_binary(), free_port()))
            started[0].start()
        return started[0]

    yield Context(page, workdir, env, redis)
    for server in started:
        server.stop()


def _id(value: object) -> str:
    return str(value.relative_to(ROOT)) if isinstance(value, Path) else str(value)[:60]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("page", "line", "command"), every_command(), ids=_id)
def test_doc_command_runs_or_is_checked(page: Path, line: int, command: str, context: Context) -> None:
    for env, words in steps(command):
        rule = COMMAND_RULES.get(program(words[0]))
        assert rule is not None, f"{page.name}:{line}: no rule checks `{words[0]}` ({command})"
        rule(words[1:], env, context)


def test_every_page_is_listed_in_the_index_and_has_its_commands_found() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"({os.path.relpath(page, ROOT / 'docs')})" in index, f"docs/index.md does not list {page}"
    assert len(every_command()) >= 30  # the extraction found the blocks


def test_docs_show_no_machine_paths() -> None:
    for page in PAGES:
        text = page.read_text()
        for path in ("/work/", "/home/", "/root/", "/tmp/bench"):
            assert path not in text, f"{page.relative_to(ROOT)} names {path}"


# -- the recipes that cannot run here as they are -----------------------------------------


DEPLOYMENT = ROOT / "docs" / "deployment.md"


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_kubernetes_example_probes_answer_and_the_grace_period_covers_the_drain(tmp_path: Path) -> None:
    manifest = yaml.safe_load(page_files(DEPLOYMENT)["deployment.yaml"])
    assert manifest["kind"] == "Deployment"
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and shutil.which("sleep")
    drain = float(pre_stop[1]) + sum(float(option(args, flag)) for flag in (
        "--ws-drain-time", "--ws-close-spread", "--timeout-graceful-shutdown"))
    assert pod["terminationGracePeriodSeconds"] > drain + 5, (pod["terminationGracePeriodSeconds"], drain)
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert port_names[container["readinessProbe"]["httpGet"]["port"]] == int(option(args, "--port"))

    redis = RedisServer(redis_binary(), free_port())
    redis.start()
    try:
        served = [*args]
        served[served.index("--host") + 1] = "127.0.0.1"
        served[served.index("--port") + 1] = str(free_port())
        served[served.index("--broadcast-url") + 1] = redis.url
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = Server([sys.executable, "-m", "asgiws", *served],
                        Context(DEPLOYMENT, ROOT, env, lambda: redis))
        try:
            base = server.wait_for(LISTENING).group(1)
            server.wait_workers_ready(served)
            for probe in ("readinessProbe", "livenessProbe"):
                assert server.get(base + container[probe]["httpGet"]["path"]).status_code == 200
        finally:
            output = server.stop()
        assert any("stopped" in line for line in output), output
    finally:
        redis.stop()


def test_systemd_units_verify_and_serve_through_socket_activation(tmp_path: Path) -> None:
    units = page_files(DEPLOYMENT)
    asgiws_binary = shutil.which("asgiws", path=str(Path(sys.executable).parent))
    assert asgiws_binary is not None
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.optionxform = str  # type: ignore[assignment,method-assign]
    service.read_string(units["chat.service"])
    socket_unit = configparser.ConfigParser(strict=False, interpolation=None)
    socket_unit.read_string(units["chat.socket"])
    exec_start = shlex.split(service["Service"]["ExecStart"])
    assert exec_start[0].endswith("/bin/asgiws") and option(exec_start, "--fd") == "3"
    graceful = float(option(exec_start, "--timeout-graceful-shutdown"))
    assert float(service["Service"]["TimeoutStopSec"]) > graceful

    # systemd-analyze checks every key and the ExecStart binary (made one that exists here).
    for name, text in units.items():
        (tmp_path / name).write_text(text.replace(exec_start[0], asgiws_binary))
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "chat.socket"),
                             str(tmp_path / "chat.service")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr

    # What systemd does on the first connection: a socket bound as ListenStream says, as fd 3.
    host, _, _ = socket_unit["Socket"]["ListenStream"].rpartition(":")
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(int(socket_unit["Socket"]["Backlog"]))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    argv = ["bash", "-c", f'exec 3<&{fd} {fd}<&-; exec "$@"', "bash", asgiws_binary, *exec_start[1:]]
    server = Server(argv, Context(DEPLOYMENT, ROOT, {**os.environ, "PYTHONPATH": str(ROOT)}, lambda: None),
                    pass_fds=(fd,))
    listener.close()
    try:
        assert server.wait_for(LISTENING).group(1) == f"http://127.0.0.1:{port}"
        server.wait_workers_ready(exec_start)
        assert server.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
    finally:
        server.stop()
