"""Addresses of a transport's two ends, and trusted proxy headers."""

from __future__ import annotations

import asyncio
import ipaddress
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


class TrustedProxies:
    """The --forwarded-allow-ips set: literal addresses, networks, or '*'."""

    def __init__(self, spec: str) -> None:
        self.always = False
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            if item == "*":
                self.always = True
            elif "/" in item:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            else:
                self.hosts.add(item)

    def __contains__(self, host: str | None) -> bool:
        if self.always:
            return True
        if host is None:
            return False
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


def _last_forwarded(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The last value of each X-Forwarded-* field present, in one pass over the head."""
    found: dict[bytes, bytes] = {}
    for key, val in headers:
        if key in FORWARDED_FIELDS:
            found[key] = val
    return found


def rewrite_from_forwarded(scope: dict[str, Any] | Any, trusted: TrustedProxies) -> None:
    """Rewrite scheme, client and server from X-Forwarded-*; the caller has checked
    that the TCP peer is in `trusted` (once per connection: the peer does not change).

    X-Forwarded-For: the client is the right-most address not itself trusted
    (each proxy appends; only trusted ones can be believed).
    """
    forwarded = _last_forwarded(scope["headers"])
    proto = forwarded.get(b"x-forwarded-proto")
    if proto is not None:
        value = proto.decode("latin-1").split(",")[-1].strip().lower()
        if value in ("http", "https", "ws", "wss"):
            secure = value in ("https", "wss")
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"
    forwarded_for = forwarded.get(b"x-forwarded-for")
    if forwarded_for is not None:
        hosts = [h.strip() for h in forwarded_for.decode("latin-1").split(",") if h.strip()]
        chosen = None
        for host in reversed(hosts):
            chosen = host
            if host not in trusted:
                break
        if chosen is not None:
            scope["client"] = (chosen, 0)
    forwarded_host = forwarded.get(b"x-forwarded-host")
    if forwarded_host is not None:
        host_text = forwarded_host.decode("latin-1").split(",")[-1].strip()
        name, sep, port = host_text.rpartition(":")
        if sep and port.isdigit():
            scope["server"] = (name, int(port))
        else:
            default = 443 if scope["scheme"] in ("https", "wss") else 80
            scope["server"] = (host_text, default)
