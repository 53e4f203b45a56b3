"""Slow joiner: replies to the first requests after connect are published before the
server's subscription to them is live, and are lost.

Source: jupyter_client issue #593, "SUB sockets take time to subscribe to the IOPub channel
and miss important messages" (https://github.com/jupyter/jupyter_client/issues/593), and
notebook PR #5908, "ensure iopub subscriptions propagate prior to accepting websocket
connections" (https://github.com/jupyter/notebook/pull/5908). Each browser WebSocket gets its
own ZMQ SUB socket on the kernel's IOPub channel; a SUB socket receives nothing the kernel
publishes before its subscription has propagated, so a request sent right after the socket
opened gets its reply published into the void. The fix: before accepting the WebSocket, nudge
the kernel with kernel_info requests until some IOPub message arrives, which proves the
subscription is live.

The app: one kernel. A chat goes to it on its "shell" channel; the kernel publishes the
answer (an ack and five events) on its IOPub, which each connection's subscription forwards to
its socket. A new subscription becomes live only once `propagate_subscription` has returned
(hooked as `services`: the scenario's `services_ms` is the propagation time).

`/ws/buggy`: accepts at once and forwards chats to the kernel while the subscription is
still propagating.

`/ws/fixed`: nudges the kernel every NUDGE_INTERVAL until its IOPub answers, then accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from examples.zoo import _wire

PROPAGATION = 0.15  # a SUB socket's subscription reaching the kernel's PUB socket
EVENT_GAP = 0.005
NUDGE_INTERVAL = 0.02

app = FastAPI()


async def propagate_subscription(user: str) -> None:
    """The subscription's way to the publisher; hooked as `services`."""
    await asyncio.sleep(PROPAGATION)


class Subscription:
    def __init__(self) -> None:
        self.live = False
        self.queue: asyncio.Queue[str] = asyncio.Queue()


class Kernel:
    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def subscribe(self, user: str) -> tuple[Subscription, asyncio.Task[None]]:
        sub = Subscription()
        self.subscriptions.append(sub)

        async def propagate() -> None:
            await propagate_subscription(user)
            sub.live = True

        return sub, asyncio.create_task(propagate())

    def publish(self, text: str) -> None:
        for sub in self.subscriptions:
            if sub.live:  # what is published before that is not delivered
                sub.queue.put_nowait(text)

    async def execute(self, chat_id: str, user: str) -> None:
        self.publish(_wire.ack(chat_id, user))
        for kind in _wire.EVENTS:
            await asyncio.sleep(EVENT_GAP)
            self.publish(_wire.event(kind, chat_id, user))

    def kernel_info(self) -> None:
        self.publish(json.dumps({"type": "status", "execution_state": "idle"}))


kernel = Kernel()


async def nudge(sub: Subscription) -> None:
    """notebook PR #5908: kernel_info requests until IOPub answers one."""
    while True:
        kernel.kernel_info()
        try:
            await asyncio.wait_for(sub.queue.get(), NUDGE_INTERVAL)
            return
        except TimeoutError:
            continue


async def forward(websocket: WebSocket, sub: Subscription) -> None:
    while True:
        await websocket.send_text(await sub.queue.get())


async def serve(websocket: WebSocket, *, nudged: bool) -> None:
    user = _wire.user_of(websocket)
    sub, propagating = kernel.subscribe(user)
    if nudged:
        await nudge(sub)
    await websocket.accept()  # RACE (buggy): the subscription may not be live yet
    forwarder = asyncio.create_task(forward(websocket, sub))
    runs: set[asyncio.Task[None]] = set()
    try:
        while True:
            chat = _wire.parse_chat(await websocket.receive_text())
            if chat is not None:
                run = asyncio.create_task(kernel.execute(chat[0], user))
                runs.add(run)
                run.add_done_callback(runs.discard)
    except WebSocketDisconnect:
        pass
    finally:
        kernel.subscriptions.remove(sub)
        for task in (propagating, forwarder, *runs):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@app.websocket("/ws/buggy")
async def buggy(websocket: WebSocket) -> None:
    await serve(websocket, nudged=False)


@app.websocket("/ws/fixed")
async def fixed(websocket: WebSocket) -> None:
    await serve(websocket, nudged=True)


def create_test_app() -> FastAPI:
    """The test factory: no propagation time of the app's own, so the scenario's
    `services_ms`, given through the hooks file, is the only one."""
    global PROPAGATION
    PROPAGATION = 0
    return app
