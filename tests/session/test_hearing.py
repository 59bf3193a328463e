"""Hearing with the real VAD and the real echo canceller, on real recorded speech on both sides:
the assistant's voice (a recording, as its speaker plays it) and a person talking over it.

Time is the stream's own (``now`` passed to ``feed``), so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import numpy as np

from tests.speech import utterance
from voicebot.core.audio import AudioFormat
from voicebot.core.echo import SpeakerTimeline
from voicebot.core.endpoint import SpeechStarted
from voicebot.engines.aec_webrtc import WebRtcEchoCanceller
from voicebot.engines.vad import make_vad_factory
from voicebot.hearing import Hearing
from voicebot.session_config import semantic_vad

RATE = 16_000
PCM16K = AudioFormat("pcm16", RATE)
CHUNK = 320  # 20 ms, as clients send it


def loud_from_onset(samples: np.ndarray) -> np.ndarray:
    """From the first 10 ms within 20 dB of the recording's peak (the issue's onset), twice as loud."""
    frames = samples[: samples.size // 160 * 160].astype(np.float64).reshape(-1, 160)
    levels = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-9)
    first = int(np.argmax(levels >= levels.max() - 20))
    return np.clip(samples[first * 160 :].astype(np.float64) * 2, -32768, 32767)


def converse(echo_db: float | None, interrupt_after_s: float = 2.0) -> tuple[Hearing, list[SpeechStarted], float]:
    """The person speaks alone (their level is learned), the assistant then talks for 3 s, and
    2 s into it the person talks over it. Returns the onsets heard and where the interruption's
    voice began (stream ms)."""
    speaker = SpeakerTimeline()
    hearing = Hearing(make_vad_factory()(), semantic_vad(), (WebRtcEchoCanceller(), speaker))
    person = utterance("0930").samples()
    assistant = np.concatenate([utterance(n).samples() for n in ("0880", "0880", "0880")])
    interruption = loud_from_onset(utterance("0930").samples())
    total_s, assistant_from_s = 12.0, 5.0
    interrupt_at_s = assistant_from_s + interrupt_after_s
    mic = np.zeros(int(total_s * RATE))
    mic[RATE // 2 : RATE // 2 + person.size] += person * 2
    if echo_db is not None:  # the room: the speaker, 100 ms late
        late = int((assistant_from_s + 0.1) * RATE)
        mic[late : late + assistant.size] += assistant[: mic.size - late] * 10 ** (echo_db / 20)
    start = int(interrupt_at_s * RATE)
    mic[start : start + interruption.size] += interruption[: mic.size - start]
    pcm = np.clip(mic, -32768, 32767).astype("<i2")
    onsets: list[SpeechStarted] = []
    played_from = int(assistant_from_s * RATE)
    for i in range(0, pcm.size, CHUNK):
        end_s = (i + CHUNK) / RATE
        if played_from <= i + CHUNK < played_from + assistant.size:  # written as the listener plays it
            speaker.play(assistant[i - played_from : i + CHUNK - played_from], i / RATE)
        hearing.guard(assistant_from_s <= end_s < assistant_from_s + assistant.size / RATE)
        onsets += [e for e in hearing.feed(pcm[i : i + CHUNK].tobytes(), PCM16K, end_s) if isinstance(e, SpeechStarted)]
    return hearing, onsets, interrupt_at_s * 1000


def test_an_interruption_over_echo_begins_where_its_voice_did() -> None:
    hearing, onsets, voice_from_ms = converse(echo_db=-10)
    assert hearing.echo_path.heard, "the microphone carries the assistant's voice"
    assert len(onsets) == 2, onsets  # the first turn, the interruption; never the echo
    assert abs(onsets[1].audio_start_ms - voice_from_ms) <= 100, onsets[1]


def test_without_echo_turn_detection_hears_the_microphone_itself() -> None:
    hearing, onsets, voice_from_ms = converse(echo_db=None)
    assert not hearing.echo_path.heard
    assert len(onsets) == 2, onsets
    assert abs(onsets[1].audio_start_ms - voice_from_ms) <= 100, onsets[1]
