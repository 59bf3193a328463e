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

from tests.speech import Utterance, utterance
from voicebot.engines.aec_webrtc import WebRtcEchoCanceller

from .fakes import SlowLlm, ToneTts, silence
from .test_session import Harness

RATE = 16_000
ECHO_GAIN = 10 ** (-10 / 20)
ECHO_DELAY_S = 0.1


def tone16k(ms: float, hz: float = 300, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(RATE * ms / 1000)) / RATE
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


def voice_onset(speech: Utterance) -> np.ndarray:
    """A recording from its first loud 10 ms on (within 20 dB of its peak), twice as loud."""
    samples = speech.samples().astype(np.float64)
    frames = samples[: samples.size // 160 * 160].reshape(-1, 160)
    levels = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-9)
    first = int(np.argmax(levels >= levels.max() - 20))
    return np.clip(samples[first * 160 :] * 2, -32768, 32767).astype(np.int16)


async def listen_with_echo(h: Harness, seconds: float, speech: np.ndarray | None = None,
                           echo_gain: float = ECHO_GAIN, until: str | None = None) -> float:
    """Send 20 ms of microphone audio every 20 ms: the speaker's echo (and ``speech`` if given).
    Returns how much audio was sent (ms), stopping early once an ``until`` event arrives."""
    speaker = h.session.speaker
    assert speaker is not None
    start = time.monotonic()
    seen = len(h.of(until)) if until else 0
    for k in range(int(seconds * 50)):
        now = time.monotonic()
        mic = speaker.window(now - ECHO_DELAY_S, 320).astype(np.float64) * echo_gain
        if speech is not None and k * 320 < speech.size:
            mic[: speech[k * 320 : k * 320 + 320].size] += speech[k * 320 : k * 320 + 320]
        h.session.feed_audio(np.clip(mic, -32768, 32767).astype("<i2").tobytes())
        if until and len(h.of(until)) > seen:
            return (k + 1) * 20.0
        await asyncio.sleep(max(0.0, start + (k + 1) * 0.02 - time.monotonic()))
    return seconds * 1000


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


@pytest.mark.parametrize("learn_the_echo_path", [True, False])
async def test_a_microphone_without_echo_barges_in_at_once(learn_the_echo_path: bool) -> None:
    """A headset, or a browser or phone that cancels its own echo: nothing of the speaker comes
    back. AEC3 still ducks a person who starts talking over the assistant, for up to ~2 s while it
    has no echo path learned; the session notices the microphone does not hear the speaker and
    lets turn detection hear it directly. Counted in audio sent, not wall time."""
    h = Harness(llm=SlowLlm(delay=0.02), tts=ToneTts(ms_per_char=40), lead_ms=200, echo=WebRtcEchoCanceller)
    try:
        if not learn_the_echo_path:  # what the session did before: always the canceller's output
            h.session.hearing.echo_path.observe = lambda *_: None  # type: ignore[method-assign]
        await h.send(type="session.update", session={"audio": {"input": {"format": {"type": "audio/pcm",
                                                                                     "rate": 16000}}}})
        await h.speak(tone16k(700).tobytes() + silence(900, rate=RATE), rate=RATE)
        await h.wait_for("response.output_audio.delta")
        await listen_with_echo(h, 1.2, echo_gain=0.0)
        assert h.session.hearing.echo_path.heard is not learn_the_echo_path
        heard_after_ms = await listen_with_echo(h, 2.5, speech=voice_onset(utterance("0930")), echo_gain=0.0,
                                                until="input_audio_buffer.speech_started")
        if not learn_the_echo_path:
            assert heard_after_ms > 400, "AEC3 ducks the double talk: the test would catch a regression"
            return
        assert heard_after_ms <= 200, heard_after_ms
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "cancelled"
    finally:
        await h.session.close()

