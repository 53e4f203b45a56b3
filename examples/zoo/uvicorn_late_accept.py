"""The client leaves while the app is still authenticating before `accept()`; the late accept
raises, and what the app set up for the connection before it is never taken down.

Source: uvicorn discussion #2311 (https://github.com/encode/uvicorn/discussions/2311) and PR
#2312, "Handle case when websocket client disconnects before websocket connection is accepted"
(https://github.com/Kludex/uvicorn/pull/2312), and PR #3057, "Add regression test for client
disconnect before websocket.accept" (https://github.com/Kludex/uvicorn/pull/3057), whose test
app sleeps before sending `websocket.accept` so that the client can drop first, and records
what the accept raises. uvicorn now raises `ClientDisconnected` from that accept (and swallows
it if it escapes the app). The app is left to cope: lemma-platform PR #21 is cited in the
brief for an app-side fix, but its text was not in the stored corpus and is not modelled.

The app: the connection is registered, with a heartbeat task, then the token is checked
(`authenticate`, hooked as `auth`: the scenario's `auth_ms` is its time), then accepted.

`/ws/buggy`: registers before authenticating and has no cleanup around the accept: when the
client has gone, the accept raises and the heartbeat task is left running.

`/ws/fixed`: authenticates, accepts (a client that has gone makes the accept raise, and the
endpoint returns), and only then registers, with the cleanup in a `finally`.

Reproducing it needs a client that gives up during the handshake: a `close_ms` that falls
before the 101 (scenarios/uvicorn-late-accept.toml). The late accept's ClientDisconnected is
swallowed by uvicorn now; what the app's side still shows is its heartbeat sending on the socket
whose accept failed.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from examples.zoo import _wire

TOKEN_CHECK = 0.2
HEARTBEAT = 0.05

app = FastAPI()
registry: dict[str, asyncio.Task[None]] = {}


async def authenticate(token: str) -> None:
    """The token check before accept; hooked as `auth`."""
    await asyncio.sleep(TOKEN_CHECK)


async def heartbeat(websocket: WebSocket) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT)
        if websocket.application_state.name == "CONNECTED":
            await websocket.send_text('{"type": "ping"}')


async def chat_loop(websocket: WebSocket, user: str) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                await _wire.answer(websocket, chat[0], user)


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    user = _wire.user_of(websocket)
    registry[user] = asyncio.create_task(heartbeat(websocket))
    await authenticate(user)
    await websocket.accept()  # RACE: raises if the client left during authenticate
    await chat_loop(websocket, user)
    registry.pop(user).cancel()


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    user = _wire.user_of(websocket)
    await authenticate(user)
    try:
        await websocket.accept()
    except OSError:  # uvicorn's ClientDisconnected: the client left before accept
        return
    registry[user] = asyncio.create_task(heartbeat(websocket))
    try:
        await chat_loop(websocket, user)
    finally:
        registry.pop(user).cancel()


def create_test_app() -> FastAPI:
    """The test factory: no token-check time of the app's own, so the scenario's `auth_ms`,
    given through the hooks file, is the only one."""
    global TOKEN_CHECK
    TOKEN_CHECK = 0
    return app
