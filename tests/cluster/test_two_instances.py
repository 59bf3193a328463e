"""Two voicebot instances sharing one Redis, behind a real nginx (round robin): one service.

The instances run the embedded models (a text reply is real generation); the tests reach them
directly when a test needs to know which instance serves a request, and through nginx where a
client would. The instance-killing test runs last: it takes B away for good.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.cluster.support import Nginx, Redis, start_nginx, start_redis
from tests.conftest import API_KEY, ServerProcess, scaled, start_server, stop_server
from tests.e2e.sse_support import SseEvent, sse_events
from tests.prompts import LONG_ANSWERS

pytestmark = pytest.mark.e2e

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Redis]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def instances(redis_server: Redis) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # Greedy decoding: the replies' content is checked ("blue"), and at the default temperature the
    # 1.5B model once called a clear sky "White." (CI) — which says nothing about the instances.
    common = ("--api-key", API_KEY, "--store", redis_server.url, "--temperature", "0")
    a = start_server(*common)
    b = start_server(*common)
    yield a, b
    for server in (a, b):
        stop_server(server)


@pytest.fixture(scope="module")
def nginx(instances: tuple[ServerProcess, ServerProcess]) -> Iterator[Nginx]:
    proxy = start_nginx([server.port for server in instances])
    yield proxy
    proxy.stop()


async def create(base: str, instructions: str | None = None) -> str:
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        response = await http.post(f"{base}/v1/conversations", headers=HEADERS,
                                   json={"instructions": instructions} if instructions else {})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


async def post(base: str, conversation_id: str, text: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        response = await http.post(f"{base}/v1/conversations/{conversation_id}/messages", headers=HEADERS,
                                   json={"text": text})
        assert response.status_code == 202, response.text
        return dict(response.json())


async def events(base: str, conversation_id: str, last_event_id: int | None = None) -> AsyncIterator[SseEvent]:
    headers = dict(HEADERS)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with (httpx.AsyncClient(timeout=httpx.Timeout(scaled(10), read=scaled(60))) as http,
                http.stream("GET", f"{base}/v1/conversations/{conversation_id}/events", headers=headers) as response):
        assert response.status_code == 200, await response.aread()
        async for event in sse_events(response):
            if event.event is not None:
                yield event


async def test_text_posted_on_a_reaches_a_voice_session_on_b(instances: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = instances
    conversation_id = await create(a.http, "Answer in one short sentence.")
    url = f"{b.ws}/v1/realtime?conversation={conversation_id}"
    async with websockets.connect(url, additional_headers=HEADERS) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        posted = await post(a.http, conversation_id, "What colour is the sky on a clear day?")
        item_id = posted["item"]["item_id"]
        added: list[dict[str, Any]] = []
        async with asyncio.timeout(scaled(60)):
            while not any(e["item"]["role"] == "assistant" and e["item"]["status"] == "completed" for e in added):
                event = json.loads(await ws.recv())
                if event["type"] == "conversation.item.added":
                    added.append(event)
    user = next(e["item"] for e in added if e["item"]["id"] == item_id)
    assert user["content"][0]["text"] == "What colour is the sky on a clear day?"
    reply = next(e["item"] for e in added if e["item"]["role"] == "assistant")
    assert "blue" in reply["content"][0]["text"].lower(), reply
    # B's own history has both, in order: its replies would see them.
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        on_b = (await http.get(f"{b.http}/v1/conversations/{conversation_id}", headers=HEADERS)).json()
        on_a = (await http.get(f"{a.http}/v1/conversations/{conversation_id}", headers=HEADERS)).json()
    assert [i["item_id"] for i in on_b["items"]] == [i["item_id"] for i in on_a["items"]]
    assert [i["text"] for i in on_b["items"]] == [i["text"] for i in on_a["items"]]
    assert on_a["last_event_id"] == on_b["last_event_id"] > 0


async def test_a_conversation_made_on_one_instance_is_readable_and_writable_through_nginx(
        instances: tuple[ServerProcess, ServerProcess], nginx: Nginx) -> None:
    conversation_id = await create(nginx.http)
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        seen = set()
        for _ in range(4):  # round robin: both instances answer, the same conversation
            response = await http.get(f"{nginx.http}/v1/conversations/{conversation_id}", headers=HEADERS)
            assert response.status_code == 200, response.text
            seen.add(response.json()["id"])
        assert seen == {conversation_id}
        for server in instances:
            direct = await http.get(f"{server.http}/v1/conversations/{conversation_id}", headers=HEADERS)
            assert direct.status_code == 200
        missing = await http.get(f"{nginx.http}/v1/conversations/conv_doesnotexist", headers=HEADERS)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "conversation_not_found"


async def test_a_token_minted_on_a_opens_a_session_on_b(instances: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = instances
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        secret = (await http.post(f"{a.http}/v1/realtime/client_secrets", headers=HEADERS, json={})).json()
    token = secret["value"]
    async with websockets.connect(f"{b.ws}/v1/realtime", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{b.ws}/v1/realtime", additional_headers={"Authorization": "Bearer ek_nope"}):
            pass
    assert refused.value.response.status_code == 401
    # A conversation-scoped EventSource token from B reads that conversation's events on A.
    conversation_id = await create(b.http)
    async with httpx.AsyncClient(timeout=scaled(10)) as http:
        scoped = (await http.post(f"{b.http}/v1/conversations/{conversation_id}/token", headers=HEADERS)).json()
        async with http.stream("GET", f"{a.http}/v1/conversations/{conversation_id}/events",
                               params={"token": scoped["token"]}) as response:
            assert response.status_code == 200


async def test_event_ids_stay_contiguous_when_both_instances_publish(
        instances: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = instances
    conversation_id = await create(a.http, "Reply with one word.")
    collected: list[SseEvent] = []

    async def read() -> None:
        async for event in events(b.http, conversation_id):
            collected.append(event)
            if sum(e.event == "assistant.done" for e in collected) == 2:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    await post(a.http, conversation_id, "Say yes.")
    await post(b.http, conversation_id, "Say no.")
    async with asyncio.timeout(scaled(90)):
        await reader
    ids = [int(e.id or 0) for e in collected]
    assert ids == list(range(1, len(ids) + 1)), ids
    messages = [e.json()["text"] for e in collected if e.event == "user.message"]
    assert sorted(messages) == ["Say no.", "Say yes."]


async def test_a_reader_on_a_killed_instance_resumes_through_nginx_with_nothing_lost(
        instances: tuple[ServerProcess, ServerProcess], nginx: Nginx) -> None:
    """Last in this module: B stays dead afterwards."""
    a, b = instances
    conversation_id = await create(a.http, LONG_ANSWERS)
    first: list[SseEvent] = []

    async def read_until_killed() -> None:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async for event in events(b.http, conversation_id):
                first.append(event)
                if sum(e.event == "assistant.delta" for e in first) == 5:
                    b.process.send_signal(signal.SIGKILL)  # mid-reply: the reply itself runs on A

    reader = asyncio.create_task(read_until_killed())
    await asyncio.sleep(0.5)
    await post(a.http, conversation_id, "Tell me about the sea.")
    async with asyncio.timeout(scaled(60)):
        await reader
    b.process.wait(timeout=10)
    last_id = int(first[-1].id or 0)
    rest: list[SseEvent] = []
    async with asyncio.timeout(scaled(120)):
        async for event in events(nginx.http, conversation_id, last_event_id=last_id):
            rest.append(event)
            if event.event == "assistant.done":
                break
    assert rest[0].event != "reset", rest[0].data
    ids = [int(e.id or 0) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1)), ids  # contiguous, nothing twice
    deltas = "".join(e.json()["delta"] for e in first + rest if e.event == "assistant.delta")
    done = rest[-1].json()
    assert done["status"] == "completed"
    assert deltas.strip() == done["text"] and len(done["text"].split()) > 20
