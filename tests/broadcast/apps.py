"""A Starlette app for the broadcast tests: join a channel over WebSocket, publish over HTTP or WebSocket."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from asgiws.broadcast import Broadcast, BroadcastUnavailable
from asgiws.websocket.frames import CloseCode


async def join(websocket: WebSocket) -> None:
    """/ws/{channel}: subscribe; every text received is published ("unsub" leaves)."""
    await websocket.accept()
    channel = websocket.path_params["channel"]
    broadcast = Broadcast.from_scope(websocket.scope)
    try:
        await broadcast.subscribe(websocket.scope, channel)
    except BroadcastUnavailable:
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "broadcast unavailable")
        return
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


async def resume(websocket: WebSocket) -> None:
    """/resume/{channel}?since=OFFSET&name=NAME: enveloped subscription, resumed from `since`.

    The first frame is {"recovered", "offset", "pid"}; then envelopes. NAME
    (if given) is the presence info. Redis down: close 1013.
    """
    await websocket.accept()
    channel = websocket.path_params["channel"]
    broadcast = Broadcast.from_scope(websocket.scope)
    name = websocket.query_params.get("name")
    try:
        sub = await broadcast.subscribe(websocket.scope, channel, since=websocket.query_params.get("since"),
                                        envelope=True, presence=None if name is None else {"name": name})
    except BroadcastUnavailable:
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "broadcast unavailable")
        return
    await websocket.send_json({"recovered": sub.recovered, "offset": sub.offset, "pid": os.getpid(),
                               "replayed": sub.replayed})
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


async def publish(request: Request) -> PlainTextResponse:
    """POST /publish/{channel}: body published as text, or as bytes with ?binary=1; answers the offset."""
    body = await request.body()
    data: str | bytes = body if request.query_params.get("binary") else body.decode()
    try:
        offset = await Broadcast.from_scope(request.scope).publish(request.path_params["channel"], data)
    except BroadcastUnavailable as exc:
        return PlainTextResponse(str(exc), status_code=503)
    return PlainTextResponse(offset)


async def history(request: Request) -> JSONResponse:
    """GET /history/{channel}?since=&limit=: [[offset, data], ...]."""
    broadcast = Broadcast.from_scope(request.scope)
    entries = await broadcast.history(request.path_params["channel"], request.query_params.get("since"),
                                      int(request.query_params.get("limit", "100")))
    return JSONResponse([[offset, data if isinstance(data, str) else data.hex()] for offset, data in entries])


async def presence(request: Request) -> JSONResponse:
    try:
        infos = await Broadcast.from_scope(request.scope).presence(request.path_params["channel"])
    except BroadcastUnavailable as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)
    return JSONResponse(infos)


async def count(request: Request) -> JSONResponse:
    broadcast = Broadcast.from_scope(request.scope)
    return JSONResponse({"subscribers": broadcast.local_subscribers(request.path_params["channel"])})


app = Starlette(routes=[
    WebSocketRoute("/ws/{channel}", join),
    WebSocketRoute("/resume/{channel}", resume),
    Route("/publish/{channel}", publish, methods=["POST"]),
    Route("/history/{channel}", history),
    Route("/presence/{channel}", presence),
    Route("/count/{channel}", count),
])
