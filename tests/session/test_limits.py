"""A session's limits with fake engines: its longest life, idleness, the longest turn and the
bounded input buffer, and the speculative transcription dropped when speech resumes.

Limits are set small through settings overrides; margins are generous (the machine is loaded).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time

from .fakes import ScriptedAsr, SlowLlm, ToneTts, silence, tone
from .test_session import Harness

MANUAL = {"audio": {"input": {"turn_detection": None}}}


async def test_a_session_past_its_maximum_duration_gets_session_expired_and_is_ended() -> None:
    h = Harness(max_session_seconds=0.4, idle_timeout_s=0)
    try:
        started = time.monotonic()
        error = await h.wait_for("error", timeout=5)
        elapsed = time.monotonic() - started
        assert error["error"]["code"] == "session_expired"
        assert "maximum duration of 0.4 seconds" in error["error"]["message"]
        assert 0.35 <= elapsed < 3
        assert h.sink.hangups == [f"session_expired: {error['error']['message']}"]
        assert h.session.expired is not None
    finally:
        await h.session.close()
    assert h.session.active_tasks == 0


async def test_streamed_silence_is_idle_and_ends_the_session() -> None:
    h = Harness(idle_timeout_s=0.5, max_session_seconds=0)
    try:
        started = time.monotonic()
        while not h.errors() and time.monotonic() - started < 5:
            await h.speak(silence(40), realtime=True)  # a live microphone in a quiet room
        assert [e["code"] for e in h.errors()] == ["idle_timeout"]
        assert time.monotonic() - started >= 0.45
        assert h.sink.hangups and h.sink.hangups[0].startswith("idle_timeout")
    finally:
        await h.session.close()
    assert h.session.active_tasks == 0


async def test_client_events_and_speech_keep_a_session_alive() -> None:
    h = Harness(idle_timeout_s=0.6, max_session_seconds=0, llm=SlowLlm(reply="Ok."))
    try:
        for _ in range(6):  # 1.2 s of client events, each well inside the idle time
            await h.send(type="session.update", session={"instructions": "be brief"})
            await asyncio.sleep(0.2)
        await h.speak(tone(900), realtime=True)  # then speech (continuous: no events needed)
        assert not h.errors() and not h.sink.hangups
    finally:
        await h.session.close()


async def test_the_assistant_speaking_is_not_idleness() -> None:
    # About 1.7 s of reply audio, played at real time (100 ms lead); idle after 0.5 s.
    h = Harness(idle_timeout_s=0.5, max_session_seconds=0, tts=ToneTts(ms_per_char=40), lead_ms=100,
                llm=SlowLlm(reply="Sure, this reply keeps on talking.", delay=0.01))
    try:
        await h.send(type="conversation.item.create",
                     item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        await h.send(type="response.create")
        await h.wait_for("response.output_audio.delta")
        first_audio = time.monotonic()
        audio_s = 34 * 0.04
        error = await h.wait_for("error", timeout=10)
        idle_at = time.monotonic()
        assert error["error"]["code"] == "idle_timeout"
        assert h.of("response.done")[0]["response"]["status"] == "completed"
        # Not before the audio had played out, and then the idle time.
        assert idle_at - first_audio >= audio_s + 0.4, idle_at - first_audio
    finally:
        await h.session.close()


async def test_close_cancels_the_limit_timer() -> None:
    h = Harness(max_session_seconds=0.3, idle_timeout_s=0.3)
    assert h.session.active_tasks == 1  # the limits watchdog, owned by the session
    await h.session.close()
    assert h.session.active_tasks == 0
    await asyncio.sleep(0.5)
    assert not h.errors() and not h.sink.hangups


async def test_speech_longer_than_the_maximum_turn_is_committed_and_the_buffer_stays_bounded() -> None:
    h = Harness(max_turn_seconds=1.0, asr=ScriptedAsr(["first part", "second part"]))
    try:
        longest = 0.0
        pcm = tone(2600)
        step = 24_000 * 2 * 40 // 1000
        for i in range(0, len(pcm), step):
            await h.send(type="input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + step]).decode())
            longest = max(longest, h.session.hearing.buffer.duration_ms)
        await h.speak(silence(900))
        stopped = h.of("input_audio_buffer.speech_stopped")
        assert len(stopped) == 3, h.types()  # cut at 1 s, at 2 s, and the real end at 2.6 s
        assert 950 <= stopped[0]["audio_end_ms"] <= 1100
        assert len(h.of("input_audio_buffer.speech_started")) == 3
        assert longest <= 1000 + 100, longest  # one turn and an append (without the cap: all 2.6 s)
        items = [i for i in h.session.conversation.items if i.role == "user"]
        assert len(items) == 3 and all(i.audio_ms <= 1400 for i in items)
        assert not h.errors()
    finally:
        await h.session.close()


async def test_without_turn_detection_appends_past_the_cap_are_refused() -> None:
    h = Harness(max_turn_seconds=1.0)
    try:
        await h.send(type="session.update", session=MANUAL)
        chunk = base64.b64encode(tone(250)).decode()
        for i in range(4):
            await h.send(type="input_audio_buffer.append", audio=chunk, event_id=f"ok{i}")
        assert not h.errors()
        await h.send(type="input_audio_buffer.append", audio=chunk, event_id="over")
        [error] = h.errors()
        assert error["code"] == "input_audio_buffer_full" and error["event_id"] == "over"
        assert error["param"] == "audio"
        assert h.session.hearing.buffer.duration_ms <= 1000
        await h.send(type="input_audio_buffer.commit")
        await h.wait_for("input_audio_buffer.committed")
        await h.send(type="input_audio_buffer.append", audio=chunk, event_id="after")
        assert len(h.errors()) == 1, "a committed buffer has room again"
    finally:
        await h.session.close()


async def test_a_queued_speculative_transcription_is_dropped_when_speech_resumes() -> None:
    asr = ScriptedAsr(["the whole turn"])
    h = Harness(asr=asr, llm=SlowLlm(delay=0.02))
    queue = h.session.engines.cpu.asr
    release = threading.Event()
    # Other sessions hold every ASR slot: the pause's guess has to wait in the queue.
    busy = [asyncio.create_task(queue.run(time.monotonic(), release.wait)) for _ in range(queue.slots)]
    try:
        await asyncio.sleep(0.05)
        await h.speak(tone(700) + silence(250), realtime=True)
        assert h.session.speculation is not None, "the pause started a guess"
        guess = h.session.speculation.task
        await h.speak(tone(600), realtime=True)
        await asyncio.sleep(0.05)
        assert guess.cancelled(), "resumed speech cancels the guess"
        assert queue.stats.dropped == 1, "it never ran"
        release.set()
        await asyncio.gather(*busy)
        await h.speak(silence(900))
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert asr.calls == 1, "one transcription: the whole turn's"
        assert h.llm.requests[-1][-1].content == "the whole turn"
    finally:
        release.set()
        await h.session.close()
