"""A function call over real sockets: a Realtime WebSocket session with tools on a shared
conversation makes the call, the SSE stream shows it (``tool.call``), a text client posts the
result to the messages endpoint, and the stream shows it (``tool.output``) and the reply that
used it. Fake engines (the LLM plays a script); the HTTP, SSE and WebSocket layers are real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import websockets

from tests.e2e.sse_support import KEY, SseEvent, auth, sse_events
from tests.thread_server import ThreadServer
from tests.unit.test_sse_function_calls import CallingLlm
from voicebot.core.types import ToolCallDelta

TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


async def until(stream: AsyncIterator[SseEvent], event: str, into: list[SseEvent], timeout: float = 10) -> SseEvent:
    async with asyncio.timeout(timeout):
        async for got in stream:
            if got.event:
                into.append(got)
                if got.event == event:
                    return got
    raise AssertionError(f"the stream ended before {event}")


async def test_a_voice_sessions_call_is_mirrored_answered_over_http_and_used() -> None:
    llm = CallingLlm([[ToolCallDelta(0, "call_w", "get_weather", '{"city":"Paris"}')],
                      ["It", " is", " sunny."]])
    with ThreadServer(llm=llm, api_keys=(KEY,)) as server:
        async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as http:
            cid = (await http.post("/v1/conversations", json={})).json()["id"]
            messages = f"/v1/conversations/{cid}/messages"
            async with http.stream("GET", f"/v1/conversations/{cid}/events") as response:
                stream = sse_events(response)
                seen: list[SseEvent] = []
                url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=voicebot&conversation={cid}"
                async with websockets.connect(url, additional_headers=auth()) as ws:
                    await ws.send(json.dumps({"type": "session.update", "session": {
                        "type": "realtime", "output_modalities": ["text"], "tools": [TOOL], "tool_choice": "auto",
                        "audio": {"input": {"turn_detection": None}}}}))
                    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                        "type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": "Weather in Paris?"}]}}))
                    await ws.send(json.dumps({"type": "response.create"}))
                    call = (await until(stream, "tool.call", seen)).json()
                assert call["call_id"] == "call_w" and call["name"] == "get_weather"
                assert json.loads(call["arguments"]) == {"city": "Paris"}
                assert "assistant.started" not in [e.event for e in seen], "a call is no assistant message"

                unknown = await http.post(messages, json={"type": "function_call_output", "call_id": "nope",
                                                          "output": "{}"})
                assert unknown.status_code == 400, unknown.text
                assert unknown.json()["error"]["param"] == "call_id" and "nope" in unknown.json()["error"]["message"]
                missing = await http.post(messages, json={"type": "function_call_output", "call_id": "call_w"})
                assert missing.status_code == 400
                assert missing.json()["error"] | {"message": ""} == {
                    "type": "invalid_request_error", "code": "missing_required_parameter", "param": "output",
                    "message": ""}
                bad_json = await http.post(messages, json={"type": "function_call_output", "call_id": "call_w",
                                                           "output": "{not json"})
                assert bad_json.status_code == 400 and bad_json.json()["error"]["param"] == "output"

                posted = await http.post(messages, json={"type": "function_call_output", "call_id": "call_w",
                                                         "output": '{"sky": "clear"}'})
                assert posted.status_code == 202, posted.text
                item = posted.json()["item"]
                assert item["type"] == "function_call_output" and item["call_id"] == "call_w"
                output = (await until(stream, "tool.output", seen)).json()
                assert output == {"item_id": item["item_id"], "call_id": "call_w", "output": '{"sky": "clear"}'}
                done = (await until(stream, "assistant.done", seen)).json()
                assert done["text"] == "It is sunny." and done["status"] == "completed"
                again = await http.post(messages, json={"type": "function_call_output", "call_id": "call_w",
                                                        "output": "twice"})
                assert again.status_code == 400 and "already has an output" in again.json()["error"]["message"]
            history = (await http.get(f"/v1/conversations/{cid}")).json()["items"]
    assert [i["type"] for i in history] == ["message", "function_call", "function_call_output", "message"]
    assert history[1]["call_id"] == "call_w" and history[2]["output"] == '{"sky": "clear"}'
    assert [m.role for m in llm.requests[-1]][-3:] == ["user", "assistant", "tool"]
