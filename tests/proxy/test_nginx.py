"""Behind a real nginx, configured with the very lines docs/deployment.md gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.proxy.apps import whoami
from tests.proxy.wire import free_port, http_identity, nginx_command, running, ws_identity

DOCS = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
SPOOF = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.test\r\n"


def docs_blocks() -> tuple[str, str]:
    """The `map` and `location /` blocks of the nginx configuration in docs/deployment.md."""
    [config] = re.findall(r"```nginx\n(.*?)```", DOCS.read_text(), re.DOTALL)
    [map_block] = re.findall(r"^map \$http_upgrade .*?^\}", config, re.DOTALL | re.MULTILINE)
    [location] = re.findall(r"^    location / \{.*?^    \}", config, re.DOTALL | re.MULTILINE)
    assert "proxy_pass http://asgiws;" in location
    return map_block, location


def nginx_conf(upstream: str, port: int, location: str) -> str:
    map_block, _ = docs_blocks()
    return (f"upstream asgiws {{ server {upstream}; }}\n{map_block}\n"
            f"server {{\n    listen 127.0.0.1:{port};\n{location}\n}}\n")


@pytest.fixture
def nginx_in_front(tmp_path: Path):
    """`nginx_in_front(upstream, location)`: a running nginx on a free port in front of `upstream`."""
    def start(upstream: str, location: str | None = None):
        port = free_port()
        prefix = tmp_path / f"nginx-{port}"
        prefix.mkdir()
        conf = nginx_conf(upstream, port, location if location is not None else docs_blocks()[1])
        return port, running(nginx_command(prefix, conf), port, prefix / "out.log")
    return start


def test_docs_config_over_a_unix_socket_takes_the_client_from_nginx_not_from_its_own_header(
    run_server, nginx_in_front, tmp_path: Path
):
    path = str(tmp_path / "app.sock")
    with run_server(whoami, uds=path, forwarded_allow_ips="unix:") as _:
        port, nginx = nginx_in_front(f"unix:{path}")
        with nginx:
            # Port 0: the address came from X-Forwarded-For ($remote_addr), not from a peer.
            assert http_identity(port, SPOOF) == {"client": ["127.0.0.1", 0], "server": [path, None],
                                                 "scheme": "http"}
            assert ws_identity(port, SPOOF) == {"client": ["127.0.0.1", 0], "server": [path, None],
                                               "scheme": "ws"}


def test_appending_config_with_star_is_safe_too(run_server, nginx_in_front, tmp_path: Path):
    # The configuration these docs gave before: $proxy_add_x_forwarded_for and '*'. nginx sends
    # "6.6.6.6, 127.0.0.1"; the server's own rule (right-most untrusted) keeps the lie out.
    _, location = docs_blocks()
    appending = location.replace("X-Forwarded-For $remote_addr;",
                                 "X-Forwarded-For $proxy_add_x_forwarded_for;")
    assert appending != location
    path = str(tmp_path / "app.sock")
    with run_server(whoami, uds=path, forwarded_allow_ips="*") as _:
        port, nginx = nginx_in_front(f"unix:{path}", appending)
        with nginx:
            assert http_identity(port, SPOOF)["client"] == ["127.0.0.1", 0]
            assert ws_identity(port, SPOOF)["client"] == ["127.0.0.1", 0]


def test_docs_config_over_tcp_with_forwarded_host_opted_in(run_server, nginx_in_front):
    with run_server(whoami, forwarded_host=True) as server:
        port, nginx = nginx_in_front(f"127.0.0.1:{server.port}")
        with nginx:
            # nginx sets X-Forwarded-Host from Host (app.test): the client's own is replaced.
            assert http_identity(port, SPOOF) == {"client": ["127.0.0.1", 0], "server": ["app.test", 80],
                                                 "scheme": "http"}
            assert ws_identity(port, SPOOF)["server"] == ["app.test", 80]
