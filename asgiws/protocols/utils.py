"""Addresses of a transport's two ends, and trusted proxy headers."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any


def get_remote_addr(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """The peer's (host, port), or None for UNIX sockets."""
    info = transport.get_extra_info("peername")
    if isinstance(info, (list, tuple)) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


def get_local_addr(transport: asyncio.BaseTransport) -> tuple[str, int | None] | None:
    """This end's (host, port); (path, None) for UNIX sockets."""
    info = transport.get_extra_info("sockname")
    if isinstance(info, (list, tuple)) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str) and info:
        return (info, None)
    return None


def is_ssl(transport: asyncio.BaseTransport) -> bool:
    return transport.get_extra_info("sslcontext") is not None


def peer_name(transport: asyncio.BaseTransport) -> str | None:
    """What --forwarded-allow-ips is matched against: the peer's IP, UNIX_PEER for a
    UNIX-socket peer (which has no address), None when neither is known."""
    remote = get_remote_addr(transport)
    if remote is not None:
        return remote[0]
    sock = transport.get_extra_info("socket")
    if sock is not None and getattr(sock, "family", None) == socket.AF_UNIX:
        return UNIX_PEER
    return None


# The --forwarded-allow-ips entry for peers on a UNIX socket (nginx's
# set_real_ip_from spells it the same way): only a local process can connect,
# and the socket directory's permissions decide which.
UNIX_PEER = "unix:"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The --forwarded-allow-ips set: addresses, networks, "unix:" and "*".

    Two questions are asked of it, and "*" answers only the first:
    - `trusts_peer`: may the connection's own peer send proxy headers (or a
      PROXY protocol header)? "*" says yes to any peer, "unix:" to UNIX-socket peers.
    - `trusts_hop`: is an address named inside X-Forwarded-For one of our proxies,
      to be skipped on the way to the client? Only listed addresses and networks
      are: "*" trusting every hop would make the left-most address, which the
      client itself wrote, the client.

    Raises ValueError (naming the entry) for an entry that is not an address,
    a network, "unix:" or "*".
    """

    __slots__ = ("any_peer", "hosts", "networks")

    def __init__(self, spec: str) -> None:
        self.any_peer = False
        self.hosts: set[str] = set()
        self.networks: list[Network] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            if item == "*":
                self.any_peer = True
            elif item == UNIX_PEER:
                self.hosts.add(item)
            elif "/" in item:
                try:
                    self.networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ValueError(f"--forwarded-allow-ips: {item!r} is not a network") from None
            else:
                try:
                    self.hosts.add(str(ipaddress.ip_address(item)))
                except ValueError:
                    raise ValueError(
                        f"--forwarded-allow-ips: {item!r} is not an IP address, a network, 'unix:' or '*'"
                    ) from None

    def trusts_peer(self, peer: str | None) -> bool:
        """True when `peer` (an IP, UNIX_PEER or None, see peer_name) may send proxy headers."""
        if self.any_peer:
            return peer is not None
        return peer is not None and self.trusts_hop(peer)

    def trusts_hop(self, host: str) -> bool:
        """True when `host` (a normalised IP address, or UNIX_PEER) is listed itself or by network."""
        if host in self.hosts:
            return True
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


# The proxy fields read when the peer is trusted (http.py notes their presence).
FORWARDED_FIELDS = (b"x-forwarded-proto", b"x-forwarded-for", b"x-forwarded-host")


def _forwarded_values(headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """Every value of each X-Forwarded-* field present, in order, in one pass over the head.

    RFC 9110 5.3: several field lines of one name mean the same as one line
    with their values joined by commas, in order (HAProxy's `option forwardfor`
    adds a line of its own rather than appending to the client's).
    """
    found: dict[bytes, list[bytes]] = {}
    for key, val in headers:
        if key in FORWARDED_FIELDS:
            found.setdefault(key, []).append(val)
    return found


def _last_item(values: list[bytes]) -> str:
    """The right-most comma-separated item of the joined field values: the nearest proxy's."""
    return values[-1].decode("latin-1").split(",")[-1].strip()


def forwarded_address(text: str) -> str | None:
    """The IP address in one X-Forwarded-For item, normalised; None if it holds none.

    Accepts "192.0.2.1", "192.0.2.1:4711", "2001:db8::1" and "[2001:db8::1]:4711"
    (some proxies append the port); "unknown", "unix:" and anything else is None.
    """
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def client_from_forwarded_for(values: list[bytes], trusted: TrustedProxies) -> str | None:
    """The client named by X-Forwarded-For: the right-most address that is not a trusted hop.

    Each proxy appends the address it received the request from, so reading
    from the right, every address up to the first untrusted one was written by
    a proxy we trust; what lies left of it the client wrote and is worth nothing.
    When every address is a trusted hop the left-most is the client (the request
    came from inside). None when the item reached is not an IP address (a
    proxy that wrote "unknown", or a client's garbage passed on): the caller
    keeps the peer's address.
    """
    items = [item.strip() for value in values for item in value.decode("latin-1").split(",")]
    address: str | None = None
    for item in reversed(items):
        if not item:
            continue
        address = forwarded_address(item)
        if address is None or not trusted.trusts_hop(address):
            return address
    return address


def rewrite_from_forwarded(
    scope: dict[str, Any] | Any, trusted: TrustedProxies, *, forwarded_host: bool = False
) -> None:
    """Rewrite scheme and client (and server, with `forwarded_host`) from X-Forwarded-*.

    The caller has checked that the peer is trusted (once per connection: the
    peer does not change). X-Forwarded-Host is read only when `forwarded_host`
    (--forwarded-host) says the proxy sets or clears it: a proxy that passes the
    client's own field on would let any client choose scope["server"].
    """
    forwarded = _forwarded_values(scope["headers"])
    proto = forwarded.get(b"x-forwarded-proto")
    if proto is not None:
        value = _last_item(proto).lower()
        if value in ("http", "https", "ws", "wss"):
            secure = value in ("https", "wss")
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"
    forwarded_for = forwarded.get(b"x-forwarded-for")
    if forwarded_for is not None:
        client = client_from_forwarded_for(forwarded_for, trusted)
        if client is not None:
            scope["client"] = (client, 0)
    forwarded_hosts = forwarded.get(b"x-forwarded-host")
    if forwarded_host and forwarded_hosts is not None:
        host_text = _last_item(forwarded_hosts)
        name, sep, port = host_text.rpartition(":")
        if sep and port.isdigit() and not name.endswith(":"):
            scope["server"] = (name.strip("[]"), int(port))
        elif host_text:
            default = 443 if scope["scheme"] in ("https", "wss") else 80
            scope["server"] = (host_text.strip("[]"), default)
