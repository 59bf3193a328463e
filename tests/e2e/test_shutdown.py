"""Graceful shutdown of a real ``voicebot serve``: SIGTERM drains, closes, and exits 0.

Each test starts its own server (it is the one being stopped) and talks to it as clients do: a
realtime WebSocket (``websockets``) and a conversation's SSE stream (``httpx``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import API_KEY, ServerProcess, scaled, start_server, stop_server
from tests.e2e.sse_support import SseEvent, sse_events

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def realtime_url(server: ServerProcess, conversation: str | None = None) -> str:
    return f"{server.ws}/v1/realtime?model=voicebot" + (f"&conversation={conversation}" if conversation else "")


async def read_stream(http: httpx.AsyncClient, conversation: str, into: list[SseEvent],
                      opened: asyncio.Event) -> None:
    """Every event of the conversation's stream until the server ends it."""
    async with http.stream("GET", f"/v1/conversations/{conversation}/events") as response:
        assert response.status_code == 200
        async for event in sse_events(response):
            if event.retry is not None:
                opened.set()  # the first frame: the stream is subscribed
            into.append(event)


async def listening(http: httpx.AsyncClient) -> tuple[str, list[SseEvent], asyncio.Task[None]]:
    """A new conversation and a reader subscribed to its event stream: (id, its events, the reader)."""
    conversation: str = (await http.post("/v1/conversations", json={})).json()["id"]
    events: list[SseEvent] = []
    opened = asyncio.Event()
    reader = asyncio.create_task(read_stream(http, conversation, events, opened))
    await asyncio.wait_for(opened.wait(), scaled(20))
    return conversation, events, reader


async def until_closed(ws: Any, into: list[dict[str, Any]]) -> ConnectionClosed:
    while True:
        try:
            into.append(json.loads(await ws.recv()))
        except ConnectionClosed as closed:
            return closed


def exited_cleanly(server: ServerProcess, signalled_at: float, within_s: float) -> None:
    returncode = server.process.wait(timeout=scaled(within_s + 30))
    took = time.monotonic() - signalled_at
    log = server.log()
    assert returncode == 0, log[-3000:]
    assert took < scaled(within_s), f"exited {took:.1f} s after SIGTERM"
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
async def test_a_signal_closes_websockets_with_1001_ends_sse_streams_and_exits_0(signum: int) -> None:
    server = start_server("--api-key", API_KEY, "--shutdown-grace-s", "10")
    try:
        async with httpx.AsyncClient(base_url=server.http, headers=AUTH, timeout=scaled(60)) as http:
            _, events, reader = await listening(http)
            async with websockets.connect(realtime_url(server), additional_headers=AUTH) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                signalled_at = time.monotonic()
                server.process.send_signal(signum)
                received: list[dict[str, Any]] = []
                closed = await asyncio.wait_for(until_closed(ws, received), scaled(20))
            assert closed.rcvd is not None
            assert (closed.rcvd.code, closed.rcvd.reason) == (1001, "server shutting down")
            assert not [e for e in received if e["type"] == "error"]  # a close frame says it, not an error
            await asyncio.wait_for(reader, scaled(20))  # the stream ends by itself
            assert events[-1].event == "shutdown"
            assert events[-1].id is None  # nothing to resume: the conversation ends with the process
            assert events[-1].json()["reason"] == "server_shutting_down"
            with pytest.raises(httpx.TransportError):  # then it stops listening
                for _ in range(int(scaled(100))):
                    await http.get("/readyz")
                    await asyncio.sleep(0.1)
        exited_cleanly(server, signalled_at, within_s=30)
    finally:
        stop_server(server)


async def test_a_reply_in_flight_is_spoken_to_its_end_before_the_socket_closes() -> None:
    server = start_server("--api-key", API_KEY, "--shutdown-grace-s", "90")
    try:
        async with httpx.AsyncClient(base_url=server.http, headers=AUTH, timeout=scaled(60)) as http:
            conversation, events, reader = await listening(http)
            async with websockets.connect(realtime_url(server, conversation), additional_headers=AUTH,
                                          max_size=None) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "Tell me two things about the moon."}]}}))
                await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 40}}))
                received: list[dict[str, Any]] = []
                while not any(e["type"] == "response.output_audio.delta" for e in received):
                    received.append(json.loads(await asyncio.wait_for(ws.recv(), scaled(60))))
                signalled_at = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                closing = asyncio.create_task(until_closed(ws, received))

                # While the reply is spoken: not ready, and no new work is taken.
                await asyncio.sleep(0.3)
                ready = await http.get("/readyz")
                assert (ready.status_code, ready.json()) == (503, {"status": "shutting_down"})
                refused = await http.post("/v1/conversations", json={})
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
                with pytest.raises(InvalidStatus) as denied:
                    async with websockets.connect(realtime_url(server), additional_headers=AUTH):
                        pass
                assert denied.value.response.status_code == 503
                assert json.loads(denied.value.response.body or b"{}")["error"]["code"] == "shutting_down"
                assert not closing.done(), "the socket closed while its reply was being spoken"

                closed = await asyncio.wait_for(closing, scaled(120))
            assert closed.rcvd is not None and closed.rcvd.code == 1001
            done = [e for e in received if e["type"] == "response.done"]
            assert [d["response"]["status"] for d in done] == ["completed"]
            assert received[-1]["type"] == "response.done"  # the last event before the close
            await asyncio.wait_for(reader, scaled(20))
            kinds = [e.event for e in events]
            assert "assistant.done" in kinds and kinds[-1] == "shutdown"
            assert next(e for e in events if e.event == "assistant.done").json()["status"] == "completed"
        exited_cleanly(server, signalled_at, within_s=120)
    finally:
        stop_server(server)
