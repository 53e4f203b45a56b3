"""Async middleware delays the server's handler registration; the client, told it is
connected, emits at once and its event reaches no handler.

Source: socket.io issue #2866, "`.use()` with async code causes timing issues with client and
server `connect` events" (https://github.com/socketio/socket.io/issues/2866), fixed by PR
#2948, "fix timing issues with middleware" (https://github.com/socketio/socket.io/pull/2948).
With an asynchronous `io.use()` middleware, the client received its `connect` before the
server ran its own `connect` handler, which is where the socket's event handlers are bound;
an event the client emitted from its `connect` handler was dropped. After #2948 the server
sends the connect packet only once the middleware and its `connect` handlers have run.
(socket.io is Node; the pattern is modelled here in an ASGI app.)

The app: accepting the WebSocket is socket.io's connect packet. A dispatcher reads frames and
calls the handler bound for their type, dropping frames with none (as an EventEmitter
does). The middleware (`authorize`, hooked as `auth`: the scenario's `auth_ms` is its time)
runs before the `connect` handler binds `chat`.

`/ws/buggy`: accepts, starts dispatching, then runs the middleware and binds the handler: a
chat that comes during the middleware is dropped without a word.

`/ws/fixed`: as after #2948: middleware, then the `connect` handler, then accept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from examples.zoo import _wire

MIDDLEWARE = 0.05  # the auth middleware's own I/O

app = FastAPI()


async def authorize(user: str) -> None:
    """The `io.use()` middleware; hooked as `auth`."""
    await asyncio.sleep(MIDDLEWARE)


class Socket:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.user = _wire.user_of(websocket)
        self.handlers: dict[str, Callable[[str], Awaitable[None]]] = {}

    def on(self, event: str, handler: Callable[[str], Awaitable[None]]) -> None:
        self.handlers[event] = handler

    async def dispatch(self) -> None:
        try:
            while True:
                chat = _wire.parse_chat(await self.websocket.receive_text())
                handler = self.handlers.get("chat")
                if chat is not None and handler is not None:  # none bound: dropped
                    await handler(chat[0])
        except WebSocketDisconnect:
            pass


def on_connection(socket: Socket) -> None:
    """The server's `io.on("connection")` handler, which binds the socket's events."""

    async def chat(chat_id: str) -> None:
        await _wire.answer(socket.websocket, chat_id, socket.user)

    socket.on("chat", chat)


async def serve(websocket: WebSocket, *, connect_last: bool) -> None:
    socket = Socket(websocket)
    if connect_last:
        await authorize(socket.user)
        on_connection(socket)
        await websocket.accept()
        await socket.dispatch()
        return
    await websocket.accept()  # RACE: the client is told it is connected now
    dispatcher = asyncio.create_task(socket.dispatch())
    try:
        await authorize(socket.user)
        on_connection(socket)
        await asyncio.shield(dispatcher)
    finally:
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, connect_last=False)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, connect_last=True)


def create_test_app() -> FastAPI:
    """The test factory: no middleware time of the app's own, so the scenario's `auth_ms`,
    given through the hooks file, is the only one."""
    global MIDDLEWARE
    MIDDLEWARE = 0
    return app
