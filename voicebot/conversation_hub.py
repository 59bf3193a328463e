"""Every shared conversation of the process: the registry transports look conversations up in.

With a shared store (``--store redis://…``) a conversation made on any instance can be opened
on this one: :meth:`ConversationHub.open` loads its copy from the store (items and the newest
event id, in one transaction) and follows its log from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection

from voicebot.config import Settings
from voicebot.conversation_feed import item_from_snapshot
from voicebot.conversations import (
    SharedConversation,
    conversation_not_found,
    shutdown_frame,
    store_unavailable,
)
from voicebot.core import events as ev
from voicebot.core.conversation import Conversation
from voicebot.engines.base import Engines
from voicebot.errors import HttpError
from voicebot.redis_store import RedisStore, StoreUnavailable

log = logging.getLogger(__name__)


class ConversationHub:
    """Every shared conversation of the process: created over HTTP, attached to by voice sessions.

    A conversation nobody has used for ``--conversation-idle-ttl-s`` — no request, no event, no
    event stream open, no voice session on it, no reply running — is forgotten: by a sweep the
    hub runs every quarter of the TTL (and at once when a create finds the hub full), and a
    request for it answers 404 even before the sweep comes. So ``--max-conversations`` bounds
    the conversations in use, not every conversation ever created.
    """

    def __init__(self, settings: Settings, engines: Engines,
                 in_use: Callable[[], Collection[str]] = frozenset, store: RedisStore | None = None) -> None:
        self.settings = settings
        self.engines = engines
        #: --store redis://…: conversations live there, and this hub keeps a copy of those in use
        #: here (forgotten when idle, like any conversation: the store keeps them).
        self.store = store
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
        return self._register(ev.new_id("conv"), instructions)

    def _register(self, conversation_id: str, instructions: str | None) -> SharedConversation:
        conversation = Conversation(conversation_id, instructions, max_items=self.settings.max_conversation_items,
                                    max_bytes=self.settings.max_conversation_bytes)
        shared = SharedConversation(conversation, self.settings, self.engines)
        self._conversations[conversation_id] = shared
        self._start_sweeper()
        return shared

    async def new(self, instructions: str | None = None) -> SharedConversation:
        """:meth:`create`, and with a shared store, registered there (503 ``store_unavailable``)."""
        shared = self.create(instructions)
        if self.store is not None:
            try:
                await self.store.create_conversation(shared.id, instructions, shared.created_at)
            except StoreUnavailable as exc:
                self._forget(shared)
                raise store_unavailable(exc) from None
            shared.share(self.store, 0)
        return shared

    async def open(self, conversation_id: str) -> SharedConversation:
        """:meth:`get`, and with a shared store, a conversation made on another instance: its copy
        here, loaded from the store (404 if the store has never heard of it either). A copy here
        that expired is loaded afresh: the store may still have the conversation."""
        if self.store is None:
            return self.get(conversation_id)
        local = self._conversations.get(conversation_id)
        if local is not None:
            if not self._expired(local, time.monotonic(), None):
                local.touch()
                return local
            self._forget(local)
        try:
            stored = await self.store.load_conversation(conversation_id)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if stored is None:
            raise conversation_not_found(conversation_id)
        if conversation_id in self._conversations:  # another request loaded it meanwhile
            return self.get(conversation_id)
        shared = self._register(conversation_id, stored.instructions)
        for snapshot in stored.items:
            shared.conversation.add(item_from_snapshot(snapshot), by="store")
        shared.created_at = stored.created_at
        shared.share(self.store, stored.last_event_id)
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
        """Shutdown: end every event stream with a last ``shutdown`` event. It has no ``id`` (it is
        no event of the conversation): with a shared store the reader resumes on another instance
        from its last id; without one the conversation ends with this process."""
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
                await self._keep_shared_alive()
            except Exception:  # a bug here must not end expiry for the life of the process
                log.exception("conversation sweep failed")

    async def _keep_shared_alive(self) -> None:
        """The store expires a conversation --conversation-idle-ttl-s after its last event; one a
        reader or a voice session here is on, however quiet, stays (the sweep runs 4x per TTL)."""
        if self.store is None:
            return
        in_use = set(self.in_use())
        for shared in list(self._conversations.values()):
            if shared.id in in_use or not shared.idle:
                with contextlib.suppress(StoreUnavailable):  # the feed logs the outage
                    await self.store.touch(shared.id)

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
