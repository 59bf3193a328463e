"""The telephony bridge over real sockets, with fake engines (the logic under test is the bridge's).

A real uvicorn server runs in a thread; callers are scripts/phone_sim.py (Twilio) and small raw
clients for Telnyx and Vonage. Fake engines make replies fast and deterministic: a loud tone is
"speech" to the energy VAD and the TTS answers in tones. Real speech and real models are in
test_telephony_real.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from scripts.phone_sim import PhoneCall, call, to_ulaw
from tests.conftest import scaled
from tests.session.fakes import tone
from tests.thread_server import ThreadServer
from voicebot.core.conversation import Conversation
from voicebot.transports.telephony import CallStats
from voicebot.transports.twiml import twilio_signature

TOKEN = "twilio-secret"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer() as s:
        yield s


def media_url(server: ThreadServer, carrier: str = "twilio") -> str:
    return f"ws://127.0.0.1:{server.port}/telephony/{carrier}/media"


def speech(ms: float) -> bytes:
    """A loud tone the fake energy VAD takes for speech, as μ-law 8 kHz."""
    return to_ulaw(np.frombuffer(tone(ms, rate=8000), "<i2"), 8000)


def attach(server: ThreadServer) -> Conversation:
    return server.call(lambda: server.hub.create()).conversation


def ended_calls(server: ThreadServer) -> list[CallStats]:
    found = server.call(lambda: server.state.calls.ended_summaries("telephony"))
    assert all(isinstance(s, CallStats) for s in found)
    return found  # type: ignore[return-value]


def last_call(server: ThreadServer) -> CallStats:
    return ended_calls(server)[-1]


async def wait_call_end(server: ThreadServer, call_sid: str) -> CallStats:
    async with asyncio.timeout(5):
        while True:
            for stats in ended_calls(server):
                if stats.call_id == call_sid:
                    return stats
            await asyncio.sleep(0.02)


async def test_caller_hears_a_paced_reply_and_acknowledges_marks(server: ThreadServer) -> None:
    conversation = attach(server)
    async with call(media_url(server), {"conversation": conversation.id}) as phone:
        await asyncio.sleep(0.2)
        said = await phone.say(speech(600))
        await phone.wait_quiet(0.8, timeout=scaled(15), since=said)
    stats = await wait_call_end(server, phone.call_sid)
    assert stats.conversation_id == conversation.id and stats.ended == "stop"
    assert stats.bad_frames == 0
    frames = len(phone.media_times)
    assert frames > 50, "the reply is several seconds of audio"
    assert len(phone.heard) == frames * 160, "every frame was 20 ms of μ-law and was played"
    # Paced in real time (never a burst): arrival spans the audio's duration, less the small lead.
    span = phone.media_times[-1] - phone.media_times[0]
    assert span >= frames * 0.02 - 0.1 - 0.1, (span, frames)
    assert len(phone.acked) >= frames // 5, "a mark per 100 ms, all echoed once played"
    roles = [(i.role, i.status) for i in conversation.items]
    assert roles == [("user", "completed"), ("assistant", "completed")]
    assert conversation.items[1].heard_ms is None, "a reply heard in full is not truncated"


async def test_barge_in_clears_and_cuts_history_at_the_last_acknowledged_mark(server: ThreadServer) -> None:
    conversation = attach(server)
    async with call(media_url(server), {"conversation": conversation.id}) as phone:
        await asyncio.sleep(0.2)
        await phone.say(speech(600))
        await phone.wait(lambda: len(phone.heard) >= 160 * 60, timeout=scaled(15))  # 1.2 s heard
        interrupted_at = await phone.say(speech(500))
        await phone.wait(lambda: phone.of("clear"), timeout=scaled(5))
        clear_at, _ = phone.of("clear")[0]
        heard_at_clear = sum(1 for t in phone.heard_times if t <= clear_at) * 20
        await asyncio.sleep(0.5)
    stats = await wait_call_end(server, phone.call_sid)
    assert clear_at - interrupted_at < scaled(1.0), "clear follows the caller's speech onset quickly"
    assert stats.clears >= 1
    [(item_id, audio_end_ms)] = stats.truncations[:1]
    item = next(i for i in conversation.items if i.id == item_id)
    assert item.role == "assistant" and item.status == "incomplete"
    assert item.heard_ms == audio_end_ms, "the history is cut where the carrier's marks said"
    # The last acknowledged mark is at most one mark interval (+ loopback delay) behind playback.
    assert heard_at_clear - 160 <= audio_end_ms <= heard_at_clear, (audio_end_ms, heard_at_clear)
    assert audio_end_ms % 100 == 0
    full_reply = server.llm.reply
    assert item.text and len(item.text) < len(full_reply)
    assert full_reply.startswith(item.text.rstrip(".,"))


async def test_malformed_frames_are_skipped_and_the_call_goes_on(server: ThreadServer) -> None:
    async with websockets.connect(media_url(server)) as ws:
        # Media before start: skipped, the call is not dropped.
        await ws.send(json.dumps({"event": "media", "streamSid": "MZx", "media": {"payload": "AAAA"}}))
        phone = PhoneCall(ws)
        await phone.start({})
        garbage: list[str | bytes] = [
            "{not json", b"\x00\x01\x02", json.dumps({"event": "bogus", "streamSid": phone.stream_sid}),
            json.dumps({"event": "media", "streamSid": phone.stream_sid, "media": {"payload": "%%%"}}),
            json.dumps({"event": "media", "streamSid": phone.stream_sid, "media": {"payload": "AAA"}}),
            json.dumps({"event": "media", "streamSid": "MZ-intruder", "media": {"payload": "AAAA"}}),
            json.dumps({"event": "mark", "streamSid": phone.stream_sid, "mark": {"name": "never-sent"}}),
            json.dumps({"event": "dtmf", "streamSid": phone.stream_sid, "dtmf": {"digit": "Z"}}),
        ]
        for message in garbage:
            await ws.send(message)
        tasks = [asyncio.create_task(phone.receive()), asyncio.create_task(phone.speaker()),
                 asyncio.create_task(phone.microphone())]
        try:
            await asyncio.sleep(0.2)
            said = await phone.say(speech(600))
            await phone.wait_quiet(0.5, timeout=scaled(15), since=said)
            await phone.stop()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    stats = await wait_call_end(server, phone.call_sid)
    assert stats.bad_frames == 8, "media before start + 7 bad frames (the unknown mark is ignored, not bad)"
    assert len(phone.heard) > 160 * 50, "the caller still got the whole reply"
    health = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    assert health.status_code == 200


async def test_keypad_digits_reach_the_assistant_and_interrupt(server: ThreadServer) -> None:
    conversation = attach(server)
    async with call(media_url(server), {"conversation": conversation.id}) as phone:
        await asyncio.sleep(0.2)
        await phone.say(speech(600))
        await phone.wait(lambda: len(phone.heard) >= 160 * 25, timeout=scaled(15))
        for digit in "42#":
            await phone.dtmf(digit)
        await phone.wait(lambda: phone.of("clear"), timeout=scaled(5))
        await phone.wait(lambda: len(conversation.items) >= 4 and conversation.items[-1].status == "completed",
                         timeout=scaled(15))
    typed = [i for i in conversation.items if i.content_type == "input_text"]
    assert [i.text for i in typed] == ["(The caller pressed 4 2 # on the phone keypad.)"]
    assert server.llm.requests[-1][-1].content == typed[0].text, "the assistant answered the keypad entry"
    stats = await wait_call_end(server, phone.call_sid)
    assert stats.dtmf == "42#" and stats.clears >= 1


async def test_unknown_carrier_is_refused(server: ThreadServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(media_url(server, "carrier-pigeon")):
            pass
    assert refused.value.response.status_code == 404


# --- Telnyx and Vonage end to end ------------------------------------------------------------------


async def test_telnyx_call_with_out_of_order_frames(server: ThreadServer) -> None:
    conversation = attach(server)
    async with websockets.connect(media_url(server, "telnyx") + f"?conversation={conversation.id}") as ws:
        await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "sequence_number": "1", "stream_id": "st-1", "start": {
            "call_control_id": "v3:telnyx-call", "media_format": {"encoding": "PCMA", "sample_rate": 8000}}}))
        audio = bytes([0xD5]) * 160 * 10 + speech_pcma(600) + bytes([0xD5]) * 160 * 60
        frames = [audio[i : i + 160] for i in range(0, len(audio), 160)]
        order = list(range(len(frames)))
        for i in range(0, len(order) - 1, 3):  # swap every third pair: out of order on the wire
            order[i], order[i + 1] = order[i + 1], order[i]
        received: list[dict[str, Any]] = []

        async def listen() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                received.append(msg)
                if msg["event"] == "mark":  # echo marks like Telnyx does once played
                    await ws.send(json.dumps({"event": "mark", "sequence_number": "0", "stream_id": "st-1",
                                              "mark": msg["mark"]}))

        listener = asyncio.create_task(listen())
        try:
            start = time.monotonic()
            for k, index in enumerate(order):
                await ws.send(json.dumps({"event": "media", "sequence_number": str(index + 2), "stream_id": "st-1",
                                          "media": {"track": "inbound", "chunk": str(index + 1),
                                                    "payload": base64.b64encode(frames[index]).decode()}}))
                await asyncio.sleep(max(0.0, start + (k + 1) * 0.02 - time.monotonic()))
            async with asyncio.timeout(scaled(10)):
                while not any(m["event"] == "media" for m in received):
                    await asyncio.sleep(0.05)
            await ws.send(json.dumps({"event": "stop", "sequence_number": str(len(frames) + 2), "stream_id": "st-1",
                                      "stop": {}}))
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    stats = await wait_call_end(server, "v3:telnyx-call")
    assert stats.frames_in == len(frames), "every reordered frame reached the session, none dropped"
    assert stats.bad_frames == 0
    media = [m for m in received if m["event"] == "media"]
    assert set(media[0]) == {"event", "media"} and len(base64.b64decode(media[0]["media"]["payload"])) == 160
    assert any(m["event"] == "mark" for m in received)
    assert conversation.items[0].role == "user"


def speech_pcma(ms: float) -> bytes:
    from voicebot.core.audio import lin2alaw

    return lin2alaw(np.frombuffer(tone(ms, rate=8000), "<i2").astype(np.int16))


async def test_vonage_call_binary_l16_and_clear(server: ThreadServer) -> None:
    conversation = attach(server)
    async with websockets.connect(media_url(server, "vonage")) as ws:
        await ws.send(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                                  "conversation": conversation.id, "uuid": "vonage-call"}))
        received: list[tuple[float, str | bytes]] = []
        mic: list[bytes] = []

        async def listen() -> None:
            async for raw in ws:
                received.append((time.monotonic(), raw))
                if isinstance(raw, str) and json.loads(raw).get("action") == "notify":
                    payload = json.loads(raw)["payload"]
                    await ws.send(json.dumps({"event": "websocket:notify", "payload": payload}))

        async def talk() -> None:
            start, n = time.monotonic(), 0
            while True:
                frame = mic.pop(0) if mic else bytes(640)
                await ws.send(frame)
                n += 1
                await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

        tasks = [asyncio.create_task(listen()), asyncio.create_task(talk())]
        try:
            loud = tone(600, rate=16_000)
            mic.extend(loud[i : i + 640] for i in range(0, len(loud), 640))
            async with asyncio.timeout(scaled(10)):
                while sum(isinstance(r, bytes) for _, r in received) < 40:
                    await asyncio.sleep(0.02)
            mic.extend(loud[i : i + 640] for i in range(0, len(loud), 640))  # barge in
            async with asyncio.timeout(scaled(5)):
                while not any(isinstance(r, str) and json.loads(r) == {"action": "clear"} for _, r in received):
                    await asyncio.sleep(0.02)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    stats = await wait_call_end(server, "vonage-call")
    audio = [r for _, r in received if isinstance(r, bytes)]
    assert {len(a) for a in audio} == {640}, "20 ms L16 frames at 16 kHz"
    assert stats.conversation_id == conversation.id and stats.clears >= 1 and stats.marks_acked > 0
    assert stats.truncations and stats.truncations[0][1] > 0


# --- webhook and handshake security ----------------------------------------------------------------


def test_twiml_webhook_and_forged_requests() -> None:
    with ThreadServer(twilio_auth_token=TOKEN, public_url="https://voice.example.com") as server:
        url = f"http://127.0.0.1:{server.port}/telephony/twilio/voice?conversation=conv_1"
        signed_url = "https://voice.example.com/telephony/twilio/voice?conversation=conv_1"
        form = {"CallSid": "CA42", "From": "+15550100", "To": "+15550199", "AccountSid": "AC1"}
        good = twilio_signature(TOKEN, signed_url, form.items())
        ok = httpx.post(url, data=form, headers={"X-Twilio-Signature": good}, timeout=5)
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/xml")
        assert '<Stream url="wss://voice.example.com/telephony/twilio/media">' in ok.text
        assert '<Parameter name="conversation" value="conv_1" />' in ok.text
        assert '<Parameter name="From" value="+15550100" />' in ok.text
        for headers, data in (({}, form), ({"X-Twilio-Signature": "forged"}, form),
                              ({"X-Twilio-Signature": good}, {**form, "From": "+19990000000"})):
            refused = httpx.post(url, data=data, headers=headers, timeout=5)
            assert refused.status_code == 403, refused.text
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200


async def test_media_handshake_needs_twilios_signature_when_a_token_is_set() -> None:
    with ThreadServer(twilio_auth_token=TOKEN, api_keys=("k1",)) as server:
        url = media_url(server)
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers={"X-Twilio-Signature": "forged"}):
                pass
        assert refused.value.response.status_code == 403
        headers = {"X-Twilio-Signature": twilio_signature(TOKEN, url)}
        async with call(url, {}, headers=headers) as phone:
            said = await phone.say(speech(600))
            await phone.wait_quiet(0.3, timeout=scaled(15), since=said)
        # Carriers without signatures present an API key (header or ?token=).
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(media_url(server, "telnyx")):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(media_url(server, "telnyx") + "?token=k1") as ws:
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
