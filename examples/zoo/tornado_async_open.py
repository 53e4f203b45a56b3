"""An async `open()` that does not hold back `on_message`: the first message is handled
before the connection's setup has run.

Source: tornado issue #2382, "Is WebSocketHandler.open guaranteed to complete before the
first handling of WebSocketHandler.on_message?" (https://github.com/tornadoweb/tornado/issues/2382),
and issue #2358, "websocket: Allow open() to be a coroutine"
(https://github.com/tornadoweb/tornado/issues/2358). In tornado 5.0 `open()` could be made a
coroutine, but "blocking in an `open()` coroutine doesn't block incoming messages": a
message arriving while `open()` was still awaiting reached `on_message` before the state
`open()` sets up existed. The maintainer's answer: once coroutines are allowed for `open()`,
`on_message` is not called until it finishes (tornado 5.1 made it so).

The app: a tornado-shaped handler class driven by a Starlette endpoint. `open()` loads the
user's subscriptions (`load_subscriptions`, hooked as `services`: the scenario's
`services_ms` is its time); `on_message` answers a chat on the user's first subscription.

`/ws/buggy`: like tornado 5.0, starts `open()` and reads messages at once; `on_message`
finds no `self.subscriptions` and raises AttributeError out of the endpoint.

`/ws/fixed`: like tornado 5.1, awaits `open()` before the first `on_message` (the messages
that came meanwhile wait in the connection's queue).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from examples.zoo import _wire

LOOKUP = 0.1  # the subscriptions table

app = FastAPI()


async def load_subscriptions(user: str) -> list[str]:
    """`open()`'s setup; hooked as `services`."""
    await asyncio.sleep(LOOKUP)
    return [f"inbox:{user}"]


class ChatHandler:
    """The shape of a tornado WebSocketHandler: `open`, then `on_message` per message."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.user = _wire.user_of(websocket)

    async def open(self) -> None:
        self.subscriptions = await load_subscriptions(self.user)

    async def on_message(self, chat_id: str) -> None:
        topic = self.subscriptions[0]  # AttributeError while open() is still running
        assert topic.endswith(self.user)
        await _wire.answer(self.websocket, chat_id, self.user)


async def serve(websocket: WebSocket, *, await_open: bool) -> None:
    handler = ChatHandler(websocket)
    await websocket.accept()
    opening = asyncio.ensure_future(handler.open())
    if await_open:
        await opening
    try:
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                await handler.on_message(chat[0])  # RACE (buggy): open() may still run
    except WebSocketDisconnect:
        pass
    finally:
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, await_open=False)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, await_open=True)


def create_test_app() -> FastAPI:
    """The test factory: no lookup time of the app's own, so the scenario's `services_ms`,
    given through the hooks file, is the only one."""
    global LOOKUP
    LOOKUP = 0
    return app
