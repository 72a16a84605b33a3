"""Real FastAPI and Starlette apps served by asgiws."""

from __future__ import annotations

import contextlib

import httpx
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


class Item(BaseModel):
    name: str
    price: float


def make_fastapi():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"greeting": "hi from lifespan"}

    app = FastAPI(lifespan=lifespan)

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None):
        return {"item_id": item_id, "q": q}

    @app.post("/items")
    async def create_item(item: Item):
        return {"name": item.name, "double": item.price * 2}

    @app.get("/state")
    async def state(request: Request):
        return {"greeting": request.state.greeting}

    @app.get("/stream")
    async def stream():
        async def parts():
            for i in range(5):
                yield f"part{i}\n"
        return StreamingResponse(parts(), media_type="text/plain")

    return app


def make_starlette():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"db": "ready"}

    async def home(request):
        return PlainTextResponse(f"hello {request.query_params.get('name', 'world')}")

    async def echo(request):
        return JSONResponse({"received": await request.json(), "root": request.scope["root_path"]})

    async def state(request):
        return JSONResponse({"db": request.state.db})

    async def stream(request):
        async def parts():
            for i in range(3):
                yield b"x" * 1000
        return StreamingResponse(parts())

    return Starlette(routes=[Route("/", home), Route("/echo", echo, methods=["POST"]),
                             Route("/state", state), Route("/stream", stream)], lifespan=lifespan)


def test_fastapi_routes_json_streaming_and_state(run_server):
    with run_server(make_fastapi(), lifespan="on") as server:
        with httpx.Client(base_url=server.url("")) as client:
            assert client.get("/items/5", params={"q": "search term"}).json() == {"item_id": 5, "q": "search term"}
            assert client.get("/items/notanint").status_code == 422
            response = client.post("/items", json={"name": "pen", "price": 1.5})
            assert response.json() == {"name": "pen", "double": 3.0}
            assert client.get("/state").json() == {"greeting": "hi from lifespan"}
            streamed = client.get("/stream")
            assert streamed.headers["transfer-encoding"] == "chunked"
            assert streamed.text == "".join(f"part{i}\n" for i in range(5))
            assert client.get("/missing").status_code == 404


def test_starlette_routes_json_streaming_and_state(run_server):
    with run_server(make_starlette(), lifespan="on") as server:
        with httpx.Client(base_url=server.url("")) as client:
            assert client.get("/", params={"name": "asgiws"}).text == "hello asgiws"
            assert client.post("/echo", json={"a": [1, 2]}).json() == {"received": {"a": [1, 2]}, "root": ""}
            assert client.get("/state").json() == {"db": "ready"}
            assert client.get("/stream").content == b"x" * 3000
            assert client.head("/").content == b""
