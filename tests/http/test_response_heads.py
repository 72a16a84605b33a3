"""Response heads the server checks once and reuses (asgiws.protocols.response.app_head).

A head an app sends again is taken from a table instead of being checked
again: these tests make sure a reused head never lets through what a fresh
check refuses, and that per-request values are each written as sent.
"""

from __future__ import annotations

import logging

import pytest

from asgiws.protocols import response as response_module
from rawhttp import RawClient

GET = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"
FIELDS = [(b"content-type", b"text/plain"), (b"x-kind", b"same")]


def statuses_app(statuses):
    """Answers GET /NAME with statuses[NAME] and FIELDS, body b"ok"."""

    async def app(scope, receive, send):
        status = statuses[scope["path"].lstrip("/")]
        await send({"type": "http.response.start", "status": status, "headers": list(FIELDS)})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize("status", [200.0, True, "200"])
def test_status_equal_to_a_reused_head_but_not_an_int_is_still_500(run_server, caplog, status):
    # 200.0 == 200 and hash(True) == hash(1): a table keyed on the status alone would let them through.
    app = statuses_app({"ok": 200, "bad": status})
    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(GET % b"ok" + GET % b"ok" + GET % b"bad" + GET % b"ok")
        responses = [client.read_response() for _ in range(4)]
    assert [r.status for r in responses] == [200, 200, 500, 200]
    for ok in (responses[0], responses[1], responses[3]):
        assert ok.headers["x-kind"] == "same" and ok.body == b"ok"
    assert f"invalid HTTP status {status!r}: expected a three-digit code from 100 to 599" in caplog.text


def test_a_bad_value_under_a_name_already_written_is_still_500(run_server, caplog):
    values = iter([b"fine", b"fine", b"evil\r\nset-cookie: owned=1", b"fine"])

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-v", next(values))]})
        await send({"type": "http.response.body", "body": b"ok"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(GET % b"" * 4)
        responses = [client.read_response() for _ in range(4)]
    assert [r.status for r in responses] == [200, 200, 500, 200]
    assert all(b"owned" not in r.raw_head for r in responses)
    assert "invalid response header b'x-v'" in caplog.text


def test_content_length_reused_then_not_a_length_is_500(run_server, caplog):
    lengths = iter([b"2", b"2", b"2x"])

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", next(lengths))]})
        await send({"type": "http.response.body", "body": b"ok"})

    with caplog.at_level(logging.ERROR, logger="asgiws.error"), run_server(app) as server:
        client = RawClient(server.port)
        client.send(GET % b"" * 3)
        responses = [client.read_response() for _ in range(3)]
    assert [r.status for r in responses] == [200, 200, 500]
    assert responses[1].headers["content-length"] == "2" and responses[1].body == b"ok"
    assert "invalid response header b'content-length': b'2x' is not a length" in caplog.text


def test_per_request_values_past_the_table_bound_are_each_written_as_sent(run_server):
    # More distinct heads than the table keeps: it is emptied and refilled, never wrong.
    count = response_module._APP_HEADS_MAX + 200

    async def app(scope, receive, send):
        number = scope["query_string"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-request", number), (b"set-cookie", b"id=" + number)]})
        await send({"type": "http.response.body", "body": number})

    with run_server(app) as server:
        client = RawClient(server.port, timeout=30)
        for batch in range(0, count, 50):
            numbers = range(batch, min(count, batch + 50))
            client.send(b"".join(b"GET /?%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in numbers))
            for n in numbers:
                response = client.read_response()
                assert response.status == 200
                assert response.headers["x-request"] == str(n)
                assert response.headers["set-cookie"] == f"id={n}"
                assert response.body == b"%d" % n
    assert len(response_module._APP_HEADS) <= response_module._APP_HEADS_MAX


def test_fields_as_lists_and_bytearrays_are_written_every_time(run_server):
    # Not hashable, so never looked up in the table: checked and written on each response.
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 201,
                    "headers": [[b"X-List", b"1"], (bytearray(b"x-bytearray"), bytearray(b"2"))]})
        await send({"type": "http.response.body", "body": b"made"})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(GET % b"" * 2)
        responses = [client.read_response() for _ in range(2)]
    for response in responses:
        assert response.status == 201
        assert response.headers["x-list"] == "1" and response.headers["x-bytearray"] == "2"
        assert response.body == b"made"


def test_a_long_head_is_written_but_not_kept(run_server):
    value = b"v" * (response_module._APP_HEAD_MAX_CACHED + 1)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-long", value)]})
        await send({"type": "http.response.body", "body": b"ok"})

    with run_server(app) as server:
        client = RawClient(server.port)
        client.send(GET % b"" * 2)
        responses = [client.read_response() for _ in range(2)]
    assert all(r.headers["x-long"] == value.decode() for r in responses)
    assert all(key[1] != ((b"x-long", value),) for key in response_module._APP_HEADS)
