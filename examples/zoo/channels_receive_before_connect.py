"""A message handled before the connect handler has finished: the receive handler runs
without the user the connect handler was still loading.

Source: Django Channels issue #120, "websocket.ws_receive is called before
websocket.ws_connect" (https://github.com/django/channels/issues/120), and issue #525,
"Finding that slight_ordering fails occasionally upon runserver restart"
(https://github.com/django/channels/issues/525). A client that reconnects and sends at once
had its `websocket.receive` consumer run before (or during) its `websocket.connect` consumer,
which was still loading the session's user: the message was handled as `AnonymousUser`.
Channels 1.0 fixed the order at the protocol level (#525's answer): the handshake waits
until the connect consumer accepts, and a connection's messages are handled in order after it.

The app: each ASGI message goes to its own consumer task, as Channels 0.x workers took them.
The connect consumer loads the session's user (`load_session_user`, hooked as `auth`: the
scenario's `auth_ms` is its time); the receive consumer answers a chat as the session's user.

`/ws/buggy`: accepts at once, then runs the connect consumer and each receive consumer side
by side; a chat that arrives during the user lookup is answered as "AnonymousUser".

`/ws/fixed`: the connect consumer finishes before accept, and receives are handled one after
another.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from examples.zoo import _wire

USER_LOOKUP = 0.1  # the session store and the user table

app = FastAPI()


async def load_session_user(token: str) -> str:
    """The connect consumer's session and user lookup; hooked as `auth`."""
    await asyncio.sleep(USER_LOOKUP)
    return token


class ChannelSession:
    def __init__(self) -> None:
        self.user = "AnonymousUser"


async def ws_connect(websocket: WebSocket, session: ChannelSession) -> None:
    session.user = await load_session_user(_wire.user_of(websocket))


async def ws_receive(websocket: WebSocket, session: ChannelSession, chat_id: str) -> None:
    await _wire.answer(websocket, chat_id, session.user)


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    session = ChannelSession()
    await websocket.accept()
    consumers = {asyncio.create_task(ws_connect(websocket, session))}
    try:
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                # RACE: may run while ws_connect is still loading the user.
                consumers.add(asyncio.create_task(ws_receive(websocket, session, chat[0])))
    except WebSocketDisconnect:
        pass
    finally:
        for task in consumers:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    session = ChannelSession()
    await ws_connect(websocket, session)
    await websocket.accept()
    try:
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                await ws_receive(websocket, session, chat[0])
    except WebSocketDisconnect:
        pass


def create_test_app() -> FastAPI:
    """The test factory: no lookup time of the app's own, so the scenario's `auth_ms`, given
    through the hooks file, is the only one."""
    global USER_LOOKUP
    USER_LOOKUP = 0
    return app
