"""--ws-allowed-origin matching: a browser's Origin header against the allowed list.

Browsers send the Origin of the page that opens a WebSocket, and the
same-origin policy does not apply to WebSockets: without this check, any site a
logged-in user visits can open a socket to the app with the user's cookies
(cross-site WebSocket hijacking).
"""

from __future__ import annotations


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """True when `origin` matches one entry of `allowed` (an empty tuple allows all).

    Entries are exact origins (`https://app.example.com`, compared
    case-insensitively as RFC 6454 serialises them lower-case) or a wildcard
    on the leftmost labels (`https://*.example.com`), which matches any
    subdomain but not `example.com` itself. A request without Origin (not from
    a browser) is refused when a list is set: the list is a promise about who
    may connect.
    """
    if not allowed:
        return True
    if origin is None:
        return False
    origin = origin.lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if "*." in pattern:
            scheme, _, suffix = pattern.partition("*.")
            if origin.startswith(scheme) and origin.endswith("." + suffix):
                subdomain = origin[len(scheme):-len(suffix) - 1]
                if subdomain and "/" not in subdomain:
                    return True
        elif origin == pattern:
            return True
    return False
