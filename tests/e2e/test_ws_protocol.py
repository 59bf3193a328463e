"""The WebSocket edge with a real server socket and the ``websockets`` client: auth, origins,
limits and bad input. Engines are fakes here (the logic under test is the transport's); the real
engines are exercised in test_realtime_sdk.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.session.fakes import silence, tone
from tests.thread_server import ThreadServer

KEY = "sekret"
LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer(api_keys=(KEY,), max_message_bytes=LIMIT, allowed_origins=("https://good.example",)) as s:
        yield s


async def recv_until(ws: Any, kind: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return event


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


async def test_missing_or_wrong_key_is_refused_at_handshake(server: ThreadServer) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(server.url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        assert b"API key" in refused.value.response.body


async def test_browser_subprotocol_key_is_accepted_and_realtime_selected(server: ThreadServer) -> None:
    async with websockets.connect(server.url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"],
                                  origin="https://good.example") as ws:
        assert ws.subprotocol == "realtime"
        assert (await recv_until(ws, "session.created"))["session"]["type"] == "realtime"


async def test_foreign_origin_is_refused(server: ThreadServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(server.url, additional_headers=auth(), origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{oops", "invalid_json"),
        (json.dumps({"type": "bogus", "event_id": "ev1"}), "unknown_event_type"),
        (json.dumps({"type": "conversation.item.create", "event_id": "ev1"}), "missing_required_parameter"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "ev1"}), "invalid_value"),
        (b"\x00\x01binary", "invalid_message"),
        (json.dumps({"type": "input_audio_buffer.append", "event_id": "ev1",
                     "audio": base64.b64encode(bytes(LIMIT)).decode()}), "message_too_large"),
    ],
)
async def test_bad_messages_get_error_events_and_the_session_continues(server: ThreadServer, message: Any,
                                                                      code: str) -> None:
    async with websockets.connect(server.url, additional_headers=auth(), max_size=None) as ws:
        await recv_until(ws, "session.created")
        await ws.send(message)
        error = (await recv_until(ws, "error"))["error"]
        assert error["code"] == code and error["message"]
        if isinstance(message, str) and '"event_id": "ev1"' in message and code != "message_too_large":
            assert error["event_id"] == "ev1"
        await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "ok"}}))
        assert (await recv_until(ws, "session.updated"))["session"]["instructions"] == "ok"


async def test_far_oversized_message_closes_only_that_socket(server: ThreadServer) -> None:
    async with websockets.connect(server.url, additional_headers=auth(), max_size=None) as ws:
        await recv_until(ws, "session.created")
        await ws.send("x" * (LIMIT * 2 + 4096))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_until(ws, "never")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        assert (await recv_until(ws, "session.created"))


async def test_disconnect_mid_reply_leaves_no_session_or_task(server: ThreadServer) -> None:
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await recv_until(ws, "session.created")
        for chunk in (tone(600), silence(900)):
            for i in range(0, len(chunk), 4800):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(chunk[i : i + 4800]).decode()}))
        await recv_until(ws, "response.output_audio.delta", timeout=10)
        assert server.llm.active == 1 or server.state.sessions
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (server.state.sessions or server.llm.active):
        await asyncio.sleep(0.05)
    assert not server.state.sessions
    assert server.llm.active == 0
    assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()["sessions"] == 0


# --- hostile input on the wire: each costs one error, never the session or a 5xx --------------------

HOSTILE_EVENTS = [
    '{"type": "session.update", "event_id": "e1", "session": ' + "[" * 4000 + "]" * 4000 + "}",
    "[" * 50_000,
    json.dumps({"type": "input_audio_buffer.clear", "event_id": "x" * 200_000}),
    '{"type": "input_audio_buffer.clear", "event_id": "\\ud800"}',
    json.dumps({"type": "session.update", "event_id": "e5",
                "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": True}}}}}),
    json.dumps({"type": "session.update", "event_id": "e6",
                "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.0}}}}}),
    json.dumps({"type": "session.update", "event_id": "e7", "session": {"max_output_tokens": 0}}),
    json.dumps({"type": "output_audio_buffer.clear", "event_id": "e8"}),
    json.dumps({"type": "response.create", "event_id": "e9", "response": {"conversation": "conv_elsewhere"}}),
]


async def test_hostile_events_each_get_an_error_and_the_session_goes_on(server: ThreadServer) -> None:
    async with websockets.connect(server.url, additional_headers=auth(), max_size=None) as ws:
        await recv_until(ws, "session.created")
        for raw in HOSTILE_EVENTS:
            await ws.send(raw)
            error = (await recv_until(ws, "error"))["error"]
            assert error["message"], raw[:80]
            sent = json.loads(raw) if raw.startswith("{") and len(raw) < 1000 and "\\ud800" not in raw else {}
            assert error["event_id"] == sent.get("event_id"), (raw[:80], error)
        await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "Still here."}}))
        updated = await recv_until(ws, "session.updated")
        assert updated["session"]["instructions"] == "Still here."


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/conversations", "/v1/realtime/client_secrets"])
@pytest.mark.parametrize("body", [b"[" * 30_000, b'{"a": "\xff\xfe"}', b'{"model": "\\ud800"}', b"\x00\x01",
                                  b"[" * 1_000_000], ids=["deep", "utf8", "surrogate", "bin", "huge"])
def test_hostile_http_bodies_get_a_4xx_with_a_reason(server: ThreadServer, path: str, body: bytes) -> None:
    response = httpx.post(server.http + path, content=body,
                          headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == (413 if len(body) > 100_000 else 400), (response.status_code, response.text[:200])
    assert response.json()["error"]["message"]


def test_chat_completions_checks_types_strictly(server: ThreadServer) -> None:
    for body in ({"messages": True}, {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
                 {"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}):
        response = httpx.post(server.http + "/v1/chat/completions", json=body, headers=auth())
        assert response.status_code == 400, (body, response.text[:200])


# --- observability ----------------------------------------------------------------------------------


def scrape(server: ThreadServer) -> dict[str, float]:
    """/metrics, read by prometheus-client's own parser: sample name + labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{server.http}/metrics", headers=auth())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {name + str(sorted(labels.items())): value
            for family in text_string_to_metric_families(response.text)
            for name, labels, value, *_ in family.samples}


def test_metrics_need_the_key_and_probes_answer(server: ThreadServer) -> None:
    assert httpx.get(f"{server.http}/metrics").status_code == 401
    assert httpx.get(f"{server.http}/readyz").json() == {"status": "ready"}
    assert httpx.get(f"{server.http}/healthz").json()["status"] == "ok"


async def test_a_voice_turn_shows_in_the_metrics(server: ThreadServer) -> None:
    before = scrape(server)
    turns = before.get("voicebot_turns_total[]", 0.0)
    async with websockets.connect(server.url, additional_headers=auth()) as ws:
        await recv_until(ws, "session.created")
        assert scrape(server)["voicebot_active_sessions[('transport', 'realtime_ws')]"] >= 1
        await ws.send(json.dumps({"type": "session.update", "session": {
            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}}}))
        await ws.send(json.dumps({"type": "conversation.item.delete", "item_id": "item_none"}))
        await recv_until(ws, "error")
        for chunk in (tone(600), silence(700)):
            for i in range(0, len(chunk), 4800):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(chunk[i : i + 4800]).decode()}))
        done = await recv_until(ws, "response.done", timeout=15)
        assert done["response"]["status"] == "completed"
        after = scrape(server)
    assert after["voicebot_turns_total[]"] == turns + 1
    for stage in ("endpointing", "asr", "llm_first_token", "tts_first_audio", "voice_to_voice"):
        key = f"voicebot_stage_seconds_count[('stage', '{stage}')]"
        assert after[key] == before.get(key, 0.0) + 1, stage
    v2v = after["voicebot_stage_seconds_sum[('stage', 'voice_to_voice')]"] - before.get(
        "voicebot_stage_seconds_sum[('stage', 'voice_to_voice')]", 0.0)
    assert 0.25 < v2v < 10, "at least the 300 ms of silence that ended the turn"
    assert after["voicebot_errors_total[('kind', 'item_not_found')]"] >= 1
    assert "voicebot_engine_queue_depth[('queue', 'asr')]" in after
    assert "voicebot_engine_queue_depth[('queue', 'llm')]" in after


# --- limits -----------------------------------------------------------------------------------------


async def test_one_session_over_max_sessions_is_refused_with_429() -> None:
    with ThreadServer(api_keys=(KEY,), max_sessions=2) as limited:
        async with websockets.connect(limited.url, additional_headers=auth()) as first, \
                websockets.connect(limited.url, additional_headers=auth()) as second:
            for ws in (first, second):
                await recv_until(ws, "session.created")
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(limited.url, additional_headers=auth()):
                    pass
            assert refused.value.response.status_code == 429
            assert b"too_many_sessions" in refused.value.response.body
            offer = httpx.post(f"{limited.http}/v1/realtime/calls", content="v=0", headers={
                **auth(), "Content-Type": "application/sdp"})
            assert offer.status_code == 429, offer.text
        deadline = time.monotonic() + 5
        while limited.state.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with websockets.connect(limited.url, additional_headers=auth()) as again:
            assert (await recv_until(again, "session.created"))["type"] == "session.created"
