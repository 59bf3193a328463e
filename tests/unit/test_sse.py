"""SSE framing, the bounded event log, listeners, and the Realtime -> SSE event mapping (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.session.fakes import fake_engines
from voicebot.auth import Authenticator, ClientTokens
from voicebot.config import from_env
from voicebot.conversation_hub import ConversationHub
from voicebot.conversations import Listener
from voicebot.core.conversation import Item
from voicebot.core.sse import EventLog, parse_last_event_id, retry_frame, sse_frame
from voicebot.errors import HttpError


def test_frames_have_id_event_and_single_line_data() -> None:
    frame = sse_frame("assistant.delta", {"delta": "a\nb\r\nc"}, 7)
    assert frame == b'id: 7\nevent: assistant.delta\ndata: {"delta":"a\\nb\\r\\nc"}\n\n'
    assert frame.count(b"\n") == 4  # newlines inside data are escaped
    assert retry_frame(1500) == b"retry: 1500\n\n"
    assert sse_frame(None, "[DONE]") == b"data: [DONE]\n\n"


def test_log_replays_exactly_what_was_missed_and_knows_when_it_cannot() -> None:
    log = EventLog(capacity=5)
    assert log.since(0) == []
    for i in range(8):
        log.append("e", {"n": i})
    assert log.last_id == 8 and len(log) == 5 and log.first_id == 4
    assert [e.id for e in log.since(3) or []] == [4, 5, 6, 7, 8]
    assert [e.id for e in log.since(6) or []] == [7, 8]
    assert log.since(8) == []
    assert log.since(2) is None, "event 3 is gone: too old"
    assert log.since(0) is None
    assert log.since(9) is None, "never issued"
    assert log.since(-1) is None


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 0), ("", 0), ("  ", 0), ("0", 0), ("42", 42), (" 42 ", 42),
    ("x", None), ("-1", None), ("1.5", None), ("٣", None), ("9" * 40, None), ("0x1", None),
])
def test_last_event_id_parsing(raw: str | None, expected: int | None) -> None:
    assert parse_last_event_id(raw) == expected


async def test_listener_is_closed_instead_of_growing_past_its_bound() -> None:
    log = EventLog(100)
    listener = Listener(limit=3)
    for i in range(3):
        assert listener.push(log.append("e", {"n": i}))
    assert not listener.push(log.append("e", {"n": 3}))
    assert listener.closed and listener.overflowed
    assert [e.data["n"] for e in listener.take()] == [0, 1, 2]


def test_scoped_tokens_only_open_their_scope() -> None:
    tokens = ClientTokens()
    scoped, _ = tokens.mint(60, now=1000, scope="conversation:a")
    anywhere, _ = tokens.mint(60, now=1000)
    assert tokens.valid(scoped, now=1001, scope="conversation:a")
    assert not tokens.valid(scoped, now=1001, scope="conversation:b")
    assert not tokens.valid(scoped, now=1001), "a scoped token is no general credential"
    assert tokens.valid(anywhere, now=1001, scope="conversation:a")
    assert not tokens.valid(scoped, now=1061, scope="conversation:a"), "expired"
    assert len(tokens) == 0, "a check purges every expired token (time only goes forward)"
    auth = Authenticator(("key",), tokens)
    scoped_now, _ = tokens.mint(60, scope="conversation:a")
    anywhere_now, _ = tokens.mint(60)
    assert not auth.accepts(scoped_now), "the WebSocket does not take conversation-scoped tokens"
    assert auth.accepts(anywhere_now)


def _hub(**settings: Any) -> ConversationHub:
    return ConversationHub(from_env({}, **settings), fake_engines())


def _ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


async def test_realtime_events_become_conversation_events_and_audio_never_does() -> None:
    hub = _hub()
    shared = hub.create("be kind")
    assert hub.get(shared.id) is shared and len(hub) == 1
    conv = shared.conversation
    user = Item("item_u", "user", "input_audio", text="hi")
    conv.add(user)
    reply = Item("item_a", "assistant", "output_audio", text="")
    conv.add(reply)
    publish = conv.publish
    publish(_ev("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_u"))
    publish(_ev("conversation.item.added", item=user.to_wire()))  # audio: wait for the transcript
    publish(_ev("conversation.item.done", item=user.to_wire()))
    publish(_ev("response.created", response={"id": "resp_1"}))
    publish(_ev("response.output_item.added", response_id="resp_1", item=reply.to_wire()))
    publish(_ev("response.output_audio.delta", response_id="resp_1", item_id="item_a", delta=b"\0" * 100))
    publish(_ev("response.output_audio_transcript.delta", response_id="resp_1", item_id="item_a", delta="Hello"))
    reply.text = "Hello"
    publish(_ev("response.done", response={"id": "resp_1", "status": "completed", "output": [reply.to_wire()]}))
    publish(_ev("error", error={"type": "invalid_request_error", "code": "x", "message": "client mistake"}))
    publish(_ev("error", error={"type": "server_error", "code": "engine_error", "message": "LLM down"}))
    # An out-of-band reply (not in the history) is not mirrored.
    publish(_ev("response.output_item.added", response_id="resp_2",
                item=Item("item_oob", "assistant", "output_text").to_wire()))
    publish(_ev("response.output_text.delta", response_id="resp_2", item_id="item_oob", delta="secret"))
    got = [(e.event, e.data) for e in shared.log.since(0) or []]
    assert got == [
        ("user.message", {"item_id": "item_u", "text": "hi", "source": "voice"}),
        ("assistant.started", {"item_id": "item_a", "response_id": "resp_1", "source": "voice"}),
        ("assistant.delta", {"item_id": "item_a", "response_id": "resp_1", "delta": "Hello"}),
        ("assistant.done", {"item_id": "item_a", "response_id": "resp_1", "text": "Hello", "status": "completed"}),
        ("error", {"code": "engine_error", "message": "LLM down"}),
    ]
    assert [e.id for e in shared.log.since(0) or []] == [1, 2, 3, 4, 5]
    await hub.close()
    assert len(hub) == 0
    with pytest.raises(HttpError) as gone:
        hub.get(shared.id)
    assert gone.value.status == 404 and gone.value.code == "conversation_not_found"


async def test_subscribe_resume_and_reset() -> None:
    hub = _hub(sse_log_events=3)
    shared = hub.create()
    for i in range(5):
        shared.publish("e", {"n": i})
    fresh = shared.subscribe(4)
    assert [e.id for e in fresh.backlog] == [5] and fresh.reset is None
    old = shared.subscribe(1)
    assert old.backlog == [] and old.reset is not None and b"event: reset" in old.reset
    assert old.reset.startswith(b"id: 5\n") and b'"reason":"too_old"' in old.reset
    garbage = shared.subscribe(None)
    assert garbage.reset is not None and b'"reason":"invalid_last_event_id"' in garbage.reset
    shared.publish("e", {"n": 5})
    assert all([e.id for e in s.listener.take()] == [6] for s in (fresh, old, garbage))
    assert shared.sever() == 3
    await hub.close()


async def test_hub_caps_conversations() -> None:
    hub = _hub(max_conversations=2)
    hub.create()
    hub.create()
    with pytest.raises(HttpError) as full:
        hub.create()
    assert full.value.status == 429 and full.value.code == "too_many_conversations"
    await hub.close()


async def test_a_failing_mirror_never_breaks_the_emitting_session() -> None:
    hub = _hub()
    shared = hub.create()
    shared.conversation.publish({"type": "response.done"})  # malformed: no "response"
    shared.conversation.publish({"type": "conversation.item.added"})
    assert shared.log.last_id == 0
    await asyncio.sleep(0)
    await hub.close()
