"""Realtime session limits on a real server socket (fake engines): sessions per API key (client
tokens count against the key that minted them) on every transport, the maximum session length
and the idle timeout (an ``error`` event, then close 1008), and a phone call ended by the same
maximum length. Limits are set small; the margins are generous for a loaded machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from scripts.phone_sim import call
from tests.conftest import scaled
from tests.rtc_client import RtcClient
from tests.session.fakes import silence
from tests.thread_server import ThreadServer

KEY = "key-one"
OTHER = "key-two"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def mint(server: ThreadServer, key: str) -> str:
    answer = httpx.post(f"{server.http}/v1/realtime/client_secrets", json={}, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["value"]
    assert token.startswith("ek_")
    return token


async def recv_until(ws: Any, kind: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(scaled(timeout)):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return event


async def refused(url: str, **connect: Any) -> httpx.Response | Any:
    with pytest.raises(InvalidStatus) as refusal:
        async with websockets.connect(url, **connect):
            pass
    return refusal.value.response


async def closed_after_error(ws: Any, timeout: float) -> tuple[dict[str, Any], Any]:
    """The ``error`` event a limit sends, then the close frame that follows it."""
    error = await recv_until(ws, "error", timeout=timeout)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv_until(ws, "never", timeout=5)
    assert closed.value.rcvd is not None, "the server closed the socket"
    return error["error"], closed.value.rcvd


async def wait_no_sessions(server: ThreadServer) -> None:
    deadline = time.monotonic() + scaled(5)
    while server.state.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not server.state.sessions


async def test_sessions_per_key_count_tokens_against_the_key_that_minted_them() -> None:
    with ThreadServer(api_keys=(KEY, OTHER), max_sessions=10, max_sessions_per_key=2) as server:
        token = mint(server, KEY)
        async with websockets.connect(server.url, additional_headers=bearer(KEY)) as first, \
                websockets.connect(server.url, subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as second:
            for ws in (first, second):
                await recv_until(ws, "session.created")
            # A third session of the key, whichever way it comes, is refused at the handshake ...
            for connect in ({"additional_headers": bearer(KEY)},
                            {"additional_headers": bearer(mint(server, KEY))},
                            {"subprotocols": ["realtime", f"openai-insecure-api-key.{mint(server, KEY)}"]}):
                response = await refused(server.url, **connect)
                assert response.status_code == 429
                assert json.loads(response.body)["error"]["code"] == "too_many_sessions_for_key"
            # ... a WebRTC offer ...
            offer = httpx.post(f"{server.http}/v1/realtime/calls", content="v=0",
                               headers={**bearer(mint(server, KEY)), "Content-Type": "application/sdp"})
            assert offer.status_code == 429 and offer.json()["error"]["code"] == "too_many_sessions_for_key"
            # ... and a carrier's media stream with the key in its URL.
            response = await refused(f"ws://127.0.0.1:{server.port}/telephony/twilio/media?token={KEY}")
            assert response.status_code == 429 and b"too_many_sessions_for_key" in response.body
            # Another key has its own allowance.
            async with websockets.connect(server.url, additional_headers=bearer(OTHER)) as other:
                await recv_until(other, "session.created")
        await wait_no_sessions(server)
        async with websockets.connect(server.url, additional_headers=bearer(KEY)) as again:
            await recv_until(again, "session.created")


async def test_a_session_past_its_maximum_length_gets_an_error_then_close_1008() -> None:
    with ThreadServer(api_keys=(KEY,), max_session_seconds=1.5, idle_timeout_s=0) as server:
        async with websockets.connect(server.url, additional_headers=bearer(KEY)) as ws:
            opened = time.monotonic()
            await recv_until(ws, "session.created")
            # Busy the whole time: the maximum length does not care.
            await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "hi"}}))
            error, close = await closed_after_error(ws, timeout=10)
            lived = time.monotonic() - opened
        assert error["code"] == "session_expired" and error["type"] == "invalid_request_error"
        assert "maximum duration of 1.5 seconds" in error["message"]
        assert close.code == 1008 and close.reason.startswith("session_expired")
        assert 1.4 <= lived < scaled(8)
        await wait_no_sessions(server)


async def test_a_session_streaming_only_silence_is_idle_and_closed() -> None:
    with ThreadServer(idle_timeout_s=1.0, max_session_seconds=0) as server:
        async with websockets.connect(server.url) as ws:
            opened = time.monotonic()
            await recv_until(ws, "session.created")

            async def microphone() -> None:  # 40 ms of silence every 40 ms, like a quiet room
                chunk = base64.b64encode(silence(40)).decode()
                while True:
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                    await asyncio.sleep(0.04)

            streaming = asyncio.create_task(microphone())
            try:
                error, close = await closed_after_error(ws, timeout=10)
            finally:
                streaming.cancel()
                await asyncio.gather(streaming, return_exceptions=True)
            idle = time.monotonic() - opened
        assert error["code"] == "idle_timeout"
        assert close.code == 1008 and close.reason.startswith("idle_timeout")
        assert 0.9 <= idle < scaled(8)
        await wait_no_sessions(server)


async def test_a_phone_call_past_the_maximum_length_is_hung_up() -> None:
    with ThreadServer(max_session_seconds=1.5, idle_timeout_s=0) as server:
        url = f"ws://127.0.0.1:{server.port}/telephony/twilio/media"
        async with call(url) as phone:
            started = time.monotonic()
            async with asyncio.timeout(scaled(10)):
                await phone.ws.wait_closed()
            lasted = time.monotonic() - started
            assert phone.ws.close_code == 1008
            assert (phone.ws.close_reason or "").startswith("session_expired")
        assert 1.4 <= lasted < scaled(8)
        ended = server.call(lambda: server.state.calls.ended_summaries("telephony"))
        assert [stats.ended.split(":")[0] for stats in ended] == ["session_expired"]  # type: ignore[attr-defined]
        await wait_no_sessions(server)


async def test_a_webrtc_call_past_the_maximum_length_gets_the_error_then_is_hung_up() -> None:
    with ThreadServer(max_session_seconds=2.0, idle_timeout_s=0) as server:
        client = RtcClient()
        offered = time.monotonic()  # the session starts with the offer, not when ICE has connected
        await client.connect(server.http, None)
        try:
            error = await client.recorder.wait_for("error", timeout=scaled(10))
            assert error["error"]["code"] == "session_expired"
            assert time.monotonic() - offered >= 1.9
            call_id = str(client.call_id)
            deadline = time.monotonic() + scaled(5)
            while call_id not in server.state.calls.ended and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert server.state.calls.ended[call_id].reason.startswith("session_expired")
            # The server closed its side: the peer connection goes down without the client doing anything.
            deadline = time.monotonic() + scaled(40)  # DTLS close, or consent freshness at worst
            while client.pc.connectionState not in ("closed", "failed") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert client.pc.connectionState in ("closed", "failed")
        finally:
            await client.close()
        await wait_no_sessions(server)


@pytest.mark.parametrize(("limits", "allowed", "code"), [
    ({"max_sessions_per_key": 2, "max_sessions": 10}, 2, "too_many_sessions_for_key"),
    ({"max_sessions_per_key": 0, "max_sessions": 3}, 3, "too_many_sessions"),
])
async def test_handshakes_racing_each_other_cannot_overshoot_the_limits(
        limits: dict[str, int], allowed: int, code: str) -> None:
    """A seat is taken at admission, before the awaits between the handshake and the session
    (here a carrier's media streams, whose session exists only once the ``start`` frame comes —
    these never send one): of 8 streams opened at once, exactly the allowed number get in, and
    every seat comes back when they go."""
    with ThreadServer(api_keys=(KEY,), **limits) as server:
        url = f"ws://127.0.0.1:{server.port}/telephony/twilio/media?token={KEY}"

        async def attempt() -> Any:
            try:
                return await websockets.connect(url)
            except InvalidStatus as refusal:
                return refusal.response

        results = await asyncio.gather(*(attempt() for _ in range(8)))
        opened = [r for r in results if not isinstance(r, websockets.Response)]
        refusals = [r for r in results if isinstance(r, websockets.Response)]
        try:
            assert len(opened) == allowed
            assert [r.status_code for r in refusals] == [429] * (8 - allowed)
            assert all(json.loads(r.body)["error"]["code"] == code for r in refusals)
        finally:
            for ws in opened:
                await ws.close()
        await wait_no_sessions(server)
        deadline = time.monotonic() + scaled(5)
        while server.state.seats and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not server.state.seats, "every seat was given back"
