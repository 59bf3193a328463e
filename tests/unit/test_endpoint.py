"""voicebot.core.endpoint: scripted VAD score sequences -> speech events, no clocks, no loop."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from voicebot.core.endpoint import (
    EndpointConfig,
    EndpointConfigError,
    Endpointer,
    EndpointEvent,
    JudgeTurn,
    PauseStarted,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
)
from voicebot.core.types import VadScores
from voicebot.errors import VoicebotError

HOP = 32
VOICE = VadScores(fast=True, prob=0.9)
SURE = VadScores(fast=False, prob=0.85)  # Silero very sure, webrtcvad missed it
WEAK = VadScores(fast=True, prob=0.55)  # both agree, barely
DIP = VadScores(fast=True, prob=0.4)  # below threshold, above the negative threshold
NOISE = VadScores(fast=True, prob=0.1)  # webrtcvad fooled by noise, Silero not
QUIET = VadScores(fast=False, prob=0.02)


def feed(ep: Endpointer, seq: list[VadScores]) -> list[tuple[int, EndpointEvent]]:
    """Events with the index of the hop that produced them."""
    out: list[tuple[int, EndpointEvent]] = []
    for scores in seq:
        hop = ep.position_ms // HOP
        out += [(hop, e) for e in ep.process(scores)]
    return out


def test_silence_gives_nothing() -> None:
    ep = Endpointer()
    assert feed(ep, [QUIET] * 200) == []
    assert ep.position_ms == 200 * HOP
    assert not ep.in_speech


def test_one_noisy_hop_never_starts_speech() -> None:
    ep = Endpointer()
    assert feed(ep, [QUIET] * 5 + [VOICE] + [QUIET] * 5 + [VOICE] + [QUIET] * 5) == []


def test_fast_only_hops_never_start_speech() -> None:
    ep = Endpointer()
    assert feed(ep, [NOISE] * 100 + [VadScores(fast=True, prob=0.49)] * 100) == []


def test_onset_after_two_voiced_hops() -> None:
    ep = Endpointer()
    events = feed(ep, [QUIET] * 10 + [VOICE, VOICE] + [VOICE] * 5)
    assert events == [(11, SpeechStarted(audio_start_ms=10 * HOP))]
    assert ep.in_speech


def test_onset_two_of_three_reports_the_first_voiced_hop() -> None:
    ep = Endpointer()
    events = feed(ep, [QUIET] * 4 + [WEAK, QUIET, SURE])
    assert events == [(6, SpeechStarted(audio_start_ms=4 * HOP))]


def test_voiced_hops_too_far_apart_do_not_start() -> None:
    ep = Endpointer()
    assert feed(ep, [VOICE, QUIET, QUIET] * 20) == []


def test_short_dips_between_thresholds_keep_speech() -> None:
    ep = Endpointer()
    seq = [VOICE] * 5 + ([DIP] * 30 + [VOICE] * 2) * 3  # ~1 s dips, never below 0.35
    events = [e for _, e in feed(ep, seq)]
    assert events[0] == SpeechStarted(audio_start_ms=0)
    # Each dip may start a speculative transcription (it counts from the last voiced hop), but the
    # turn never ends in one: the end of a turn needs Silero's silence.
    assert set(map(type, events[1:])) <= {PauseStarted, SpeechResumed}
    assert ep.in_speech


def test_pause_resume_and_stop() -> None:
    ep = Endpointer(EndpointConfig(speculate_after_ms=200))  # speculate after 200 ms, stop after 500 ms
    events = feed(ep, [VOICE] * 10 + [QUIET] * 8 + [VOICE] * 3 + [QUIET] * 20)
    assert events == [
        (1, SpeechStarted(audio_start_ms=0)),
        # 7 silent hops (10..16) = 224 ms >= 200 ms; speech ended with hop 9.
        (16, PauseStarted(audio_end_ms=10 * HOP)),
        (18, SpeechResumed()),
        (27, PauseStarted(audio_end_ms=21 * HOP)),
        # 16 silent hops (21..36) = 512 ms >= 500 ms.
        (36, SpeechStopped(audio_end_ms=21 * HOP)),
    ]
    assert not ep.in_speech


def test_silence_timer_starts_below_negative_threshold_only() -> None:
    ep = Endpointer()
    # DIP hops after the speech do not start the timer; it starts at the first QUIET hop,
    # but audio_end_ms is still the end of the last *voiced* hop.
    events = feed(ep, [VOICE] * 3 + [DIP] * 10 + [QUIET] * 16)
    assert events[-1] == (28, SpeechStopped(audio_end_ms=3 * HOP))
    # Once running, in-between hops count as silence (as in Silero's VADIterator).
    ep = Endpointer()
    events = feed(ep, [VOICE] * 3 + [QUIET] + [DIP] * 15)
    assert events[-1] == (18, SpeechStopped(audio_end_ms=3 * HOP))


def test_speech_can_start_again_after_stop() -> None:
    ep = Endpointer()
    events = feed(ep, [VOICE] * 3 + [QUIET] * 16 + [QUIET] * 5 + [VOICE] * 2)
    assert [type(e) for _, e in events] == [SpeechStarted, PauseStarted, SpeechStopped, SpeechStarted]
    assert events[-1] == (25, SpeechStarted(audio_start_ms=24 * HOP))


def test_speculation_can_be_disabled() -> None:
    ep = Endpointer(EndpointConfig(speculate_after_ms=0))
    events = feed(ep, [VOICE] * 3 + [QUIET] * 16)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechStopped]


def test_min_speech_ms_debounces_onset() -> None:
    ep = Endpointer(EndpointConfig(min_speech_ms=150))
    assert feed(ep, [VOICE] * 3 + [QUIET] * 10) == []  # a 96 ms cough
    events = feed(ep, [VOICE] * 6)
    assert events == [(17, SpeechStarted(audio_start_ms=13 * HOP))]  # 5 hops = 160 ms


def test_update_applies_from_next_hop() -> None:
    ep = Endpointer()
    assert feed(ep, [WEAK] * 3) != []
    ep.update(EndpointConfig(threshold=0.7, silence_duration_ms=200, speculate_after_ms=0))
    # 0.5 was "in between" at threshold 0.5 but is silence below the new 0.55; 7 hops = 224 ms.
    events = feed(ep, [VadScores(fast=True, prob=0.5)] * 7)
    assert events == [(9, SpeechStopped(audio_end_ms=3 * HOP))]
    assert feed(ep, [WEAK] * 10) == []  # 0.55 no longer starts speech at threshold 0.7


def test_reset_drops_speech_but_keeps_the_clock() -> None:
    ep = Endpointer()
    feed(ep, [VOICE] * 5)
    ep.reset()
    assert not ep.in_speech
    assert ep.position_ms == 5 * HOP
    assert feed(ep, [QUIET] * 20) == []
    assert feed(ep, [VOICE] * 2) == [(26, SpeechStarted(audio_start_ms=25 * HOP))]


def test_fractional_hop_length() -> None:
    ep = Endpointer(hop_ms=30.0)
    events = [e for s in [QUIET, VOICE, VOICE] for e in ep.process(s)]
    assert events == [SpeechStarted(audio_start_ms=30)]
    assert ep.position_ms == 90
    ep = Endpointer(hop_ms=10.0)
    events = [e for s in [VOICE] * 2 + [QUIET] * 50 for e in ep.process(s)]
    assert events == [SpeechStarted(0), PauseStarted(20), SpeechStopped(20)]


def test_thresholds() -> None:
    assert EndpointConfig().negative_threshold == pytest.approx(0.35)
    assert EndpointConfig(threshold=0.1).negative_threshold == pytest.approx(0.01)
    assert EndpointConfig().confident_threshold == pytest.approx(0.8)
    assert EndpointConfig(threshold=0.7).confident_threshold == pytest.approx(0.95)


@pytest.mark.parametrize(
    "changes",
    [
        {"threshold": 0.0},
        {"threshold": 1.0},
        {"silence_duration_ms": 0},
        {"speculate_after_ms": -1},
        {"onset_hops": 4},
        {"onset_hops": 0},
    ],
)
def test_bad_config(changes: dict[str, Any]) -> None:
    with pytest.raises(EndpointConfigError) as info:
        dataclasses.replace(EndpointConfig(), **changes)
    assert isinstance(info.value, VoicebotError)


def test_deterministic() -> None:
    import random

    rng = random.Random(7)
    seq = [VadScores(fast=rng.random() < 0.5, prob=rng.random()) for _ in range(2000)]
    a, b = Endpointer(), Endpointer()
    assert feed(a, seq) == feed(b, seq)


SEMANTIC = EndpointConfig(silence_duration_ms=750, judge_after_ms=256, incomplete_silence_ms=1100)


def stop_hop(events: list[tuple[int, EndpointEvent]]) -> int:
    return next(hop for hop, e in events if isinstance(e, SpeechStopped))


def test_a_turn_judged_complete_ends_after_the_base_silence() -> None:
    ep = Endpointer(SEMANTIC)
    events = feed(ep, [VOICE] * 20)
    silence = [QUIET] * 8  # 256 ms: the turn model is asked
    events = feed(ep, silence)
    (judge,) = [e for _, e in events if isinstance(e, JudgeTurn)]
    assert judge.audio_end_ms == 20 * HOP
    ep.judged(judge.pause, 0.97)
    events = feed(ep, [QUIET] * 40)
    assert (stop_hop(events) + 1 - 20) * HOP >= 750 > (stop_hop(events) - 20) * HOP


def test_a_turn_judged_incomplete_waits_the_longer_silence_and_a_late_verdict_does_not() -> None:
    ep = Endpointer(SEMANTIC)
    feed(ep, [VOICE] * 20)
    (judge,) = [e for _, e in feed(ep, [QUIET] * 8) if isinstance(e, JudgeTurn)]
    ep.judged(judge.pause, 0.1)
    events = feed(ep, [QUIET] * 40)
    assert (stop_hop(events) + 1 - 20) * HOP >= 1100 > (stop_hop(events) - 20) * HOP
    # No verdict in time: the base silence ends the turn; a model never makes people wait for it.
    ep2 = Endpointer(SEMANTIC)
    feed(ep2, [VOICE] * 20)
    events = feed(ep2, [QUIET] * 40)
    assert (stop_hop(events) + 1 - 20) * HOP >= 750 > (stop_hop(events) - 20) * HOP


def test_a_verdict_for_an_earlier_pause_is_ignored() -> None:
    ep = Endpointer(SEMANTIC)
    feed(ep, [VOICE] * 20)
    (first,) = [e for _, e in feed(ep, [QUIET] * 8) if isinstance(e, JudgeTurn)]
    events = feed(ep, [VOICE] * 5)
    assert [e for _, e in events] == [SpeechResumed()]
    (second,) = [e for _, e in feed(ep, [QUIET] * 8) if isinstance(e, JudgeTurn)]
    assert second.pause != first.pause
    ep.judged(first.pause, 0.0)  # arrives late, for the pause that is over: no effect
    events = feed(ep, [QUIET] * 40)
    assert (stop_hop(events) + 1 - 33) * HOP >= 750 > (stop_hop(events) - 33) * HOP


def test_semantic_settings_are_checked() -> None:
    with pytest.raises(EndpointConfigError):
        EndpointConfig(silence_duration_ms=750, judge_after_ms=256, incomplete_silence_ms=500)


def test_while_the_assistant_talks_only_speech_at_the_persons_level_interrupts() -> None:
    ep = Endpointer()
    feed_levels = lambda seq, level: [e for s in seq for e in ep.process(s, level)]  # noqa: E731
    assert any(isinstance(e, SpeechStarted) for e in feed_levels([VOICE] * 40, -20.0))  # the person, at -20 dBFS
    feed_levels([QUIET] * 30, -60.0)
    assert abs(ep.speaker_level_db() + 20) < 1
    ep.guarded = True
    assert feed_levels([VOICE] * 10, -40.0) == [], "chatter 20 dB under their level does not barge in"
    assert any(isinstance(e, SpeechStarted) for e in feed_levels([VOICE] * 3, -24.0)), "they do"
    feed_levels([QUIET] * 30, -60.0)
    ep.guarded = False
    assert any(isinstance(e, SpeechStarted) for e in feed_levels([VOICE] * 3, -40.0)), "a quiet turn of their own"


def test_the_quick_detector_with_webrtcvad_starts_speech_silero_has_not_confirmed_yet() -> None:
    rising = VadScores(fast=True, prob=0.2, quick=0.9)  # a soft onset: Silero still low
    events = feed(Endpointer(), [QUIET] * 5 + [rising, rising])
    assert [e for _, e in events] == [SpeechStarted(audio_start_ms=5 * HOP)]
    alone = VadScores(fast=False, prob=0.2, quick=0.95)  # without webrtcvad: not enough
    assert feed(Endpointer(), [QUIET] * 5 + [alone] * 10) == []


def test_while_the_assistant_talks_one_voiced_hop_starts_speech() -> None:
    ep = Endpointer()
    ep.guarded = True
    events = feed(ep, [QUIET] * 5 + [VOICE])
    assert [(hop, e) for hop, e in events] == [(5, SpeechStarted(audio_start_ms=5 * HOP))]
    ep2 = Endpointer()
    assert feed(ep2, [QUIET] * 5 + [VOICE]) == [], "otherwise two, as a click must not start a turn"


def test_a_barge_in_that_rises_above_the_gate_begins_where_its_voice_began() -> None:
    ep = Endpointer()
    feed_levels = lambda seq, level: [e for s in seq for e in ep.process(s, level)]  # noqa: E731
    feed_levels([VOICE] * 40, -20.0)  # the person's own turn teaches their level
    feed_levels([QUIET] * 30, -60.0)
    ep.guarded = True
    start = ep.position_ms
    assert feed_levels([VOICE] * 8, -34.0) == [], "ducked first syllables: held back by the gate"
    events = feed_levels([VOICE] * 2, -22.0)
    assert events == [SpeechStarted(audio_start_ms=start)], "the turn's audio starts at its first voiced hop"
    # Quiet voiced hops long before (chatter, then silence) are not pulled into a later onset.
    feed_levels([QUIET] * 30, -60.0)
    feed_levels([VOICE] * 3, -40.0)
    feed_levels([QUIET] * 20, -60.0)
    later = ep.position_ms
    assert feed_levels([VOICE], -22.0) == [SpeechStarted(audio_start_ms=later)]


def test_speech_longer_than_the_maximum_turn_stops_and_the_next_words_start_a_new_turn() -> None:
    ep = Endpointer(EndpointConfig(), max_turn_ms=10 * HOP)
    events = feed(ep, [VOICE] * 25)
    kinds = [(hop, type(e).__name__) for hop, e in events]
    # Started at hop 0 (confirmed on hop 1), cut when 10 hops had passed, restarted two hops later.
    assert kinds[:3] == [(1, "SpeechStarted"), (9, "SpeechStopped"), (11, "SpeechStarted")]
    stopped = events[1][1]
    assert isinstance(stopped, SpeechStopped) and stopped.audio_end_ms == 10 * HOP
    assert ep.in_speech


def test_without_a_maximum_turn_speech_goes_on() -> None:
    ep = Endpointer(EndpointConfig())
    assert [type(e) for _, e in feed(ep, [VOICE] * 200)] == [SpeechStarted]
