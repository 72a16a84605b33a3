"""asgiws.sockets: what the supervisor binds before it forks."""

from __future__ import annotations

import errno
import socket
import stat

import pytest

from asgiws.config import Config
from asgiws.sockets import bind_listeners, bind_sockets, describe, join_group


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


def _accept_all(sock: socket.socket) -> int:
    """How many connections wait in `sock`'s accept queue (accepted and closed)."""
    sock.setblocking(False)
    accepted = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return accepted
        conn.close()
        accepted += 1


def test_host_port_gets_one_listener_per_slot_in_one_reuseport_group():
    listeners = bind_listeners(Config(app="x:y", host="127.0.0.1", port=0, backlog=128), 4)
    try:
        assert len(listeners) == 4
        assert len({sock.getsockname() for sock in listeners}) == 1
        for sock in listeners:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            assert sock.get_inheritable()
        clients = [socket.create_connection(listeners[0].getsockname(), timeout=5) for _ in range(200)]
        queued = [_accept_all(sock) for sock in listeners]
        for client in clients:
            client.close()
        # The kernel hashed the 200 connections over the 4 queues: each got some, none got them all.
        assert sum(queued) == 200 and min(queued) > 0, queued
    finally:
        for sock in listeners:
            sock.close()


def test_a_port_another_processes_reuseport_group_listens_on_is_in_use():
    foreign = socket.socket()
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    foreign.bind(("127.0.0.1", 0))
    foreign.listen()
    with foreign, pytest.raises(OSError) as raised:
        bind_listeners(Config(app="x:y", host="127.0.0.1", port=foreign.getsockname()[1]), 2)
    assert raised.value.errno == errno.EADDRINUSE


def test_join_group_adds_a_listener_on_the_same_address():
    [first] = bind_listeners(Config(app="x:y", host="127.0.0.1", port=0), 1)
    with first, join_group(first, 16) as joined:
        assert joined.getsockname() == first.getsockname()
        assert joined.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


def test_uds_and_fd_keep_one_shared_socket(tmp_path):
    [uds] = bind_listeners(Config(app="x:y", uds=str(tmp_path / "s.sock")), 4)
    with uds:
        assert uds.family == socket.AF_UNIX
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    [fd] = bind_listeners(Config(app="x:y", fd=inherited.detach()), 4)
    with fd:
        assert not fd.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
