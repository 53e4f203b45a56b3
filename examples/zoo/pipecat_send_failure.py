"""A failed send marks the transport as closing, so the disconnect handler never fires.

Source: pipecat PR #4186, "Fix FastAPI WebSocket disconnect race condition"
(https://github.com/pipecat-ai/pipecat/pull/4186), fixing issue #3912, and issue #3710,
"Potential bug in FastAPIWebsocketClient" (https://github.com/pipecat-ai/pipecat/issues/3710).
pipecat's FastAPI transport has an output side that sends (the bot's audio) and an input side
that receives. When the caller hangs up, a send can fail before the receive loop has seen the
disconnect; `send()` then set `_closing = True`, the flag that means "we closed it", and the
receive loop, finding it set, skipped `on_client_disconnected`: the pipeline waited for ever.
PR #4186 leaves `_closing` to `disconnect()` and makes `_can_send()` check Starlette's
`application_state` instead.

The app: a pipeline per connection. The input side takes each chat and processes it for
PROCESS (speech to text) before queueing it; the output side streams each answer (an ack,
then five events EVENT_GAP apart). `on_client_disconnected` ends the pipeline, and the
endpoint returns when it has ended.

`/ws/buggy`: a failed send sets `_closing`. The caller hangs up while the input side is busy
with its second chat and the output side is mid-answer: the output's next send fails first,
and the input side then skips the disconnect handler.

`/ws/fixed`: as PR #4186 has it.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from examples.zoo import _wire

PROCESS = 0.05  # the input side's work on one chat
EVENT_GAP = 0.04

app = FastAPI()


class WebsocketClient:
    def __init__(self, websocket: WebSocket, *, flag_on_send_failure: bool) -> None:
        self.websocket = websocket
        self.flag_on_send_failure = flag_on_send_failure
        self._closing = False

    @property
    def is_closing(self) -> bool:
        return self._closing

    def _can_send(self) -> bool:
        if self.flag_on_send_failure:
            return not self._closing
        return not self._closing and self.websocket.application_state == WebSocketState.CONNECTED

    async def send(self, text: str) -> None:
        if not self._can_send():
            return
        try:
            await self.websocket.send_text(text)
        except WebSocketDisconnect:
            if self.flag_on_send_failure:
                self._closing = True  # RACE: "we are closing", though the caller left

    async def disconnect(self) -> None:
        self._closing = True
        await self.websocket.close()


class Pipeline:
    def __init__(self, client: WebsocketClient, user: str) -> None:
        self.client = client
        self.user = user
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.ended = asyncio.Event()

    async def on_client_disconnected(self) -> None:
        self.ended.set()

    async def input(self) -> None:
        # ASGI messages, not receive_text(): after a failed send Starlette's application
        # state is DISCONNECTED and receive_text() would refuse to read the disconnect.
        while True:
            message = await self.client.websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            chat = _wire.parse_chat(message.get("text") or "")
            if chat is not None:
                await asyncio.sleep(PROCESS)
                self.queue.put_nowait(chat[0])
        # Only a disconnect we did not cause is the client's.
        if not self.client.is_closing:
            await self.on_client_disconnected()

    async def output(self) -> None:
        while True:
            chat_id = await self.queue.get()
            await self.client.send(_wire.ack(chat_id, self.user))
            for kind in _wire.EVENTS:
                await asyncio.sleep(EVENT_GAP)
                await self.client.send(_wire.event(kind, chat_id, self.user))


async def serve(websocket: WebSocket, *, flag_on_send_failure: bool) -> None:
    await websocket.accept()
    client = WebsocketClient(websocket, flag_on_send_failure=flag_on_send_failure)
    pipeline = Pipeline(client, _wire.user_of(websocket))
    tasks = [
        asyncio.create_task(pipeline.input()),
        asyncio.create_task(pipeline.output()),
    ]
    # The pipeline runs until on_client_disconnected ends it.
    await pipeline.ended.wait()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, flag_on_send_failure=True)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, flag_on_send_failure=False)
