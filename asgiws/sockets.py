"""Listening sockets and the TLS context, built once from a Config.

The supervisor binds before it forks any worker, so every worker serves the
same kernel accept queue: a worker that stops (crash, restart, recycle) never
makes a connection attempt fail, because the socket stays open in the
supervisor and in the other workers.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat

from asgiws.config import Config

logger = logging.getLogger("asgiws.error")

# rw for everyone: the usual client of a unix socket is a reverse proxy
# running as another user (nginx as www-data); restrict access with the
# directory's permissions instead. uvicorn and gunicorn do the same.
UDS_PERMISSIONS = 0o666


def bind_sockets(config: Config) -> list[socket.socket]:
    """Bind and listen on what `config` asks for: --fd, --uds, or host:port.

    Raises OSError when the address cannot be bound (in use, no permission).
    The sockets are inheritable, so forked workers can serve them.
    """
    if config.fd is not None:
        sock = _from_fd(config.fd)
    elif config.uds is not None:
        sock = _bind_unix(config.uds, config.backlog)
    else:
        sock = _bind_tcp(config.host, config.port, config.backlog)
    sock.set_inheritable(True)
    return [sock]


def _from_fd(fd: int) -> socket.socket:
    # socket(fileno=) reads the family and type from the kernel.
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM:
        raise OSError(f"--fd {fd} is not a stream socket")
    return sock


def _bind_unix(path: str, backlog: int) -> socket.socket:
    # A socket file left by a previous run (killed with -9) would make bind
    # fail with EADDRINUSE; remove it, but never a regular file.
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, UDS_PERMISSIONS)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_tcp(host: str, port: int, backlog: int) -> socket.socket:
    host = host.strip("[]")  # "[::1]" as written in URLs
    wanted = socket.AF_INET6 if ":" in host else socket.AF_UNSPEC
    infos = socket.getaddrinfo(host or None, port, wanted, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        # Restarting the server must not wait for TIME_WAIT sockets to expire.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def configured_address(config: Config) -> str:
    """Where `config` asks to listen, for error messages: "127.0.0.1:8000", a path, "fd 3"."""
    if config.fd is not None:
        return f"fd {config.fd}"
    return config.uds or f"{config.host}:{config.port}"


def describe(sock: socket.socket, *, tls: bool) -> str:
    """The URL a client uses to reach `sock`, for the start-up log line."""
    scheme = "https" if tls else "http"
    if sock.family == socket.AF_UNIX:
        return f"{scheme}+unix://{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def create_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context from the ssl_* settings; None without a certificate.

    Raises ssl.SSLError / OSError when a file is unreadable, the key does not
    match, or the password is wrong, so a bad setting fails at start-up.
    """
    if config.ssl_certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, config.ssl_keyfile_password)
    context.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
    if config.ssl_ca_certs is not None:
        context.load_verify_locations(config.ssl_ca_certs)
    if config.ssl_ciphers:
        context.set_ciphers(config.ssl_ciphers)
    # Only HTTP/1.1 is spoken; advertising it lets ALPN clients skip guessing.
    context.set_alpn_protocols(["http/1.1"])
    return context
