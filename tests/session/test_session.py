"""Session logic with fake engines and an in-memory transport (no sockets, no models)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

from voicebot.config import from_env
from voicebot.engines.base import EchoCancellerFactory
from voicebot.session import Session

from .fakes import FixedTurn, RecordingSink, ScriptedAsr, SlowLlm, ToneTts, fake_engines, silence, tone


class Harness:
    def __init__(self, *, llm: SlowLlm | None = None, tts: ToneTts | None = None,
                 asr: ScriptedAsr | None = None, lead_ms: float = 100, sink: RecordingSink | None = None,
                 turn: FixedTurn | None = None,
                 echo: EchoCancellerFactory | None = None, **settings: Any) -> None:
        self.llm = llm or SlowLlm()
        self.tts = tts or ToneTts(ms_per_char=8)
        self.asr = asr or ScriptedAsr()
        self.sink = sink or RecordingSink()
        self.events: list[dict[str, Any]] = self.sink.events
        self.session = Session(fake_engines(self.asr, self.llm, self.tts, turn, echo),
                               from_env({}, **settings), self.sink,
                               output_lead_ms=lead_ms)
        self.session.start()

    async def send(self, **event: Any) -> None:
        await self.session.handle_raw(json.dumps(event))

    async def speak(self, pcm: bytes, chunk_ms: int = 40, rate: int = 24_000, realtime: bool = False) -> None:
        step = rate * 2 * chunk_ms // 1000
        for i in range(0, len(pcm), step):
            await self.send(type="input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + step]).decode())
            await asyncio.sleep(chunk_ms / 1000 if realtime else 0)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < count:
                await asyncio.sleep(0.005)
        return self.of(kind)[count - 1]

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.of("error")]


@pytest.fixture
async def h():
    harness = Harness()
    yield harness
    await harness.session.close()
    assert harness.session.active_tasks == 0


async def test_session_created_has_ga_shape(h: Harness) -> None:
    created = h.events[0]
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    assert session["output_modalities"] == ["audio"]


async def test_session_update_changes_settings_and_echoes_them(h: Harness) -> None:
    await h.send(type="session.update", session={
        "type": "realtime", "instructions": "Be terse.", "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcmu"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "threshold": 0.6}},
                  "output": {"format": {"type": "audio/pcma"}}}})
    updated = (await h.wait_for("session.updated"))["session"]
    assert updated["instructions"] == "Be terse."
    assert updated["output_modalities"] == ["text"]
    assert updated["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert updated["audio"]["output"]["format"] == {"type": "audio/pcma"}
    td = updated["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 300 and td["threshold"] == 0.6
    await h.send(type="session.update", session={"audio": {"input": {"turn_detection": None}}})
    assert (await h.wait_for("session.updated", 2))["session"]["audio"]["input"]["turn_detection"] is None


async def test_voice_turn_transcribes_and_answers_with_audio(h: Harness) -> None:
    await h.speak(tone(700) + silence(900))
    done = await h.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    types = h.types()
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
             "response.created", "response.output_item.added", "response.content_part.added",
             "response.output_audio.delta", "response.output_audio.done",
             "response.output_audio_transcript.done", "response.content_part.done",
             "response.output_item.done", "response.done"]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions), types
    started = h.of("input_audio_buffer.speech_started")[0]
    assert 0 <= started["audio_start_ms"] <= 150
    stopped = h.of("input_audio_buffer.speech_stopped")[0]
    assert 650 <= stopped["audio_end_ms"] <= 800
    assert h.of("conversation.item.input_audio_transcription.completed")[0]["transcript"] == "hello there"
    # The LLM saw the instructions and the user's words.
    messages = h.llm.requests[0]
    assert messages[0].role == "system" and messages[-1].content == "hello there"
    transcript = h.of("response.output_audio_transcript.done")[0]["transcript"]
    assert transcript == h.llm.reply
    assert "".join(e["delta"] for e in h.of("response.output_audio_transcript.delta")) == h.llm.reply
    audio = b"".join(e["delta"] for e in h.of("response.output_audio.delta"))
    assert len(audio) > 0 and len(audio) % 2 == 0
    items = h.session.conversation.items
    assert [i.role for i in items] == ["user", "assistant"]
    assert items[1].text == h.llm.reply and items[1].status == "completed"


async def test_reply_starts_thinking_during_the_pause_and_is_promoted(h: Harness) -> None:
    await h.speak(tone(700) + silence(900))
    done = await h.wait_for("response.done")
    assert done["response"]["metrics"]["speculative"] is True
    # The LLM was asked before the end of the turn was even declared...
    assert len(h.llm.requests) == 1
    # ...yet nothing of the reply was emitted before the user's item was committed.
    types = h.types()
    assert types.index("input_audio_buffer.committed") < types.index("response.created")


async def test_speculation_is_dropped_without_a_trace_when_the_user_goes_on() -> None:
    h = Harness(asr=ScriptedAsr(["hello", "hello there my friend", "hello there my friend"]),
                llm=SlowLlm(delay=0.05))
    try:
        await h.speak(tone(700) + silence(350) + tone(600) + silence(900), realtime=True)
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert len(h.of("response.created")) == 1, "the dropped guess must stay invisible"
        assert len(h.of("input_audio_buffer.speech_started")) == 1
        # The guess from the first pause was asked and dropped; the answer used the final words.
        assert len(h.llm.requests) == 2
        assert h.llm.requests[0][-1].content == "hello"
        assert h.llm.requests[1][-1].content == "hello there my friend"
        assert not h.errors()
    finally:
        await h.session.close()
    assert h.llm.active == 0 and h.session.active_tasks == 0


async def test_barge_in_cancels_reply_stops_audio_and_truncates_history() -> None:
    h = Harness(tts=ToneTts(ms_per_char=40), lead_ms=200)
    try:
        await h.speak(tone(700) + silence(900))
        await h.wait_for("response.output_audio.delta", 3)
        await asyncio.sleep(0.5)
        await h.speak(tone(400))
        started = await h.wait_for("input_audio_buffer.speech_started", 2)
        cut = h.events.index(started)
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        after = h.events[cut:]
        assert not [e for e in after if e["type"] == "response.output_audio.delta"]
        await asyncio.sleep(0.1)
        assert h.llm.active == 0, "the LLM stream must be closed on barge-in"
        assistant = h.session.conversation.items[1]
        assert assistant.status == "incomplete"
        heard = assistant.text or ""
        assert heard and len(heard) < len(h.llm.reply) and h.llm.reply.startswith(heard)
        sent_ms = assistant.audio_ms
        assert sent_ms > 0
        # The next turn answers with the cut history.
        await h.speak(silence(900))
        second = await h.wait_for("response.done", 2)
        assert second["response"]["status"] == "completed"
        assert [m.content for m in h.llm.requests[1] if m.role == "assistant"] == [heard]
    finally:
        await h.session.close()
    assert h.session.active_tasks == 0


async def test_a_halted_reply_sends_nothing_even_before_its_cancellation_lands() -> None:
    """The race CI once hit: barge-in flushes the playout clock and cancels the reply's task, but a
    sending stage whose pacing sleep ended in that same loop step runs before the cancellation
    reaches it. It then found no pacing delay (the clock was just flushed) and sent a lead's worth
    of audio after ``speech_started``. Here the stage wakes with no cancellation at all: the halt
    alone must keep everything from the listener."""
    h = Harness(tts=ToneTts(ms_per_char=40), lead_ms=200)
    try:
        await h.speak(tone(700) + silence(900))
        await h.wait_for("response.output_audio.delta", 3)
        reply = h.session.responses.active
        assert reply is not None
        reply.pipeline.halt()
        h.session.playout.flush(time.monotonic())
        sent, events = len(h.sink.chunks), len(h.events)
        await asyncio.sleep(0.6)  # several chunks' worth of pacing, and an empty clock to fill
        assert len(h.sink.chunks) == sent
        assert not [e for e in h.events[events:] if e["type"].endswith(".delta")]
    finally:
        await h.session.close()
    assert h.session.active_tasks == 0


async def test_barge_in_while_thinking_ends_the_response_at_once() -> None:
    """Even when the LLM needs seconds to notice its stop flag, the client hears about it now."""
    h = Harness(llm=SlowLlm(first_delay=5.0, cleanup_s=1.0))
    try:
        await h.speak(tone(700) + silence(900))
        await h.wait_for("response.created")
        await h.speak(tone(400))
        await h.wait_for("input_audio_buffer.speech_started", 2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done = await h.wait_for("response.done", timeout=2)
        assert loop.time() - t0 < 0.2
        assert done["response"]["status"] == "cancelled"
        assert len(h.of("response.done")) == 1, "exactly one response.done per response"
    finally:
        await h.session.close()
    assert h.session.active_tasks == 0 and h.llm.active == 0
    assert len(h.of("response.done")) == 1


async def test_client_truncate_cuts_to_what_was_played(h: Harness) -> None:
    await h.speak(tone(700) + silence(900))
    await h.wait_for("response.done")
    item = h.session.conversation.items[1]
    await h.send(type="conversation.item.truncate", item_id=item.id, content_index=0, audio_end_ms=0)
    truncated = await h.wait_for("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 0
    assert item.text == ""
    await h.send(type="conversation.item.truncate", item_id=item.id, content_index=0, audio_end_ms=10**7)
    assert h.errors()[-1]["param"] == "audio_end_ms"


async def test_manual_commit_then_response_create_with_text_output(h: Harness) -> None:
    await h.send(type="session.update", session={"output_modalities": ["text"],
                                                 "audio": {"input": {"turn_detection": None}}})
    await h.speak(tone(500))
    assert not h.of("input_audio_buffer.speech_started")
    await h.send(type="input_audio_buffer.commit", event_id="c1")
    await h.wait_for("conversation.item.input_audio_transcription.completed")
    await h.send(type="response.create")
    done = await h.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    assert "".join(e["delta"] for e in h.of("response.output_text.delta")) == h.llm.reply
    assert not h.of("response.output_audio.delta")
    assert h.of("response.output_text.done")[0]["text"] == h.llm.reply


async def test_text_item_and_response_create(h: Harness) -> None:
    await h.send(type="conversation.item.create", item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is two plus two?"}]})
    added = await h.wait_for("conversation.item.added")
    assert added["item"]["content"][0]["text"] == "What is two plus two?"
    await h.send(type="response.create")
    await h.wait_for("response.done")
    assert h.llm.requests[0][-1].content == "What is two plus two?"
    # retrieve and delete
    item_id = added["item"]["id"]
    await h.send(type="conversation.item.retrieve", item_id=item_id)
    assert (await h.wait_for("conversation.item.retrieved"))["item"]["id"] == item_id
    await h.send(type="conversation.item.delete", item_id=item_id)
    assert (await h.wait_for("conversation.item.deleted"))["item_id"] == item_id
    assert item_id not in h.session.conversation


async def test_response_cancel_and_double_create() -> None:
    h = Harness(llm=SlowLlm(delay=0.05))
    try:
        await h.send(type="conversation.item.create", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]})
        await h.send(type="response.create")
        await h.send(type="response.create", event_id="again")
        err = h.errors()[-1]
        assert err["code"] == "conversation_already_has_active_response" and err["event_id"] == "again"
        await h.wait_for("response.output_item.added")
        await h.send(type="response.cancel")
        done = await h.wait_for("response.done")
        assert done["response"]["status"] == "cancelled"
        await asyncio.sleep(0.1)
        assert h.llm.active == 0
        await h.send(type="response.cancel", event_id="none")
        assert h.errors()[-1]["code"] == "response_cancel_not_active"
    finally:
        await h.session.close()


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        (json.dumps({"type": "no.such.event", "event_id": "e1"}), "unknown_event_type", "type"),
        (json.dumps({"type": "input_audio_buffer.append", "event_id": "e1"}), "missing_required_parameter", "audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "!!notbase64!!", "event_id": "e1"}),
         "invalid_value", "audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode(),
                     "event_id": "e1"}), "invalid_value", "audio"),
        (json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0,
                     "audio_end_ms": 5, "event_id": "e1"}), "item_not_found", "item_id"),
        (json.dumps({"type": "conversation.item.truncate", "item_id": "x", "content_index": 0,
                     "audio_end_ms": -5, "event_id": "e1"}), "invalid_value", "audio_end_ms"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/ogg"}}}},
                     "event_id": "e1"}), "invalid_value", "session.audio.input.format"),
        (json.dumps({"type": "input_audio_buffer.commit", "event_id": "e1"}), "input_audio_buffer_commit_empty", None),
        (json.dumps({"type": "conversation.item.delete", "item_id": "ghost", "event_id": "e1"}), "item_not_found",
         "item_id"),
    ],
)
async def test_bad_input_gets_error_event_and_session_continues(h: Harness, raw: str, code: str,
                                                                param: str | None) -> None:
    await h.session.handle_raw(raw)
    err = h.errors()[-1]
    assert err["code"] == code
    assert err["param"] == param
    assert err["message"]
    if '"event_id"' in raw:
        assert err["event_id"] == "e1"
    # Still serving: a valid event works afterwards.
    await h.send(type="session.update", session={"instructions": "still here"})
    assert (await h.wait_for("session.updated"))["session"]["instructions"] == "still here"


async def test_close_mid_reply_leaves_nothing_running() -> None:
    h = Harness(llm=SlowLlm(delay=0.05))
    await h.send(type="conversation.item.create", item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]})
    await h.send(type="response.create")
    await h.wait_for("response.output_item.added")
    await h.session.close()
    assert h.session.active_tasks == 0
    await asyncio.sleep(0.1)
    assert h.llm.active == 0
    n = len(h.events)
    await asyncio.sleep(0.2)
    assert len(h.events) == n, "no events after close"


async def test_noise_click_does_not_start_speech(h: Harness) -> None:
    await h.speak(silence(300) + tone(10) + silence(600))  # a click: inside one 32 ms hop
    await asyncio.sleep(0.05)
    assert not h.of("input_audio_buffer.speech_started")


@pytest.mark.parametrize(("probability", "ends_after_1s_of_silence"), [(0.95, True), (0.1, False)])
async def test_the_turn_model_lets_an_unfinished_sounding_turn_wait_longer(probability: float,
                                                                         ends_after_1s_of_silence: bool) -> None:
    turn = FixedTurn(probability)
    h = Harness(turn=turn)
    try:
        await h.speak(tone(700) + silence(1000), realtime=True)
        await asyncio.sleep(0.1)
        assert len(turn.calls) == 1, "asked once per pause"
        assert 700 * 16 <= turn.calls[0] <= 1700 * 16, "with the speech, its padding and the pause so far"
        assert bool(h.of("input_audio_buffer.speech_stopped")) is ends_after_1s_of_silence
        await h.speak(silence(300), realtime=True)
        assert h.of("input_audio_buffer.speech_stopped"), "the longer silence ends it too"
    finally:
        await h.session.close()


async def test_server_vad_gets_exactly_the_clients_silence_and_no_turn_model() -> None:
    turn = FixedTurn(0.0)
    h = Harness(turn=turn)
    try:
        await h.send(type="session.update", session={"audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 300}}}})
        td = (await h.wait_for("session.updated"))["session"]["audio"]["input"]["turn_detection"]
        assert td["type"] == "server_vad" and td["silence_duration_ms"] == 300
        await h.speak(tone(700) + silence(450), realtime=True)
        assert h.of("input_audio_buffer.speech_stopped") and not turn.calls
    finally:
        await h.session.close()
