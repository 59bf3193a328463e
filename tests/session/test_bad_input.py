"""A bad client event costs the client one ``error`` event, never the session.

Hand-made bad events (each the shape a real client bug or an attacker sends), then property-based
fuzzing of the Realtime event handler; after each batch the same session still holds a voice turn.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebot.core.events import CLIENT_EVENT_TYPES

from .fakes import RecordingSink, SlowLlm, silence, tone
from .test_session import Harness


def update(**session: Any) -> dict[str, Any]:
    return {"type": "session.update", "session": session}


def detection(**td: Any) -> dict[str, Any]:
    return update(audio={"input": {"turn_detection": {"type": "server_vad", **td}}})


#: (what it is, the raw message). Each must get exactly one error naming its event_id.
BAD_EVENTS: list[tuple[str, str]] = [
    ("deep nesting", '{"type": "session.update", "event_id": "bad", "session": ' + "[" * 5000 + "]" * 5000 + "}"),
    ("deep nesting, no type", "[" * 20_000),
    ("threshold 0", json.dumps(detection(threshold=0.0))),
    ("threshold 1", json.dumps(detection(threshold=1.0))),
    ("threshold true", json.dumps(detection(threshold=True))),
    ("silence 0 ms", json.dumps(detection(silence_duration_ms=0))),
    ("silence as a string", json.dumps(detection(silence_duration_ms="500"))),
    ("max_output_tokens 0", json.dumps(update(max_output_tokens=0))),
    ("max_output_tokens -5", json.dumps(update(max_output_tokens=-5))),
    ("max_output_tokens true", json.dumps(update(max_output_tokens=True))),
    ("response max_output_tokens 0", json.dumps({"type": "response.create", "response": {"max_output_tokens": 0}})),
    ("temperature as a string", json.dumps(update(temperature="hot"))),
    ("unknown conversation", json.dumps({"type": "response.create", "response": {"conversation": "conv_nope"}})),
    ("output_audio_buffer.clear over a WebSocket", json.dumps({"type": "output_audio_buffer.clear"})),
    ("not JSON", "{type: session.update"),
    ("a JSON array", "[1, 2, 3]"),
    ("a JSON string", '"session.update"'),
    ("no type", "{}"),
    ("unknown type", '{"type": "session.destroy"}'),
    ("type not a string", '{"type": 7}'),
    ("bad base64", '{"type": "input_audio_buffer.append", "audio": "!!!"}'),
    ("odd PCM bytes", '{"type": "input_audio_buffer.append", "audio": "AAAA"}'),
    ("audio not a string", '{"type": "input_audio_buffer.append", "audio": 5}'),
    ("commit of nothing", '{"type": "input_audio_buffer.commit"}'),
    ("item without content", '{"type": "conversation.item.create", "item": {"role": "user", "content": []}}'),
    ("item with an unknown role", '{"type": "conversation.item.create", "item": {"role": "robot", '
                                  '"content": [{"type": "input_text", "text": "hi"}]}}'),
    ("delete an unknown item", '{"type": "conversation.item.delete", "item_id": "item_nope"}'),
    ("truncate an unknown item", '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, '
                                 '"audio_end_ms": 10}'),
    ("negative truncate", '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, '
                          '"audio_end_ms": -1}'),
    ("cancel with nothing active", '{"type": "response.cancel"}'),
    ("unknown input format", json.dumps(update(audio={"input": {"format": {"type": "audio/flac"}}}))),
    ("input rate 0", json.dumps(update(audio={"input": {"format": {"type": "audio/pcm", "rate": 0}}}))),
    ("modalities empty", json.dumps(update(output_modalities=[]))),
    ("speed 100", json.dumps(update(audio={"output": {"speed": 100}}))),
]

LONE_SURROGATE = '{"type": "input_audio_buffer.clear", "event_id": "\\ud800"}'
LONG_EVENT_ID = json.dumps({"type": "input_audio_buffer.clear", "event_id": "x" * 200_000})
INVALID_UTF8 = b'{"type": "input_audio_buffer.clear", "event_id": "\xff"}'


def with_event_id(raw: str, event_id: str) -> str:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if isinstance(value, dict) and "event_id" not in value:
        value["event_id"] = event_id
        return json.dumps(value)
    return raw


async def holds_a_voice_turn(h: Harness) -> None:
    """The session still listens, transcribes, answers and speaks."""
    done = len(h.of("response.done"))
    await h.send(type="session.update", session={"audio": {"input": {"turn_detection": {"type": "server_vad"}}},
                                                  "max_output_tokens": "inf"})
    await h.speak(tone(700) + silence(900))
    reply = await h.wait_for("response.done", done + 1)
    assert reply["response"]["status"] == "completed"
    assert h.of("response.output_audio.delta")


@pytest.fixture
async def h():
    harness = Harness(sink=RecordingSink())
    harness.session.sink.holds_output = False  # type: ignore[misc]  # a WebSocket: the client holds its audio
    yield harness
    await harness.session.close()
    assert harness.session.active_tasks == 0


@pytest.mark.parametrize(("what", "raw"), BAD_EVENTS, ids=[w for w, _ in BAD_EVENTS])
async def test_each_bad_event_gets_one_error_naming_it(h: Harness, what: str, raw: str) -> None:
    message = with_event_id(raw, "evt_bad")
    before = len(h.of("error"))
    await h.session.handle_raw(message)
    errors = h.of("error")[before:]
    assert len(errors) == 1, (what, h.types()[-5:])
    error = errors[0]["error"]
    assert error["message"] and error["type"] == "invalid_request_error", error
    if message is not raw:
        assert error["event_id"] == "evt_bad", error
    await holds_a_voice_turn(h)


@pytest.mark.parametrize("raw", [LONE_SURROGATE, LONG_EVENT_ID, INVALID_UTF8], ids=["surrogate", "long", "utf8"])
async def test_an_event_id_that_cannot_be_echoed_is_refused_not_echoed(h: Harness, raw: str | bytes) -> None:
    await h.session.handle_raw(raw)
    [error] = [e["error"] for e in h.of("error")]
    assert error["event_id"] is None
    json.dumps(h.events[-1], ensure_ascii=False).encode("utf-8")  # what goes on the wire encodes
    await holds_a_voice_turn(h)


async def test_a_bug_inside_a_handler_is_an_error_event_not_the_end(h: Harness) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise KeyError("a bug")

    h.session.delete_item = broken  # type: ignore[method-assign]
    await h.send(type="conversation.item.delete", item_id="item_x", event_id="evt_1")
    [error] = [e["error"] for e in h.of("error")]
    assert error["type"] == "server_error" and error["event_id"] == "evt_1"
    assert "conversation.item.delete" in error["message"]
    await holds_a_voice_turn(h)


# --- fuzzing --------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=12,
)
FIELDS = ["session", "audio", "item", "item_id", "response", "response_id", "previous_item_id", "content_index",
          "audio_end_ms", "event_id"]
KNOWN_SHAPES = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(CLIENT_EVENT_TYPES))},
    optional={name: JSON for name in FIELDS},
)
SESSION_SHAPES = st.builds(
    lambda td, extra: update(audio={"input": {"turn_detection": {**td, **extra}}}),
    st.fixed_dictionaries({}, optional={"type": st.sampled_from(["server_vad", "semantic_vad", "x"]),
                                        "threshold": JSON, "silence_duration_ms": JSON,
                                        "prefix_padding_ms": JSON, "eagerness": JSON}),
    st.dictionaries(st.text(max_size=8), JSON, max_size=2),
)
MESSAGES = st.one_of(
    KNOWN_SHAPES.map(json.dumps), SESSION_SHAPES.map(json.dumps), JSON.map(json.dumps),
    st.text(max_size=200), st.binary(max_size=200),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
)


def test_fuzzed_messages_never_escape_the_handler() -> None:
    """Hypothesis drives one session with malformed, truncated, deep and out-of-order events: no
    exception escapes, each message that is not a valid event gets an error, and the session then
    holds a voice turn."""
    loop = asyncio.new_event_loop()
    try:
        harness = loop.run_until_complete(_new_harness())

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(MESSAGES)
        def one(raw: str | bytes) -> None:
            before = len(harness.events)
            loop.run_until_complete(harness.session.handle_raw(raw))
            out = harness.events[before:]
            assert all(e["type"] != "error" or e["error"]["message"] for e in out)

        one()
        loop.run_until_complete(harness.send(type="input_audio_buffer.clear"))
        loop.run_until_complete(harness.send(type="response.cancel"))  # whatever a fuzzed event started
        loop.run_until_complete(asyncio.sleep(0.5))
        loop.run_until_complete(holds_a_voice_turn(harness))
        loop.run_until_complete(harness.session.close())
        assert harness.session.active_tasks == 0
    finally:
        loop.close()


async def _new_harness() -> Harness:
    return Harness()


# --- long conversations ---------------------------------------------------------------------------


async def test_a_long_conversation_keeps_answering_within_the_context() -> None:
    """60 turns into a context that holds ~10: every reply completes, every request fits, the
    instructions stay first, and the history is cut rarely (the prompt cache survives between cuts)."""
    from voicebot.core.context import estimate_tokens

    h = Harness(llm=SlowLlm(reply="A fairly long answer that fills the context quickly. " * 3, delay=0),
                llm_context=1200, max_response_tokens=200)
    try:
        await h.send(type="session.update", session={"instructions": "Be brief.", "output_modalities": ["text"]})
        for turn in range(60):
            await h.send(type="conversation.item.create",
                         item={"role": "user", "content": [{"type": "input_text", "text": f"Question {turn}?"}]})
            await h.send(type="response.create")
            done = await h.wait_for("response.done", turn + 1)
            assert done["response"]["status"] == "completed", done["response"]
        requests = h.llm.requests
        assert all(estimate_tokens(r) <= 1000 for r in requests)
        assert all(r[0].content == "Be brief." and r[-1].content.startswith("Question") for r in requests)
        assert requests[-1][-1].content == "Question 59?"
        cuts = sum(1 for a, b in itertools.pairwise(requests) if a[1] != b[1])
        assert 2 <= cuts <= 12, cuts
        assert len(h.session.conversation.items) == 120, "the conversation itself keeps everything"
    finally:
        await h.session.close()


async def test_truncation_disabled_sends_the_whole_history() -> None:
    h = Harness(llm=SlowLlm(reply="word " * 50, delay=0), llm_context=600, max_response_tokens=100)
    try:
        await h.send(type="session.update", session={"truncation": "disabled", "output_modalities": ["text"]})
        assert h.of("session.updated")[-1]["session"]["truncation"] == "disabled"
        for turn in range(12):
            await h.send(type="conversation.item.create",
                         item={"role": "user", "content": [{"type": "input_text", "text": f"Q{turn}"}]})
            await h.send(type="response.create")
            await h.wait_for("response.done", turn + 1)
        assert len(h.llm.requests[-1]) == 1 + 23  # instructions + every message
        await h.send(type="session.update", session={"truncation": {"type": "retention_ratio",
                                                                     "retention_ratio": 0.5}})
        assert h.of("session.updated")[-1]["session"]["truncation"] == {"type": "retention_ratio",
                                                                        "retention_ratio": 0.5}
    finally:
        await h.session.close()
