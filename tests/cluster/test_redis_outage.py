"""Redis away: at start the server refuses to start; while running, the requests that need it get
a 503 ``store_unavailable``, live voice sessions keep talking, and it all works again once Redis
is back (redis-py reconnects; the conversation's follower and writer retry with backoff)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.cluster.support import Redis, start_redis
from tests.conftest import API_KEY, ROOT, ServerProcess, free_port, scaled, start_server, stop_server

pytestmark = pytest.mark.e2e

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def test_refuses_to_start_without_redis() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "voicebot", "serve", "--port", str(free_port()),
                             "--store", f"redis://:hunter2@127.0.0.1:{port}/0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 2, result.stderr
    assert "Redis does not answer" in result.stderr and f"127.0.0.1:{port}" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr, "the password stays out of the message"
    assert time.monotonic() - started < scaled(20), "refused before any model loads"


@pytest.fixture(scope="module")
def redis_and_server() -> Iterator[tuple[Redis, ServerProcess]]:
    redis = start_redis()
    server = start_server("--api-key", API_KEY, "--store", redis.url)
    yield redis, server
    stop_server(server)
    if redis.process.poll() is None:
        redis.stop()


async def text_turn(ws: Any, text: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "response.done":
            return dict(event)


async def test_redis_lost_while_running(redis_and_server: tuple[Redis, ServerProcess]) -> None:
    redis, server = redis_and_server
    async with httpx.AsyncClient(base_url=server.http, headers=HEADERS, timeout=scaled(15)) as http:
        conversation_id = (await http.post("/v1/conversations", json={})).json()["id"]
        other_id = (await http.post("/v1/conversations", json={})).json()["id"]
        async with websockets.connect(f"{server.ws}/v1/realtime?conversation={conversation_id}",
                                      additional_headers=HEADERS) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            redis.stop()
            # Requests that need the store now: a clear 503, not a hang or a 500.
            created = await http.post("/v1/conversations", json={})
            assert created.status_code == 503 and created.json()["error"]["code"] == "store_unavailable"
            unknown = await http.get("/v1/conversations/conv_fromanotherinstance")
            assert unknown.status_code == 503, unknown.text
            # The voice session on the shared conversation keeps talking.
            done = await text_turn(ws, "Say hello in one word.")
            assert done["response"]["status"] == "completed", done
            # Redis back (an empty one: it kept nothing on disk): the server recovers by itself.
            redis.process = start_redis(redis.port).process
            deadline = time.monotonic() + scaled(20)
            while (created := await http.post("/v1/conversations", json={})).status_code != 201:
                assert time.monotonic() < deadline, created.text
                await asyncio.sleep(0.2)
            done = await text_turn(ws, "Say goodbye in one word.")
            assert done["response"]["status"] == "completed", done
        # The conversations this instance holds still answer.
        assert (await http.get(f"/v1/conversations/{other_id}")).status_code == 200
