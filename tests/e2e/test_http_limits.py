"""The HTTP API's limits over real sockets: the rate limit (429 + Retry-After), CORS, conversation
caps, idle expiry of conversations and the expiry of client secrets.

The server is uvicorn in a thread with fake engines (tests/thread_server.py): what is under test
is the HTTP layer, not the models.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import scaled
from tests.e2e.sse_support import KEY, auth
from tests.session.fakes import SlowLlm
from tests.thread_server import ThreadServer

ORIGIN = "https://app.example"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the rate limit ---------------------------------------------------------------------------------


@pytest.fixture
def limited() -> Iterator[ThreadServer]:
    with ThreadServer(api_keys=(KEY,), rate_limit_per_minute=5) as server:
        yield server


def assert_rate_limited(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 12  # 5 a minute: one more every 12 s
    return retry_after


async def test_over_the_rate_limit_is_429_with_retry_after_per_key(limited: ThreadServer) -> None:
    async with httpx.AsyncClient(base_url=limited.http, timeout=10) as http:
        minted = await http.post("/v1/realtime/client_secrets", headers=auth(), json={})  # 1
        assert minted.status_code == 200
        token = minted.json()["value"]
        for _ in range(4):  # 2..5: a client token spends the budget of the key that minted it
            assert (await http.get("/v1/models", headers=bearer(token))).status_code == 200
        assert_rate_limited(await http.get("/v1/models", headers=auth()))
        assert_rate_limited(await http.post("/v1/conversations", headers=bearer(token)))
        # The probes and the OpenAPI document are never counted.
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert (await http.get(path)).status_code == 200, path
        # Without a credential (or with a wrong one) a client is counted by its IP, apart from the key.
        for _ in range(5):
            assert (await http.get("/v1/models", headers=bearer("guess"))).status_code == 401
        assert_rate_limited(await http.get("/v1/models"))
    # A WebSocket handshake over the limit is refused with the same answer.
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(limited.url, additional_headers=auth()):
            pass
    assert refused.value.response.status_code == 429
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    assert json.loads(refused.value.response.body)["error"]["code"] == "rate_limit_exceeded"


def test_no_limit_with_zero() -> None:
    with ThreadServer(rate_limit_per_minute=0) as server:
        assert server.state.limiter is None
        with httpx.Client(base_url=server.http) as http:
            assert all(http.get("/v1/models").status_code == 200 for _ in range(30))


# --- CORS -------------------------------------------------------------------------------------------


def preflight(http: httpx.Client, path: str, origin: str) -> httpx.Response:
    return http.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": "authorization, content-type, "
                                                                         "last-event-id, x-stainless-os"})


def test_cors_follows_the_allowed_origins() -> None:
    with ThreadServer(api_keys=(KEY,), allowed_origins=(ORIGIN,), rate_limit_per_minute=2) as server, \
            httpx.Client(base_url=server.http) as http:
        ok = preflight(http, "/v1/chat/completions", ORIGIN)
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == ORIGIN
        allowed = {h.strip().lower() for h in ok.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "last-event-id"} <= allowed
        assert "POST" in ok.headers["access-control-allow-methods"]
        denied = preflight(http, "/v1/chat/completions", "https://evil.example")
        assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers
        # The real request: readable by the allowed page, with Retry-After exposed for its 429s.
        for _ in range(2):
            r = http.get("/v1/models", headers={**auth(), "Origin": ORIGIN})
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == ORIGIN
        refused = http.get("/v1/models", headers={**auth(), "Origin": ORIGIN})
        assert refused.status_code == 429 and refused.headers["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
        foreign = http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers


def test_cors_star_allows_any_origin() -> None:
    with ThreadServer(allowed_origins=("*",)) as server, httpx.Client(base_url=server.http) as http:
        r = preflight(http, "/v1/conversations", "https://anything.example")
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "https://anything.example")


def test_no_allowed_origins_means_no_cross_origin_api() -> None:
    with ThreadServer() as server, httpx.Client(base_url=server.http) as http:
        assert preflight(http, "/v1/conversations", ORIGIN).status_code == 400
        same = http.post("/v1/conversations", headers={"Origin": server.http})  # same-origin needs nothing
        assert same.status_code == 201


# --- conversation caps ------------------------------------------------------------------------------


async def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_long_conversation_keeps_its_newest_items_within_the_caps() -> None:
    with ThreadServer(llm=SlowLlm(reply="ok", delay=0.0), max_conversation_items=4,
                      max_conversation_bytes=1000, max_text_bytes=4096) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            cid = (await http.post("/v1/conversations")).json()["id"]
            for i in range(6):
                r = await http.post(f"/v1/conversations/{cid}/messages", json={"text": f"message {i}"})
                assert r.status_code == 202, r.text
                shared = server.hub.get(cid)
                await wait_for(lambda s=shared: s.idle)  # type: ignore[misc]
            items = (await http.get(f"/v1/conversations/{cid}")).json()["items"]
            assert len(items) == 4
            assert [it["text"] for it in items] == ["message 4", "ok", "message 5", "ok"]
            # One message larger than the whole byte cap can never fit: refused, not evicting everything.
            big = await http.post(f"/v1/conversations/{cid}/messages", json={"text": "x" * 1500})
            assert big.status_code == 413 and big.json()["error"]["code"] == "item_too_large"
            assert len((await http.get(f"/v1/conversations/{cid}")).json()["items"]) == 4

        # A Realtime client is told which items left (its copy of the history follows).
        async with websockets.connect(server.url) as ws:
            for i in range(6):
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "id": f"it{i}", "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": f"hello {i}"}]}}))
            deleted: list[str] = []
            async with asyncio.timeout(scaled(10)):
                while len(deleted) < 2:
                    event = json.loads(await ws.recv())
                    if event["type"] == "conversation.item.deleted":
                        deleted.append(event["item_id"])
            assert deleted == ["it0", "it1"]
            await ws.send(json.dumps({"type": "conversation.item.retrieve", "item_id": "it0", "event_id": "r0"}))
            async with asyncio.timeout(scaled(10)):
                while (event := json.loads(await ws.recv()))["type"] != "error":
                    pass
            assert event["error"]["code"] == "item_not_found"


# --- idle expiry ------------------------------------------------------------------------------------


async def test_idle_conversations_expire_and_make_room() -> None:
    with ThreadServer(conversation_idle_ttl_s=1.0, max_conversations=2, sse_heartbeat_s=0.2) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            idle = (await http.post("/v1/conversations")).json()["id"]
            streamed = (await http.post("/v1/conversations")).json()["id"]
            full = await http.post("/v1/conversations")
            assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_conversations"
            async with http.stream("GET", f"/v1/conversations/{streamed}/events") as stream:
                assert stream.status_code == 200
                await asyncio.sleep(2.5)  # past the TTL: only the one nobody listens to goes
                gone = await http.get(f"/v1/conversations/{idle}")
                assert gone.status_code == 404 and gone.json()["error"]["code"] == "conversation_not_found"
                assert (await http.get(f"/v1/conversations/{streamed}")).status_code == 200
                created = await http.post("/v1/conversations")  # room again, without a restart
                assert created.status_code == 201
            # A voice session on a conversation keeps it too.
            voiced = created.json()["id"]
            async with websockets.connect(f"{server.url}&conversation={voiced}") as ws:
                json.loads(await ws.recv())
                await asyncio.sleep(2.5)
                assert (await http.get(f"/v1/conversations/{voiced}")).status_code == 200
            await wait_for(lambda: len(server.hub) == 0)  # the sweeper: nobody uses either any more
            assert (await http.get(f"/v1/conversations/{voiced}")).status_code == 404


# --- client secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expires_after", [
    {"anchor": "created_at", "seconds": 9}, {"anchor": "created_at", "seconds": 7201},
    {"anchor": "last_used", "seconds": 60}, {"seconds": "60"},
])
def test_client_secret_expiry_outside_openais_bounds_is_refused(expires_after: dict[str, Any]) -> None:
    with ThreadServer(api_keys=(KEY,)) as server:
        r = httpx.post(f"{server.http}/v1/realtime/client_secrets", headers=auth(),
                       json={"expires_after": expires_after})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith("expires_after")


async def test_an_expired_client_secret_is_refused_everywhere_and_forgotten() -> None:
    with ThreadServer(api_keys=(KEY,)) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            before = time.time()
            r = await http.post("/v1/realtime/client_secrets", headers=auth(),
                                json={"expires_after": {"anchor": "created_at", "seconds": 10}})
            assert r.status_code == 200
            secret = r.json()
            assert before + 9 <= secret["expires_at"] <= time.time() + 11
            token = secret["value"]
            cid = (await http.post("/v1/conversations", headers=auth())).json()["id"]
            assert (await http.get("/v1/models", headers=bearer(token))).status_code == 200
            async with websockets.connect(server.url, subprotocols=["realtime", f"openai-insecure-api-key.{token}"]):
                pass
            await asyncio.sleep(max(0.0, secret["expires_at"] - time.time()) + 1.0)
            assert len(server.state.auth.tokens) == 1  # nothing has looked at it since it expired
            for refused in (await http.get("/v1/models", headers=bearer(token)),
                            await http.get(f"/v1/conversations/{cid}", headers=bearer(token)),
                            await http.get(f"/v1/conversations/{cid}/events", params={"token": token})):
                assert refused.status_code == 401, refused.text
            assert len(server.state.auth.tokens) == 0, "expired tokens are purged without a new one minted"
        for subprotocols in (["realtime", f"openai-insecure-api-key.{token}"], None):
            headers = None if subprotocols else bearer(token)
            with pytest.raises(InvalidStatus) as ws_refused:
                async with websockets.connect(server.url, subprotocols=subprotocols,  # type: ignore[arg-type]
                                              additional_headers=headers):
                    pass
            assert ws_refused.value.response.status_code == 401
