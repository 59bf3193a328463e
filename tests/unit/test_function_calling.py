"""The pure parts of function calling: items in the LLM's history, parsing, the engine's request, assembly."""

from __future__ import annotations

import json

import pytest

from voicebot.core import events as ev
from voicebot.core.context import estimate_tokens
from voicebot.core.conversation import Conversation, Item
from voicebot.core.types import ChatMessage, Tool, ToolCall, ToolCallDelta
from voicebot.engines.llm_llamacpp import TOOLS_TEMPLATE, tool_fields
from voicebot.errors import ProtocolError
from voicebot.transports.chat_completions import assemble_calls

WEATHER = Tool("get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = Tool("get_time", "Time in a city")


def test_parallel_calls_are_one_assistant_message_and_outputs_are_tool_messages() -> None:
    c = Conversation("c")
    c.add(Item("u", "user", "input_text", text="Weather in Paris and time in Tokyo?"))
    c.add(Item("a", "assistant", "output_text", text="Let me check."))
    c.add(Item.function_call("f1", "call_1", "get_weather", '{"city": "Paris"}'))
    c.add(Item.function_call("f2", "call_2", "get_time", '{"city": "Tokyo"}'))
    c.add(Item.function_call("f3", "call_3", "get_time", '{"city": "Ro', status="incomplete"))  # cut off
    c.add(Item.function_call_output("o1", "call_1", '{"temperature_c": 17}'))
    c.add(Item.function_call_output("o2", "call_2", "21:47"))
    messages = c.chat_messages("Be brief.")
    assert messages == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Paris and time in Tokyo?"),
        ChatMessage("assistant", "Let me check.", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
                                                   ToolCall("call_2", "get_time", '{"city": "Tokyo"}'))),
        ChatMessage("tool", '{"temperature_c": 17}', tool_call_id="call_1"),
        ChatMessage("tool", "21:47", tool_call_id="call_2"),
    ]
    assert messages[2].to_openai()["tool_calls"][1] == {
        "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Tokyo"}'}}
    # The calls count against the context budget, not only the words.
    assert estimate_tokens(messages[2:3]) > estimate_tokens([ChatMessage("assistant", "Let me check.")])


def test_wire_shapes_of_function_items() -> None:
    call = Item.function_call("f1", "call_1", "get_weather", '{"city": "Paris"}').to_wire()
    assert call == {"id": "f1", "object": "realtime.item", "type": "function_call", "status": "completed",
                    "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    output = Item.function_call_output("o1", "call_1", "17").to_wire()
    assert output["type"] == "function_call_output" and output["output"] == "17" and "role" not in output


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "function_call_output", "output": "x"}, "item.call_id"),
    ({"type": "function_call_output", "call_id": "c"}, "item.output"),
    ({"type": "function_call", "call_id": "c", "name": "f"}, "item.arguments"),
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}, "item.arguments"),
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}, "item.arguments"),
    ({"type": "function_call", "call_id": "c", "name": "no spaces", "arguments": "{}"}, "item.name"),
    ({"type": "message", "content": [{"type": "input_text", "text": "hi"}]}, "item.role"),
])
def test_item_create_names_what_is_missing_or_wrong(item: dict[str, object], param: str) -> None:
    with pytest.raises(ProtocolError) as err:
        ev.parse_client_event(json.dumps({"type": "conversation.item.create", "event_id": "e1", "item": item}))
    assert err.value.param == param and err.value.event_id == "e1"


def test_session_tools_and_tool_choice_parse() -> None:
    event = ev.parse_client_event(json.dumps({"type": "session.update", "session": {
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "get_weather"}}}))
    assert isinstance(event, ev.SessionUpdate) and event.session.tools and event.session.tools[0].name == "get_weather"
    with pytest.raises(ProtocolError) as err:
        ev.parse_client_event(json.dumps({"type": "session.update", "session": {"tool_choice": "sometimes"}}))
    assert err.value.param == "session.tool_choice"


def test_llamacpp_request_fields_for_each_tool_choice() -> None:
    assert tool_fields([], "auto") == {} and tool_fields([WEATHER], "none") == {}
    auto = tool_fields([WEATHER, TIME], "auto")
    assert [t["function"]["name"] for t in auto["tools"]] == ["get_weather", "get_time"]
    assert auto["tool_choice"] == "auto" and auto["chat_template_kwargs"] == {"call_now": False}
    # Never llama.cpp's own "required" (its grammar aborts the process): auto + the template's flag.
    required = tool_fields([WEATHER, TIME], "required")
    assert required["tool_choice"] == "auto" and required["chat_template_kwargs"] == {"call_now": True}
    forced = tool_fields([WEATHER, TIME], "get_time")
    assert [t["function"]["name"] for t in forced["tools"]] == ["get_time"]
    assert forced["chat_template_kwargs"]["call_now"]
    assert TOOLS_TEMPLATE.is_file() and "call_now" in TOOLS_TEMPLATE.read_text()


def test_streamed_pieces_assemble_into_calls_in_order() -> None:
    pieces = ["", ToolCallDelta(0, "call_a", "get_weather", '{"ci'), ToolCallDelta(1, "call_b", "get_time", ""),
              ToolCallDelta(0, None, None, 'ty": "Paris"}'), ToolCallDelta(1, None, None, '{"city": "Oslo"}')]
    calls = assemble_calls(pieces)
    assert [c["id"] for c in calls] == ["call_a", "call_b"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
