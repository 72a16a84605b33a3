"""A chat server with rooms and private messages: `asgiws examples.chat.app:app`.

Open http://127.0.0.1:8000/ in a few browser tabs. With several workers, add
`--broadcast-url redis://127.0.0.1:6379` so that every worker's clients meet.

Wire format, both directions: JSON objects `{"type", "payload", "timestamp"}`
(timestamp: seconds since the epoch, set by the server on what it sends).
What a room's channel carries (messages and notices) comes wrapped by the
broadcast envelope, `{"channel", "offset", "data": "<the JSON object>"}`, so
the page knows the offset of everything it has shown.

Client -> server                                   Server -> client
  {"type": "join", "payload": {"room", "since"?}}    welcome  {"name", "id", "rooms"}
  {"type": "leave",   "payload": {"room"}}           joined   {"room", "offset", "recovered", "people",
  {"type": "who",     "payload": {"room"}}                     "history"}   (to the sender)
  {"type": "message", "payload": {"room", "text"}}   left     {"room"}      (to the sender)
  {"type": "private", "payload": {"to", "text"}}     people   {"room", "people": [{"name", "id"}]}
                                                     notice   {"room", "user", "id", "event"}  (enveloped)
                                                     message  {"room", "from", "id", "text"}   (enveloped)
                                                     private  {"from", "to", "text"}
                                                     error    {"message"}  (to the sender only)
                                                     unavailable {"message"}, then close 1013

Every connection joins the lobby as soon as it is accepted; `/ws?name=N&since=OFFSET`
resumes the lobby from OFFSET, and a join with "since" resumes that room.

Resume: the page keeps each room's last offset and hands it back when it
reconnects. The server subscribes from it, so everything published meanwhile,
through any worker, is delivered first, in order, then the live messages:
no gap, no duplicate. When history no longer covers the offset (away too
long, Redis lost its data, a first visit), "joined" says recovered: false
and carries the room's latest messages from history, up to the offset the
live delivery starts after.

Who is in a room is the broadcast's presence (one entry per connection, on
every worker and machine); the page asks again ("who") whenever a join or
leave notice arrives, so a name open in two tabs stays listed until both
have left.

Close codes: 1008 for a bad user name (the page does not reconnect),
1000 when the client leaves; 1001/1012 when the server stops or restarts,
1013 while the broadcast (Redis) is unavailable (the page reconnects with
backoff and resumes).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
import logging
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse

from asgiws.broadcast import Broadcast, BroadcastUnavailable

# Limits of what a client may send; each is checked before anything is published.
MAX_FRAME_CHARS = 4096  # a whole incoming JSON text
MAX_TEXT_CHARS = 500  # one chat message
MAX_ROOMS_PER_USER = 10
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,24}")  # user and room names
LOBBY = "lobby"  # the room every connection joins on connect
HISTORY_LIMIT = 50  # messages a page gets when it cannot resume (first visit, away too long)
MAX_OFFSET_CHARS = 100  # a "since" longer than this is not an offset of ours

PAGE = (Path(__file__).parent / "index.html").read_text(encoding="utf-8")

app = FastAPI(title="asgiws chat")
logger = logging.getLogger("examples.chat")


class InvalidMessage(ValueError):
    """A client message the server answers with an error message (the connection stays open)."""


class ChatUnavailable(Exception):
    """The broadcast cannot take calls (Redis down): the page is told, and the connection closes with 1013."""


def envelope(type_: str, payload: dict[str, Any]) -> str:
    return json.dumps({"type": type_, "payload": payload, "timestamp": time.time()})


def room_channel(room: str) -> str:
    return f"room:{room}"


def user_channel(name: str) -> str:
    return f"user:{name}"


def _name(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidMessage(f"'{key}' must be 1-24 letters, digits, '_' or '-'")
    return value


def _text(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidMessage("'text' must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidMessage(f"'text' is longer than {MAX_TEXT_CHARS} characters")
    return text


def _since(value: Any) -> str | None:
    """The offset a page resumes from: None (no resume) or a short string; the broadcast judges the rest."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_OFFSET_CHARS:
        raise InvalidMessage("'since' must be an offset string this server sent")
    return value


def history_until(entries: list[tuple[str, str | bytes]], offset: str) -> list[dict[str, Any]]:
    """The chat messages of `entries` up to and including `offset`, where live delivery starts after.

    Without the cut, a message published between subscribe() and history() would reach the page twice:
    in the history and live. Notices are left out (the people list comes from presence).
    """
    offsets = [entry_offset for entry_offset, _ in entries]
    if offset in offsets:
        entries = entries[: offsets.index(offset) + 1]
    messages = []
    for entry_offset, data in entries:
        if isinstance(data, str):
            message = json.loads(data)
            if message.get("type") == "message":
                messages.append({"offset": entry_offset, "message": message})
    return messages


def parse(raw: str | None) -> tuple[str, dict[str, Any]]:
    """(type, payload) of a client frame. Raises InvalidMessage with what is wrong."""
    if raw is None:
        raise InvalidMessage("send JSON text frames, not binary")
    if len(raw) > MAX_FRAME_CHARS:
        raise InvalidMessage(f"message longer than {MAX_FRAME_CHARS} characters")
    try:
        message = json.loads(raw)
    except ValueError:
        raise InvalidMessage("not valid JSON") from None
    if not isinstance(message, dict):
        raise InvalidMessage("expected a JSON object {type, payload}")
    type_, payload = message.get("type"), message.get("payload")
    if type_ not in HANDLERS:
        raise InvalidMessage(f"unknown type {type_!r}; expected one of {sorted(HANDLERS)}")
    if not isinstance(payload, dict):
        raise InvalidMessage("'payload' must be an object")
    return type_, payload


class Session:
    """One connected user: their name, rooms, and the server's broadcast."""

    def __init__(self, websocket: WebSocket, name: str) -> None:
        self.websocket = websocket
        self.name = name
        # Tells apart two tabs open under one name, on any worker (presence is per connection).
        self.id = secrets.token_hex(6)
        self.rooms: set[str] = set()
        self.broadcast = Broadcast.from_scope(websocket.scope)

    async def send(self, type_: str, payload: dict[str, Any]) -> None:
        await self.websocket.send_text(envelope(type_, payload))

    async def join(self, payload: dict[str, Any]) -> None:
        room = _name(payload, "room")
        if room in self.rooms:
            raise InvalidMessage(f"already in room {room!r}")
        if len(self.rooms) >= MAX_ROOMS_PER_USER:
            raise InvalidMessage(f"at most {MAX_ROOMS_PER_USER} rooms")
        since = _since(payload.get("since"))
        channel = room_channel(room)
        subscription = await self.broadcast.subscribe(
            self.websocket.scope, channel, since=since, envelope=True,
            presence={"name": self.name, "id": self.id},
        )
        self.rooms.add(room)
        history: list[dict[str, Any]] = []
        if not subscription.recovered:
            entries = await self.broadcast.history(channel, limit=HISTORY_LIMIT)
            history = history_until(entries, subscription.offset)
        await self.send("joined", {
            "room": room, "offset": subscription.offset, "recovered": subscription.recovered,
            "history": history,
            "people": await self.broadcast.presence(channel),
        })
        await self.notice(room, "join")

    async def who(self, payload: dict[str, Any]) -> None:
        """Who is in the room now, on every worker: the page asks again after each join or leave notice."""
        room = _name(payload, "room")
        if room not in self.rooms:
            raise InvalidMessage(f"not in room {room!r}")
        await self.send("people", {"room": room, "people": await self.broadcast.presence(room_channel(room))})

    async def notice(self, room: str, event: str) -> None:
        payload = {"room": room, "user": self.name, "id": self.id, "event": event}
        await self.broadcast.publish(room_channel(room), envelope("notice", payload))

    async def leave(self, payload: dict[str, Any]) -> None:
        room = _name(payload, "room")
        if room not in self.rooms:
            raise InvalidMessage(f"not in room {room!r}")
        await self._leave(room)
        await self.send("left", {"room": room})

    async def _leave(self, room: str) -> None:
        self.rooms.discard(room)
        await self.broadcast.unsubscribe(self.websocket.scope, room_channel(room))
        await self.notice(room, "leave")

    async def message(self, payload: dict[str, Any]) -> None:
        room, text = _name(payload, "room"), _text(payload)
        if room not in self.rooms:
            raise InvalidMessage(f"join room {room!r} before writing to it")
        payload = {"room": room, "from": self.name, "id": self.id, "text": text}
        await self.broadcast.publish(room_channel(room), envelope("message", payload))

    async def private(self, payload: dict[str, Any]) -> None:
        to, text = _name(payload, "to"), _text(payload)
        message = envelope("private", {"from": self.name, "to": to, "text": text})
        await self.broadcast.publish(user_channel(to), message)
        if to != self.name:
            await self.send("private", {"from": self.name, "to": to, "text": text})

    async def close(self) -> None:
        for room in sorted(self.rooms):
            try:
                await self._leave(room)
            except BroadcastUnavailable:
                pass


HANDLERS = {
    "join": Session.join,
    "leave": Session.leave,
    "who": Session.who,
    "message": Session.message,
    "private": Session.private,
}


UNAVAILABLE = "chat is temporarily unavailable; reconnecting, nothing you saw is lost"


async def handle(session: Session, handler: Any, payload: dict[str, Any]) -> None:
    """Run one client request; what goes wrong is told to that client only.

    Raises ChatUnavailable when the broadcast is down (the caller closes with 1013).
    """
    try:
        await handler(session, payload)
    except InvalidMessage as exc:
        await session.send("error", {"message": str(exc)})
    except BroadcastUnavailable as exc:
        logger.warning("chat: broadcast unavailable for %s (%s): closing with 1013", session.name, exc)
        await session.send("unavailable", {"message": UNAVAILABLE})
        raise ChatUnavailable from exc


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    return PAGE


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    name = websocket.query_params.get("name", "")
    await websocket.accept()
    if not NAME_RE.fullmatch(name):
        # 1008 policy violation: the page shows the reason and does not reconnect.
        await websocket.close(code=1008, reason="name must be 1-24 letters, digits, '_' or '-'")
        return
    session = Session(websocket, name)
    try:
        await session.broadcast.subscribe(websocket.scope, user_channel(name))
    except BroadcastUnavailable as exc:
        logger.warning("chat: broadcast unavailable for %s (%s): closing with 1013", name, exc)
        await session.send("unavailable", {"message": UNAVAILABLE})
        await websocket.close(code=1013, reason="chat unavailable, try again later")
        return
    await session.send("welcome", {"name": name, "id": session.id, "rooms": [LOBBY]})
    try:
        await handle(session, Session.join, {"room": LOBBY, "since": websocket.query_params.get("since")})
        while True:
            frame = await websocket.receive()
            if frame["type"] == "websocket.disconnect":
                break
            try:
                type_, payload = parse(frame.get("text"))
            except InvalidMessage as exc:
                await session.send("error", {"message": str(exc)})
                continue
            await handle(session, HANDLERS[type_], payload)
    except WebSocketDisconnect:
        pass
    except ChatUnavailable:
        # 1013 Try Again Later (RFC 6455 registry): the page reconnects with backoff and resumes.
        await websocket.close(code=1013, reason="chat unavailable, try again later")
    finally:
        await session.close()
