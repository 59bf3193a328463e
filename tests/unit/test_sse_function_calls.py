"""Function calls on the SSE mirror: ``tool.call`` / ``tool.output``, the assistant events that
must not take a call for a message, the history snapshot, and a call's result posted by a text
client (SharedConversation.post_function_output). Real Conversation objects; events are fakes,
except in the last tests where a real Session on fake engines makes the call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from tests.session.fakes import SlowLlm, fake_engines
from voicebot.config import from_env
from voicebot.conversation_hub import ConversationHub
from voicebot.conversations import SharedConversation
from voicebot.core.conversation import Item
from voicebot.core.types import ChatMessage, LlmPiece, Tool, ToolCallDelta
from voicebot.errors import ProtocolError
from voicebot.session import Session
from voicebot.session_config import SessionConfig
from voicebot.sink import NullSink


def _ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def _events(shared: SharedConversation) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, e.data) for e in shared.log.since(0) or []]


def _hub(llm: SlowLlm | None = None) -> ConversationHub:
    return ConversationHub(from_env({}), fake_engines(llm=llm))


def _call(item_id: str = "item_c", call_id: str = "call_1", status: str = "completed",
          arguments: str = '{"city":"Paris"}') -> Item:
    return Item.function_call(item_id, call_id, "get_weather", arguments, status=status)  # type: ignore[arg-type]


def _function_call_events(publish: Any, response_id: str, call: Item, output_index: int = 0) -> None:
    """What a response emits for one call, in the server's order (voicebot/function_calls.py)."""
    started = Item.function_call(call.id, call.call_id or "", call.name or "", "", status="in_progress")
    publish(_ev("conversation.item.added", previous_item_id=None, item=started.to_wire()))
    publish(_ev("response.output_item.added", response_id=response_id, output_index=output_index,
                item=started.to_wire()))
    publish(_ev("response.function_call_arguments.delta", response_id=response_id, item_id=call.id,
                output_index=output_index, call_id=call.call_id, delta=call.arguments))
    publish(_ev("response.function_call_arguments.done", response_id=response_id, item_id=call.id,
                output_index=output_index, call_id=call.call_id, name=call.name, arguments=call.arguments))
    publish(_ev("response.output_item.done", response_id=response_id, output_index=output_index,
                item=call.to_wire()))
    publish(_ev("conversation.item.done", previous_item_id=None, item=call.to_wire()))


async def test_a_call_and_its_output_are_mirrored_and_a_call_only_response_is_no_assistant_message() -> None:
    hub = _hub()
    shared = hub.create()
    conv = shared.conversation
    publish = conv.publish
    user = Item("item_u", "user", "input_text", text="Weather in Paris?")
    conv.add(user)
    publish(_ev("conversation.item.added", item=user.to_wire()))
    call = _call()
    conv.add(call)
    publish(_ev("response.created", response={"id": "resp_1"}))
    _function_call_events(publish, "resp_1", call)
    publish(_ev("response.done", response={"id": "resp_1", "status": "completed", "output": [call.to_wire()]}))
    assert not shared.replying, "the call-only response is over"
    result = Item.function_call_output("item_o", "call_1", '{"temp_c": 21}')
    conv.add(result)
    publish(_ev("conversation.item.added", previous_item_id="item_c", item=result.to_wire()))
    publish(_ev("conversation.item.done", previous_item_id="item_c", item=result.to_wire()))
    # The next response speaks, using the output.
    reply = Item("item_a", "assistant", "output_text", text="", status="in_progress")
    conv.add(reply)
    publish(_ev("response.created", response={"id": "resp_2"}))
    publish(_ev("response.output_item.added", response_id="resp_2", output_index=0, item=reply.to_wire()))
    publish(_ev("response.output_text.delta", response_id="resp_2", item_id="item_a", delta="21 degrees."))
    reply.text, reply.status = "21 degrees.", "completed"
    publish(_ev("response.done", response={"id": "resp_2", "status": "completed", "output": [reply.to_wire()]}))
    assert _events(shared) == [
        ("user.message", {"item_id": "item_u", "text": "Weather in Paris?", "source": "text"}),
        ("tool.call", {"item_id": "item_c", "response_id": "resp_1", "call_id": "call_1", "name": "get_weather",
                       "arguments": '{"city":"Paris"}'}),
        ("tool.output", {"item_id": "item_o", "call_id": "call_1", "output": '{"temp_c": 21}'}),
        ("assistant.started", {"item_id": "item_a", "response_id": "resp_2", "source": "text"}),
        ("assistant.delta", {"item_id": "item_a", "response_id": "resp_2", "delta": "21 degrees."}),
        ("assistant.done", {"item_id": "item_a", "response_id": "resp_2", "text": "21 degrees.",
                            "status": "completed"}),
    ]
    await hub.close()


@pytest.mark.parametrize("call_first", [False, True], ids=["words-then-call", "call-then-words"])
async def test_assistant_done_takes_its_text_from_the_message_item_whatever_its_place(call_first: bool) -> None:
    hub = _hub()
    shared = hub.create()
    conv = shared.conversation
    publish = conv.publish
    reply = Item("item_a", "assistant", "output_audio", text="", status="in_progress")
    conv.add(reply)
    call = _call()
    conv.add(call)
    publish(_ev("response.created", response={"id": "resp_1"}))
    if call_first:
        _function_call_events(publish, "resp_1", call, output_index=0)
    publish(_ev("response.output_item.added", response_id="resp_1", output_index=int(call_first),
                item=reply.to_wire()))
    publish(_ev("response.output_audio_transcript.delta", response_id="resp_1", item_id="item_a",
                delta="Let me look."))
    if not call_first:
        _function_call_events(publish, "resp_1", call, output_index=1)
    reply.text, reply.status = "Let me look.", "completed"
    output = [call.to_wire(), reply.to_wire()] if call_first else [reply.to_wire(), call.to_wire()]
    publish(_ev("response.done", response={"id": "resp_1", "status": "completed", "output": output}))
    got = _events(shared)
    assert [kind for kind, _ in got] == (["tool.call", "assistant.started", "assistant.delta", "assistant.done"]
                                         if call_first else
                                         ["assistant.started", "assistant.delta", "tool.call", "assistant.done"])
    started = next(data for kind, data in got if kind == "assistant.started")
    assert started == {"item_id": "item_a", "response_id": "resp_1", "source": "voice"}
    done = next(data for kind, data in got if kind == "assistant.done")
    assert done == {"item_id": "item_a", "response_id": "resp_1", "text": "Let me look.", "status": "completed"}
    await hub.close()


async def test_calls_cut_off_or_out_of_band_are_not_mirrored() -> None:
    hub = _hub()
    shared = hub.create()
    conv = shared.conversation
    publish = conv.publish
    # A call cut off by barge-in or a failure: its item ends incomplete and is never made.
    cut = _call("item_cut", "call_cut", status="incomplete", arguments='{"ci')
    conv.add(cut)
    publish(_ev("response.created", response={"id": "resp_1"}))
    publish(_ev("response.output_item.added", response_id="resp_1", output_index=0, item=cut.to_wire()))
    publish(_ev("response.output_item.done", response_id="resp_1", output_index=0, item=cut.to_wire()))
    publish(_ev("response.done", response={"id": "resp_1", "status": "cancelled", "output": [cut.to_wire()]}))
    # An out-of-band response (conversation "none"): its call is not in the history.
    oob = _call("item_oob", "call_oob")
    publish(_ev("response.created", response={"id": "resp_2"}))
    publish(_ev("response.output_item.added", response_id="resp_2", output_index=0, item=oob.to_wire()))
    publish(_ev("response.output_item.done", response_id="resp_2", output_index=0, item=oob.to_wire()))
    publish(_ev("response.done", response={"id": "resp_2", "status": "completed", "output": [oob.to_wire()]}))
    assert _events(shared) == []
    assert not shared.replying
    await hub.close()


async def test_the_history_snapshot_renders_calls_and_outputs() -> None:
    hub = _hub()
    shared = hub.create()
    conv = shared.conversation
    conv.add(Item("item_u", "user", "input_audio", text="Weather?"))
    conv.add(_call())
    conv.add(Item.function_call_output("item_o", "call_1", "sunny"))
    conv.add(Item("item_a", "assistant", "output_audio", text="It is sunny."))
    assert shared.snapshot() == [
        {"item_id": "item_u", "type": "message", "role": "user", "text": "Weather?", "status": "completed",
         "source": "voice"},
        {"item_id": "item_c", "type": "function_call", "role": "assistant", "text": None, "status": "completed",
         "source": "text", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"item_id": "item_o", "type": "function_call_output", "role": "tool", "text": None, "status": "completed",
         "source": "text", "call_id": "call_1", "output": "sunny"},
        {"item_id": "item_a", "type": "message", "role": "assistant", "text": "It is sunny.", "status": "completed",
         "source": "voice"},
    ]
    reset = shared.subscribe(None).reset
    assert reset is not None
    data = json.loads(reset.split(b"data: ", 1)[1])
    assert data["items"] == shared.snapshot()
    assert shared.to_wire(with_items=True)["items"] == shared.snapshot()
    await hub.close()


# --- a real Session makes the call; a text client answers it over the hub ---------------------------


class CallingLlm(SlowLlm):
    """Each stream plays the next script: text pieces and ToolCallDeltas; records the tools offered."""

    def __init__(self, scripts: Sequence[Sequence[LlmPiece]]) -> None:
        super().__init__(delay=0.0)
        self.scripts = [list(s) for s in scripts]
        self.offered: list[tuple[str, ...]] = []

    async def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float,  # type: ignore[override]
                     tools: Sequence[Tool] = (), tool_choice: str = "auto") -> AsyncIterator[LlmPiece]:
        self.requests.append(list(messages))
        self.offered.append(tuple(t.name for t in tools))
        for piece in self.scripts.pop(0) if self.scripts else ["All", " done."]:
            await asyncio.sleep(0)
            yield piece


WEATHER = Tool("get_weather", "The weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})


async def _until(shared: SharedConversation, event: str, count: int = 1, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while sum(kind == event for kind, _ in _events(shared)) < count:
            await asyncio.sleep(0.005)


async def _caller(shared: SharedConversation, hub: ConversationHub) -> Session:
    """A session with tools on the conversation (what a voice client with session.update tools is)."""
    config = SessionConfig(instructions="", output_modalities=("text",), transcription=None, vad=None,
                           tools=(WEATHER,))
    return Session(hub.engines, hub.settings, NullSink(), conversation=shared.conversation, config=config)


async def test_a_call_made_by_a_session_is_answered_over_http_and_the_reply_uses_the_output() -> None:
    llm = CallingLlm([
        [ToolCallDelta(0, "call_w", "get_weather", '{"city":'), ToolCallDelta(0, arguments='"Paris"}')],
        ["It", " is", " 21", " degrees."],
    ])
    hub = _hub(llm)
    shared = hub.create()
    caller = await _caller(shared, hub)
    caller.add_user_text("Weather in Paris?")
    caller.create_response()
    await _until(shared, "tool.call")
    await caller.wait_idle()
    with pytest.raises(ProtocolError) as unknown:
        shared.post_function_output("call_nope", "{}")
    assert unknown.value.param == "item.call_id" and "call_nope" in unknown.value.message
    posted = shared.post_function_output("call_w", '{"temp_c": 21}')
    assert posted["type"] == "function_call_output" and posted["call_id"] == "call_w"
    with pytest.raises(ProtocolError, match="already has an output"):
        shared.post_function_output("call_w", "again")
    await _until(shared, "assistant.done")
    got = _events(shared)
    kinds = [kind for kind, _ in got]
    assert kinds == ["user.message", "tool.call", "tool.output", "assistant.started", "assistant.delta",
                     "assistant.delta", "assistant.delta", "assistant.delta", "assistant.done"], got
    call = got[1][1]
    assert call["name"] == "get_weather" and call["call_id"] == "call_w" and call["arguments"] == '{"city":"Paris"}'
    assert got[2][1] == {"item_id": posted["item_id"], "call_id": "call_w", "output": '{"temp_c": 21}'}
    assert got[-1][1]["text"] == "It is 21 degrees." and got[-1][1]["status"] == "completed"
    # The text reply saw the call and its result.
    last = llm.requests[-1]
    assert [m.role for m in last[-3:]] == ["user", "assistant", "tool"]
    assert last[-2].tool_calls[0].call_id == "call_w" and last[-1].tool_call_id == "call_w"
    await caller.close()
    await hub.close()


async def test_parallel_calls_get_one_reply_once_both_are_answered() -> None:
    llm = CallingLlm([[ToolCallDelta(0, "call_a", "get_weather", '{"city":"Paris"}'),
                       ToolCallDelta(1, "call_b", "get_weather", '{"city":"Oslo"}')]])
    hub = _hub(llm)
    shared = hub.create()
    caller = await _caller(shared, hub)
    caller.add_user_text("Paris and Oslo?")
    caller.create_response()
    await _until(shared, "tool.call", 2)
    await caller.wait_idle()
    asked = len(llm.requests)
    shared.post_function_output("call_a", "sunny")
    await asyncio.sleep(0.05)
    assert not shared.replying and len(llm.requests) == asked, "no reply while call_b has no result"
    shared.post_function_output("call_b", "snow")
    await _until(shared, "assistant.done")
    assert len(llm.requests) == asked + 1
    assert [m.tool_call_id for m in llm.requests[-1] if m.role == "tool"] == ["call_a", "call_b"]
    await caller.close()
    await hub.close()
