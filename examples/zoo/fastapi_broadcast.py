"""Broadcast over the live list of connections while a disconnect changes it.

Source: FastAPI issue #2370, "Unexpected ASGI message 'websocket.send', after sending
'websocket.close'." (https://github.com/fastapi/fastapi/issues/2370), and PR #1991, "handle
list changed size during iteration in websockets broadcast"
(https://github.com/fastapi/fastapi/pull/1991): the docs' ConnectionManager broadcasts with
`for connection in self.active_connections: await connection.send_text(message)`; a connect
or disconnect handled during one of those awaits changes the collection under the loop, and
the broadcast reaches a socket that is gone or stops half-way. PR #1991 sends to a snapshot
of the connections, all at once, with `asyncio.gather(..., return_exceptions=True)`.

The app: a chat room keyed by user. A chat is broadcast to everyone as a `said` frame (a
type racegate leaves alone), then answered to its sender. Each send to a recipient takes
SEND_LATENCY (a slow client's socket), so the broadcast spans several awaits.

`/ws/buggy`: the broadcast iterates the live dict; a recipient who leaves during it removes
itself, and the loop's next step raises "dictionary changed size during iteration" out of
the sender's endpoint.

`/ws/fixed`: as in PR #1991, a snapshot sent to with `gather(return_exceptions=True)`; and a
recipient whose disconnect its own endpoint has already received is skipped rather than
written to.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from examples.zoo import _wire

SEND_LATENCY = 0.04

app = FastAPI()


class ConnectionManager:
    def __init__(self) -> None:
        self.active: dict[str, WebSocket] = {}

    async def send_slowly(self, websocket: WebSocket, text: str) -> None:
        await asyncio.sleep(SEND_LATENCY)
        await websocket.send_text(text)

    async def broadcast_live(self, text: str) -> None:
        # RACE: a disconnect during one of the awaits below changes the dict.
        for websocket in self.active.values():
            await self.send_slowly(websocket, text)

    async def broadcast_snapshot(self, text: str) -> None:
        async def one(websocket: WebSocket) -> None:
            await asyncio.sleep(SEND_LATENCY)
            if websocket.client_state == WebSocketState.CONNECTED:
                await websocket.send_text(text)

        await asyncio.gather(
            *(one(ws) for ws in list(self.active.values())), return_exceptions=True
        )


buggy_room = ConnectionManager()
fixed_room = ConnectionManager()


async def serve(websocket: WebSocket, room: ConnectionManager, *, snapshot: bool) -> None:
    user = _wire.user_of(websocket)
    await websocket.accept()
    room.active[user] = websocket
    try:
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is None:
                continue
            said = json.dumps({"type": "said", "from": user, "text": chat[1]})
            if snapshot:
                await room.broadcast_snapshot(said)
            else:
                await room.broadcast_live(said)
            await _wire.answer(websocket, chat[0], user)
    except WebSocketDisconnect:
        pass
    finally:
        room.active.pop(user, None)


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, buggy_room, snapshot=False)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, fixed_room, snapshot=True)
