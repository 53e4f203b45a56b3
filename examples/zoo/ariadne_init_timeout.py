"""The connection-init timeout starts before accept: if accepting takes longer than the
timeout, the timeout closes the socket first and the late accept fails.

Source: ariadne issue #1217 and PR #1232, "fix: websocket connection init timeout set to 0"
(https://github.com/mirumee/ariadne/pull/1232): "In case of `connection_init_wait_timeout`
set to 0, ws connection was closed before it was even accepted, so accepting connection was
throwing an error. Moving `websocket.accept()` to the top fixes the issue." ariadne's
graphql-transport-ws handler created its `handle_connection_init_timeout` task and only then
awaited `websocket.accept(...)`.

The app: the graphql-transport-ws handshake reduced to racegate's wire protocol: the client's
first frame is its `connection_init` (here: its first chat, answered as usual); a connection
that has sent none within INIT_WAIT is closed with 4408. Accepting takes the scenario's
`[server] accept_ms` (racegate's driver holds the accept that long: the handshake's own
latency).

`/ws/buggy`: starts the timeout task, then accepts; with a handshake slower than INIT_WAIT,
the task closes the socket before accept (the client is refused with 403) and the accept
then raises.

`/ws/fixed`: accepts first, then starts the timeout task, as PR #1232 does.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from examples.zoo import _wire

INIT_WAIT = 0.05  # connection_init_wait_timeout, configured short

app = FastAPI()


class ClientContext:
    def __init__(self) -> None:
        self.connection_init_received = False


async def init_timeout(websocket: WebSocket, context: ClientContext) -> None:
    await asyncio.sleep(INIT_WAIT)
    if context.connection_init_received:
        return
    if WebSocketState.DISCONNECTED not in (
        websocket.client_state,
        websocket.application_state,
    ):
        await websocket.close(code=4408)  # 4408: connection initialisation timeout


async def serve(websocket: WebSocket, *, accept_first: bool) -> None:
    context = ClientContext()
    if accept_first:
        await websocket.accept()
    timeout = asyncio.create_task(init_timeout(websocket, context))
    try:
        if not accept_first:
            await websocket.accept()  # RACE: the timeout is already counting
        user = _wire.user_of(websocket)
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                context.connection_init_received = True
                await _wire.answer(websocket, chat[0], user)
    except WebSocketDisconnect:
        pass
    finally:
        timeout.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timeout


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, accept_first=False)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, accept_first=True)
