"""A transport client reused across calls keeps its `_closing` flag from the last one: the
next caller's hang-up is taken for our own, and its pipeline never ends.

Source: pipecat PR #2768, "Fix: Reset _closing flag on WebSocket reconnection"
(https://github.com/pipecat-ai/pipecat/pull/2768). In a long-running container the
`FastAPIWebsocketClient` is reused for call after call. `disconnect()` (the bot hanging up)
sets `_closing = True`, and nothing resets it when the next connection is attached; on that
call the receive loop's `if not self._client.is_closing:` check then skips
`on_client_disconnected` when the caller hangs up ("Subsequent calls: Event never fires"), and
the call's pipeline runs on. The fix resets the flag when a new connection is attached.

The app: one client object for the whole process, attached to each new connection. A chat
is answered at once; a chat saying "bye" is also the end of the call: the bot hangs up
GOODBYE later (the goodbye being spoken). The caller may hang up first. Either way the call's
pipeline ends, and the endpoint returns, when `on_client_disconnected` or the bot's hang-up
ends it.

`/ws/buggy`: `attach()` keeps `_closing`: after a call the bot hung up, the next caller's
hang-up does not end its pipeline.

`/ws/fixed`: `attach()` resets `_closing`, as PR #2768 does.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket

from examples.zoo import _wire

GOODBYE = 0.1  # the bot's goodbye, spoken before it hangs up

app = FastAPI()


class WebsocketClient:
    def __init__(self, *, reset_on_attach: bool) -> None:
        self.reset_on_attach = reset_on_attach
        self.websocket: WebSocket | None = None
        self._closing = False

    def attach(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        # RACE (buggy, without the reset): the last call's flag stays.
        if self.reset_on_attach:
            self._closing = False

    @property
    def is_closing(self) -> bool:
        return self._closing

    async def disconnect(self) -> None:
        self._closing = True
        assert self.websocket is not None
        await self.websocket.close()


buggy_client = WebsocketClient(reset_on_attach=False)
fixed_client = WebsocketClient(reset_on_attach=True)


async def call(websocket: WebSocket, client: WebsocketClient) -> None:
    client.attach(websocket)
    await websocket.accept()
    user = _wire.user_of(websocket)
    ended = asyncio.Event()

    async def hang_up() -> None:
        await asyncio.sleep(GOODBYE)
        await client.disconnect()
        ended.set()

    async def receive_messages() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            chat = _wire.parse_chat(message.get("text") or "")
            if chat is not None:
                await _wire.answer(websocket, chat[0], user)
                if chat[1] == "bye":
                    tasks.append(asyncio.create_task(hang_up()))
        if not client.is_closing:
            ended.set()  # on_client_disconnected: the caller hung up

    tasks = [asyncio.create_task(receive_messages())]
    await ended.wait()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await call(websocket, buggy_client)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await call(websocket, fixed_client)
