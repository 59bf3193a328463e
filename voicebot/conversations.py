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
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.conversation import Conversation, Item
from voicebot.core.sse import EventLog, LogEntry, sse_frame
from voicebot.engines.base import Engines
from voicebot.errors import HttpError
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


def shutdown_frame(reason: str) -> bytes:
    """The last event of every stream when the server shuts down (docs/protocol.md, "The event stream")."""
    return sse_frame("shutdown", {"reason": "server_shutting_down", "message": reason[:1].upper() + reason[1:] + "."})


# --- listeners --------------------------------------------------------------------------------------


class Listener:
    """One SSE reader: a bounded queue of entries and a wake-up event."""

    __slots__ = ("closed", "farewell", "limit", "overflowed", "pending", "wake")

    def __init__(self, limit: int) -> None:
        self.pending: deque[LogEntry] = deque()
        self.wake = asyncio.Event()
        self.limit = limit
        self.closed = False
        self.overflowed = False
        self.farewell: bytes | None = None  # the last frame of an ended stream (the shutdown event)

    def push(self, entry: LogEntry) -> bool:
        if self.closed:
            return False
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

    def publish(self, event: str, data: dict[str, Any]) -> LogEntry:
        self.last_active = time.monotonic()
        entry = self.log.append(event, data)
        for listener in list(self.listeners):
            if not listener.push(entry):
                self.listeners.discard(listener)
        return entry

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
            reason = "invalid_last_event_id" if last_event_id is None or last_event_id > self.log.last_id \
                else "too_old"
            reset = sse_frame("reset", {"reason": reason, "items": self.snapshot()}, self.log.last_id)
            backlog = []
        self.listeners.add(listener)
        return Subscription(listener, backlog, reset)

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
                                "last_event_id": self.log.last_id}
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
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._responder is not None:
            await self._responder.close()
        self.sever()


# --- the registry -----------------------------------------------------------------------------------


class ConversationHub:
    """Every shared conversation of the process: created over HTTP, attached to by voice sessions.

    A conversation nobody has used for ``--conversation-idle-ttl-s`` — no request, no event, no
    event stream open, no voice session on it, no reply running — is forgotten: by a sweep the
    hub runs every quarter of the TTL (and at once when a create finds the hub full), and a
    request for it answers 404 even before the sweep comes. So ``--max-conversations`` bounds
    the conversations in use, not every conversation ever created.
    """

    def __init__(self, settings: Settings, engines: Engines,
                 in_use: Callable[[], Collection[str]] = frozenset) -> None:
        self.settings = settings
        self.engines = engines
        #: The ids of the conversations live voice sessions are on (AppState knows its sessions).
        self.in_use = in_use
        self._conversations: dict[str, SharedConversation] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # expired conversations being closed

    def create(self, instructions: str | None = None) -> SharedConversation:
        if len(self._conversations) >= self.settings.max_conversations:
            self.sweep()
        if len(self._conversations) >= self.settings.max_conversations:
            raise HttpError(429, f"This server holds its maximum of {self.settings.max_conversations} "
                            "conversations.", "too_many_conversations")
        conversation = Conversation(ev.new_id("conv"), instructions, max_items=self.settings.max_conversation_items,
                                    max_bytes=self.settings.max_conversation_bytes)
        shared = SharedConversation(conversation, self.settings, self.engines)
        self._conversations[conversation.id] = shared
        self._start_sweeper()
        return shared

    def get(self, conversation_id: str) -> SharedConversation:
        """The conversation, or the 404 every transport answers for an unknown (or expired) id."""
        shared = self._conversations.get(conversation_id)
        if shared is None or self._expired(shared, time.monotonic(), None):
            if shared is not None:
                self._forget(shared)
            raise conversation_not_found(conversation_id)
        shared.touch()
        return shared

    def __len__(self) -> int:
        return len(self._conversations)

    @property
    def listener_count(self) -> int:
        return sum(len(c.listeners) for c in self._conversations.values())

    @property
    def replying(self) -> bool:
        return any(c.replying for c in self._conversations.values())

    def go_away(self, reason: str) -> None:
        """Shutdown: end every event stream with a last ``shutdown`` event. It has no ``id``: the
        conversations live in this process only, so there is nothing to resume from elsewhere."""
        frame = shutdown_frame(reason)
        for shared in self._conversations.values():
            shared.sever(frame)

    # --- idle expiry ---------------------------------------------------------------------------

    def _expired(self, shared: SharedConversation, now: float, in_use: Collection[str] | None) -> bool:
        ttl = self.settings.conversation_idle_ttl_s
        if ttl <= 0 or not shared.idle or now - shared.last_active < ttl:
            return False
        if shared.id in (self.in_use() if in_use is None else in_use):
            shared.touch()  # a voice session is on it: idle from when it leaves
            return False
        return True

    def sweep(self) -> int:
        """Forget every expired conversation now; returns how many."""
        now = time.monotonic()
        in_use = set(self.in_use())
        expired = [c for c in self._conversations.values() if self._expired(c, now, in_use)]
        for shared in expired:
            self._forget(shared)
        if expired:
            log.info("forgot %d idle conversation(s); %d left", len(expired), len(self._conversations))
        return len(expired)

    def _forget(self, shared: SharedConversation) -> None:
        self._conversations.pop(shared.id, None)
        task = asyncio.get_running_loop().create_task(shared.close(), name=f"{shared.id}:close")
        self._closing.add(task)  # owned here until done; close() awaits the rest
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing an expired conversation failed", exc_info=task.exception())

    def _start_sweeper(self) -> None:
        if self.settings.conversation_idle_ttl_s > 0 and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="conversations:sweep")

    async def _sweep_loop(self) -> None:
        interval = min(60.0, max(0.05, self.settings.conversation_idle_ttl_s / 4))
        while self._conversations:  # nothing to watch: the next create starts it again
            await asyncio.sleep(interval)
            try:
                self.sweep()
            except Exception:  # a bug here must not end expiry for the life of the process
                log.exception("conversation sweep failed")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for shared in list(self._conversations.values()):
            await shared.close()
        self._conversations.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
