"""Opening handshake (RFC 6455 4.2)."""

from __future__ import annotations

import pytest

from asgiws.websocket import HandshakeError, accept_key, accept_response, validate_upgrade_request

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def headers(**overrides: bytes | None) -> list[tuple[bytes, bytes]]:
    base = {
        b"Host": b"example.com",
        b"Upgrade": b"websocket",
        b"Connection": b"Upgrade",
        b"Sec-WebSocket-Key": KEY,
        b"Sec-WebSocket-Version": b"13",
    }
    for name, value in overrides.items():
        key = name.replace("_", "-").encode()
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return list(base.items())


def test_accept_key_matches_rfc_example() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_request_is_parsed() -> None:
    hs = headers() + [(b"sec-websocket-protocol", b"chat, superchat"), (b"Sec-WebSocket-Protocol", b"v2"),
                      (b"Sec-WebSocket-Extensions", b"permessage-deflate"), (b"Origin", b"https://a.example")]
    request = validate_upgrade_request("GET", "1.1", hs)
    assert request.key == KEY
    assert request.subprotocols == ["chat", "superchat", "v2"]
    assert request.extension_header_values == [b"permessage-deflate"]
    assert request.origin == "https://a.example"


def test_token_lists_are_case_insensitive() -> None:
    hs = headers(Upgrade=b"foo, WebSocket", Connection=b"keep-alive, UPGRADE")
    assert validate_upgrade_request("GET", "1.1", hs).origin is None


@pytest.mark.parametrize(
    ("method", "version", "hs"),
    [
        ("POST", "1.1", headers()),
        ("GET", "1.0", headers()),
        ("GET", "1.1", headers(Upgrade=None)),
        ("GET", "1.1", headers(Upgrade=b"h2c")),
        ("GET", "1.1", headers(Connection=b"keep-alive")),
        ("GET", "1.1", headers(Sec_WebSocket_Key=None)),
        ("GET", "1.1", headers(Sec_WebSocket_Key=b"not base64!")),
        ("GET", "1.1", headers(Sec_WebSocket_Key=b"AAAAAAAAAAAAAAAAAAAA")),  # 15 bytes
        ("GET", "1.1", headers() + [(b"Sec-WebSocket-Key", KEY)]),
        ("GET", "1.1", headers() + [(b"Sec-WebSocket-Protocol", b"x" * 5000)]),
        ("GET", "1.1", headers() + [(b"Sec-WebSocket-Extensions", b"a, " * 2000)]),
        ("GET", "1.1", headers() + [(b"Sec-WebSocket-Protocol", "ché".encode())]),
        ("GET", "1.1", headers() + [(b"Sec-WebSocket-Extensions", b"\xff")]),
    ],
)
def test_invalid_upgrade_request_is_rejected_400(method: str, version: str, hs: list) -> None:
    with pytest.raises(HandshakeError) as info:
        validate_upgrade_request(method, version, hs)
    assert info.value.status == 400
    assert info.value.reason


@pytest.mark.parametrize("version", [None, b"8", b"12", b"14", b"13, 8"])
def test_unsupported_version_is_rejected_426_with_version_header(version: bytes | None) -> None:
    with pytest.raises(HandshakeError) as info:
        validate_upgrade_request("GET", "1.1", headers(Sec_WebSocket_Version=version))
    assert info.value.status == 426
    assert info.value.headers == [(b"Sec-WebSocket-Version", b"13")]


def test_oversized_negotiation_headers_are_rejected_in_linear_time() -> None:
    hs = headers() + [(b"Sec-WebSocket-Protocol", b"a," * 1_000_000)]
    with pytest.raises(HandshakeError):
        validate_upgrade_request("GET", "1.1", hs)


def test_accept_response_bytes() -> None:
    request = validate_upgrade_request("GET", "1.1", headers() + [(b"Sec-WebSocket-Protocol", b"chat")])
    response = accept_response(request, subprotocol="chat", extensions_header=b"permessage-deflate",
                               headers=[(b"server", b"asgiws")])
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\nserver: asgiws\r\n\r\n"
    )


def test_accept_response_without_options() -> None:
    request = validate_upgrade_request("GET", "1.1", headers())
    response = accept_response(request, subprotocol=None, extensions_header=None, headers=[])
    assert b"Sec-WebSocket-Protocol" not in response
    assert b"Sec-WebSocket-Extensions" not in response
    assert response.endswith(b"\r\n\r\n")


def test_accept_response_rejects_subprotocol_not_offered() -> None:
    request = validate_upgrade_request("GET", "1.1", headers() + [(b"Sec-WebSocket-Protocol", b"chat")])
    with pytest.raises(ValueError):
        accept_response(request, subprotocol="other", extensions_header=None, headers=[])


@pytest.mark.parametrize("bad", [b"a\r\nInjected: 1", b"a\nb", b"a\0b"])
def test_accept_response_rejects_header_injection(bad: bytes) -> None:
    request = validate_upgrade_request("GET", "1.1", headers())
    with pytest.raises(ValueError):
        accept_response(request, subprotocol=None, extensions_header=None, headers=[(b"x-test", bad)])
    with pytest.raises(ValueError):
        accept_response(request, subprotocol=None, extensions_header=None, headers=[(bad, b"v")])


@pytest.mark.parametrize("name", [b"x y", b"a:b", b"", b"caf\xc3\xa9"])
def test_accept_response_rejects_header_name_that_is_not_a_token(name: bytes) -> None:
    # The same rule as an HTTP response's fields (RFC 9110 5.1: a field name is a token).
    request = validate_upgrade_request("GET", "1.1", headers())
    with pytest.raises(ValueError, match="the name is not an RFC 9110 token"):
        accept_response(request, subprotocol=None, extensions_header=None, headers=[(name, b"v")])


@pytest.mark.parametrize("offer", [b"a b", b"chat;v=1", b"chat, x y", b'"quoted"'])
def test_subprotocol_that_is_not_a_token_is_rejected_400(offer: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        validate_upgrade_request("GET", "1.1", headers(**{"Sec_WebSocket_Protocol": offer}))
    assert info.value.status == 400
    assert "invalid subprotocol" in info.value.reason


def test_subprotocol_tokens_are_accepted() -> None:
    request = validate_upgrade_request("GET", "1.1", headers(**{"Sec_WebSocket_Protocol": b"graphql-ws, v2.chat"}))
    assert request.subprotocols == ["graphql-ws", "v2.chat"]
