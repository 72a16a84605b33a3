"""Listening sockets and the TLS context, built once from a Config.

The supervisor binds before it forks any worker and keeps every listening
socket open for its whole life. On host:port each worker slot has its own
listener, all of them in one SO_REUSEPORT group, so the kernel spreads new
connections evenly over the slots instead of letting the busiest awake worker
win a shared accept queue. A listener is never closed while the supervisor
runs: the kernel ties a connection to one listener of the group at its SYN,
and closing that listener aborts the connections queued on it (Linux moves
them to another listener only with net.ipv4.tcp_migrate_req=1, off by
default). Kept by the supervisor, a slot's queue simply waits while its
worker is replaced, and the next generation of the slot inherits it.

--fd (an inherited socket) and --uds (SO_REUSEPORT applies to TCP only) keep
the one shared socket that every worker accepts on.
"""

from __future__ import annotations

import errno
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


def reuse_port_applies(config: Config) -> bool:
    """Whether each worker slot can have its own listener: host:port on a kernel with SO_REUSEPORT."""
    return config.fd is None and config.uds is None and hasattr(socket, "SO_REUSEPORT")


def bind_listeners(config: Config, slots: int) -> list[socket.socket]:
    """`slots` listeners in one SO_REUSEPORT group on host:port, or bind_sockets' one shared socket
    where that cannot apply (--fd, --uds).

    Raises OSError when the address cannot be bound, as bind_sockets does; another
    process's SO_REUSEPORT group on the port is "in use" too (never joined).
    """
    if not reuse_port_applies(config):
        return bind_sockets(config)
    first = _bind_tcp(config.host, config.port, config.backlog, reuse_port=True)
    first.set_inheritable(True)
    listeners = [first]
    try:
        listeners.extend(join_group(first, config.backlog) for _ in range(slots - 1))
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def join_group(member: socket.socket, backlog: int) -> socket.socket:
    """A new inheritable listener in `member`'s SO_REUSEPORT group (same address, same user).

    Raises OSError when it cannot be bound (out of file descriptors).
    """
    sock = socket.socket(member.family, member.type, member.proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(member.getsockname())
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


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


def _bind_tcp(host: str, port: int, backlog: int, *, reuse_port: bool = False) -> socket.socket:
    host = host.strip("[]")  # "[::1]" as written in URLs
    wanted = socket.AF_INET6 if ":" in host else socket.AF_UNSPEC
    infos = socket.getaddrinfo(host or None, port, wanted, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        # Restarting the server must not wait for TIME_WAIT sockets to expire.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if reuse_port:
            # Set after bind, not before: bind then fails with EADDRINUSE on a port where another
            # process's SO_REUSEPORT group listens, instead of silently sharing its connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def bind_error(config: Config, exc: OSError) -> str:
    """One line saying why binding what `config` asks for failed, and what to change."""
    where = configured_address(config)
    if isinstance(exc, socket.gaierror):
        return f"could not bind on {where}: --host {config.host!r} is not a known host name ({exc.strerror})"
    hint = _BIND_HINTS.get((exc.errno or 0, config.uds is not None), "")
    reason = (exc.strerror or str(exc)).lower()
    if hint and config.uds is not None:
        hint = hint.format(directory=os.path.dirname(os.path.abspath(config.uds)))
    return f"could not bind on {where}: {reason}" + (f" ({hint})" if hint else "")


# (errno, binding a unix socket) -> what the user can do about it.
_BIND_HINTS: dict[tuple[int, bool], str] = {
    (errno.EADDRINUSE, False): "another process is listening there: stop it or choose another --port",
    (errno.EADDRINUSE, True): "a file that is not a socket is in the way: remove it or choose another --uds",
    (errno.EADDRNOTAVAIL, False): "--host must be an address of this machine, or 0.0.0.0 for all of them",
    (errno.EACCES, False): "ports below 1024 need root or CAP_NET_BIND_SERVICE",
    (errno.EACCES, True): "no permission to create a file in {directory}",
    (errno.ENOENT, True): "the directory {directory} does not exist",
    (errno.ENOTDIR, True): "a part of the path is not a directory",
}


def tls_error(config: Config, exc: OSError) -> str:
    """One line saying which TLS file could not be loaded, and why (ssl.SSLError included)."""
    if isinstance(exc, ssl.SSLError):
        files = " / ".join(path for path in (config.ssl_certfile, config.ssl_keyfile) if path)
        return f"could not load the TLS certificate or key ({files}): {exc.reason or exc}"
    name = exc.filename or _first_unreadable(config)
    return f"could not load the TLS certificate or key: {name}: {(exc.strerror or str(exc)).lower()}"


def _first_unreadable(config: Config) -> str:
    """The first ssl_* file that cannot be opened (load_cert_chain's OSError does not say which)."""
    for path in (config.ssl_certfile, config.ssl_keyfile, config.ssl_ca_certs):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError:
            return path
    return str(config.ssl_certfile)


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

    With `ssl_context_factory` (uvicorn's keyword) the context is
    `ssl_context_factory(config, default)`, where `default()` builds the one below.
    Raises ssl.SSLError / OSError when a file is unreadable, the key does not
    match, or the password is wrong, so a bad setting fails at start-up.
    """
    if config.ssl_certfile is None and config.ssl_context_factory is None:
        return None
    if config.ssl_context_factory is not None:
        context: ssl.SSLContext = config.ssl_context_factory(config, lambda: _default_ssl_context(config))
        return context
    return _default_ssl_context(config)


def _default_ssl_context(config: Config) -> ssl.SSLContext:
    # ssl_version 17 (PROTOCOL_TLS_SERVER) negotiates the highest version both ends support.
    context = ssl.SSLContext(config.ssl_version)
    if config.ssl_certfile is None:
        raise OSError("the default TLS context needs --ssl-certfile")
    context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, config.ssl_keyfile_password)
    context.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
    if config.ssl_ca_certs is not None:
        context.load_verify_locations(config.ssl_ca_certs)
    if config.ssl_ciphers:
        context.set_ciphers(config.ssl_ciphers)
    # Only HTTP/1.1 is spoken; advertising it lets ALPN clients skip guessing.
    context.set_alpn_protocols(["http/1.1"])
    return context
