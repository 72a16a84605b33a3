"""examples/chat: rooms, private messages, notices and validation, with real clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from examples.chat.app import MAX_TEXT_CHARS, app


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.id = ""
        self.offsets: dict[str, str] = {}  # room channel -> the last offset delivered

    async def send(self, type_: str, payload: Any) -> None:
        await self.ws.send(json.dumps({"type": type_, "payload": payload}))

    async def recv(self) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        if set(message) == {"channel", "offset", "data"}:  # a room's channel: the broadcast's envelope
            assert message["channel"].startswith("room:"), message
            self.offsets[message["channel"]] = message["offset"]
            message = json.loads(message["data"])
        assert set(message) == {"type", "payload", "timestamp"} and isinstance(message["timestamp"], float)
        return message

    async def expect(self, type_: str, **payload: Any) -> dict[str, Any]:
        message = await self.recv()
        assert message["type"] == type_, message
        for key, value in payload.items():
            assert message["payload"][key] == value, message
        return message["payload"]

    async def silent(self) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(self.ws.recv(), 0.2)


async def login(server: Any, name: str) -> Client:
    """Connect as `name`: welcome, then the lobby joined on connect and its own join notice."""
    client = Client(await connect(server.url(f"/ws?name={name}", "ws")))
    welcome = await client.expect("welcome", name=name, rooms=["lobby"])
    client.id = welcome["id"]
    await client.expect("joined", room="lobby")
    await client.expect("notice", room="lobby", user=name, id=client.id, event="join")
    return client


async def join(client: Client, room: str, name: str) -> None:
    await client.send("join", {"room": room})
    await client.expect("joined", room=room)
    await client.expect("notice", room=room, user=name, event="join")


def test_chat_rooms_notices_and_private_messages(run_server) -> None:
    with run_server(app) as server:
        async def main() -> None:
            async with httpx.AsyncClient() as http:
                page = await http.get(server.url("/"))
                assert page.status_code == 200 and "new WebSocket(url)" in page.text
            alice = await login(server, "alice")
            bob = await login(server, "bob")
            await alice.expect("notice", room="lobby", user="bob", id=bob.id, event="join")
            carol = await login(server, "carol")
            for client in (alice, bob):
                await client.expect("notice", room="lobby", user="carol", event="join")
            await carol.send("leave", {"room": "lobby"})
            await carol.expect("left", room="lobby")
            for client in (alice, bob):
                await client.expect("notice", room="lobby", user="carol", event="leave")
            await join(carol, "other", "carol")

            await bob.send("message", {"room": "lobby", "text": "hi all"})
            for client in (alice, bob):
                await client.expect("message", room="lobby", text="hi all", id=bob.id, **{"from": "bob"})
            await carol.silent()

            await alice.send("private", {"to": "carol", "text": "psst"})
            await carol.expect("private", to="carol", text="psst", **{"from": "alice"})
            await alice.expect("private", to="carol", text="psst", **{"from": "alice"})
            await bob.silent()

            await bob.send("leave", {"room": "lobby"})
            await bob.expect("left", room="lobby")
            await alice.expect("notice", room="lobby", user="bob", event="leave")
            await alice.send("message", {"room": "lobby", "text": "bob?"})
            await alice.expect("message", text="bob?")
            await bob.silent()

            await alice.ws.close()  # leaving by disconnecting also tells the room
            await join(bob, "lobby", "bob")
            await carol.send("join", {"room": "lobby"})
            await carol.expect("joined", room="lobby")
            await carol.expect("notice", user="carol", event="join")
            await bob.expect("notice", user="carol", event="join")
            await bob.ws.close()
            await carol.expect("notice", room="lobby", user="bob", event="leave")
            await carol.ws.close()

        asyncio.run(main())


def test_chat_people_come_from_presence_and_a_join_resumes_from_an_offset(run_server) -> None:
    """Presence lists every connection (two tabs, one name); a join with "since" gets what it missed."""
    with run_server(app) as server:
        async def main() -> None:
            first = await login(server, "tab")
            second = await login(server, "tab")  # the same name in a second tab: another id
            assert second.id != first.id
            await first.expect("notice", user="tab", id=second.id, event="join")
            await first.send("who", {"room": "lobby"})
            people = (await first.expect("people", room="lobby"))["people"]
            assert sorted(p["id"] for p in people) == sorted([first.id, second.id])
            assert {p["name"] for p in people} == {"tab"}
            await first.send("who", {"room": "elsewhere"})
            assert "not in room 'elsewhere'" in (await first.expect("error"))["message"]

            await first.send("join", {"room": "dev"})
            joined = await first.expect("joined", room="dev", recovered=False, history=[])
            await first.expect("notice", room="dev", event="join")
            await first.send("message", {"room": "dev", "text": "one"})
            await first.expect("message", room="dev", text="one")
            since = first.offsets["room:dev"]
            assert since != joined["offset"]
            await first.send("leave", {"room": "dev"})
            await first.expect("left", room="dev")
            await second.send("join", {"room": "dev"})  # history fills a page that cannot resume
            joined = await second.expect("joined", room="dev", recovered=False)
            assert [h["message"]["payload"]["text"] for h in joined["history"]] == ["one"]
            assert joined["history"][0]["offset"] == since
            await second.expect("notice", room="dev", event="join")
            for text in ("two", "three"):
                await second.send("message", {"room": "dev", "text": text})
                await second.expect("message", room="dev", text=text)

            await first.send("join", {"room": "dev", "since": since})  # back: the missed ones, in order
            texts = []
            while True:
                message = await first.recv()
                if message["type"] == "joined":
                    assert message["payload"]["recovered"] is True and message["payload"]["history"] == []
                    assert sorted(p["id"] for p in message["payload"]["people"]) == sorted([first.id, second.id])
                elif message["type"] == "message":
                    texts.append(message["payload"]["text"])
                elif message["type"] == "notice" and message["payload"]["id"] == first.id \
                        and message["payload"]["event"] == "join":
                    break
            assert texts == ["two", "three"]
            await first.send("join", {"room": "qa", "since": 5})
            assert "'since' must be an offset" in (await first.expect("error"))["message"]
            await second.ws.close()  # its rooms in name order: dev, then the lobby
            await first.expect("notice", room="dev", id=second.id, event="leave")
            await first.expect("notice", room="lobby", id=second.id, event="leave")
            await first.send("who", {"room": "dev"})
            assert [p["id"] for p in (await first.expect("people", room="dev"))["people"]] == [first.id]
            await first.ws.close()

        asyncio.run(main())


INVALID = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"type": "shout", "payload": {}}), "unknown type 'shout'"),
    (json.dumps({"type": "join", "payload": "lobby"}), "'payload' must be an object"),
    (json.dumps({"type": "join", "payload": {"room": "no spaces"}}), "'room' must be 1-24"),
    (json.dumps({"type": "message", "payload": {"room": "lobby", "text": 42}}), "'text' must be a non-empty string"),
    (json.dumps({"type": "message", "payload": {"room": "lobby", "text": "x" * (MAX_TEXT_CHARS + 1)}}),
     f"longer than {MAX_TEXT_CHARS} characters"),
    (json.dumps({"type": "message", "payload": {"room": "nowhere", "text": "hi"}}), "join room 'nowhere'"),
    (json.dumps({"type": "private", "payload": {"to": "", "text": "hi"}}), "'to' must be 1-24"),
    ("x" * 5000, "message longer than 4096"),
    (b"\x00binary", "send JSON text frames, not binary"),
]


def test_chat_answers_invalid_input_with_an_error_to_the_sender_only(run_server) -> None:
    with run_server(app) as server:
        async def main() -> None:
            dave, erin = await login(server, "dave"), await login(server, "erin")
            await dave.expect("notice", user="erin")
            for raw, error in INVALID:
                await dave.ws.send(raw)
                payload = await dave.expect("error")
                assert error in payload["message"], (raw, payload)
            await erin.silent()
            await dave.send("join", {"room": "lobby"})
            assert "already in room" in (await dave.expect("error"))["message"]
            await dave.ws.close()
            await erin.ws.close()

        asyncio.run(main())


def test_chat_refuses_a_bad_name_with_1008(run_server) -> None:
    # The app returns right after its close; the server then drops TCP after
    # ws_close_timeout at the latest (the client's recv() ends only then).
    with run_server(app, ws_close_timeout=1.0) as server:
        async def main() -> None:
            ws = await connect(server.url("/ws?name=no%20spaces", "ws"))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert "name must be" in closed.value.rcvd.reason

        asyncio.run(main())


def test_chat_while_redis_is_down_says_unavailable_and_closes_with_1013(run_server, redis_server) -> None:
    """BroadcastUnavailable is a clear state for the page (an "unavailable" frame, then 1013), never a 1011."""
    with run_server(app, broadcast_url=redis_server.url) as server:
        async def main() -> None:
            ann = await login(server, "ann")
            redis_server.stop()
            # The worker notices the lost connection on its own schedule: write until it answers "unavailable".
            for attempt in range(100):
                await ann.send("message", {"room": "lobby", "text": f"try {attempt}"})
                message = await ann.recv()
                if message["type"] == "unavailable":
                    break
                assert message["type"] == "message", message
                await asyncio.sleep(0.1)
            assert message["payload"]["message"].startswith("chat is temporarily unavailable")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ann.ws.recv(), 5)
            assert ann.ws.close_code == 1013 and ann.ws.close_reason == "chat unavailable, try again later"

            # A new connection while Redis is away: the same answer at once, before any welcome.
            late = Client(await connect(server.url("/ws?name=bea", "ws")))
            await late.expect("unavailable")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(late.ws.recv(), 5)
            assert late.ws.close_code == 1013

        asyncio.run(main())
