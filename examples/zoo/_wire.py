"""racegate's wire protocol, as every zoo app speaks it (docs/wire-protocol.md).

The user id is the `token` query parameter. A chat is `{"type":"chat","id":...,"text":...}`;
its answer is an ack `{"type":"ack","id","user"}` and then the chat's run, five events
`{"type":<event>,"run":<chat id>,"user"}`. Frames of other types (a broadcast, a tick) are
not racegate's and its checker leaves them alone.
"""

from __future__ import annotations

import json

EVENTS = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)


def user_of(websocket) -> str:
    return websocket.query_params.get("token", "")


def parse_chat(raw: str) -> tuple[str, str] | None:
    """The chat's id and text, or None for a frame that is not a chat."""
    try:
        frame = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(frame, dict) or frame.get("type") != "chat":
        return None
    chat_id, text = frame.get("id"), frame.get("text", "")
    if not isinstance(chat_id, str) or not isinstance(text, str):
        return None
    return chat_id, text


def ack(chat_id: str, user: str) -> str:
    return json.dumps({"type": "ack", "id": chat_id, "user": user})


def event(kind: str, chat_id: str, user: str) -> str:
    return json.dumps({"type": kind, "run": chat_id, "user": user})


async def answer(websocket, chat_id: str, user: str) -> None:
    """A chat's whole answer at once: its ack, then its run's five events."""
    await websocket.send_text(ack(chat_id, user))
    for kind in EVENTS:
        await websocket.send_text(event(kind, chat_id, user))
