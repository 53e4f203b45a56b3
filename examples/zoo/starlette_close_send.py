"""A close racing a send: one task closes the socket while another is still sending on it.

Source: Starlette issue #2766, "Replace `RuntimeError` with `WebSocketDisconnected` once the
socket has been disconnected" (https://github.com/Kludex/starlette/issues/2766), from
discussion #2762 (https://github.com/encode/starlette/discussions/2762). Two coroutines share
one socket; one closes it, the other sends after the close and gets Starlette's
'Cannot call "send" once a close message has been sent.' The maintainers made that a
disconnect the sender can handle (Starlette 1.x raises `WebSocketDisconnected`); the sender
still has to stop sending once the close has gone out.

The app: each chat starts a run task that streams the chat's answer (an ack, then five events
EVENT_GAP apart). A session task closes the connection SESSION after it was accepted (its
credentials expire).

`/ws/buggy`: the session task closes when the time is up, whatever is streaming; a run that
is still streaming then sends after the close.

`/ws/fixed`: every send and the close take one lock, and a `closed` flag set under it makes a
send that loses the race stop instead of sending; the session task lets the runs in flight
finish before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from examples.zoo import _wire

EVENT_GAP = 0.04
SESSION = 0.3  # from accept to the server's close

app = FastAPI()


class Session:
    def __init__(self, websocket: WebSocket, user: str, *, guarded: bool) -> None:
        self.websocket = websocket
        self.user = user
        self.guarded = guarded
        self.lock = asyncio.Lock()
        self.closed = False
        self.runs: set[asyncio.Task[None]] = set()

    async def send(self, text: str) -> bool:
        if not self.guarded:
            # RACE: maybe after the session's close.
            await self.websocket.send_text(text)
            return True
        async with self.lock:
            if self.closed:
                return False
            await self.websocket.send_text(text)
            return True

    async def run(self, chat_id: str) -> None:
        if not await self.send(_wire.ack(chat_id, self.user)):
            return
        for kind in _wire.EVENTS:
            await asyncio.sleep(EVENT_GAP)
            if not await self.send(_wire.event(kind, chat_id, self.user)):
                return

    def start_run(self, chat_id: str) -> None:
        task = asyncio.create_task(self.run(chat_id))
        self.runs.add(task)
        task.add_done_callback(self.runs.discard)

    async def expire(self) -> None:
        await asyncio.sleep(SESSION)
        if not self.guarded:
            await self.websocket.close(1000)
            return
        while self.runs:
            await asyncio.wait(set(self.runs))
        async with self.lock:
            self.closed = True
            await self.websocket.close(1000)


async def serve(websocket: WebSocket, *, guarded: bool) -> None:
    await websocket.accept()
    session = Session(websocket, _wire.user_of(websocket), guarded=guarded)
    expiry = asyncio.create_task(session.expire())
    try:
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                session.start_run(chat[0])
    except WebSocketDisconnect:
        pass
    finally:
        # The buggy route leaves its runs to finish on their own, as the report's sender did.
        for task in (expiry, *(session.runs if guarded else ())):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, guarded=False)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, guarded=True)
