"""Server.run() in a program that embeds asgiws: the server's loop is its own, the program's are untouched."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Run in a fresh interpreter: the event loop policy is process state, and the
# test process's own must not decide the result.
EMBEDDING_PROGRAM = textwrap.dedent("""
    import asyncio, sys, threading, time, urllib.request
    from asgiws import Config, Server

    served_on = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            served_on.append(type(asyncio.get_running_loop()).__module__.split(".")[0])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    async def running_loop_module():
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    server = Server(Config(app=app, host="127.0.0.1", port=0, lifespan="off", loop=sys.argv[1]))

    def client():
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10).read()
        finally:
            server.should_exit = True

    threading.Thread(target=client, daemon=True).start()
    print("before:", type(asyncio.get_event_loop_policy()).__module__.split(".")[0])
    server.run()
    print("served on:", served_on[0])
    print("policy after:", type(asyncio.get_event_loop_policy()).__module__.split(".")[0])
    print("asyncio.run after:", asyncio.run(running_loop_module()))
    loop = asyncio.new_event_loop()
    print("new_event_loop after:", type(loop).__module__.split(".")[0])
    loop.close()
""")


@pytest.mark.parametrize(("loop", "server_loop"),
                         [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_serves_on_its_loop_and_leaves_the_event_loop_policy_alone(loop, server_loop):
    result = subprocess.run([sys.executable, "-c", EMBEDDING_PROGRAM, loop], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "before: asyncio",
        f"served on: {server_loop}",
        "policy after: asyncio",
        "asyncio.run after: asyncio",
        "new_event_loop after: asyncio",
    ]
