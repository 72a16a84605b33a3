"""A chat server with rooms and private messages: `asgiws examples.chat.app:app`.

Open http://127.0.0.1:8000/ in a few browser tabs. With several workers, add
`--broadcast-url redis://127.0.0.1:6379` so that every worker's clients meet.

Wire format, both directions: JSON objects `{"type", "payload", "timestamp"}`
(timestamp: seconds since the epoch, set by the server on what it sends).

Client -> server                                  Server -> client
  {"type": "join",    "payload": {"room"}}          welcome  {"name", "id", "rooms"}
  {"type": "leave",   "payload": {"room"}}          joined / left  {"room"}   (to the sender)
  {"type": "here",    "payload": {"room"}}          notice   {"room", "user", "id", "event"}
  {"type": "message", "payload": {"room", "text"}}  message  {"room", "from", "id", "text"}
  {"type": "private", "payload": {"to", "text"}}    private  {"from", "to", "text"}
                                                    error    {"message"}  (to the sender only)

Every connection joins the lobby as soon as it is accepted.

Who is in a room is kept by the pages, through the room's own channel, so it
is right across workers and machines (every worker's subscribers see every
notice) without any shared store: a notice "join" (or "leave") goes to the
room when a connection joins (or leaves, or disconnects); every page already
in the room answers a "join" it did not send with a "here", which the server
publishes as a notice "here", so the newcomer learns who was there before it.
Notices carry the connection id, so a name open in two tabs stays listed
until both have left. (A worker killed with SIGKILL sends no "leave": its
users stay listed until the pages there reconnect and the others reload.)

Close codes: 1008 for a bad user name (the page does not reconnect),
1000 when the client leaves; 1001/1012 when the server stops or restarts
(the page reconnects with backoff).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
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

PAGE = (Path(__file__).parent / "index.html").read_text(encoding="utf-8")

app = FastAPI(title="asgiws chat")


class InvalidMessage(ValueError):
    """A client message the server answers with an error message (the connection stays open)."""


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
        await self.broadcast.subscribe(self.websocket.scope, room_channel(room))
        self.rooms.add(room)
        await self.send("joined", {"room": room})
        await self.notice(room, "join")

    async def here(self, payload: dict[str, Any]) -> None:
        """The page answers another's join: tell the room (the newcomer) that this connection is in it."""
        room = _name(payload, "room")
        if room not in self.rooms:
            raise InvalidMessage(f"not in room {room!r}")
        await self.notice(room, "here")

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
    "here": Session.here,
    "message": Session.message,
    "private": Session.private,
}


async def handle(session: Session, handler: Any, payload: dict[str, Any]) -> None:
    """Run one client request; what goes wrong is told to that client only."""
    try:
        await handler(session, payload)
    except InvalidMessage as exc:
        await session.send("error", {"message": str(exc)})
    except BroadcastUnavailable:
        await session.send("error", {"message": "chat is temporarily unavailable, try again"})


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
    await session.broadcast.subscribe(websocket.scope, user_channel(name))
    await session.send("welcome", {"name": name, "id": session.id, "rooms": [LOBBY]})
    try:
        await handle(session, Session.join, {"room": LOBBY})
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
    finally:
        await session.close()
