"""The reference app: real Starlette under uvicorn, doing a script of lifecycle primitives.

racegate's transports (the in-memory fake and the real-socket `WsSocket`) claim Starlette's
WebSocket semantics. This app is what they are checked against (`make conformance`,
`harness/net/tests/conformance.rs`, `docs/conformance.md`).

One WebSocket route, `/ws?case=<id>&script=<json>`. The script is a JSON list of steps, each
`[op]` or `[op, arg]`:

    sleep <ms>      await asyncio.sleep (before accept: the pre-accept window, state CONNECTING)
    accept          websocket.accept()
    send <text>     websocket.send_text(<a push frame carrying text>)
    receive         websocket.receive_text(); records the chat frame's text
    close <code>    websocket.close(code)
    raise           an exception escapes the app (uvicorn: 500 before accept, TCP drop after)
    client_state    records websocket.client_state
    app_state       records websocket.application_state
    ready           records client_state and application_state both CONNECTED

Every step's outcome is recorded as `ok` or `ok <value>`, or as the exception it raised:
`WebSocketDisconnect(<code>)`, or `<class name>` followed by `: <str(exc)>` when that is not
empty. A step that raises does not end the script (so a test sees what the next call does);
only `raise` does. `GET /results/<id>` returns the outcomes as JSON once the script is done
(waiting up to `?wait=` seconds, 504 after that). A server that is shutting down answers no
more requests, so with `$CONFORMANCE_RESULTS` set to a directory each finished script is also
written there as `<id>.json` (the shutdown cases read it once uvicorn has exited). `GET /health` answers once the app is up;
`GET /versions` names Starlette, uvicorn, websockets and uvicorn's default WebSocket protocol.

Run it only on loopback: `python -m uvicorn conformance.app:app --host 127.0.0.1 --port N`.
"""

from __future__ import annotations

import asyncio
import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState


class ScriptRaised(Exception):
    """What `raise` throws out of the app."""


class Case:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.done = asyncio.Event()


CASES: dict[str, Case] = {}


def case(case_id: str) -> Case:
    if case_id not in CASES:
        CASES[case_id] = Case()
    return CASES[case_id]


def describe(exc: BaseException) -> str:
    if isinstance(exc, WebSocketDisconnect):
        return f"WebSocketDisconnect({exc.code})"
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def push_frame(text: str) -> str:
    # racegate's wire format for a server push, so every arm's client reads the same shape.
    return json.dumps({"type": "push", "id": "s", "text": text, "user": "conf"})


def chat_text(raw: str) -> str:
    try:
        frame = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(frame, dict) and isinstance(frame.get("text"), str):
        return frame["text"]
    return raw


def state_name(state: WebSocketState) -> str:
    return state.name


async def step(ws: WebSocket, op: str, arg: object) -> str:
    if op == "sleep":
        await asyncio.sleep(int(arg) / 1000)  # type: ignore[arg-type]
        return "ok"
    if op == "accept":
        await ws.accept()
        return "ok"
    if op == "send":
        await ws.send_text(push_frame(str(arg)))
        return "ok"
    if op == "receive":
        return f"ok {chat_text(await ws.receive_text())}"
    if op == "close":
        await ws.close(int(arg))  # type: ignore[arg-type]
        return "ok"
    if op == "client_state":
        return f"ok {state_name(ws.client_state)}"
    if op == "app_state":
        return f"ok {state_name(ws.application_state)}"
    if op == "ready":
        ready = (
            ws.client_state == WebSocketState.CONNECTED
            and ws.application_state == WebSocketState.CONNECTED
        )
        return f"ok {str(ready).lower()}"
    raise ValueError(f"unknown step {op!r}")


async def run_script(ws: WebSocket) -> None:
    record = case(ws.query_params.get("case", ""))
    script = json.loads(ws.query_params.get("script", "[]"))
    try:
        for item in script:
            op, arg = item[0], (item[1] if len(item) > 1 else None)
            if op == "raise":
                record.steps.append("raise: raised")
                raise ScriptRaised("raised by the script")
            try:
                out = await step(ws, op, arg)
            except Exception as exc:  # noqa: BLE001 - recording what Starlette raised is the point
                out = describe(exc)
            label = op if arg is None else f"{op} {arg}"
            record.steps.append(f"{label}: {out}")
    finally:
        record.done.set()
        save(ws.query_params.get("case", ""), record)


def save(case_id: str, record: Case) -> None:
    folder = os.environ.get("CONFORMANCE_RESULTS")
    if not folder or not case_id.replace("-", "").isalnum():
        return
    path = os.path.join(folder, f"{case_id}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        json.dump({"done": True, "steps": record.steps}, out)
    os.replace(path + ".tmp", path)


async def results(request: Request) -> JSONResponse:
    record = case(request.path_params["case"])
    wait = float(request.query_params.get("wait", "10"))
    try:
        await asyncio.wait_for(record.done.wait(), timeout=wait)
    except asyncio.TimeoutError:
        return JSONResponse({"done": False, "steps": record.steps}, status_code=504)
    return JSONResponse({"done": True, "steps": record.steps})


async def health(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def versions(_: Request) -> JSONResponse:
    from importlib.metadata import version

    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    return JSONResponse(
        {
            "starlette": version("starlette"),
            "uvicorn": version("uvicorn"),
            "websockets": version("websockets"),
            "ws_impl": getattr(AutoWebSocketsProtocol, "__name__", "none"),
        }
    )


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/versions", versions),
        Route("/results/{case}", results),
        WebSocketRoute("/ws", run_script),
    ]
)
