"""The conversation HTTP API and its event stream, over real sockets with httpx.

Engines are fakes (the logic under test is the transport's: framing, resume, auth, fan-out); the
real LLM answers over the same path in test_sse_voice_text.py and test_chat_completions.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.sse_support import KEY, SseEvent, auth, sse_events
from tests.session.fakes import SlowLlm
from tests.thread_server import ThreadServer


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer(llm=SlowLlm(delay=0.03), api_keys=(KEY,), sse_heartbeat_s=0.2, sse_retry_ms=250,
                      max_text_bytes=4096) as s:
        yield s


def new_conversation(server: ThreadServer, **body: Any) -> str:
    r = httpx.post(f"{server.http}/v1/conversations", headers=auth(), json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def read_until(response: httpx.Response | AsyncIterator[SseEvent], stop: str = "assistant.done",
                     limit: int | None = None, timeout: float = 20) -> list[SseEvent]:
    events: list[SseEvent] = []
    stream = sse_events(response) if isinstance(response, httpx.Response) else response
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            named = [e for e in events if e.event]
            if event.event == stop or (limit is not None and len(named) >= limit):
                break
    return events


def named(events: list[SseEvent]) -> list[SseEvent]:
    return [e for e in events if e.event]


def reply_text(events: list[SseEvent]) -> str:
    return "".join(e.json()["delta"] for e in events if e.event == "assistant.delta")


async def test_stream_headers_retry_ids_and_heartbeat(server: ThreadServer) -> None:
    cid = new_conversation(server)
    async with (httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client,
                client.stream("GET", f"/v1/conversations/{cid}/events") as response):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        stream = sse_events(response)
        r = await client.post(f"/v1/conversations/{cid}/messages", json={"text": "hello"})
        assert r.status_code == 202, r.text
        events = await read_until(stream)
        assert events[0].retry == 250, "the first frame sets the reconnect delay"
        # After the reply the stream is idle: a comment heartbeat must arrive (0.2 s here).
        started = time.monotonic()
        async with asyncio.timeout(5):
            async for event in stream:
                if event.comments:
                    break
            assert time.monotonic() - started < 2
    got = named(events)
    ids = [int(e.id or 0) for e in got]
    assert all(e.id is not None for e in got), "every event has an id"
    assert ids == sorted(set(ids)) and ids[0] == 1, ids
    assert [e.event for e in got[:2]] == ["user.message", "assistant.started"]
    assert got[0].json() | {"item_id": None} == {"item_id": None, "text": "hello", "source": "text"}
    done = got[-1].json()
    assert done["status"] == "completed"
    assert reply_text(got) == done["text"] == server.llm.reply
    assert all(e.json()["response_id"] == done["response_id"] for e in got[1:])


async def test_resume_after_forced_disconnect_gives_exactly_the_missed_events(server: ThreadServer) -> None:
    cid = new_conversation(server)
    async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
        async with client.stream("GET", f"/v1/conversations/{cid}/events") as response:
            await client.post(f"/v1/conversations/{cid}/messages", json={"text": "tell me"})
            first = named(await read_until(response, limit=5))
        # The connection is gone mid-reply; the reply goes on, the log keeps it.
        last_id = first[-1].id
        assert last_id is not None
        await asyncio.sleep(0.2)
        async with client.stream("GET", f"/v1/conversations/{cid}/events",
                                 headers={"Last-Event-ID": last_id}) as response:
            second = named(await read_until(response))
        # A reader that never dropped: the full log from the start.
        async with client.stream("GET", f"/v1/conversations/{cid}/events") as response:
            full = named(await read_until(response))
    resumed = first + second
    assert [e.id for e in resumed] == [e.id for e in full], "no event lost, none duplicated"
    assert [e.data for e in resumed] == [e.data for e in full]
    assert reply_text(resumed) == full[-1].json()["text"] == server.llm.reply


async def test_query_last_event_id_and_header_precedence(server: ThreadServer) -> None:
    cid = new_conversation(server)
    async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
        await client.post(f"/v1/conversations/{cid}/messages", json={"text": "x"})
        async with client.stream("GET", f"/v1/conversations/{cid}/events") as response:
            full = named(await read_until(response))
        async with client.stream("GET", f"/v1/conversations/{cid}/events?last_event_id=3") as response:
            tail = named(await read_until(response))
        # A reconnecting EventSource keeps its URL (with the old query) and sends the newer header.
        async with client.stream("GET", f"/v1/conversations/{cid}/events?last_event_id=1",
                                 headers={"Last-Event-ID": "5"}) as response:
            tail5 = named(await read_until(response))
    assert [e.id for e in tail] == [e.id for e in full[3:]]
    assert [e.id for e in tail5] == [e.id for e in full[5:]]


@pytest.mark.parametrize("last_id", ["garbage", "-4", "99999", "1e3", "12abc", "0x10"])
async def test_garbage_or_future_last_event_id_gets_a_reset(server: ThreadServer, last_id: str) -> None:
    cid = new_conversation(server)
    async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
        await client.post(f"/v1/conversations/{cid}/messages", json={"text": "first"})
        async with client.stream("GET", f"/v1/conversations/{cid}/events") as response:
            full = named(await read_until(response))
        async with client.stream("GET", f"/v1/conversations/{cid}/events",
                                 headers={"Last-Event-ID": last_id}) as response:
            assert response.status_code == 200
            events = named(await read_until(response, limit=1))
    reset = events[0]
    assert reset.event == "reset" and reset.id == full[-1].id
    body = reset.json()
    assert body["reason"] == "invalid_last_event_id"
    assert [(i["role"], i["text"]) for i in body["items"]] == [("user", "first"), ("assistant", server.llm.reply)]


async def test_too_old_last_event_id_gets_a_reset_then_live_events() -> None:
    with ThreadServer(llm=SlowLlm(delay=0.01), api_keys=(KEY,), sse_log_events=8) as server:
        cid = new_conversation(server)
        async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
            await client.post(f"/v1/conversations/{cid}/messages", json={"text": "one"})
            async with client.stream("GET", f"/v1/conversations/{cid}/events?last_event_id=26") as response:
                await read_until(response)  # wait for the first reply to finish (26 events > 8 kept)
            async with client.stream("GET", f"/v1/conversations/{cid}/events",
                                     headers={"Last-Event-ID": "2"}) as response:
                await client.post(f"/v1/conversations/{cid}/messages", json={"text": "two"})
                events = named(await read_until(response))
    assert events[0].event == "reset" and events[0].json()["reason"] == "too_old"
    items = events[0].json()["items"]
    assert [i["text"] for i in items[:2]] == ["one", server.llm.reply]
    live = events[1:]
    assert [e.event for e in live[:2]] == ["user.message", "assistant.started"]
    assert int(live[0].id or 0) == int(events[0].id or 0) + 1, "live events continue right after the reset"
    assert reply_text(live) == server.llm.reply


async def test_post_stream_with_body_last_event_id(server: ThreadServer) -> None:
    cid = new_conversation(server)
    async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
        await client.post(f"/v1/conversations/{cid}/messages", json={"text": "x"})
        async with client.stream("POST", f"/v1/conversations/{cid}/events", json={}) as response:
            full = named(await read_until(response))
        async with client.stream("POST", f"/v1/conversations/{cid}/events", json={"last_event_id": 20}) as response:
            assert response.status_code == 200
            tail = named(await read_until(response))
    assert [e.id for e in tail] == [e.id for e in full[20:]]


async def test_messages_while_replying_are_answered_after_and_history_is_ordered(server: ThreadServer) -> None:
    cid = new_conversation(server, instructions="Be brief.")
    async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
        async with client.stream("GET", f"/v1/conversations/{cid}/events") as response:
            await client.post(f"/v1/conversations/{cid}/messages", json={"text": "a"})
            await client.post(f"/v1/conversations/{cid}/messages", json={"text": "b"})
            stream = sse_events(response)
            events = named(await read_until(stream))  # the first reply
            events += named(await read_until(stream))  # the follow-up
        history = (await client.get(f"/v1/conversations/{cid}")).json()
    dones = [e.json() for e in events if e.event == "assistant.done"]
    assert [d["status"] for d in dones] == ["completed", "completed"]
    assert history["instructions"] == "Be brief."
    # "b" arrived while the first reply was running: it is answered by a second reply, after it.
    assert [(i["role"], i["text"]) for i in history["items"]] == [
        ("user", "a"), ("assistant", server.llm.reply), ("user", "b"), ("assistant", server.llm.reply)]
    assert history["last_event_id"] == int(events[-1].id or 0)
    # The second reply saw the whole history, in order.
    assert [m.content for m in server.llm.requests[-1]] == ["Be brief.", "a", server.llm.reply, "b"]


async def test_reply_continues_when_the_last_listener_leaves(server: ThreadServer) -> None:
    cid = new_conversation(server)
    async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
        async with client.stream("GET", f"/v1/conversations/{cid}/events") as response:
            await client.post(f"/v1/conversations/{cid}/messages", json={"text": "go"})
            await read_until(response, limit=3)
        await asyncio.sleep(0.1)
        assert server.call(lambda: len(server.hub.get(cid).listeners)) == 0  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            items = (await client.get(f"/v1/conversations/{cid}")).json()["items"]
            if items[-1]["status"] == "completed":
                break
            await asyncio.sleep(0.1)
    assert items[-1]["text"] == server.llm.reply, "the reply finished for later readers"


async def test_server_severed_stream_ends_and_hub_forgets_listener(server: ThreadServer) -> None:
    cid = new_conversation(server)
    shared = server.hub.get(cid)
    assert shared is not None
    async with (httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client,
                client.stream("GET", f"/v1/conversations/{cid}/events") as response):
        await asyncio.sleep(0.1)
        assert server.call(shared.sever) == 1
        async with asyncio.timeout(5):
            async for _ in sse_events(response):
                pass  # ends: the server closed the stream
    assert server.call(lambda: len(shared.listeners)) == 0


async def test_slow_reader_is_cut_off_and_resumes_losslessly() -> None:
    with ThreadServer(llm=SlowLlm(delay=0.0), api_keys=(KEY,), sse_listener_queue=4) as server:
        cid = new_conversation(server)
        hub = server.hub
        async with httpx.AsyncClient(base_url=server.http, headers=auth(), timeout=10) as client:
            async with client.stream("GET", f"/v1/conversations/{cid}/events") as response:
                await asyncio.sleep(0.1)
                shared = server.call(lambda: hub.get(cid))
                assert shared is not None
                # Publish a burst faster than any reader: more than 4 queued -> the stream is ended.
                server.call(lambda: [shared.publish("assistant.delta", {"n": i}) for i in range(50)])
                first = named(await read_until(response, stop="never"))
            assert 0 < len(first) < 50
            async with client.stream("GET", f"/v1/conversations/{cid}/events",
                                     headers={"Last-Event-ID": first[-1].id or ""}) as response:
                rest = named(await read_until(response, limit=50 - len(first)))
    assert [e.json()["n"] for e in first + rest] == list(range(50))


# --- auth and bad input -----------------------------------------------------------------------------


def test_event_source_token_is_scoped_to_its_conversation(server: ThreadServer) -> None:
    cid, other = new_conversation(server), new_conversation(server)
    r = httpx.post(f"{server.http}/v1/conversations/{cid}/token", headers=auth())
    assert r.status_code == 200
    token = r.json()["token"]
    assert r.json()["expires_at"] > time.time()
    assert KEY not in token
    with httpx.stream("GET", f"{server.http}/v1/conversations/{cid}/events?token={token}") as response:
        assert response.status_code == 200
    for url, method in [(f"/v1/conversations/{other}/events?token={token}", "GET"),
                        (f"/v1/conversations/{cid}/events?token=ek_forged", "GET"),
                        (f"/v1/conversations/{cid}/events", "GET")]:
        r = httpx.request(method, server.http + url)
        assert r.status_code == 401, url
        assert r.json()["error"]["message"]
    # A URL token cannot post, mint more tokens, or open other endpoints.
    bearer_token = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{server.http}/v1/conversations/{cid}/messages", headers=bearer_token,
                      json={"text": "x"}).status_code == 401
    assert httpx.post(f"{server.http}/v1/conversations/{cid}/token", headers=bearer_token).status_code == 401
    assert httpx.post(f"{server.http}/v1/chat/completions", headers=bearer_token,
                      json={"messages": [{"role": "user", "content": "x"}]}).status_code == 401


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("GET", "/v1/conversations/conv_nope", None, 404, "conversation_not_found"),
    ("GET", "/v1/conversations/conv_nope/events", None, 404, "conversation_not_found"),
    ("POST", "/v1/conversations/conv_nope/messages", {"text": "x"}, 404, "conversation_not_found"),
    ("POST", "/v1/conversations/conv_nope/token", None, 404, "conversation_not_found"),
    ("POST", "/v1/conversations/{cid}/messages", b"{not json", 400, "invalid_json"),
    ("POST", "/v1/conversations/{cid}/messages", {"txt": "x"}, 400, "missing_required_parameter"),
    ("POST", "/v1/conversations/{cid}/messages", {"text": ""}, 400, "invalid_value"),
    ("POST", "/v1/conversations/{cid}/messages", {"text": 5}, 400, "invalid_value"),
    ("POST", "/v1/conversations/{cid}/messages", {"text": "x" * 5000}, 413, "request_too_large"),
    ("POST", "/v1/conversations/{cid}/messages", [1, 2], 400, "invalid_value"),
    ("POST", "/v1/conversations", {"instructions": 7}, 400, "invalid_value"),
])
def test_bad_input_gets_a_json_error(server: ThreadServer, method: str, path: str, body: Any, status: int,
                                     code: str) -> None:
    cid = new_conversation(server)
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.request(method, server.http + path.format(cid=cid), headers=auth(), **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert httpx.get(f"{server.http}/healthz").status_code == 200


def test_wrong_or_missing_key_is_401(server: ThreadServer) -> None:
    cid = new_conversation(server)
    for headers in ({}, auth("wrong")):
        for method, path in [("POST", "/v1/conversations"), ("GET", f"/v1/conversations/{cid}"),
                             ("POST", f"/v1/conversations/{cid}/messages"),
                             ("GET", f"/v1/conversations/{cid}/events"), ("POST", f"/v1/conversations/{cid}/events")]:
            r = httpx.request(method, server.http + path, headers=headers, json={"text": "x"})
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
