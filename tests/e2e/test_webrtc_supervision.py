"""A WebRTC call whose own task fails ends at once with that failure as its reason (logged and
remembered by the registry), instead of the failure being dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.conftest import scaled
from tests.rtc_client import RtcClient
from tests.thread_server import ThreadServer
from voicebot.transports import webrtc

KEY = "rtc-key"


@pytest.fixture
def server() -> Iterator[ThreadServer]:
    with ThreadServer(api_keys=(KEY,)) as s:
        yield s


async def _ended_reason(server: ThreadServer, call_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = server.call(lambda: server.state.calls.ended.get(call_id))
        if ended is not None:
            return str(ended.reason)
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} did not end")


async def test_a_failing_microphone_reader_ends_the_call_with_its_reason(
        server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_read_track(track: object, sink: object) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("injected microphone fault")

    monkeypatch.setattr(webrtc, "read_track", broken_read_track)
    client = RtcClient()
    try:
        await client.connect(f"http://127.0.0.1:{server.port}", KEY)
        assert client.call_id is not None
        reason = await _ended_reason(server, client.call_id, scaled(10))
    finally:
        await client.close()
    assert "internal error" in reason and "injected microphone fault" in reason, reason
    assert server.call(lambda: len(server.state.sessions)) == 0


async def test_a_failing_event_handler_ends_the_call_with_its_reason(
        server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_on_message(self: webrtc.RtcCall, message: str | bytes) -> None:
        raise RuntimeError("injected data channel fault")

    broken_on_message.__name__ = "_on_message"
    monkeypatch.setattr(webrtc.RtcCall, "_on_message", broken_on_message)
    client = RtcClient()
    try:
        await client.connect(f"http://127.0.0.1:{server.port}", KEY)
        assert client.call_id is not None
        client.send({"type": "response.create"})
        reason = await _ended_reason(server, client.call_id, scaled(10))
    finally:
        await client.close()
    assert reason == "internal error in _on_message: RuntimeError: injected data channel fault", reason
