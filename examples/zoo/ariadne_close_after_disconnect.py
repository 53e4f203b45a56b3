"""The connection-init timeout closes a socket whose client has already gone, after the
handler has returned: uvicorn answers "Unexpected ASGI message 'websocket.close', after
sending 'websocket.close'".

Source: ariadne PR #972, "fixed websocket.close call on already closed websocket instance"
(https://github.com/mirumee/ariadne/pull/972): the exception "appears in the server logs.
This is caused by the handle_connection_init_timeout handler that is not checking if the
WebSocket is already disconnected." The fix checks
`WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state)`
before closing.

The app: the graphql-transport-ws handshake reduced to racegate's wire protocol: the client's
first frame is its `connection_init` (its first chat, answered as usual); a connection that has
sent none within INIT_WAIT is closed with 4408. The timeout task outlives the handler.

`/ws/buggy`: the timeout task closes whatever the socket's state; a client that left before
INIT_WAIT without a first frame gets a close sent after its handler returned.

`/ws/fixed`: the timeout task checks the socket's states first, as PR #972 does.

The message is uvicorn's `websockets` implementation's (`--ws websockets`, the default when
the report was written); under the sans-I/O one the late close raises ClientDisconnected
instead, which Starlette turns into WebSocketDisconnect inside the task.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from examples.zoo import _wire

INIT_WAIT = 0.1  # connection_init_wait_timeout

app = FastAPI()


class ClientContext:
    def __init__(self) -> None:
        self.connection_init_received = False


async def init_timeout(websocket: WebSocket, context: ClientContext, *, check: bool) -> None:
    await asyncio.sleep(INIT_WAIT)
    if context.connection_init_received:
        return
    states = (websocket.client_state, websocket.application_state)
    if check and WebSocketState.DISCONNECTED in states:
        return
    await websocket.close(code=4408)  # RACE (buggy): the client may be long gone


async def serve(websocket: WebSocket, *, check: bool) -> None:
    context = ClientContext()
    asyncio.create_task(init_timeout(websocket, context, check=check))
    await websocket.accept()
    user = _wire.user_of(websocket)
    try:
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                context.connection_init_received = True
                await _wire.answer(websocket, chat[0], user)
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, check=False)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, check=True)
