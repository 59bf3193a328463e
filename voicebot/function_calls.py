"""A response's function calls: the ``function_call`` output items the model makes, as it streams them.

The LLM streams a call in pieces (:class:`ToolCallDelta`); each new call becomes a
``function_call`` item (``response.output_item.added``, and ``conversation.item.added`` when the
response writes to the conversation), its argument pieces ``response.function_call_arguments.delta``
events, and when the response ends, ``.done`` with the whole arguments, ``response.output_item.done``
and ``conversation.item.done``. The client runs the function and answers with a
``function_call_output`` item; the next response reads both from the history.

Arguments are checked at the end: a remote model that wrote invalid JSON, or called a function
that was never declared, fails the response (``llm_failed``) instead of handing the client a call
it cannot run. The embedded model cannot do either: llama.cpp's grammar holds its calls to the
declared tools and their schemas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from voicebot.core import events as ev
from voicebot.core import safe_json
from voicebot.core.conversation import Conversation, Item
from voicebot.core.types import Tool, ToolCallDelta
from voicebot.engines.faults import LLM_FAILED
from voicebot.errors import EngineError, ProtocolError


@dataclass
class FunctionCalls:
    """The calls of one response, in the order the model made them."""

    response_id: str
    tools: Sequence[Tool]
    conversation: Conversation | None  # None: an out-of-band response (conversation "none")
    emit: Callable[[ev.ServerEvent], None]
    #: The response's output items so far (message and calls), shared with the response: a new
    #: item's ``output_index`` is its place in this list.
    outputs: list[Item]
    after: Callable[[], str | None]  # the conversation item a new call goes after
    by: str | None = None  # the session whose response makes the calls (Conversation.add's ``by``)
    by_index: dict[int, Item] = field(default_factory=dict)

    @property
    def items(self) -> list[Item]:
        return list(self.by_index.values())

    def on_delta(self, delta: ToolCallDelta) -> None:
        item = self.by_index.get(delta.index)
        if item is None:
            item = self._start(delta)
        if delta.arguments:
            item.arguments = (item.arguments or "") + delta.arguments
            self.emit(ev.server_event("response.function_call_arguments.delta", response_id=self.response_id,
                                      item_id=item.id, output_index=self.outputs.index(item),
                                      call_id=item.call_id, delta=delta.arguments))

    def _start(self, delta: ToolCallDelta) -> Item:
        name = delta.name or ""
        if name not in {t.name for t in self.tools}:
            raise EngineError(f"the LLM called the function '{name}', which is not among the tools",
                              code=LLM_FAILED)
        item = Item.function_call(ev.new_id("item"), delta.call_id or ev.new_id("call"), name,
                                  status="in_progress")
        self.by_index[delta.index] = item
        if self.conversation is not None:
            previous = self.conversation.add(item, self.after(), by=self.by)
            self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        self.outputs.append(item)
        self.emit(ev.server_event("response.output_item.added", response_id=self.response_id,
                                  output_index=self.outputs.index(item), item=item.to_wire()))
        return item

    def check(self) -> None:
        """Before a completed response is reported: every call's arguments are one JSON object."""
        for item in self.by_index.values():
            try:
                ev.arguments_object(item.arguments or "", param="arguments", event_id=None)
            except ProtocolError as exc:
                raise EngineError(f"the LLM's call of '{item.name}' has invalid arguments: {exc}",
                                  code=LLM_FAILED) from None

    def finish(self, completed: bool) -> None:
        """The done events of every call; a call cut off (cancelled, failed) stays ``incomplete``
        and the history leaves it out (core/conversation.py)."""
        for item in self.by_index.values():
            item.status = "completed" if completed else "incomplete"
            index = self.outputs.index(item)
            if completed:
                self.emit(ev.server_event("response.function_call_arguments.done", response_id=self.response_id,
                                          item_id=item.id, output_index=index, call_id=item.call_id,
                                          name=item.name, arguments=item.arguments or ""))
            self.emit(ev.server_event("response.output_item.done", response_id=self.response_id,
                                      output_index=index, item=item.to_wire()))
            if self.conversation is not None and item.id in self.conversation:
                self.conversation.notify("updated", item)
                self.emit(ev.server_event("conversation.item.done",
                                          previous_item_id=self.conversation.previous_id(item.id),
                                          item=item.to_wire()))


def client_function_item(param: ev.ItemParam, item_id: str, conversation: Conversation, tools: Sequence[Tool],
                         event_id: str | None) -> Item:
    """A ``function_call`` (a client replaying history) or the ``function_call_output`` that
    answers one: the call must exist (or, for a new call, not yet), the function be declared."""
    call_id = param.call_id or ""
    calls = [i for i in conversation.items if i.type == "function_call" and i.call_id == call_id]
    if param.type == "function_call_output":
        output = param.output or ""
        if not calls:
            raise ProtocolError(f"No function call with call_id '{call_id}' in the conversation.",
                                code="invalid_value", param="item.call_id", event_id=event_id)
        if any(i.type == "function_call_output" and i.call_id == call_id for i in conversation.items):
            raise ProtocolError(f"The call '{call_id}' already has an output.", code="invalid_value",
                                param="item.call_id", event_id=event_id)
        if output.lstrip()[:1] in ("{", "["):  # meant as JSON: it must be JSON (plain text is fine too)
            try:
                safe_json.loads(output)
            except safe_json.JsonError as exc:
                raise ProtocolError(f"'item.output' looks like JSON but is not valid JSON: {exc}.",
                                    code="invalid_value", param="item.output", event_id=event_id) from None
        return Item.function_call_output(item_id, call_id, output)
    if calls:
        raise ProtocolError(f"A function call with call_id '{call_id}' already exists.", code="invalid_value",
                            param="item.call_id", event_id=event_id)
    if param.name not in {t.name for t in tools}:
        raise ProtocolError(f"The function '{param.name}' is not among the tools.",
                            code="invalid_value", param="item.name", event_id=event_id)
    return Item.function_call(item_id, call_id, param.name or "", param.arguments or "{}")
