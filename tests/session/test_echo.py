"""The assistant's own voice leaking back into the microphone must not interrupt it (real AEC3).

The listener here plays exactly what the session sent, when its playout clock says, and its
microphone picks that up 100 ms later at -10 dB: a speakerphone. The VAD is the fake energy VAD,
which takes any loud tone for speech — so without echo cancellation the echo alone barges in.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from voicebot.engines.aec_webrtc import WebRtcEchoCanceller

from .fakes import SlowLlm, ToneTts, silence
from .test_session import Harness

RATE = 16_000
ECHO_GAIN = 10 ** (-10 / 20)
ECHO_DELAY_S = 0.1


def tone16k(ms: float, hz: float = 300, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(RATE * ms / 1000)) / RATE
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


async def listen_with_echo(h: Harness, seconds: float, speech: np.ndarray | None = None) -> None:
    """Send 20 ms of microphone audio every 20 ms: the speaker's echo (and ``speech`` if given)."""
    speaker = h.session.speaker
    assert speaker is not None
    start = time.monotonic()
    for k in range(int(seconds * 50)):
        now = time.monotonic()
        mic = speaker.window(now - ECHO_DELAY_S, 320).astype(np.float64) * ECHO_GAIN
        if speech is not None and k * 320 < speech.size:
            mic[: speech[k * 320 : k * 320 + 320].size] += speech[k * 320 : k * 320 + 320]
        h.session.feed_audio(np.clip(mic, -32768, 32767).astype("<i2").tobytes())
        await asyncio.sleep(max(0.0, start + (k + 1) * 0.02 - time.monotonic()))


@pytest.mark.parametrize("cancel_echo", [True, False])
async def test_echo_does_not_barge_in_but_a_person_still_does(cancel_echo: bool) -> None:
    h = Harness(llm=SlowLlm(delay=0.02), tts=ToneTts(ms_per_char=40), lead_ms=200,
                echo=WebRtcEchoCanceller if cancel_echo else None)
    if not cancel_echo:  # the same listener, but the session keeps no reference to cancel with
        from voicebot.core.echo import SpeakerTimeline

        h.session.speaker = SpeakerTimeline()
        h.session.responses.ctx.speaker = h.session.speaker
    try:
        await h.send(type="session.update", session={"audio": {"input": {"format": {"type": "audio/pcm",
                                                                                     "rate": 16000}}}})
        await h.speak(tone16k(700).tobytes() + silence(900, rate=RATE), rate=RATE)
        await h.wait_for("response.output_audio.delta")
        await listen_with_echo(h, 2.5)
        interrupted = [e for e in h.of("response.done") if e["response"]["status"] == "cancelled"]
        if not cancel_echo:
            assert interrupted, "without cancellation the echo interrupts: the test would catch a regression"
            return
        assert not interrupted, "its own voice did not interrupt it"
        assert len(h.of("input_audio_buffer.speech_started")) == 1, "only the question was speech"
        await listen_with_echo(h, 1.0, speech=tone16k(600, hz=500))
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "cancelled", "a person talking over the echo still barges in"
    finally:
        await h.session.close()
