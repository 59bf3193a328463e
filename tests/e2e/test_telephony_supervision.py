"""A phone call whose own task fails ends at once, with a logged reason and a close code —
not silently, and not only when the server shuts down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from scripts.phone_sim import call
from tests.conftest import scaled
from tests.e2e.test_telephony_bridge import ended_calls, media_url, speech
from tests.thread_server import ThreadServer
from voicebot.transports import telephony
from voicebot.transports.carriers.twilio import TwilioSerializer


@pytest.fixture
def server() -> Iterator[ThreadServer]:
    with ThreadServer() as s:
        yield s


async def _wait_ended(server: ThreadServer, call_sid: str, timeout: float) -> telephony.CallStats:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stats in ended_calls(server):
            if stats.call_id == call_sid:
                return stats
        await asyncio.sleep(0.05)
    raise AssertionError("the call did not end")


async def test_a_failing_writer_ends_the_call_at_once_with_its_reason(
        server: ThreadServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken_media(self: TwilioSerializer, audio: bytes) -> str:
        raise RuntimeError("injected writer fault")

    monkeypatch.setattr(TwilioSerializer, "media", broken_media)
    async with call(media_url(server)) as phone:
        await asyncio.sleep(0.2)
        said = await phone.say(speech(600))
        # The reply's first frame breaks the writer: the call ends while the caller is still on.
        stats = await _wait_ended(server, phone.call_sid, scaled(15))
        ended_after = time.monotonic() - said
        async with asyncio.timeout(5):
            while phone.ws.close_code is None:
                await asyncio.sleep(0.02)
    assert "internal error" in stats.ended and "injected writer fault" in stats.ended, stats.ended
    assert phone.ws.close_code == 1011, phone.ws.close_code
    assert ended_after < scaled(10)
    assert server.call(lambda: len(server.state.sessions)) == 0
    assert any("injected writer fault" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


async def test_a_carrier_that_stops_reading_is_hung_up_with_1008(
        server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telephony, "MAX_UNSENT_FRAMES", 5)

    async def stuck_send(self: telephony.CallBridge, message: object) -> None:
        await asyncio.sleep(3600)  # the carrier's socket is full: a send never completes

    monkeypatch.setattr(telephony.CallBridge, "_send", stuck_send)
    async with call(media_url(server)) as phone:
        await asyncio.sleep(0.2)
        await phone.say(speech(600))
        stats = await _wait_ended(server, phone.call_sid, scaled(15))
    assert "not reading" in stats.ended, stats.ended
    assert server.call(lambda: len(server.state.sessions)) == 0
