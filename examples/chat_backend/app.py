"""A chat backend with the staging audit's WebSocket race, and its fixed twin, in FastAPI.

racegate's `unfixed` and `state-machine` endpoints are models. This is the real thing they
model, small enough to read: a FastAPI app under uvicorn whose production route has the seed's
bug, and whose fixed route has the fix, each logging its lifecycle in its own words with Python
`logging`, the way the staging backend did. `map.toml` beside it tells `racegate import` which
of those lines are which lifecycle event and which are production symptoms, so a log of this
app becomes a regression scenario (docs/import.md walks through it).

Both routes speak racegate's wire protocol (docs/wire-protocol.md), so `racegate probe` drives
them as it is: the user id is the `token` query parameter; a chat is
`{"type":"chat","id":...,"text":...}`; the answer is an ack `{"type":"ack","id","user"}` and the
chat's run, five events `{"type":<event>,"run":<chat id>,"user":...}`; a bad frame gets
`{"type":"error","message":...}`.

`/ws`, the production route as the audit found it (websocket.py in the seed's backend):
  - the connection is registered with the global manager and its reader task started at the
    upgrade, before `accept()`: while the handshake completes (Cloud Run's latency, here
    CHAT_ACCEPT_MS), the reader's `receive_text()` raises Starlette's 'WebSocket is not
    connected. Need to call "accept" first.', which the reader's "race condition handling"
    logs and retries;
  - accept comes early, then auth, services and handler registration, each an await, while the
    reader already routes chats through the global router: with no handler registered yet, a
    chat is dropped ("Message routing failed");
  - the handler, once registered by any connection, stays in the global router, so a later
    connection's chats are handled before its own setup is done, in the shared "current user"
    context that the last auth set: as another user ("Thread ID mismatch"), with the run's
    events sent to that user's connection (gone: "Failed to send").

`/ws/fixed`, the fix (racegate's `state-machine`): a per-connection state machine
CONNECTING -> ACCEPTED -> AUTHENTICATED -> SERVICES_READY -> PROCESSING_READY; the reader starts
after `accept()`; chats that arrive before PROCESSING_READY wait in a bounded queue (close 1013
when it is full) and are handled in order once ready; the user context is the connection's own;
a failed setup closes with 1008 (auth) or 1011 and rolls the connection back.

Timings in milliseconds come from the environment, the defaults being staging's: CHAT_ACCEPT_MS
(60), CHAT_AUTH_MS (180), CHAT_SERVICES_MS (240), CHAT_REGISTER_MS (90), CHAT_EVENT_GAP_MS (5).
(Staging's handshake took 120 ms; past the reader's third try, 100 ms in, the reader gives up and
the connection's chats are never read at all. 60 ms keeps the race the audit chased: chats read,
then dropped.)
A user whose id starts with CHAT_FAIL_AUTH_PREFIX ("reject-") fails auth.

Each setup phase is one named awaitable, as in the staging backend: `complete_handshake`,
`verify_token`, `create_services`, `register_handlers`. Each sleeps its time here, standing in
for the real I/O. `racegate probe --app` can time them from a scenario's `[server]` through
`hooks.toml` beside this file, and fail them where a user's `fail_at` says; `create_test_app` is
the test factory that stubs the simulated I/O out (every phase instant), so that the scenario's
times are the only ones (docs/app.md):

    racegate probe --app examples.chat_backend.app:create_test_app --factory \
        --hooks examples/chat_backend/hooks.toml --path /ws

Run it only on loopback:
    python -m uvicorn examples.chat_backend.app:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import sys
import time

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse


def _ms(name: str, default: int) -> float:
    return int(os.environ.get(name, str(default))) / 1000


ACCEPT = _ms("CHAT_ACCEPT_MS", 60)
AUTH = _ms("CHAT_AUTH_MS", 180)
SERVICES = _ms("CHAT_SERVICES_MS", 240)
REGISTER = _ms("CHAT_REGISTER_MS", 90)
EVENT_GAP = _ms("CHAT_EVENT_GAP_MS", 5)
FAIL_AUTH_PREFIX = os.environ.get("CHAT_FAIL_AUTH_PREFIX", "reject-")
# The reader's "race condition handling": retries and back-off between them.
READER_RETRIES = 3
READER_BACKOFF = 0.05
QUEUE_CAPACITY = 64

EVENTS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")


def _logger(name: str) -> logging.Logger:
    # Python's default line shape with the logger's name, in UTC so a log read back on another
    # machine, or next to a Cloud Logging export, means the same instant.
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


log = _logger("chat_backend.websocket")
fixed_log = _logger("chat_backend.fixed")

app = FastAPI()


@app.get("/health")
async def health() -> PlainTextResponse:
    return PlainTextResponse("ok")


class AuthFailed(Exception):
    """The token was refused."""


class ServicesFailed(Exception):
    """The supervisor or the LLM manager could not be created."""


class RegistrationFailed(Exception):
    """The message handlers could not be registered."""


async def complete_handshake() -> None:
    # Cloud Run completing the handshake; stubbed out (no wait, not even a yield) at 0.
    if ACCEPT:
        await asyncio.sleep(ACCEPT)


async def verify_token(user: str) -> None:
    await asyncio.sleep(AUTH)  # JWT validation against the auth service
    if not user or user.startswith(FAIL_AUTH_PREFIX):
        raise AuthFailed(f"token of user {user!r} refused")


async def create_services(user: str) -> None:
    await asyncio.sleep(SERVICES)  # supervisor and LLM manager factories


async def register_handlers(user: str) -> None:
    await asyncio.sleep(REGISTER)


def create_test_app() -> FastAPI:
    """The test factory: the same app with the simulated I/O of every phase stubbed out, so a
    scenario's `[server]` times, given through racegate's hooks, are the only ones."""
    global ACCEPT, AUTH, SERVICES, REGISTER
    ACCEPT = AUTH = SERVICES = REGISTER = 0
    return app


def chat_of(raw: str) -> tuple[str | None, str | None]:
    """The chat id of a frame, or None and the error text the wire protocol prescribes."""
    try:
        frame = json.loads(raw)
    except ValueError as exc:
        return None, f"frame is not valid JSON: {exc}"
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return None, 'frame must be a JSON object with a string "type"'
    if frame["type"] != "chat":
        return None, f'unknown frame type "{frame["type"]}": expected "chat"'
    if not isinstance(frame.get("id"), str) or not frame["id"]:
        return None, 'chat frame needs a non-empty string "id"'
    if not isinstance(frame.get("text"), str):
        return None, 'chat frame needs a string "text"'
    return frame["id"], None


# ---------------------------------------------------------------------------------------------
# /ws: the production route, as the staging audit found it.


class ConnectionManager:
    """The global registry the notifier and the agent runs send through: user -> socket."""

    def __init__(self) -> None:
        self.connections: dict[str, WebSocket] = {}


class MessageRouter:
    """The global router: message type -> handler, registered by whichever connection gets there."""

    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}


manager = ConnectionManager()
router = MessageRouter()
# The module-level "current user" every connection's setup writes and every handler reads.
current_user: str | None = None


class LegacyConnection:
    def __init__(self, user: str, websocket: WebSocket) -> None:
        self.user = user
        self.websocket = websocket
        self.context: str | None = None
        self.setup = "connecting"

    async def read_loop(self) -> None:
        errors = 0
        while True:
            try:
                raw = await self.websocket.receive_text()
            except WebSocketDisconnect as exc:
                log.info("WebSocket disconnected for user %s (code %s)", self.user, exc.code)
                break
            except RuntimeError as exc:
                # The seed's reactive "race condition handling": log, back off, try again.
                errors += 1
                log.error("WebSocket error for user %s: %s", self.user, exc)
                if errors >= READER_RETRIES:
                    log.error(
                        "Giving up on receiving from user %s after %d errors", self.user, errors
                    )
                    return
                await asyncio.sleep(READER_BACKOFF)
                continue
            chat_id, error = chat_of(raw)
            if chat_id is None:
                await self.websocket.send_text(json.dumps({"type": "error", "message": error}))
                continue
            log.info("Received message %s from user %s", chat_id, self.user)
            await route(self, chat_id)
        manager.connections.pop(self.user, None)


async def route(conn: LegacyConnection, chat_id: str) -> None:
    handler = router.handlers.get("chat")
    if handler is None:
        log.error(
            "Message routing failed for user %s: no handler registered for message type "
            "'chat', dropping message %s",
            conn.user,
            chat_id,
        )
        return
    await handle_chat(conn, chat_id)


async def handle_chat(conn: LegacyConnection, chat_id: str) -> None:
    if conn.setup != "ready":
        log.warning(
            "LLM Manager initialization without user context for message %s from user %s "
            "(setup: %s)",
            chat_id,
            conn.user,
            conn.setup,
        )
    # A connection still in setup has no context of its own yet: the shared one stands in.
    as_user = conn.context or current_user or ""
    if as_user != conn.user:
        log.warning(
            "Thread ID mismatch: message %s from user %s runs as user %s",
            chat_id,
            conn.user,
            as_user,
        )
    await conn.websocket.send_text(json.dumps({"type": "ack", "id": chat_id, "user": as_user}))
    asyncio.create_task(agent_run(chat_id, conn.user, as_user))


async def agent_run(chat_id: str, sender: str, as_user: str) -> None:
    for event in EVENTS:
        await asyncio.sleep(EVENT_GAP)
        target = manager.connections.get(as_user)
        if target is None:
            log.error(
                "Failed to send %s for message %s from user %s: no WebSocket connection for "
                "user %s",
                event,
                chat_id,
                sender,
                as_user,
            )
            continue
        try:
            await target.send_text(json.dumps({"type": event, "run": chat_id, "user": as_user}))
        except (RuntimeError, WebSocketDisconnect) as exc:
            log.error(
                "Failed to send %s for message %s to user %s: %s", event, chat_id, as_user, exc
            )


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    global current_user
    user = websocket.query_params.get("token", "")
    log.info("WebSocket connection request from user %s", user)
    conn = LegacyConnection(user, websocket)
    # RACE: reachable by the manager, and reading, before the handshake completes.
    manager.connections[user] = websocket
    reader = asyncio.create_task(conn.read_loop())
    await complete_handshake()
    await websocket.accept()
    log.info("WebSocket accepted for user %s, setup starts", user)

    conn.setup = "authenticating"
    try:
        await verify_token(user)
    except AuthFailed:
        log.error("Authentication failed for user %s", user)
        log.info("Closing WebSocket for user %s with code 1008: authentication failed", user)
        await websocket.close(1008)
        return
    current_user = user  # RACE: one "current user" for every connection
    log.info("Authenticated user %s", user)

    conn.setup = "creating services"
    try:
        await create_services(user)
    except ServicesFailed as exc:
        # No rollback: the connection stays registered and its reader keeps running.
        log.error("Failed to create WebSocket supervisor: %s", exc)
        await websocket.close(1011)
        return
    conn.context = current_user  # RACE: read across the await; another auth may have replaced it
    log.info("Created WebSocket supervisor for user %s", user)

    conn.setup = "registering handlers"
    try:
        await register_handlers(user)
    except RegistrationFailed as exc:
        log.error("Failed to register message handlers for user %s: %s", user, exc)
        await websocket.close(1011)
        return
    router.handlers["chat"] = handle_chat  # RACE: global, and never removed
    conn.setup = "ready"
    log.info("Registered message handlers for user %s: processing ready", user)
    await reader


# ---------------------------------------------------------------------------------------------
# /ws/fixed: the fix.


class State(enum.Enum):
    CONNECTING = 0
    ACCEPTED = 1
    AUTHENTICATED = 2
    SERVICES_READY = 3
    PROCESSING_READY = 4
    FAILED = 5
    CLOSED = 6


class SetupFailed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


fixed_connections: dict[str, FixedConnection] = {}


class FixedConnection:
    """One connection: every use of its socket goes through its state."""

    def __init__(self, user: str, websocket: WebSocket) -> None:
        self.user = user
        self.websocket = websocket
        self.state = State.CONNECTING
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_CAPACITY)
        fixed_log.info("connection for user %s: state CONNECTING", user)

    def advance(self, to: State) -> bool:
        # Terminal states are final: a setup step finishing after a close changes nothing.
        if self.state in (State.FAILED, State.CLOSED):
            return False
        fixed_log.info(
            "connection for user %s: state %s -> %s", self.user, self.state.name, to.name
        )
        self.state = to
        return True

    async def read_loop(self) -> None:
        while True:
            try:
                raw = await self.websocket.receive_text()
            except WebSocketDisconnect as exc:
                fixed_log.info(
                    "connection for user %s: client closed (code %s)", self.user, exc.code
                )
                self.advance(State.CLOSED)
                return
            chat_id, error = chat_of(raw)
            if chat_id is None:
                await self.websocket.send_text(json.dumps({"type": "error", "message": error}))
                continue
            fixed_log.info(
                "connection for user %s: received message %s in state %s",
                self.user,
                chat_id,
                self.state.name,
            )
            try:
                self.queue.put_nowait(chat_id)
            except asyncio.QueueFull:
                fixed_log.warning(
                    "connection for user %s: queue full (%d), closing with 1013",
                    self.user,
                    QUEUE_CAPACITY,
                )
                self.advance(State.FAILED)
                await self.websocket.close(1013)
                return

    async def process(self) -> None:
        """From PROCESSING_READY on: the held chats first, in order, then the rest as they come."""
        held = self.queue.qsize()
        if held:
            fixed_log.info(
                "connection for user %s: handling %d held messages in order", self.user, held
            )
        while self.state == State.PROCESSING_READY:
            chat_id = await self.queue.get()
            await self.websocket.send_text(
                json.dumps({"type": "ack", "id": chat_id, "user": self.user})
            )
            for event in EVENTS:
                await asyncio.sleep(EVENT_GAP)
                await self.websocket.send_text(
                    json.dumps({"type": event, "run": chat_id, "user": self.user})
                )


@app.websocket("/ws/fixed")
async def fixed_endpoint(websocket: WebSocket) -> None:
    user = websocket.query_params.get("token", "")
    conn = FixedConnection(user, websocket)
    await complete_handshake()
    await websocket.accept()
    conn.advance(State.ACCEPTED)
    # Reading is safe once accepted; what arrives before ready waits in the queue.
    reader = asyncio.create_task(conn.read_loop())
    worker: asyncio.Task[None] | None = None
    try:
        try:
            await verify_token(user)
        except AuthFailed:
            raise SetupFailed(1008, "authentication failed") from None
        if not conn.advance(State.AUTHENTICATED):
            return
        try:
            await create_services(user)
        except ServicesFailed:
            raise SetupFailed(1011, "services could not be created") from None
        if not conn.advance(State.SERVICES_READY):
            return
        try:
            await register_handlers(user)
        except RegistrationFailed:
            raise SetupFailed(1011, "handlers could not be registered") from None
        fixed_connections[user] = conn
        if not conn.advance(State.PROCESSING_READY):
            fixed_connections.pop(user, None)
            return
        worker = asyncio.create_task(conn.process())
        await reader
    except SetupFailed as failure:
        previous = conn.state.name
        if conn.advance(State.FAILED):
            fixed_log.error(
                "connection for user %s: setup failed after %s (%s), closing with %d",
                user,
                previous,
                failure.reason,
                failure.code,
            )
            held = conn.queue.qsize()
            for _ in range(held):
                chat_id = conn.queue.get_nowait()
                await websocket.send_text(
                    json.dumps(
                        {"type": "error", "message": f"rejected {chat_id}: {failure.reason}"}
                    )
                )
            await websocket.close(failure.code)
    finally:
        fixed_connections.pop(user, None)
        for task in (reader, worker):
            if task is not None and not task.done():
                task.cancel()
