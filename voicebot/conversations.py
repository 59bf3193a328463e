"""Conversations shared across transports, and their resumable event streams (the SSE side).

A :class:`SharedConversation` wraps one core :class:`~voicebot.core.conversation.Conversation`.
Every Session on it (a voice session attached with ``/v1/realtime?conversation=ID``, or the
headless text *responder* below) publishes its Realtime server events to the conversation; we
keep only the conversation-level ones (user messages, assistant text, errors — never audio),
number them, and append them to a bounded :class:`EventLog`. Function calls are mirrored too
(``tool.call`` when the model's call is complete, ``tool.output`` when its result is added), so a
text client sees what a voice session's model asked for and got. Listeners (SSE streams) get each
entry through their own bounded queue; a listener that falls too far behind is ended and resumes
from the log with ``Last-Event-ID``, so a slow reader costs memory only up to its bound.

Text replies reuse the voice path exactly: the responder is a Session with
``output_modalities=["text"]`` and no turn detection, and a posted message is
``conversation.item.create`` + ``response.create`` on it. Nothing here generates text itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from voicebot.config import Settings
from voicebot.conversation_feed import StoreFeed, item_from_snapshot
from voicebot.core import events as ev
from voicebot.core.conversation import Conversation, Item
from voicebot.core.sse import EventLog, LogEntry, sse_frame
from voicebot.engines.base import Engines
from voicebot.errors import HttpError
from voicebot.redis_store import RedisStore, StoredEvent, StoreUnavailable
from voicebot.session import Session
from voicebot.session_config import SessionConfig
from voicebot.sink import NullSink

log = logging.getLogger(__name__)

#: How long the responder waits for another reply on the conversation (e.g. a voice reply) to
#: finish before starting its own. Bounded so a lost ``response.done`` cannot wedge text replies.
MAX_WAIT_FOR_IDLE_S = 120.0


def conversation_not_found(conversation_id: str) -> HttpError:
    """The one answer, on every transport, to a conversation id that does not exist."""
    return HttpError(404, f"Conversation '{conversation_id}' does not exist.", "conversation_not_found")


def store_unavailable(exc: StoreUnavailable) -> HttpError:
    return HttpError(503, f"The shared store is unavailable; try again shortly ({exc}).", "store_unavailable",
                     type="server_error")


def _log_entry(event: StoredEvent) -> LogEntry:
    return LogEntry(event.id, event.event, event.data, sse_frame(event.event, event.data, event.id))


#: The events that add or finish an item: with a shared store they carry its snapshot.
ITEM_EVENTS = frozenset({"user.message", "assistant.done", "tool.call", "tool.output"})


def shutdown_frame(reason: str) -> bytes:
    """The last event of every stream when the server shuts down (docs/protocol.md, "The event stream")."""
    return sse_frame("shutdown", {"reason": "server_shutting_down", "message": reason[:1].upper() + reason[1:] + "."})


# --- listeners --------------------------------------------------------------------------------------


class Listener:
    """One SSE reader: a bounded queue of entries and a wake-up event."""

    __slots__ = ("closed", "farewell", "floor", "limit", "overflowed", "pending", "wake")

    def __init__(self, limit: int) -> None:
        self.pending: deque[LogEntry] = deque()
        self.wake = asyncio.Event()
        self.limit = limit
        self.closed = False
        self.overflowed = False
        self.farewell: bytes | None = None  # the last frame of an ended stream (the shutdown event)
        self.floor = 0  # entries up to this id reached the reader another way (the backlog)

    def push(self, entry: LogEntry) -> bool:
        if self.closed:
            return False
        if entry.id <= self.floor:
            return True
        if len(self.pending) >= self.limit:
            # Too slow: end this stream instead of buffering without bound; the client resumes
            # from the log with Last-Event-ID and loses nothing the log still holds.
            self.overflowed = True
            self.close()
            return False
        self.pending.append(entry)
        self.wake.set()
        return True

    def close(self, farewell: bytes | None = None) -> None:
        if not self.closed:
            self.farewell = farewell
        self.closed = True
        self.wake.set()

    def take(self) -> list[LogEntry]:
        entries = list(self.pending)
        self.pending.clear()
        self.wake.clear()
        return entries


@dataclass(frozen=True, slots=True)
class Subscription:
    listener: Listener
    backlog: list[LogEntry]
    reset: bytes | None  # a ready ``reset`` frame when the backlog could not be replayed


# --- Realtime events -> SSE events -----------------------------------------------------------------


def _content(item: dict[str, Any]) -> dict[str, Any]:
    parts = item.get("content") or [{}]
    return parts[0] if parts else {}


def _item_text(item: dict[str, Any]) -> str:
    part = _content(item)
    return str(part.get("text") or part.get("transcript") or "")


def _is_message(item: dict[str, Any]) -> bool:
    kind: str = item.get("type", "message")
    return kind == "message"


def _message_output(output: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A response's message item (a response that only called functions has none)."""
    return next((item for item in output if _is_message(item)), None)


#: What a function item adds to its snapshot, from its wire shape.
_CALL_FIELDS = ("call_id", "name", "arguments", "output")


def item_snapshot(item: Item) -> dict[str, Any]:
    """One history item for ``GET``, ``reset`` and the messages endpoint. ``type`` tells a message
    (``text``) from a function call (``call_id``, ``name``, ``arguments``) and a call's result
    (``call_id``, ``output``)."""
    snapshot = {"item_id": item.id, "type": item.type, "role": item.role, "text": item.text, "status": item.status,
                "source": "voice" if item.is_audio else "text"}
    if item.type != "message":
        wire = item.to_wire()
        snapshot.update((key, wire[key]) for key in _CALL_FIELDS if key in wire)
    return snapshot


# --- one shared conversation -----------------------------------------------------------------------


@dataclass
class _ReplyState:
    """Which responses are running on the conversation (any session), for serialising text replies."""

    active: set[str] = field(default_factory=set)
    visible: dict[str, str] = field(default_factory=dict)  # response_id -> item_id, for in-history replies
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SharedConversation:
    def __init__(self, conversation: Conversation, settings: Settings, engines: Engines) -> None:
        self.conversation = conversation
        self.settings = settings
        self.engines = engines
        self.created_at = int(time.time())
        self.log = EventLog(settings.sse_log_events)
        self.listeners: set[Listener] = set()
        self._replies = _ReplyState()
        self._responder: Session | None = None
        self._runner: asyncio.Task[None] | None = None
        self._want_reply = False
        self._unsubscribe = conversation.subscribe_events(self._on_event)
        self.last_active = time.monotonic()  # the last request, event or listener leaving (idle expiry)
        #: With a shared store (--store redis://…): the log lives there, numbered for every instance.
        self.feed: StoreFeed | None = None

    def share(self, store: RedisStore, last_event_id: int) -> None:
        """Keep the event log in ``store`` from now on (from ``last_event_id``, the newest issued)."""
        self.feed = StoreFeed(store, self.id, last_event_id, self._delivered)

    @property
    def last_event_id(self) -> int:
        return self.feed.last_id if self.feed is not None else self.log.last_id

    @property
    def id(self) -> str:
        return self.conversation.id

    # --- publishing ----------------------------------------------------------------------------

    def touch(self) -> None:
        self.last_active = time.monotonic()

    @property
    def idle(self) -> bool:
        """Nobody listening and no text reply running (voice sessions are the hub's to check)."""
        return not self.listeners and (self._runner is None or self._runner.done())

    def publish(self, event: str, data: dict[str, Any]) -> None:
        self.last_active = time.monotonic()
        if self.feed is not None:  # numbered by the store; delivered here when it comes back
            item_id = data.get("item_id")
            item = (item_snapshot(self.conversation.get(item_id))
                    if event in ITEM_EVENTS and isinstance(item_id, str) and item_id in self.conversation else None)
            self.feed.append(event, data, item)
            return
        self._fan_out(self.log.append(event, data))

    def _fan_out(self, entry: LogEntry) -> None:
        for listener in list(self.listeners):
            if not listener.push(entry):
                self.listeners.discard(listener)

    def _delivered(self, event: StoredEvent) -> None:
        """An entry of the shared log (any instance's): to the readers here; another instance's
        item into the local history, so sessions here see it."""
        self.last_active = time.monotonic()
        if event.item is not None and event.origin != (self.feed.origin if self.feed else None):
            self._apply(event.item)
        self._fan_out(_log_entry(event))

    def _apply(self, snapshot: dict[str, Any]) -> None:
        item_id = snapshot.get("item_id")
        if not isinstance(item_id, str):
            return
        if item_id in self.conversation:
            item = self.conversation.get(item_id)
            if item.type == "message" and snapshot.get("text") is not None:
                item.text = snapshot["text"]
                item.status = snapshot.get("status") or item.status
                self.conversation.notify("updated", item)
            return
        self.conversation.add(item_from_snapshot(snapshot), by="store")

    def _on_event(self, event: ev.ServerEvent) -> None:
        try:
            self._translate(event)
        except Exception:  # a bug here must never break the session that emitted the event
            log.exception("conversation %s: could not mirror %s", self.id, event.get("type"))

    def _translate(self, event: ev.ServerEvent) -> None:
        kind = event.get("type")
        replies = self._replies
        if kind == "response.output_text.delta" or kind == "response.output_audio_transcript.delta":
            if event["response_id"] in replies.visible:
                self.publish("assistant.delta", {"item_id": event["item_id"], "response_id": event["response_id"],
                                                 "delta": event["delta"]})
        elif kind == "conversation.item.added":
            item = event["item"]
            if item.get("type") == "function_call_output":
                self.publish("tool.output", {"item_id": item["id"], "call_id": item.get("call_id"),
                                             "output": item.get("output", "")})
            elif item.get("role") == "user" and _content(item).get("type") == "input_text":
                self.publish("user.message", {"item_id": item["id"], "text": _item_text(item), "source": "text"})
        elif kind == "conversation.item.done":
            item = event["item"]
            text = _item_text(item)
            if item.get("role") == "user" and _content(item).get("type") == "input_audio" and text:
                self.publish("user.message", {"item_id": item["id"], "text": text, "source": "voice"})
        elif kind == "response.created":
            replies.active.add(event["response"]["id"])
            replies.changed.set()
        elif kind == "response.output_item.added":
            item = event["item"]
            # Out-of-band replies are not part of the history; function calls are tool.call, when done.
            if _is_message(item) and item["id"] in self.conversation:
                replies.visible[event["response_id"]] = item["id"]
                self.publish("assistant.started", {
                    "item_id": item["id"], "response_id": event["response_id"],
                    "source": "voice" if _content(item).get("type") == "output_audio" else "text"})
        elif kind == "response.output_item.done":
            item = event["item"]
            if (item.get("type") == "function_call" and item.get("status") == "completed"
                    and item["id"] in self.conversation):
                self.publish("tool.call", {"item_id": item["id"], "response_id": event["response_id"],
                                           "call_id": item.get("call_id"), "name": item.get("name"),
                                           "arguments": item.get("arguments", "")})
        elif kind == "response.done":
            response = event["response"]
            replies.active.discard(response["id"])
            replies.changed.set()
            item_id = replies.visible.pop(response["id"], None)
            if item_id is not None:
                message = _message_output(response.get("output") or [])
                self.publish("assistant.done", {"item_id": item_id, "response_id": response["id"],
                                                "text": _item_text(message) if message is not None else "",
                                                "status": response.get("status")})
        elif kind == "conversation.item.input_audio_transcription.failed":
            self.publish("error", {"code": "transcription_failed", "message": event["error"].get("message", ""),
                                   "item_id": event.get("item_id")})
        elif kind == "error":
            err = event.get("error") or {}
            # Client mistakes on a voice socket belong to that client; server-side failures of the
            # conversation (engine errors) are everyone's business.
            if err.get("type") == "server_error":
                self.publish("error", {"code": err.get("code"), "message": err.get("message")})

    # --- listening -----------------------------------------------------------------------------

    def subscribe(self, last_event_id: int | None) -> Subscription:
        """Register a listener and compute what it missed — atomically (no await in between)."""
        listener = Listener(self.settings.sse_listener_queue)
        backlog = self.log.since(last_event_id) if last_event_id is not None else None
        reset = None
        if backlog is None:
            reset = self._reset_frame(last_event_id, self.log.last_id)
            backlog = []
        self.listeners.add(listener)
        return Subscription(listener, backlog, reset)

    def _reset_frame(self, last_event_id: int | None, newest: int) -> bytes:
        """What a reader gets instead of a replay it cannot have: the whole history, with the newest id."""
        reason = "invalid_last_event_id" if last_event_id is None or last_event_id > newest else "too_old"
        return sse_frame("reset", {"reason": reason, "items": self.snapshot()}, newest)

    async def listen(self, last_event_id: int | None) -> Subscription:
        """:meth:`subscribe`, wherever the log lives. From the shared store: the listener is
        registered first and the backlog read after, so nothing falls between the two; what
        arrives live as well as in the backlog is dropped once (``Listener.floor``)."""
        feed = self.feed
        if feed is None:
            return self.subscribe(last_event_id)
        listener = Listener(self.settings.sse_listener_queue)
        self.listeners.add(listener)
        try:
            backlog = await feed.since(last_event_id) if last_event_id is not None else None
        except StoreUnavailable:
            self.unsubscribe(listener)
            raise
        reset = None
        entries = [_log_entry(e) for e in backlog or []]
        if backlog is None:
            listener.floor = feed.last_id  # the snapshot holds everything up to here
            reset = self._reset_frame(last_event_id, feed.last_id)
        else:
            listener.floor = entries[-1].id if entries else (last_event_id or 0)
        listener.pending = deque(e for e in listener.pending if e.id > listener.floor)
        return Subscription(listener, entries, reset)

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        listener.close()
        self.touch()  # idle from the moment the last reader left, not from its last event

    def sever(self, farewell: bytes | None = None) -> int:
        """End every stream of this conversation, each with ``farewell`` as its last frame (tests
        simulate a dropped connection with none)."""
        listeners, self.listeners = self.listeners, set()
        for listener in listeners:
            listener.close(farewell)
        return len(listeners)

    @property
    def replying(self) -> bool:
        """A reply of this conversation is running (any session's), or a text reply is due."""
        return bool(self._replies.active) or (self._runner is not None and not self._runner.done())

    def snapshot(self) -> list[dict[str, Any]]:
        return [item_snapshot(item) for item in self.conversation.items]

    def to_wire(self, with_items: bool = False) -> dict[str, Any]:
        wire: dict[str, Any] = {"id": self.id, "object": "conversation", "created_at": self.created_at,
                                "instructions": self.conversation.instructions,
                                "last_event_id": self.last_event_id}
        if with_items:
            wire["items"] = self.snapshot()
        return wire

    # --- text replies --------------------------------------------------------------------------

    def _responder_session(self) -> Session:
        if self._responder is None:
            # A headless text session: its events reach the listeners through conversation.publish.
            config = SessionConfig(instructions=self.conversation.instructions or self.settings.instructions,
                                   output_modalities=("text",), transcription=None, vad=None)
            self._responder = Session(self.engines, self.settings, NullSink(), conversation=self.conversation,
                                      config=config)
        return self._responder

    def post_text(self, text: str) -> dict[str, Any]:
        """Add a user text message and make sure a reply to it follows."""
        session = self._responder_session()
        item = session.add_user_text(text)
        self._reply_soon(session)
        return item_snapshot(item)

    def post_function_output(self, call_id: str, output: str) -> dict[str, Any]:
        """Add the result of a function call the model made (on any session of the conversation);
        a reply follows once every call made with it has its result (``ProtocolError`` for a call
        that does not exist or already has one)."""
        session = self._responder_session()
        param = ev.ItemParam(type="function_call_output", call_id=call_id, output=output)
        item = session.create_item(param)
        if self._calls_answered(call_id):
            self._reply_soon(session)
        return item_snapshot(item)

    def _calls_answered(self, call_id: str) -> bool:
        """Every call made together with ``call_id`` has an output. A response's parallel calls
        are consecutive ``function_call`` items: answering the first of two must not start a
        reply that sees the second unanswered."""
        items = self.conversation.items
        at = next((i for i, item in enumerate(items) if item.type == "function_call" and item.call_id == call_id),
                  None)
        if at is None:  # the output's arrival evicted its call (--max-conversation-items): nothing to wait for
            return True
        start, end = at, at + 1
        while start > 0 and items[start - 1].type == "function_call":
            start -= 1
        while end < len(items) and items[end].type == "function_call":
            end += 1
        answered = {item.call_id for item in items if item.type == "function_call_output"}
        return all(call.call_id in answered for call in items[start:end] if call.status == "completed")

    def _reply_soon(self, session: Session) -> None:
        self._want_reply = True
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._reply_loop(session), name=f"{self.id}:replies")

    def _busy(self, session: Session) -> bool:
        return session.turns.reply_active or bool(self._replies.active)

    async def _wait_idle(self, session: Session) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MAX_WAIT_FOR_IDLE_S):
                while self._busy(session):
                    self._replies.changed.clear()
                    await self._replies.changed.wait()

    async def _reply_loop(self, session: Session) -> None:
        # Messages posted while a reply runs are answered together by one reply that sees them all.
        while self._want_reply:
            await self._wait_idle(session)
            self._want_reply = False
            session.create_response()
            await self._wait_idle(session)

    async def close(self) -> None:
        self._unsubscribe()
        if self.feed is not None:
            await self.feed.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._responder is not None:
            await self._responder.close()
        self.sever()
