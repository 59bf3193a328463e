from __future__ import annotations

import numpy as np

from voicebot.core.buffer import PcmBuffer
from voicebot.core.playout import PlayoutClock
from voicebot.core.turns import Action, TurnPolicy, TurnState, TurnTracker


def test_barge_in_only_when_a_reply_is_active_and_allowed() -> None:
    t = TurnTracker()
    policy = TurnPolicy()
    assert t.speech_started(policy) == []
    assert t.state is TurnState.USER_SPEAKING
    assert t.speech_stopped(policy) == [Action.COMMIT_INPUT, Action.START_REPLY]
    t.reply_started()
    assert t.state is TurnState.THINKING
    # Thinking: cancel, but nothing was heard yet, so nothing to truncate.
    assert t.speech_started(policy) == [Action.CANCEL_REPLY, Action.CLEAR_OUTPUT]
    t.reply_ended()
    t.speech_stopped(policy)
    t.reply_started()
    t.reply_audio_started()
    assert t.state is TurnState.SPEAKING
    assert t.speech_started(policy) == [Action.CANCEL_REPLY, Action.CLEAR_OUTPUT, Action.TRUNCATE_HISTORY]
    no_interrupt = TurnPolicy(interrupt_response=False)
    t2 = TurnTracker()
    t2.reply_started()
    assert t2.speech_started(no_interrupt) == []
    # A reply is still running: stopping speech commits but does not start a second reply.
    assert t2.speech_stopped(no_interrupt) == [Action.COMMIT_INPUT]
    assert TurnTracker().speech_stopped(TurnPolicy(create_response=False)) == [Action.COMMIT_INPUT]


def test_talking_over_audio_still_playing_clears_and_cuts_it() -> None:
    t = TurnTracker()
    policy = TurnPolicy()
    # The reply has finished sending, but the listener still has some of it queued.
    assert t.speech_started(policy, output_playing=True) == [Action.CLEAR_OUTPUT, Action.TRUNCATE_HISTORY]
    assert t.speech_started(policy, output_playing=False) == []
    assert t.speech_started(TurnPolicy(interrupt_response=False), output_playing=True) == []
    # response.cancel, a keypad press: the same actions, whatever the turn-detection policy.
    t.reply_started()
    assert t.interrupted() == [Action.CANCEL_REPLY, Action.CLEAR_OUTPUT]
    t.reply_audio_started()
    assert t.interrupted() == [Action.CANCEL_REPLY, Action.CLEAR_OUTPUT, Action.TRUNCATE_HISTORY]


def test_playout_clock_flush_drops_the_listeners_queue() -> None:
    clock = PlayoutClock(lead_ms=100)
    clock.sent(1000, 0.0)
    assert clock.played_ms(0.3) == 300
    assert abs(clock.flush(0.3) - 700) < 1e-6
    # Nothing is queued any more, and what was dropped no longer counts as sent.
    assert clock.queued_ms(0.3) == 0 and clock.delay_before_send(0.3) == 0
    assert clock.sent_ms == 300 and clock.played_ms(5.0) == 300
    clock.sent(100, 0.3)
    assert clock.sent_ms == 400 and abs(clock.played_ms(0.35) - 350) < 1e-6


def test_playout_clock_paces_and_estimates_heard_audio() -> None:
    clock = PlayoutClock(lead_ms=300)
    assert clock.delay_before_send(0.0) == 0
    for _ in range(5):
        clock.sent(100, 0.0)
    # 500 ms queued at t=0, lead 300: wait 0.2 s before the next chunk.
    assert abs(clock.delay_before_send(0.0) - 0.2) < 1e-9
    assert clock.played_ms(0.0) == 0
    assert abs(clock.played_ms(0.25) - 250) < 1e-6
    assert clock.played_ms(10.0) == 500
    # Underrun: after a gap, playback resumes at the new chunk's arrival.
    clock.sent(100, 10.0)
    assert abs(clock.played_ms(10.05) - 550) < 1e-6


def test_pcm_buffer_slices_by_stream_time_and_drops_old_audio() -> None:
    buf = PcmBuffer()
    buf.append(np.arange(16_000, dtype=np.int16))  # 1 s
    buf.append(np.arange(8_000, dtype=np.int16))  # 0.5 s
    assert buf.duration_ms == 1500
    assert buf.slice(1000, 1250).size == 4000
    buf.drop_before(1000)
    assert buf.start_ms == 1000 and buf.duration_ms == 500
    assert buf.slice(0).size == 8000  # clamped to what is kept
    assert int(buf.slice(1000)[0]) == 0
    buf.clear()
    assert buf.duration_ms == 0 and buf.start_ms == 1500
