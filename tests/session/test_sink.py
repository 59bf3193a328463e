"""The Session's output sink: one barge-in path for every transport, audio in the sink's format.

A RecordingSink stands in for a transport. With ``positions`` it plays one that knows what the
listener played (WebRTC's track, telephony's marks); without, one that cannot (a WebSocket).
"""

from __future__ import annotations

import asyncio

from voicebot.core import events as ev
from voicebot.core.audio import PCMU
from voicebot.core.conversation import heard_text

from .fakes import RecordingSink, SlowLlm, ToneTts, silence, tone
from .test_session import Harness


def index(h: Harness, kind: str, nth: int = 1) -> int:
    return [i for i, e in enumerate(h.events) if e["type"] == kind][nth - 1]


async def test_barge_in_clears_the_sink_once_and_cuts_where_the_transport_says() -> None:
    positions: dict[str, float] = {}
    h = Harness(tts=ToneTts(ms_per_char=40), lead_ms=300, sink=RecordingSink(positions=positions))
    try:
        await h.speak(tone(700) + silence(900))
        await h.wait_for("response.output_audio.delta", 4)
        item_id = h.of("response.output_item.added")[0]["item"]["id"]
        positions[item_id] = 250.0  # the transport: 250 ms of this item reached the listener
        await h.speak(tone(400))
        await h.wait_for("input_audio_buffer.speech_started", 2)
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "cancelled"
        assert h.sink.clears == 1
        # speech_started first (the client stops playback), then the clear, then the cancelled reply.
        assert index(h, "input_audio_buffer.speech_started", 2) < index(h, "sink.clear") < index(h, "response.done")
        assert not [e for e in h.events[index(h, "sink.clear"):] if e["type"] == "response.output_audio.delta"]
        item = h.session.conversation.get(item_id)
        assert item.heard_ms == 250.0, "cut at the transport's playback position, not the clock's estimate"
        assert item.text == heard_text(item.segments, 250.0)
        assert item.text and len(item.text) < len(h.llm.reply)
        transcript = h.of("response.output_audio_transcript.done")[0]["transcript"]
        assert transcript == item.text, "the cancelled response's done events already carry the cut"
        assert h.sink.ended == [], "a cut reply's audio never ends: it was dropped"
    finally:
        await h.session.close()
    assert h.session.active_tasks == 0


async def test_without_a_transport_position_the_cut_is_the_playout_clocks_estimate() -> None:
    h = Harness(tts=ToneTts(ms_per_char=40), lead_ms=200)
    try:
        await h.speak(tone(700) + silence(900))
        await h.wait_for("response.output_audio.delta", 3)
        first_audio = asyncio.get_running_loop().time()
        await asyncio.sleep(0.6)
        await h.speak(tone(400))
        await h.wait_for("response.done")
        cut_after = asyncio.get_running_loop().time() - first_audio
        item = h.session.conversation.items[1]
        assert item.heard_ms is not None
        # Real-time playback from the first chunk: the estimate is the time since it was sent.
        assert 0.5 * 1000 <= item.heard_ms <= cut_after * 1000 + 50, (item.heard_ms, cut_after)
        assert item.heard_ms < item.audio_ms, "audio sent ahead of playback was not heard"
        assert h.sink.clears == 1
    finally:
        await h.session.close()


async def test_talking_over_the_tail_of_a_finished_reply_cuts_it_too() -> None:
    """The reply finished sending, but the listener still has a second of it queued."""
    h = Harness(tts=ToneTts(ms_per_char=20), lead_ms=5000)
    try:
        await h.speak(tone(700) + silence(900))
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        item = h.session.conversation.items[1]
        assert item.audio_ms > 1500, "the whole reply was sent at once, far ahead of playback"
        await h.speak(tone(400))
        truncated = await h.wait_for("conversation.item.truncated")
        assert truncated["item_id"] == item.id
        assert 0 < truncated["audio_end_ms"] < item.audio_ms
        assert h.sink.clears == 1, "what the listener still had queued is dropped"
        assert item.heard_ms == truncated["audio_end_ms"] and item.text == heard_text(item.segments, item.heard_ms)
        assert len(h.of("response.done")) == 1, "nothing to cancel: no second response.done"
    finally:
        await h.session.close()


async def test_response_cancel_takes_the_same_path_as_a_barge_in() -> None:
    h = Harness(llm=SlowLlm(delay=0.02), tts=ToneTts(ms_per_char=40), lead_ms=300)
    try:
        h.session.add_user_text("Tell me something long.")
        h.session.create_response()
        await h.wait_for("response.output_audio.delta", 3)
        await h.send(type="response.cancel")
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "cancelled"
        assert h.sink.clears == 1
        item = h.session.conversation.items[1]
        assert item.heard_ms is not None and item.heard_ms < item.audio_ms
    finally:
        await h.session.close()


async def test_no_interruption_when_the_client_turned_it_off() -> None:
    h = Harness(tts=ToneTts(ms_per_char=40), lead_ms=300)
    try:
        await h.send(type="session.update", session={"audio": {"input": {"turn_detection": {
            "type": "server_vad", "interrupt_response": False}}}})
        await h.speak(tone(700) + silence(900))
        await h.wait_for("response.output_audio.delta", 2)
        await h.speak(tone(400))
        await h.wait_for("input_audio_buffer.speech_started", 2)
        done = await h.wait_for("response.done", timeout=20)
        assert done["response"]["status"] == "completed"
        assert h.sink.clears == 0
    finally:
        await h.session.close()


async def test_audio_comes_in_the_sinks_fixed_format_and_chunk_length() -> None:
    """A phone line: μ-law 8 kHz in 20 ms chunks, whatever the client configures."""
    sink = RecordingSink(audio_format=PCMU)
    sink.chunk_ms = 20.0
    h = Harness(sink=sink)
    try:
        assert h.events[0]["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        await h.send(type="session.update", session={"audio": {"output": {"format": {"type": "audio/pcm",
                                                                                      "rate": 24000}}}})
        updated = await h.wait_for("session.updated")
        assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}, "fixed by the transport"
        h.session.add_user_text("hi")
        h.session.create_response()
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert sink.chunks and {c.fmt for c in sink.chunks} == {PCMU}
        assert max(c.duration_ms for c in sink.chunks) == 20.0
        item = h.session.conversation.items[1]
        assert abs(sum(c.duration_ms for c in sink.chunks) - item.audio_ms) < 1e-6
        assert {c.item_id for c in sink.chunks} == {item.id}
        assert sink.ended == [(done["response"]["id"], item.id)], "end_audio once, after the last chunk"
        assert len(b"".join(c.encoded() for c in sink.chunks)) == round(item.audio_ms * 8), "one byte per sample"
    finally:
        await h.session.close()


async def test_the_typed_api_needs_no_json() -> None:
    h = Harness()
    try:
        item = h.session.add_user_text("What is two plus two?")
        assert h.of("conversation.item.added")[0]["item"]["id"] == item.id
        h.session.update(ev.SessionConfig(output_modalities=["text"]))
        h.session.create_response()
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert h.llm.requests[0][-1].content == "What is two plus two?"
        assert "".join(e["delta"] for e in h.of("response.output_text.delta")) == h.llm.reply
        assert not h.sink.chunks, "a text reply sends no audio"
    finally:
        await h.session.close()
