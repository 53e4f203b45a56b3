"""The app keeps sending after the client closed the connection.

Source: uvicorn PR #378, "Fix: App sends message after client closes the connection"
(https://github.com/Kludex/uvicorn/pull/378), and the fix uvicorn shipped instead, PRs #2218
and #2220, "Raise `ClientDisconnected` on `send()` when client disconnected"
(https://github.com/Kludex/uvicorn/pull/2218, https://github.com/Kludex/uvicorn/pull/2220).
The pattern the maintainers advise for the app is in uvicorn issue #199
(https://github.com/Kludex/uvicorn/issues/199): the parent listens for the disconnect and
cancels its child tasks.

The report's app sends in a loop and never receives, so nothing in it notices that the client
has gone; with uvicorn's `websockets` implementation the next send raised out of the app
("Exception in ASGI application"), with `wsproto` the loop ran on for ever. Since #2218/#2220
a send after the client left raises (Starlette turns it into `WebSocketDisconnect(1006)`).

`/ws/buggy`: a chat's answer (its ack and five events, STREAM_GAP apart) is streamed in line,
as the report's loop does, without looking at the socket in between; a client that closes
mid-stream makes the next send raise out of the endpoint.

`/ws/fixed`: the stream runs in its own task while the endpoint keeps receiving; the
disconnect reaches the receiver, which cancels the stream before it sends again.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from examples.zoo import _wire

STREAM_GAP = 0.04  # between two frames of one answer: the model's tokens arriving

app = FastAPI()


async def stream_answer(websocket: WebSocket, chat_id: str, user: str) -> None:
    await websocket.send_text(_wire.ack(chat_id, user))
    for kind in _wire.EVENTS:
        await asyncio.sleep(STREAM_GAP)
        await websocket.send_text(_wire.event(kind, chat_id, user))


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    user = _wire.user_of(websocket)
    await websocket.accept()
    while True:
        try:
            raw = await websocket.receive_text()
        except WebSocketDisconnect:
            return
        chat = _wire.parse_chat(raw)
        if chat is not None:
            # RACE: nothing here looks at the socket while the answer streams.
            await stream_answer(websocket, chat[0], user)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    user = _wire.user_of(websocket)
    await websocket.accept()
    streams: set[asyncio.Task[None]] = set()
    try:
        while True:
            raw = await websocket.receive_text()
            chat = _wire.parse_chat(raw)
            if chat is not None:
                task = asyncio.create_task(stream_answer(websocket, chat[0], user))
                streams.add(task)
                task.add_done_callback(streams.discard)
    except WebSocketDisconnect:
        pass
    finally:
        # The client is gone: no stream may send again.
        for task in list(streams):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
