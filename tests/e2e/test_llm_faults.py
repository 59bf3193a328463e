"""A remote LLM that is down or stalls, behind a real ``voicebot serve`` process.

The server's ``--llm-base-url`` points at a loopback port nobody listens on (connection
refused), or at scripts/llm_standin.py answering after a minute. Each text response must fail
with an ``error`` event that says what happened (unreachable / timed out) and ``response.done``
status ``failed``; the WebSocket session stays open (a second attempt fails the same way) and
the server still answers /healthz.
"""

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

from tests.conftest import API_KEY, ROOT, ServerProcess, free_port, scaled, start_server, stop_server

pytestmark = pytest.mark.e2e

FIRST_TOKEN_TIMEOUT_S = 3


async def _text_response(ws: Any, attempt: int) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Ask for a text response; its error event, its response.done, and how long it took."""
    started = time.monotonic()
    await ws.send(json.dumps({"type": "response.create", "event_id": f"r{attempt}"}))
    error = done = None
    async with asyncio.timeout(scaled(45)):
        while done is None:
            event = json.loads(await ws.recv())
            if event["type"] == "error":
                error = event["error"]
            elif event["type"] == "response.done":
                done = event["response"]
    assert error is not None, done
    return error, done, time.monotonic() - started


async def _session(server: ServerProcess) -> Any:
    ws = await websockets.connect(f"{server.ws}/v1/realtime?model=voicebot",
                                  additional_headers={"Authorization": f"Bearer {API_KEY}"})
    assert json.loads(await ws.recv())["type"] == "session.created"
    await ws.send(json.dumps({"type": "session.update", "session": {"output_modalities": ["text"]}}))
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello?"}]}}))
    return ws


def _start(llm_url: str) -> ServerProcess:
    return start_server("--api-key", API_KEY, "--llm-base-url", llm_url, "--llm-retries", "1",
                        "--llm-first-token-timeout-s", str(FIRST_TOKEN_TIMEOUT_S))


@pytest.fixture(scope="module")
def refused() -> Iterator[ServerProcess]:
    server = _start(f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def stalled() -> Iterator[ServerProcess]:
    port = free_port()
    standin = subprocess.Popen([sys.executable, "scripts/llm_standin.py", "--port", str(port), "--ttft-ms", "60000"],
                               cwd=ROOT)
    try:
        deadline = time.monotonic() + scaled(20)
        while time.monotonic() < deadline:  # the stand-in answers 405 to GET once it listens
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        server = _start(f"http://127.0.0.1:{port}/v1")
        yield server
        stop_server(server)
    finally:
        standin.terminate()
        standin.wait(10)


async def test_an_unreachable_llm_fails_each_response_and_the_session_and_server_go_on(
        refused: ServerProcess) -> None:
    ws = await _session(refused)
    try:
        for attempt in (1, 2):
            error, done, _ = await _text_response(ws, attempt)
            assert error["code"] == "llm_failed", error
            assert "unreachable" in error["message"], error
            assert done["status"] == "failed"
            assert done["status_details"]["error"]["code"] == "llm_failed"
    finally:
        await ws.close()
    assert httpx.get(f"{refused.http}/healthz", timeout=5).status_code == 200


async def test_a_stalled_llm_times_out_and_the_session_and_server_go_on(stalled: ServerProcess) -> None:
    ws = await _session(stalled)
    try:
        for attempt in (1, 2):
            error, done, took = await _text_response(ws, attempt)
            assert error["code"] == "engine_timeout", error
            assert "LLM server" in error["message"] and f"{FIRST_TOKEN_TIMEOUT_S:g} s" in error["message"], error
            assert done["status"] == "failed"
            assert FIRST_TOKEN_TIMEOUT_S - 0.5 <= took <= FIRST_TOKEN_TIMEOUT_S + scaled(15), took
    finally:
        await ws.close()
    assert httpx.get(f"{stalled.http}/healthz", timeout=5).status_code == 200
