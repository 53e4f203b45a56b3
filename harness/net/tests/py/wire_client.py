"""An independent client for racegate's wire protocol, on the `websockets` library.

Usage: wire_client.py ws://127.0.0.1:PORT

Checks, with code racegate did not write: a chat is answered with its ack and the five run
events, field for field; a malformed frame gets an error frame and the connection stays usable;
an upgrade without a token is closed with 1008. Prints one line per check; exits non-zero on the
first failure. Every wait has a timeout.
"""

import asyncio
import json
import sys

import websockets

WAIT = 10
EVENTS = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


async def recv_json(ws):
    raw = await asyncio.wait_for(ws.recv(), WAIT)
    assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
    return json.loads(raw)


async def chat_round_trip(base):
    async with websockets.connect(f"{base}/any/path?token=py%20user") as ws:
        await ws.send(json.dumps({"type": "chat", "id": "py-1", "text": "hello from python"}))
        ack = await recv_json(ws)
        assert ack == {"type": "ack", "id": "py-1", "user": "py user"}, ack
        for kind in EVENTS:
            event = await recv_json(ws)
            assert event == {"type": kind, "run": "py-1", "user": "py user"}, event
    print("ok chat: ack and five events, exact fields")


async def error_frame(base):
    async with websockets.connect(f"{base}/?token=py2") as ws:
        await ws.send("not json")
        err = await recv_json(ws)
        assert err["type"] == "error" and set(err) == {"type", "message"}, err
        assert err["message"].startswith("frame is not valid JSON"), err
        await ws.send(json.dumps({"type": "chat", "text": "no id"}))
        err = await recv_json(ws)
        assert err == {"type": "error", "message": 'chat frame needs a non-empty string "id"'}, err
        await ws.send(json.dumps({"type": "chat", "id": "py-2", "text": "still here?"}))
        ack = await recv_json(ws)
        assert ack == {"type": "ack", "id": "py-2", "user": "py2"}, ack
    print("ok errors: error frames, then the connection still serves")


async def no_token(base):
    async with websockets.connect(f"{base}/chat") as ws:
        try:
            await asyncio.wait_for(ws.recv(), WAIT)
            raise AssertionError("expected the server to close")
        except websockets.exceptions.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            assert code == 1008, f"close code {code}"
    print("ok no token: closed with 1008")


async def main(base):
    await asyncio.wait_for(chat_round_trip(base), WAIT * 2)
    await asyncio.wait_for(error_frame(base), WAIT * 2)
    await asyncio.wait_for(no_token(base), WAIT * 2)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
