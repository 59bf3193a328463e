"""Function calling against the real embedded model, through the official ``openai`` SDK.

Realtime (text and voice) and Chat Completions (streamed and not): the model calls the declared
function with arguments that parse as JSON, the client answers with the function's output, and
the next reply uses it. ``tool_choice`` none / required / one function, and the error paths. The
spoken question is made with Piper (the server's own voice, at 24 kHz) since the Debian test
speech asks nothing a tool could answer; the server's Whisper still has to hear it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import openai
import pytest

from tests.conftest import API_KEY, ServerProcess, scaled
from tests.realtime_client import Microphone, Recorder, audio_of, client, receive_into, silence24k

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"type": "function", "name": "get_time", "description": "Get the current local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
#: What our fake weather service says: numbers the model cannot guess.
OUTPUT = {"temperature_c": 17, "sky": "light rain"}


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}


@contextlib.asynccontextmanager
async def realtime(server: ServerProcess, **session: Any) -> AsyncIterator[tuple[Any, Recorder]]:
    async with client(server.http, API_KEY).realtime.connect(model="voicebot") as conn:
        recorder = Recorder()
        receiver = asyncio.create_task(receive_into(conn, recorder))
        try:
            await conn.session.update(session={"type": "realtime", **session})
            await recorder.wait_for("session.updated", timeout=scaled(10))
            yield conn, recorder
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


async def ask(conn: Any, rec: Recorder, text: str, **response: Any) -> dict[str, Any]:
    done_before = len(rec.of("response.done"))
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]})
    await conn.response.create(response=response or None)
    return (await rec.wait_for("response.done", done_before + 1, timeout=scaled(60)))["response"]


def calls_in(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in response["output"] if o["type"] == "function_call"]


async def answer(conn: Any, rec: Recorder, call: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    done_before = len(rec.of("response.done"))
    await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call["call_id"],
                                              "output": json.dumps(output)})
    await conn.response.create()
    return (await rec.wait_for("response.done", done_before + 1, timeout=scaled(60)))["response"]


async def test_realtime_text_call_then_answer_uses_the_output(real_server: ServerProcess) -> None:
    async with realtime(real_server, output_modalities=["text"], tools=[WEATHER, TIME]) as (conn, rec):
        first = await ask(conn, rec, "What's the weather like in Paris right now?")
        assert first["status"] == "completed"
        [call] = calls_in(first)
        assert [o["type"] for o in first["output"]] == ["function_call"], "a call alone: no message item"
        assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"].lower() == "paris"
        # The streamed pieces add up to the arguments the done event and the item carry.
        deltas = "".join(e["delta"] for e in rec.of("response.function_call_arguments.delta")
                         if e["item_id"] == call["id"])
        done = rec.of("response.function_call_arguments.done")[0]
        assert deltas == done["arguments"] == call["arguments"] and done["call_id"] == call["call_id"]
        added = [e["item"] for e in rec.of("conversation.item.added") if e["item"]["type"] == "function_call"]
        assert [i["id"] for i in added] == [call["id"]]
        second = await answer(conn, rec, call, OUTPUT)
    assert second["status"] == "completed" and not calls_in(second)
    text = rec.of("response.output_text.done")[-1]["text"]
    assert "17" in text, text


async def test_realtime_voice_question_ends_in_a_call_and_the_spoken_answer_uses_the_output(
        real_server: ServerProcess) -> None:
    from voicebot.core.audio import resample
    from voicebot.engines.tts_piper import PiperSynthesizer
    from voicebot.models import piper_voice_path

    tts = PiperSynthesizer(piper_voice_path())
    question = resample(tts.synthesize("What is the weather in London right now?"), tts.sample_rate, 24_000)
    async with realtime(real_server, output_modalities=["audio"], tools=[WEATHER],
                        audio={"input": {"turn_detection": {"type": "server_vad"}}}) as (conn, rec):
        mic = Microphone(conn)
        sender = asyncio.create_task(mic.run())
        try:
            mic.say(silence24k(300) + question.astype("<i2").tobytes())
            first = (await rec.wait_for("response.done", timeout=scaled(90)))["response"]
            heard = rec.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
            assert "london" in heard.lower(), heard
            assert len(calls_in(first)) == 1, (heard, first["output"])
            [call] = calls_in(first)
            assert call["name"] == "get_weather" and "london" in call["arguments"].lower()
            assert audio_of(rec, first["id"]).size == 0, "a turn that only calls says nothing"
            second = await answer(conn, rec, call, OUTPUT)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    assert second["status"] == "completed"
    said = rec.of("response.output_audio_transcript.done")[-1]["transcript"]
    assert "17" in said or "seventeen" in said.lower(), said
    audio = audio_of(rec, second["id"])
    assert audio.size > 24_000 * 0.5 and np.abs(audio).max() > 1000


async def test_tool_choice_none_required_and_forced(real_server: ServerProcess) -> None:
    async with realtime(real_server, output_modalities=["text"], tools=[WEATHER, TIME]) as (conn, rec):
        none = await ask(conn, rec, "What's the weather like in Oslo right now?", tool_choice="none")
        assert not calls_in(none) and none["status"] == "completed"
        forced = await ask(conn, rec, "I'm flying to Tokyo tomorrow.",
                           tool_choice={"type": "function", "name": "get_time"})
        assert [c["name"] for c in calls_in(forced)] == ["get_time"]
        json.loads(calls_in(forced)[0]["arguments"])
    async with realtime(real_server, output_modalities=["text"], tools=[WEATHER], tool_choice="required") as (
            conn, rec):
        required = await ask(conn, rec, "I'm going to Madrid next week.")
        assert [c["name"] for c in calls_in(required)] == ["get_weather"]


async def test_tool_errors_are_error_events_and_the_session_goes_on(real_server: ServerProcess) -> None:
    async with realtime(real_server, output_modalities=["text"], tools=[WEATHER]) as (conn, rec):
        async def error_for(event: dict[str, Any]) -> dict[str, Any]:
            count = len(rec.of("error"))
            await conn.send({**event, "event_id": f"evt_{count}"})
            error = (await rec.wait_for("error", count + 1, timeout=scaled(10)))["error"]
            assert error["event_id"] == f"evt_{count}"
            return error

        unknown = await error_for({"type": "conversation.item.create",
                                   "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"}})
        assert unknown["param"] == "item.call_id"
        undeclared = await error_for({"type": "conversation.item.create", "item": {
            "type": "function_call", "call_id": "call_1", "name": "launch_rocket", "arguments": "{}"}})
        assert undeclared["param"] == "item.name"
        bad_args = await error_for({"type": "conversation.item.create", "item": {
            "type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{city: Paris"}})
        assert bad_args["param"] == "item.arguments"
        forced_unknown = await error_for({"type": "response.create",
                                          "response": {"tool_choice": {"type": "function", "name": "nope"}}})
        assert forced_unknown["param"] == "response.tool_choice"
        bad_tool = await error_for({"type": "session.update", "session": {"tools": [{"type": "function",
                                                                                     "name": "no spaces"}]}})
        assert bad_tool["param"].startswith("session.tools")
        # A client replaying history: a declared call it made earlier, then its output (bad JSON first).
        await conn.conversation.item.create(item={"type": "function_call", "call_id": "call_1", "name": "get_weather",
                                                  "arguments": json.dumps({"city": "Lima"})})
        bad_output = await error_for({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_1", "output": "{\"temperature_c\": 17,"}})
        assert bad_output["param"] == "item.output"
        reply = await answer(conn, rec, {"call_id": "call_1"}, OUTPUT)
    assert reply["status"] == "completed"
    assert "17" in rec.of("response.output_text.done")[-1]["text"]


def test_chat_completions_tool_calls_non_streamed_and_streamed(real_server: ServerProcess) -> None:
    sdk = openai.OpenAI(api_key=API_KEY, base_url=f"{real_server.http}/v1", max_retries=0)
    tools: Any = [chat_tool(WEATHER), chat_tool(TIME)]
    messages: Any = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    first = sdk.chat.completions.create(model="voicebot", messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"].lower() == "paris"

    streamed: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in sdk.chat.completions.create(model="voicebot", messages=messages, tools=tools, stream=True):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for piece in c.delta.tool_calls or ():
                entry = streamed.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += piece.id or ""
                entry["name"] += (piece.function.name if piece.function else None) or ""
                entry["arguments"] += (piece.function.arguments if piece.function else None) or ""
    assert finish == "tool_calls" and streamed[0]["name"] == "get_weather" and streamed[0]["id"]
    assert json.loads(streamed[0]["arguments"])["city"].lower() == "paris"

    history: Any = [*messages, choice.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": json.dumps(OUTPUT)}]
    final = sdk.chat.completions.create(model="voicebot", messages=history, tools=tools)
    assert final.choices[0].finish_reason == "stop" and "17" in (final.choices[0].message.content or "")
    none = sdk.chat.completions.create(model="voicebot", messages=messages, tools=tools, tool_choice="none")
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason != "tool_calls"


def test_chat_completions_tool_errors_are_400s(real_server: ServerProcess) -> None:
    sdk = openai.OpenAI(api_key=API_KEY, base_url=f"{real_server.http}/v1", max_retries=0)
    user: Any = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        sdk.chat.completions.create(model="voicebot", messages=user, tools=[chat_tool(WEATHER)],
                                    tool_choice={"type": "function", "function": {"name": "get_time"}})
    orphan: Any = [*user, {"role": "tool", "tool_call_id": "call_x", "content": "17"}]
    with pytest.raises(openai.BadRequestError, match="answers no earlier tool call"):
        sdk.chat.completions.create(model="voicebot", messages=orphan, tools=[chat_tool(WEATHER)])
    bad: Any = [*user, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{city"}}]}]
    with pytest.raises(openai.BadRequestError, match="not valid JSON"):
        sdk.chat.completions.create(model="voicebot", messages=bad, tools=[chat_tool(WEATHER)])
