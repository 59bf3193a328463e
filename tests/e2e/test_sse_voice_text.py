"""Voice and text in one conversation: a Realtime WebSocket session attached with
``?conversation=ID`` and text posted over HTTP share one history, and the SSE stream shows both.

First with fake engines (the LLM records exactly what it was asked), then with the real server,
real recorded speech and the embedded models.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import API_KEY, ServerProcess, scaled
from tests.e2e.sse_support import KEY, SseEvent, auth, sse_events
from tests.realtime_client import Microphone, Recorder, client, receive_into, silence24k, to_pcm24k
from tests.session.fakes import SlowLlm, silence, tone
from tests.speech import utterance
from tests.thread_server import ThreadServer


async def until(stream: AsyncIterator[SseEvent], predicate: Any, into: list[SseEvent], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        async for event in stream:
            if event.event:
                into.append(event)
                if predicate(event):
                    return


def is_done(source: str) -> Any:
    started: set[str] = set()

    def check(event: SseEvent) -> bool:
        if event.event == "assistant.started" and event.json()["source"] == source:
            started.add(event.json()["response_id"])
        return event.event == "assistant.done" and event.json()["response_id"] in started

    return check


async def test_fake_engines_voice_reply_sees_text_and_sse_shows_both() -> None:
    with ThreadServer(llm=SlowLlm(delay=0.01), api_keys=(KEY,)) as server:
        base = server.http
        async with httpx.AsyncClient(base_url=base, headers=auth(), timeout=10) as http:
            cid = (await http.post("/v1/conversations", json={"instructions": "Be brief."})).json()["id"]
            async with http.stream("GET", f"/v1/conversations/{cid}/events") as response:
                stream = sse_events(response)
                seen: list[SseEvent] = []
                await http.post(f"/v1/conversations/{cid}/messages", json={"text": "My name is Ada."})
                await until(stream, is_done("text"), seen, 10)
                url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=voicebot&conversation={cid}"
                async with websockets.connect(url, additional_headers=auth()) as ws:
                    for pcm in (silence(200), tone(600), silence(1200)):
                        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                                  "audio": base64.b64encode(pcm).decode()}))
                    await until(stream, is_done("voice"), seen, 20)
            history = (await http.get(f"/v1/conversations/{cid}")).json()["items"]
    users = [e.json() for e in seen if e.event == "user.message"]
    assert [(u["text"], u["source"]) for u in users] == [("My name is Ada.", "text"), ("hello there", "voice")]
    dones = [e.json() for e in seen if e.event == "assistant.done"]
    assert [d["status"] for d in dones] == ["completed", "completed"]
    assert [(i["role"], i["source"]) for i in history] == [
        ("user", "text"), ("assistant", "text"), ("user", "voice"), ("assistant", "voice")]
    # The voice reply was generated from the shared history, text turn included.
    assert [m.content for m in server.llm.requests[-1]] == ["Be brief.", "My name is Ada.", server.llm.reply,
                                                            "hello there"]
    # And text after voice continues the same history.


@pytest.mark.e2e
async def test_real_voice_and_text_share_one_conversation(real_server: ServerProcess) -> None:
    instructions = ("You are a terse assistant. The user will tell you a secret word in a text message. "
                    "From then on, answer every message with only that secret word, nothing else.")
    async with httpx.AsyncClient(base_url=real_server.http, headers={"Authorization": f"Bearer {API_KEY}"},
                                 timeout=scaled(60)) as http:
        cid = (await http.post("/v1/conversations", json={"instructions": instructions})).json()["id"]
        async with http.stream("GET", f"/v1/conversations/{cid}/events") as response:
            stream = sse_events(response)
            seen: list[SseEvent] = []
            await http.post(f"/v1/conversations/{cid}/messages", json={"text": "The secret word is pineapple."})
            await until(stream, is_done("text"), seen, scaled(60))
            sdk = client(real_server.http, API_KEY)
            async with sdk.realtime.connect(model="voicebot", extra_query={"conversation": cid}) as conn:
                recorder = Recorder()
                receiver = asyncio.create_task(receive_into(conn, recorder))
                # Greedy: at 0.6 the 1.5B model once answered "young" (a word it had just heard)
                # instead of the secret word; the test is about the shared history, not sampling.
                await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"],
                                                   "temperature": 0.0})
                mic = Microphone(conn)
                sender = asyncio.create_task(mic.run())
                try:
                    speech = utterance("0880")  # "he was not an ill disposed young man"
                    mic.say(silence24k(300) + to_pcm24k(speech.samples()))
                    await until(stream, is_done("voice"), seen, scaled(90))
                finally:
                    sender.cancel()
                    receiver.cancel()
                    await asyncio.gather(sender, receiver, return_exceptions=True)
    users = [e.json() for e in seen if e.event == "user.message"]
    assert [u["source"] for u in users] == ["text", "voice"]
    assert "young man" in users[1]["text"].lower()
    voice_done = [e.json() for e in seen if e.event == "assistant.done"][-1]
    assert voice_done["status"] == "completed"
    assert "pineapple" in voice_done["text"].lower(), voice_done["text"]
    # The Realtime client heard the same reply the SSE stream showed.
    transcripts = recorder.of("response.output_audio_transcript.done")
    assert transcripts and transcripts[-1]["transcript"] == voice_done["text"]
