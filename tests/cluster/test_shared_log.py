"""The shared event log's guarantees, with two hubs (two "instances") on one real Redis.

Fake engines (the text replies are SlowLlm's), real Redis: what is checked is the numbering, the
resume and the copying of items between instances, which live in voicebot/conversation_feed.py,
voicebot/conversation_hub.py and voicebot/redis_store.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.cluster.support import Redis, start_redis
from tests.session.fakes import fake_engines
from voicebot.config import from_env
from voicebot.conversation_feed import item_from_snapshot
from voicebot.conversation_hub import ConversationHub
from voicebot.conversations import Listener, SharedConversation
from voicebot.redis_store import RedisStore


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Redis]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
async def hubs(redis_server: Redis) -> AsyncIterator[tuple[ConversationHub, ConversationHub]]:
    settings = from_env({}, sse_log_events=50)
    stores = [await RedisStore.connect(redis_server.url, instance_id=name, ttl_s=600, log_events=50)
              for name in ("a", "b")]
    pair = (ConversationHub(settings, fake_engines(), store=stores[0]),
            ConversationHub(settings, fake_engines(), store=stores[1]))
    yield pair
    for hub, store in zip(pair, stores, strict=True):
        await hub.close()
        await store.aclose()


async def drain(listener: Listener, count: int, timeout: float = 5) -> list[int]:
    ids: list[int] = []
    async with asyncio.timeout(timeout):
        while len(ids) < count:
            await listener.wake.wait()
            ids.extend(entry.id for entry in listener.take())
    return ids


async def settled(shared: SharedConversation, last_id: int) -> None:
    async with asyncio.timeout(5):
        while shared.last_event_id < last_id:
            await asyncio.sleep(0.01)


async def test_ids_are_contiguous_and_in_one_order_whoever_publishes(
        hubs: tuple[ConversationHub, ConversationHub]) -> None:
    a, b = hubs
    on_a = await a.new()
    on_b = await b.open(on_a.id)
    reader_a, reader_b = (await on_a.listen(0)).listener, (await on_b.listen(0)).listener
    for i in range(40):
        (on_a if i % 2 else on_b).publish("e", {"n": i})
    ids_a, ids_b = await drain(reader_a, 40), await drain(reader_b, 40)
    assert ids_a == ids_b == list(range(1, 41))


async def test_a_resume_gets_the_backlog_then_live_events_without_gaps_or_repeats(
        hubs: tuple[ConversationHub, ConversationHub]) -> None:
    a, b = hubs
    on_a = await a.new()
    for i in range(10):
        on_a.publish("e", {"n": i})
    await settled(on_a, 10)
    on_b = await b.open(on_a.id)
    sub = await on_b.listen(4)
    assert sub.reset is None and [e.id for e in sub.backlog] == [5, 6, 7, 8, 9, 10]
    for i in range(5):
        on_a.publish("e", {"n": 10 + i})
    assert await drain(sub.listener, 5) == [11, 12, 13, 14, 15]
    assert [json.loads(e.frame.split(b"data: ")[1])["n"] for e in sub.backlog] == [4, 5, 6, 7, 8, 9]


async def test_ids_it_cannot_resume_from_get_a_reset_with_the_history(
        hubs: tuple[ConversationHub, ConversationHub]) -> None:
    a, b = hubs
    on_a = await a.new()
    on_a.post_text("hello from a")
    for i in range(200):  # past --sse-log-events (50): the first ones are trimmed away
        on_a.publish("e", {"n": i})
    await settled(on_a, 150)
    on_b = await b.open(on_a.id)
    await settled(on_b, on_a.last_event_id)
    old = await on_b.listen(1)
    assert old.reset is not None and b'"reason":"too_old"' in old.reset
    assert b"hello from a" in old.reset, "the reset carries the history, from the store"
    future = await on_b.listen(10**6)
    assert future.reset is not None and b'"reason":"invalid_last_event_id"' in future.reset


async def test_items_made_on_one_instance_join_the_other_ones_history(
        hubs: tuple[ConversationHub, ConversationHub]) -> None:
    a, b = hubs
    on_a = await a.new("be brief")
    on_b = await b.open(on_a.id)
    assert on_b.conversation.instructions == "be brief"
    seen: list[tuple[str, str]] = []
    on_b.conversation.subscribe(lambda kind, item: seen.append((kind, item.id)))
    posted = on_a.post_text("what is up")
    async with asyncio.timeout(10):
        while not any(item.role == "assistant" and item.status == "completed" for item in on_b.conversation.items):
            await asyncio.sleep(0.02)
    texts = [(item.role, item.text) for item in on_b.conversation.items]
    assert texts == [(item.role, item.text) for item in on_a.conversation.items]
    assert texts[0] == ("user", "what is up") and texts[1][0] == "assistant" and texts[1][1]
    assert ("added", posted["item_id"]) in seen
    # A third view, loaded afresh from the store, agrees.
    b.sweep()
    third = ConversationHub(from_env({}), fake_engines(), store=b.store)
    fresh = await third.open(on_a.id)
    assert [(i.role, i.text) for i in fresh.conversation.items] == texts
    await third.close()


async def test_a_quiet_conversation_someone_is_on_does_not_expire_in_the_store(redis_server: Redis) -> None:
    settings = from_env({}, conversation_idle_ttl_s=2.0)
    store = await RedisStore.connect(redis_server.url, instance_id="a", ttl_s=2, log_events=50)
    hub = ConversationHub(settings, fake_engines(), store=store)
    try:
        watched, quiet = await hub.new(), await hub.new()
        reader = (await watched.listen(0)).listener
        await asyncio.sleep(3.5)  # past the TTL, with no event on either
        assert await store.load_conversation(watched.id) is not None, "a reader is on it"
        assert await store.load_conversation(quiet.id) is None, "nobody is: expired"
        watched.unsubscribe(reader)
    finally:
        await hub.close()
        await store.aclose()


async def test_a_copy_forgotten_here_is_loaded_again_from_the_store(redis_server: Redis) -> None:
    settings = from_env({}, conversation_idle_ttl_s=5.0)  # the store keeps 600 s
    store = await RedisStore.connect(redis_server.url, instance_id="a", ttl_s=600, log_events=50)
    hub = ConversationHub(settings, fake_engines(), store=store)
    try:
        made = await hub.new("remember me")
        made.conversation.add(item_from_snapshot({"item_id": "item_x", "role": "user", "text": "hi"}))
        made.publish("user.message", {"item_id": "item_x", "text": "hi", "source": "text"})
        await settled(made, 1)
        made.last_active -= 10  # idle past this instance's TTL, before its sweep has come by
        again = await hub.open(made.id)
        assert again is not made
        assert again.conversation.instructions == "remember me"
        assert [(i.role, i.text) for i in again.conversation.items] == [("user", "hi")]
        assert again.last_event_id == 1
    finally:
        await hub.close()
        await store.aclose()
