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
from voicebot.core.types import ChatMessage, Role
from voicebot.errors import ProtocolError

ContentType = Literal["input_text", "input_audio", "output_text", "output_audio"]
Status = Literal["completed", "incomplete", "in_progress"]
ChangeKind = Literal["added", "updated", "deleted", "truncated"]
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

    @property
    def is_audio(self) -> bool:
        return self.content_type in ("input_audio", "output_audio")

    def to_wire(self) -> dict[str, Any]:
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


class Conversation:
    """Ordered items with id lookup; listeners see every change (used by the SSE mirror)."""

    def __init__(self, conversation_id: str, instructions: str | None = None) -> None:
        self.id = conversation_id
        self.instructions = instructions
        self._items: list[Item] = []
        self._listeners: list[Listener] = []
        self._event_listeners: list[EventListener] = []
        self._llm_dropped = 0  # history messages cut from the LLM's view (truncation "auto")

    # --- observation ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def notify(self, kind: ChangeKind, item: Item) -> None:
        for listener in list(self._listeners):
            listener(kind, item)

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
    def last_item_id(self) -> str | None:
        return self._items[-1].id if self._items else None

    def get(self, item_id: str, *, event_id: str | None = None) -> Item:
        for item in self._items:
            if item.id == item_id:
                return item
        raise ProtocolError(f"Item with item_id '{item_id}' does not exist.", code="item_not_found",
                            param="item_id", event_id=event_id)

    def __contains__(self, item_id: object) -> bool:
        return any(item.id == item_id for item in self._items)

    def previous_id(self, item_id: str) -> str | None:
        for i, item in enumerate(self._items):
            if item.id == item_id:
                return self._items[i - 1].id if i > 0 else None
        return None

    # --- changes -------------------------------------------------------------------------------

    def add(self, item: Item, previous_item_id: str | None = None, *, event_id: str | None = None) -> str | None:
        """Insert after ``previous_item_id`` (``"root"`` = first; None = last). Returns the id before it."""
        if item.id in self:
            raise ProtocolError(f"An item with id '{item.id}' already exists.", code="item_id_conflict",
                                param="item.id", event_id=event_id)
        if previous_item_id is None:
            position = len(self._items)
        elif previous_item_id == "root":
            position = 0
        else:
            previous = self.get(previous_item_id, event_id=event_id)
            position = self._items.index(previous) + 1
        self._items.insert(position, item)
        self.notify("added", item)
        return self._items[position - 1].id if position > 0 else None

    def delete(self, item_id: str, *, event_id: str | None = None) -> Item:
        item = self.get(item_id, event_id=event_id)
        self._items.remove(item)
        self.notify("deleted", item)
        return item

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
