"""``--log-format json`` on a real server: every line is a JSON object, a session's lines carry its
ids, and no secret — the API key, an ``ek_`` token in a query string — is written anywhere."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import API_KEY, scaled, start_server, stop_server
from tests.e2e.sse_support import SseEvent, sse_events

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_json_logs_carry_session_ids_and_never_a_secret() -> None:
    server = start_server("--api-key", API_KEY, "--log-format", "json")
    try:
        async with httpx.AsyncClient(base_url=server.http, timeout=scaled(60)) as http:
            conversation = (await http.post("/v1/conversations", json={}, headers=AUTH)).json()["id"]
            token = (await http.post(f"/v1/conversations/{conversation}/token", headers=AUTH)).json()["token"]
            assert token.startswith("ek_")

            # A text turn read over an EventSource-style URL: the token is in the query string.
            events: list[SseEvent] = []

            async def read() -> None:
                async with http.stream("GET", f"/v1/conversations/{conversation}/events?token={token}") as response:
                    assert response.status_code == 200
                    async for event in sse_events(response):
                        events.append(event)
                        if event.event == "assistant.done":
                            return

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.5)
            posted = await http.post(f"/v1/conversations/{conversation}/messages", json={"text": "Say hi."},
                                     headers=AUTH)
            assert posted.status_code == 202
            await asyncio.wait_for(reader, scaled(120))

            # A realtime text turn; the key rides in the subprotocol, a token in the URL as well.
            async with websockets.connect(
                    f"{server.ws}/v1/realtime?model=voicebot&token={token}",
                    subprotocols=[websockets.Subprotocol("realtime"),
                                  websockets.Subprotocol(f"openai-insecure-api-key.{API_KEY}")]) as ws:
                created = json.loads(await ws.recv())
                session_id = created["session"]["id"]
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}}))
                await ws.send(json.dumps({"type": "response.create",
                                          "response": {"output_modalities": ["text"], "max_output_tokens": 12}}))
                done: dict[str, Any] = {}
                while not done:
                    event = json.loads(await asyncio.wait_for(ws.recv(), scaled(120)))
                    if event["type"] == "response.done":
                        done = event["response"]
            # A refused handshake (wrong key) is one INFO line from uvicorn, not an ERROR.
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"{server.ws}/v1/realtime?model=voicebot",
                                              additional_headers={"Authorization": "Bearer wrong-key"}):
                    pass
            assert refused.value.response.status_code == 401
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=scaled(60)) == 0
    finally:
        stop_server(server)

    text = server.log()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one object
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)

    mine = [line for line in lines if line.get("session_id") == session_id]
    assert any(line["message"].startswith("session started") for line in mine)
    assert all(line["transport"] == "realtime_ws" for line in mine)
    reply = [line for line in mine if line.get("response_id") == done["id"]]
    assert reply and "completed" in reply[0]["message"]
    # The text reply came from the conversation's own (headless) session.
    assert any(line.get("conversation_id") == conversation and line.get("transport") == "headless"
               and line.get("response_id") for line in lines)
    # uvicorn's own lines go through the same formatter, with the query string's token redacted.
    access = [line for line in lines if line["logger"] == "uvicorn.access" and "/events" in line["message"]]
    assert access and all("token=[redacted]" in line["message"] for line in access)

    assert any("connection rejected (401" in line["message"] for line in lines)
    assert not [line for line in lines if line["level"] == "error"], "nothing went wrong, nothing says so"

    for secret in (API_KEY, token, token.removeprefix("ek_")):
        assert secret not in text
