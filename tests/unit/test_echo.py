"""core.echo.SpeakerTimeline: what played when, for the echo canceller (no clocks, no models)."""

from __future__ import annotations

import numpy as np

from voicebot.core.echo import SpeakerTimeline


def ramp(n: int, start: int = 1) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int16)


def test_a_window_returns_what_played_in_it_and_silence_around() -> None:
    t = SpeakerTimeline(rate=1000)
    t.play(ramp(100), start_s=10.0)  # samples 1..100 from t = 10.000 s to 10.100 s
    assert np.array_equal(t.window(10.1, 100), ramp(100))
    assert np.array_equal(t.window(10.05, 100)[:50], np.zeros(50, np.int16))
    assert np.array_equal(t.window(10.05, 100)[50:], ramp(50))
    assert not t.window(10.3, 50).any(), "nothing played after the chunk"
    t.play(ramp(10, 500), start_s=10.1)  # the next chunk right after
    assert np.array_equal(t.window(10.11, 20), np.concatenate((ramp(10, 91), ramp(10, 500))))


def test_old_audio_is_forgotten_and_a_flush_removes_what_never_played() -> None:
    t = SpeakerTimeline(rate=1000, keep_s=1.0)
    t.play(ramp(3000), start_s=0.0)
    assert not t.window(1.0, 100).any(), "older than keep_s"
    assert np.array_equal(t.window(3.0, 10), ramp(10, 2991))
    t.flush(2.5)  # barge-in at 2.5 s: the last 500 ms were dropped by the listener
    assert not t.window(3.0, 400).any()
    assert np.array_equal(t.window(2.5, 10), ramp(10, 2491))


def test_echo_likeness_tells_a_delayed_copy_from_a_person() -> None:
    from voicebot.core.echo import echo_likeness

    rng = np.random.default_rng(3)
    speaker = (rng.standard_normal(16_000) * 3000).astype(np.int16)
    echo = (speaker[8000 - 1600 : 12000 - 1600] * 0.3).astype(np.int16)  # 100 ms late, -10 dB
    reference = speaker[8000 - 4800 : 12000]  # the onset's stretch and 300 ms before it
    assert echo_likeness(echo, reference) > 0.95
    person = (rng.standard_normal(4000) * 3000).astype(np.int16)
    assert echo_likeness(person, reference) < 0.2
    talking_over = (person.astype(np.int32) + echo).clip(-32768, 32767).astype(np.int16)
    assert echo_likeness(talking_over, reference) < 0.5
    assert echo_likeness(echo, np.zeros_like(reference)) == 0.0


def test_echo_path_is_assumed_until_the_microphone_stays_clean() -> None:
    from voicebot.core.echo import ECHO_FREE_WINDOWS, EchoPath

    path = EchoPath()
    assert path.heard, "at first the canceller's side: never interrupt itself"
    for _ in range(ECHO_FREE_WINDOWS - 1):
        path.observe(likeness=0.05, mic_db=-70, speaker_db=-25)
    assert path.heard, "one short stretch proves nothing"
    path.observe(likeness=0.05, mic_db=-70, speaker_db=-25)
    assert not path.heard
    path.observe(likeness=0.8, mic_db=-40, speaker_db=-25)
    assert path.heard, "the speaker came back into the microphone (headphones off)"
    for _ in range(2 * ECHO_FREE_WINDOWS):
        path.observe(likeness=0.1, mic_db=-28, speaker_db=-25)
    assert path.heard, "a loud microphone (someone talking) is no proof of silence"
