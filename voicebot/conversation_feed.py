"""A shared conversation's event log when it lives in Redis: how instances see each other's events.

Each instance with a conversation in use (a reader, a voice session, a text reply) holds a
:class:`StoreFeed` for it. Events the instance publishes are appended in order by one writer
task (the store numbers them); one follower task reads the log from the last id it has seen
and delivers *every* entry — this instance's own included — so all instances' readers see the
same events with the same ids in the same order. Entries other instances appended also carry
the item they add or finish; the conversation applies those to its local copy, so a voice
session here hears of a text message posted elsewhere, and its replies see it in the history.

Redis lost while running: the writer keeps its queue (bounded) and retries, the follower
retries from where it was, both with backoff; live voice sessions never wait on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from voicebot.core.conversation import ContentType, Item
from voicebot.core.types import Role
from voicebot.redis_store import BLOCK_MS, RedisStore, StoredEvent, StoreUnavailable

log = logging.getLogger(__name__)

#: Events waiting to be appended while Redis is away; past this the oldest are dropped (logged).
MAX_PENDING = 10_000
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
#: At close, how long the writer may take to append what is still queued.
FLUSH_TIMEOUT_S = 2.0

Pending = tuple[str, dict[str, Any], dict[str, Any] | None]


class StoreFeed:
    def __init__(self, store: RedisStore, conversation_id: str, last_id: int,
                 deliver: Callable[[StoredEvent], None]) -> None:
        self.store = store
        self.conversation_id = conversation_id
        self.last_id = last_id  # the newest event delivered here
        self._deliver = deliver
        self._closed = False
        self._pending: asyncio.Queue[Pending] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write(), name=f"{conversation_id}:store-writer")
        self._follower = loop.create_task(self._follow(), name=f"{conversation_id}:store-follower")

    @property
    def origin(self) -> str:
        return self.store.instance_id

    def append(self, event: str, data: dict[str, Any], item: dict[str, Any] | None) -> None:
        if self._pending.qsize() >= MAX_PENDING:
            self._pending.get_nowait()
            log.error("conversation %s: Redis unreachable for too long, an event was dropped", self.conversation_id)
        self._pending.put_nowait((event, data, item))

    async def since(self, last_id: int) -> list[StoredEvent] | None:
        return await self.store.since(self.conversation_id, last_id)

    async def _write(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            event, data, item = await self._pending.get()
            while True:
                try:
                    await self.store.append(self.conversation_id, event, data, item)
                    backoff = BACKOFF_START_S
                    break
                except StoreUnavailable as exc:  # keep the order: this event first, once Redis is back
                    log.warning("conversation %s: cannot append %s (%s); retrying in %.1f s",
                                self.conversation_id, event, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _follow(self) -> None:
        backoff = BACKOFF_START_S
        while not self._closed:
            try:
                events = await self.store.read_after(self.conversation_id, self.last_id)
                backoff = BACKOFF_START_S
            except StoreUnavailable as exc:
                log.warning("conversation %s: cannot read its log (%s); retrying in %.1f s",
                            self.conversation_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            for event in events:
                if event.id <= self.last_id:
                    continue
                self.last_id = event.id
                try:
                    self._deliver(event)
                except Exception:  # one bad entry must not stop the conversation's feed
                    log.exception("conversation %s: could not deliver event %d", self.conversation_id, event.id)

    async def close(self) -> None:
        """Append what is still queued (briefly), then stop both tasks."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                while not self._pending.empty() and not self._writer.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        self._closed = True
        for task in (self._writer, self._follower):
            task.cancel()
        # A cancel that lands in redis-py's blocking read can be absorbed there (seen with two
        # followers of one conversation on one client): the flag then ends the loop once the
        # read returns, at most one BLOCK_MS later.
        _done, pending = await asyncio.wait((self._writer, self._follower), timeout=BLOCK_MS / 1000 + 1)
        if pending:
            log.error("conversation %s: the store feed did not stop", self.conversation_id)


_CONTENT: dict[tuple[str, str], ContentType] = {
    ("user", "voice"): "input_audio", ("user", "text"): "input_text",
    ("assistant", "voice"): "output_audio", ("assistant", "text"): "output_text",
}


def item_from_snapshot(snapshot: dict[str, Any]) -> Item:
    """An item another instance made, from its snapshot (``conversations.item_snapshot``): enough
    for the history and the API (the audio itself never leaves the instance that heard it)."""
    kind = snapshot.get("type", "message")
    item_id = str(snapshot["item_id"])
    if kind == "function_call":
        return Item.function_call(item_id, snapshot.get("call_id") or "", snapshot.get("name") or "",
                                  snapshot.get("arguments") or "", status=snapshot.get("status") or "completed")
    if kind == "function_call_output":
        return Item.function_call_output(item_id, snapshot.get("call_id") or "", snapshot.get("output") or "")
    raw_role = snapshot.get("role")
    role: Role = raw_role if raw_role in ("user", "assistant", "system") else "user"
    content = _CONTENT.get((role, snapshot.get("source") or "text"), "input_text")
    return Item(item_id, role, content, text=snapshot.get("text"), status=snapshot.get("status") or "completed")
