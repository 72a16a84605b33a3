"""A Starlette app for the broadcast tests: join a channel over WebSocket, publish over HTTP or WebSocket."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from asgiws.broadcast import Broadcast, BroadcastUnavailable


async def join(websocket: WebSocket) -> None:
    """/ws/{channel}: subscribe; every text received is published ("unsub" leaves)."""
    await websocket.accept()
    channel = websocket.path_params["channel"]
    broadcast = Broadcast.from_scope(websocket.scope)
    await broadcast.subscribe(websocket.scope, channel)
    await websocket.send_text("subscribed")
    if websocket.query_params.get("pid"):
        await websocket.send_text(f"pid:{os.getpid()}")
    try:
        while True:
            text = await websocket.receive_text()
            if text == "unsub":
                await broadcast.unsubscribe(websocket.scope, channel)
                await websocket.send_text("unsubscribed")
                continue
            try:
                await broadcast.publish(channel, text)
            except BroadcastUnavailable:
                await websocket.send_text("unavailable")
    except WebSocketDisconnect:
        pass


async def publish(request: Request) -> PlainTextResponse:
    """POST /publish/{channel}: body published as text, or as bytes with ?binary=1."""
    body = await request.body()
    data: str | bytes = body if request.query_params.get("binary") else body.decode()
    try:
        await Broadcast.from_scope(request.scope).publish(request.path_params["channel"], data)
    except BroadcastUnavailable as exc:
        return PlainTextResponse(str(exc), status_code=503)
    return PlainTextResponse("ok")


async def count(request: Request) -> JSONResponse:
    broadcast = Broadcast.from_scope(request.scope)
    return JSONResponse({"subscribers": broadcast.local_subscribers(request.path_params["channel"])})


app = Starlette(routes=[
    WebSocketRoute("/ws/{channel}", join),
    Route("/publish/{channel}", publish, methods=["POST"]),
    Route("/count/{channel}", count),
])
