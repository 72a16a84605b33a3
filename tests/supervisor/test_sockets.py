"""asgiws.sockets: what the supervisor binds before it forks."""

from __future__ import annotations

import socket
import stat

import pytest

from asgiws.config import Config
from asgiws.sockets import bind_sockets, describe


def test_tcp_socket_is_listening_reusable_and_inheritable():
    [sock] = bind_sockets(Config(app="x:y", host="127.0.0.1", port=0, backlog=16))
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert sock.get_inheritable()
        port = sock.getsockname()[1]
        assert describe(sock, tls=True) == f"https://127.0.0.1:{port}"


def test_ipv6_host_in_brackets():
    try:
        [sock] = bind_sockets(Config(app="x:y", host="[::1]", port=0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6
        assert describe(sock, tls=False).startswith("http://[::1]:")


def test_uds_replaces_a_stale_socket_file_and_is_world_writable(tmp_path):
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # what a kill -9 leaves behind
    [sock] = bind_sockets(Config(app="x:y", uds=str(path)))
    with sock:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        assert describe(sock, tls=False) == f"http+unix://{path}"


def test_uds_never_deletes_a_regular_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(OSError):
        bind_sockets(Config(app="x:y", uds=str(path)))
    assert path.read_text() == "precious"


def test_fd_adopts_an_inherited_socket_whatever_its_family(tmp_path):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "a.sock"))
    listener.listen()
    [sock] = bind_sockets(Config(app="x:y", fd=listener.detach()))
    with sock:
        assert sock.family == socket.AF_UNIX
        assert sock.getsockname() == str(tmp_path / "a.sock")
