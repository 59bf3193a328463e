"""Conversation history: ordered items, and cutting an assistant reply to what was actually heard.

Sans-I/O. An assistant audio item remembers which text was spoken over which span of its audio
(one :class:`Segment` per synthesized clause), so truncating to ``audio_end_ms`` — on barge-in,
from a client's ``conversation.item.truncate`` or from telephony marks — keeps exactly the words
the listener heard, and can be redone with a later, more precise cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from voicebot.core.context import AUTO_RETENTION_RATIO, fit
from voicebot.core.types import ChatMessage, Role, ToolCall
from voicebot.errors import ProtocolError

ContentType = Literal["input_text", "input_audio", "output_text", "output_audio"]
ItemType = Literal["message", "function_call", "function_call_output"]
Status = Literal["completed", "incomplete", "in_progress"]
ChangeKind = Literal["added", "updated", "deleted", "truncated", "evicted"]
Listener = Callable[[ChangeKind, "Item"], None]
EventListener = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class Segment:
    """A clause of assistant speech and where it sits in the item's audio."""

    text: str
    start_ms: float
    end_ms: float


@dataclass(slots=True)
class Item:
    id: str
    role: Role
    content_type: ContentType
    text: str | None = None  # text, or the transcript of audio (None while not yet transcribed)
    status: Status = "completed"
    audio_ms: float = 0.0  # audio content length (input) or audio sent so far (output)
    heard_ms: float | None = None  # set by truncation: how much of the sent audio was heard
    # The LLM's own words for a completed reply. Feeding them back verbatim (rather than the
    # cleaned, re-joined transcript) keeps llama.cpp's prompt cache valid across turns: only the
    # new user turn is evaluated, not the whole previous answer again.
    llm_text: str | None = None
    segments: list[Segment] = field(default_factory=list)
    #: A function call the assistant made (``call_id``, ``name``, ``arguments``: JSON text), or a
    #: call's result the client sent back (``call_id``, ``output``); ``message`` otherwise.
    type: ItemType = "message"
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None

    @classmethod
    def function_call(cls, item_id: str, call_id: str, name: str, arguments: str = "",
                      status: Status = "completed") -> Item:
        return cls(item_id, "assistant", "output_text", status=status, type="function_call", call_id=call_id,
                   name=name, arguments=arguments)

    @classmethod
    def function_call_output(cls, item_id: str, call_id: str, output: str) -> Item:
        return cls(item_id, "tool", "input_text", type="function_call_output", call_id=call_id, output=output)

    @property
    def is_audio(self) -> bool:
        return self.type == "message" and self.content_type in ("input_audio", "output_audio")

    def to_wire(self) -> dict[str, Any]:
        if self.type == "function_call":
            return {"id": self.id, "object": "realtime.item", "type": "function_call", "status": self.status,
                    "call_id": self.call_id, "name": self.name, "arguments": self.arguments or ""}
        if self.type == "function_call_output":
            return {"id": self.id, "object": "realtime.item", "type": "function_call_output",
                    "status": self.status, "call_id": self.call_id, "output": self.output or ""}
        key = "transcript" if self.is_audio else "text"
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "status": self.status,
            "content": [{"type": self.content_type, key: self.text}],
        }

    def append_segment(self, text: str, duration_ms: float) -> None:
        start = self.segments[-1].end_ms if self.segments else 0.0
        self.segments.append(Segment(text, start, start + duration_ms))

    @property
    def spoken_ms(self) -> float:
        return self.segments[-1].end_ms if self.segments else 0.0


def heard_text(segments: list[Segment], audio_end_ms: float) -> str:
    """The words of ``segments`` heard by ``audio_end_ms``.

    Inside a partly heard clause, words are assumed to be spread evenly by character count:
    speech rate is close to constant within one clause, and a word boundary error of one word is
    far better than keeping a whole unheard sentence in the history.
    """
    words: list[str] = []
    for seg in segments:
        if seg.end_ms <= audio_end_ms:
            words.extend(seg.text.split())
            continue
        if seg.start_ms >= audio_end_ms:
            break
        fraction = (audio_end_ms - seg.start_ms) / max(seg.end_ms - seg.start_ms, 1e-6)
        seg_words = seg.text.split()
        total = sum(len(w) + 1 for w in seg_words)
        budget = fraction * total
        used = 0
        for word in seg_words:
            used += len(word) + 1
            # A word counts as heard once most of it has been played.
            if used - len(word) / 2 > budget:
                break
            words.append(word)
        break
    return " ".join(words)


def _add_call(messages: list[ChatMessage], item: Item) -> None:
    """A call joins the assistant message it belongs to: the words said before it, or the calls
    made with it (parallel calls are one assistant message with several ``tool_calls``)."""
    call = ToolCall(item.call_id or item.id, item.name or "", item.arguments or "{}")
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = ChatMessage("assistant", last.content, (*last.tool_calls, call))
    else:
        messages.append(ChatMessage("assistant", "", (call,)))


def text_bytes(item: Item) -> int:
    """What an item's text costs against ``max_bytes``: its text and the LLM's own words (UTF-8)."""
    return sum(len((part or "").encode()) for part in (item.text, item.llm_text, item.arguments, item.output))


class Conversation:
    """Ordered items with O(1) lookup by id; listeners see every change (used by the SSE mirror).

    ``max_items`` / ``max_bytes`` (0 = no cap) bound a conversation that goes on for hours: past
    either, the oldest items leave — never a ``system`` item, one still in progress, or the one
    just changed — and listeners see an ``evicted`` change (sessions tell their clients
    ``conversation.item.deleted``). One item larger than ``max_bytes`` on its own is refused
    (``item_too_large``), since no eviction could make room for it.
    """

    def __init__(self, conversation_id: str, instructions: str | None = None, *,
                 max_items: int = 0, max_bytes: int = 0) -> None:
        self.id = conversation_id
        self.instructions = instructions
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        self._bytes: dict[str, int] = {}  # item id -> its text_bytes when last measured
        self.total_bytes = 0
        self._listeners: list[Listener] = []
        self._event_listeners: list[EventListener] = []
        self._llm_dropped = 0  # history messages cut from the LLM's view (truncation "auto")
        #: Who made the change listeners are being told about (``add(by=…)``: a session's id, or
        #: None): a session tells its client about items others added, not about its own.
        self.changed_by: str | None = None

    # --- observation ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def notify(self, kind: ChangeKind, item: Item) -> None:
        if kind in ("updated", "truncated") and item.id in self._by_id:
            self._measure(item)
        for listener in list(self._listeners):
            listener(kind, item)
        if kind == "updated":
            self._evict(keep=item)

    def subscribe_events(self, listener: EventListener) -> Callable[[], None]:
        """See every server event of every session on this conversation (the SSE hub's feed)."""
        self._event_listeners.append(listener)
        return lambda: self._event_listeners.remove(listener) if listener in self._event_listeners else None

    def publish(self, event: dict[str, Any]) -> None:
        for listener in self._event_listeners:
            listener(event)

    # --- access --------------------------------------------------------------------------------

    @property
    def items(self) -> tuple[Item, ...]:
        return tuple(self._items)

    @property
    def item_count(self) -> int:  # not __len__: an empty conversation must stay truthy (``conversation or …``)
        return len(self._by_id)

    @property
    def last_item_id(self) -> str | None:
        return self._items[-1].id if self._items else None

    def get(self, item_id: str, *, event_id: str | None = None) -> Item:
        item = self._by_id.get(item_id)
        if item is None:
            raise ProtocolError(f"Item with item_id '{item_id}' does not exist.", code="item_not_found",
                                param="item_id", event_id=event_id)
        return item

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def _position(self, item: Item) -> int:
        # From the end: the items asked about (a reply, the turn before it) are nearly always the newest.
        for i in range(len(self._items) - 1, -1, -1):
            if self._items[i] is item:
                return i
        raise ValueError(item.id)

    def previous_id(self, item_id: str) -> str | None:
        item = self._by_id.get(item_id)
        if item is None:
            return None
        i = self._position(item)
        return self._items[i - 1].id if i > 0 else None

    # --- changes -------------------------------------------------------------------------------

    def add(self, item: Item, previous_item_id: str | None = None, *, event_id: str | None = None,
            by: str | None = None) -> str | None:
        """Insert after ``previous_item_id`` (``"root"`` = first; None = last). Returns the id before it.

        ``by``: who adds it (a session's id), as :attr:`changed_by` while listeners are told."""
        if item.id in self._by_id:
            raise ProtocolError(f"An item with id '{item.id}' already exists.", code="item_id_conflict",
                                param="item.id", event_id=event_id)
        size = text_bytes(item)
        if self.max_bytes and size > self.max_bytes:
            raise ProtocolError(f"The item's text is {size} bytes; a conversation keeps at most {self.max_bytes}.",
                                code="item_too_large", param="item.content", event_id=event_id)
        if previous_item_id is None:
            position = len(self._items)
        elif previous_item_id == "root":
            position = 0
        else:
            position = self._position(self.get(previous_item_id, event_id=event_id)) + 1
        self._items.insert(position, item)
        self._by_id[item.id] = item
        self._bytes[item.id] = size
        self.total_bytes += size
        previous = self._items[position - 1].id if position > 0 else None
        self.changed_by = by
        try:
            self.notify("added", item)
        finally:
            self.changed_by = None
        self._evict(keep=item)
        return previous

    def delete(self, item_id: str, *, event_id: str | None = None) -> Item:
        item = self.get(item_id, event_id=event_id)
        del self._items[self._position(item)]
        self._forget(item)
        self.notify("deleted", item)
        return item

    def _forget(self, item: Item) -> None:
        del self._by_id[item.id]
        self.total_bytes -= self._bytes.pop(item.id, 0)

    def _measure(self, item: Item) -> None:
        size = text_bytes(item)
        self.total_bytes += size - self._bytes.get(item.id, 0)
        self._bytes[item.id] = size

    def _over(self) -> bool:
        return bool((self.max_items and len(self._by_id) > self.max_items)
                    or (self.max_bytes and self.total_bytes > self.max_bytes))

    def _evict(self, keep: Item) -> None:
        """The oldest items out until within the caps (see the class docstring for which stay)."""
        if not self._over():
            return
        evicted: list[Item] = []
        kept: list[Item] = []
        in_view = 0  # text-bearing items passed: where each one sat in the LLM's view
        cut_from_view = 0  # evicted items that the LLM's view had already cut (truncation "auto")
        for index, item in enumerate(self._items):
            if not self._over():
                kept.extend(self._items[index:])
                break
            has_text = bool((item.llm_text or item.text or "").strip())
            if item is keep or item.role == "system" or item.status == "in_progress":
                kept.append(item)
            else:
                evicted.append(item)
                self._forget(item)  # the caps are checked against what is left
                cut_from_view += has_text and in_view < self._llm_dropped
            in_view += has_text
        self._items = kept
        # The LLM's view keeps its cut where it was relative to the items that are still there.
        self._llm_dropped = max(0, self._llm_dropped - cut_from_view)
        for item in evicted:
            self.notify("evicted", item)

    def truncate(self, item_id: str, audio_end_ms: float, *, event_id: str | None = None) -> Item:
        """Cut an assistant audio item's transcript to what was heard by ``audio_end_ms``."""
        item = self.get(item_id, event_id=event_id)
        if item.role != "assistant" or item.content_type != "output_audio":
            raise ProtocolError("Only assistant audio items can be truncated.", code="invalid_value",
                                param="item_id", event_id=event_id)
        # Accept any cut within what was actually sent (a client that played nothing sends 0).
        if audio_end_ms > item.audio_ms + 1:
            raise ProtocolError(
                f"audio_end_ms {audio_end_ms:.0f} is beyond the {item.audio_ms:.0f} ms of audio sent for this item.",
                code="invalid_value", param="audio_end_ms", event_id=event_id,
            )
        item.text = heard_text(item.segments, audio_end_ms)
        item.heard_ms = audio_end_ms
        item.llm_text = None  # the history now holds only what was heard
        self.notify("truncated", item)
        return item

    # --- LLM view ------------------------------------------------------------------------------

    def chat_messages(self, instructions: str, *, before: str | None = None, pending: str | None = None,
                      budget_tokens: int | None = None,
                      retention_ratio: float = AUTO_RETENTION_RATIO) -> list[ChatMessage]:
        """The history as chat messages for the LLM, oldest first, empty turns left out.

        ``before``: only the items before this one (a reply sees what was said before it).
        ``pending``: a user turn not in the history yet, last (a speculative reply's transcript).
        ``budget_tokens``: fit it into this much context, the oldest turns leaving first
        (core/context.py; the cut is kept here so the LLM's prompt cache stays valid).
        """
        messages = [ChatMessage("system", instructions)] if instructions else []
        for item in self._items:
            if item.id == before:
                break
            if item.type == "function_call":
                if item.status == "completed":  # a call cut off was never made
                    _add_call(messages, item)
                continue
            if item.type == "function_call_output":
                messages.append(ChatMessage("tool", item.output or "", tool_call_id=item.call_id))
                continue
            text = (item.llm_text or item.text or "").strip()
            if text:
                messages.append(ChatMessage(item.role, text))
        if pending is not None:
            messages.append(ChatMessage("user", pending))
        if budget_tokens is None:
            return messages
        fitted = fit(messages, budget_tokens, self._llm_dropped, retention_ratio)
        self._llm_dropped = fitted.dropped
        return fitted.messages
