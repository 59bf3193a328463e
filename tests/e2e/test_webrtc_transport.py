"""The WebRTC edge with a real aiortc peer over loopback UDP: signalling, auth, bad input, the data
channel, barge-in on the outbound track, and teardown. Engines are fakes here (the logic under test
is the transport's: a 220 Hz tone as the assistant's "voice" makes received audio easy to
recognise); the real engines talk over WebRTC in test_webrtc_voice.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, scaled
from tests.rtc_client import RATE, RtcClient, frame_rms
from tests.session.fakes import tone
from tests.thread_server import ThreadServer
from voicebot.calls import CallRegistry

KEY = "rtc-key"
TIMEOUT_S = 2.0  # the server's connect and media timeouts in this module
LOUD = 1000.0  # rms of a 20 ms frame that carries the tone (ToneTts peaks at 8000)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    # A long output lead (1 s of audio queued in the track) makes barge-in depend on the drop.
    with ThreadServer(api_keys=(KEY,), webrtc_connect_timeout_s=TIMEOUT_S, webrtc_media_timeout_s=TIMEOUT_S,
                      webrtc_output_lead_ms=1000) as s:
        yield s


def base(server: ThreadServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def calls(server: ThreadServer) -> CallRegistry:
    return server.state.calls


def ended_reason(registry: CallRegistry, call_id: str) -> str:
    ended = registry.ended[call_id]
    assert ended.kind == "webrtc"
    return ended.reason


def udp_inodes() -> set[str]:
    """Inodes of the UDP sockets this process holds (client and server peers live here)."""
    table = set()
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with open(name) as f:
            table |= {line.split()[9] for line in f.readlines()[1:]}
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in table:
            held.add(target[8:-1])
    return held


async def settled(server: ThreadServer, timeout: float = 10) -> None:
    """Every call and session is gone (torn down by the server, not by the test)."""
    deadline = time.monotonic() + scaled(timeout)
    while calls(server).live or server.state.sessions:
        assert time.monotonic() < deadline, f"left behind: {calls(server).live} {server.state.sessions}"
        await asyncio.sleep(0.05)


def tone48k(ms: float) -> np.ndarray:
    return np.frombuffer(tone(ms, rate=RATE), "<i2")


def dominant_hz(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / samples.size)


async def test_a_turn_events_on_the_channel_and_voice_on_the_track(server: ThreadServer) -> None:
    client = RtcClient()
    await client.connect(base(server), KEY)
    try:
        created = await client.recorder.wait_for("session.created", timeout=scaled(5))
        assert created["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 48000}
        client.mic.say(tone48k(600))
        done = await client.recorder.wait_for("response.done", timeout=scaled(20))
        assert done["response"]["status"] == "completed"
        stopped = await client.recorder.wait_for("output_audio_buffer.stopped", timeout=scaled(10))
        assert stopped["response_id"] == done["response"]["id"]
        kinds = [e["type"] for _, e in client.recorder.events]
        for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "conversation.item.input_audio_transcription.completed", "response.created",
                     "response.output_audio_transcript.delta", "output_audio_buffer.started"):
            assert kind in kinds
        assert "response.output_audio.delta" not in kinds  # audio travels on the track only
        started_at = client.recorder.timed("output_audio_buffer.started")[0][0]
        voice = np.concatenate([f for t, f in client.frames if t >= started_at - 0.1 and frame_rms(f) > LOUD])
        spoken_ms = voice.size * 1000 / RATE
        assert spoken_ms > 1000, spoken_ms  # the whole reply played, not a fragment
        assert abs(dominant_hz(voice) - 220) < 5  # what ToneTts said, through Opus, intact
    finally:
        await client.close()
    await settled(server)


async def test_an_output_format_change_mid_reply_leaves_the_track_intact(server: ThreadServer) -> None:
    """The track carries the audio as it was produced (48 kHz), whatever the client configures."""
    client = RtcClient()
    await client.connect(base(server), KEY)
    try:
        client.mic.say(tone48k(600))
        await client.recorder.wait_for("output_audio_buffer.started", timeout=scaled(20))
        started_at = client.recorder.timed("output_audio_buffer.started")[0][0]
        client.send({"type": "session.update", "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}})
        updated = await client.recorder.wait_for("session.updated", timeout=scaled(5))
        assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 48000}
        done = await client.recorder.wait_for("response.done", timeout=scaled(20))
        assert done["response"]["status"] == "completed"
        await client.recorder.wait_for("output_audio_buffer.stopped", timeout=scaled(10))
        voice = np.concatenate([f for t, f in client.frames if t >= started_at - 0.1 and frame_rms(f) > LOUD])
        assert voice.size * 1000 / RATE > 1000, "the whole reply played"
        assert abs(dominant_hz(voice) - 220) < 5, "no part of it was decoded as another format"
    finally:
        await client.close()
    await settled(server)


async def test_client_tokens_and_api_keys(server: ThreadServer) -> None:
    for key, status in ((None, 401), ("wrong", 401)):
        client = RtcClient()
        with pytest.raises(RuntimeError, match=str(status)):
            await client.connect(base(server), key)
        await client.close()
    token, _ = server.state.auth.tokens.mint(60)
    client = RtcClient()
    await client.connect(base(server), token)
    assert (await client.recorder.wait_for("session.created", timeout=scaled(5)))["type"]
    await client.close()
    await settled(server)


async def post(server: ThreadServer, path: str, body: bytes | str, content_type: str = "application/sdp",
               key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(base(server) + path, content=body, headers=headers)


async def test_bad_offers_get_400_and_leave_nothing_allocated(server: ThreadServer) -> None:
    await settled(server)
    sockets = udp_inodes()
    peer = RtcClient()
    offer = await peer.offer()
    no_audio = RtcClient(audio=False)
    unsupported = (offer.replace("opus/48000/2", "ISAC/16000").replace("PCMU/8000", "X-PCMU/8000")
                   .replace("PCMA/8000", "X-PCMA/8000").replace("G722/8000", "X-G722/8000"))
    cases = [
        ("text/plain", offer, "Content-Type must be application/sdp"),
        ("application/sdp", '{"sdp": "nope"}', "not SDP"),
        ("application/sdp", b"\x00\x01\x02", "not SDP"),
        ("application/sdp", await no_audio.offer(), "no audio section"),
        ("application/sdp", unsupported, "no supported audio codec"),
        ("application/sdp", "v=0\r\nm=audio x y\r\n", "malformed"),
    ]
    for content_type, body, message in cases:
        r = await post(server, "/v1/realtime/calls", body, content_type)
        assert r.status_code == 400, (message, r.text)
        assert message in r.json()["error"]["message"]
    assert not calls(server).live and not server.state.sessions
    await no_audio.close()
    await peer.close()
    assert udp_inodes() <= sockets  # no port was opened for a refused offer


async def test_a_second_offer_on_a_closed_call_is_refused(server: ThreadServer) -> None:
    client = RtcClient()
    await client.connect(base(server), KEY)
    offer = str(client.pc.localDescription.sdp)
    call_id = client.call_id
    r = await post(server, "/v1/realtime/calls", offer)
    assert r.status_code == 400 and f"call {call_id} is active" in r.json()["error"]["message"]
    r = await post(server, f"/v1/realtime/calls/{call_id}", offer)
    assert r.status_code == 400 and "renegotiation is not supported" in r.json()["error"]["message"]
    await client.close()
    await settled(server)
    r = await post(server, "/v1/realtime/calls", offer)
    assert r.status_code == 400 and f"call {call_id} has ended" in r.json()["error"]["message"]
    r = await post(server, f"/v1/realtime/calls/{call_id}", offer)
    assert r.status_code == 400 and "has ended" in r.json()["error"]["message"]
    r = await post(server, "/v1/realtime/calls/rtc_unknown/hangup", b"")
    assert r.status_code == 404
    assert not calls(server).live and not server.state.sessions


async def test_garbage_on_the_data_channel_gets_error_events(server: ThreadServer) -> None:
    client = RtcClient()
    await client.connect(base(server), KEY)
    try:
        await client.recorder.wait_for("session.created", timeout=scaled(5))
        assert client.channel is not None
        client.channel.send("this is not json")
        client.send({"type": "no.such.event", "event_id": "evt_1"})
        client.channel.send(b"\x00binary")
        client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})
        updated = await client.recorder.wait_for("session.updated", timeout=scaled(5))
        assert updated["session"]["instructions"] == "Be brief."
        errors = client.recorder.of("error")
        assert len(errors) == 3, errors
        assert any(e["error"].get("event_id") == "evt_1" for e in errors)
        assert any("Binary messages" in e["error"]["message"] for e in errors)
    finally:
        await client.close()
    await settled(server)


async def test_barge_in_silences_the_track_within_300_ms(server: ThreadServer) -> None:
    client = RtcClient()
    await client.connect(base(server), KEY)
    try:
        client.mic.say(tone48k(600))
        await client.recorder.wait_for("output_audio_buffer.started", timeout=scaled(20))
        await asyncio.sleep(0.5)  # the reply is well under way (it lasts ~2 s)
        n_started = len(client.recorder.of("input_audio_buffer.speech_started"))
        client.mic.say(tone48k(800))
        await client.recorder.wait_for("input_audio_buffer.speech_started", count=n_started + 1,
                                       timeout=scaled(5))
        detected = client.recorder.timed("input_audio_buffer.speech_started")[n_started][0]
        done = await client.recorder.wait_for("response.done", timeout=scaled(5))
        assert done["response"]["status"] == "cancelled"
        await asyncio.sleep(1.0)  # anything still buffered would arrive now
        loud_after = [t for t, f in client.frames if t >= detected and frame_rms(f) > LOUD]
        silence_after = (loud_after[-1] - detected) if loud_after else 0.0
        assert silence_after < 0.3, f"assistant audio went on for {silence_after * 1000:.0f} ms"
        assert any(frame_rms(f) > LOUD for t, f in client.frames if t < detected)  # it was talking
        print(f"barge-in: last loud frame {silence_after * 1000:.0f} ms after speech_started")
        assert client.recorder.of("output_audio_buffer.stopped")  # the buffer reports it went quiet
    finally:
        await client.close()
    await settled(server)


async def test_peer_closing_tears_the_call_down(server: ThreadServer) -> None:
    sockets = udp_inodes()
    client = RtcClient()
    await client.connect(base(server), KEY)
    call_id = client.call_id
    assert call_id in calls(server).live
    assert len(server.state.sessions) == 1
    await client.close()
    await settled(server, timeout=5)
    assert call_id in calls(server).ended
    assert udp_inodes() <= sockets  # client and server ports are all closed


async def test_hangup_ends_the_call(server: ThreadServer) -> None:
    client = RtcClient()
    await client.connect(base(server), KEY)
    r = await post(server, f"/v1/realtime/calls/{client.call_id}/hangup", b"")
    assert r.status_code == 200
    assert ended_reason(calls(server), str(client.call_id)) == "hung up"
    await settled(server, timeout=2)
    await client.close()


async def test_a_vanished_peer_is_torn_down_after_the_media_timeout(server: ThreadServer) -> None:
    """The peer process is killed (no DTLS close, no RTCP BYE): only silence tells the server."""
    script = ("import asyncio, sys\n"
              "from tests.rtc_client import RtcClient\n"
              "async def main():\n"
              "    c = RtcClient()\n"
              "    await c.connect(sys.argv[1], sys.argv[2])\n"
              "    print(c.call_id, flush=True)\n"
              "    await asyncio.sleep(3600)\n"
              "asyncio.run(main())\n")
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, base(server), KEY, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE)
    try:
        assert peer.stdout is not None
        line = await asyncio.wait_for(peer.stdout.readline(), scaled(30))
        call_id = line.decode().strip()
        assert call_id in calls(server).live
        await asyncio.sleep(0.5)  # audio is flowing
        peer.kill()  # SIGKILL: no goodbye of any kind
        killed = time.monotonic()
    finally:
        if peer.returncode is None:
            peer.kill()
        await peer.wait()
    await settled(server, timeout=TIMEOUT_S + 5)
    took = time.monotonic() - killed
    assert took < TIMEOUT_S + 2, took
    assert "no audio from the peer" in ended_reason(calls(server), call_id)


async def test_a_call_whose_ice_never_completes_is_torn_down(server: ThreadServer) -> None:
    client = RtcClient()
    offer = await client.offer()
    # No candidates and no end-of-candidates: the server waits for candidates that never come.
    blind = "".join(line + "\r\n" for line in offer.splitlines()
                    if not line.startswith(("a=candidate", "a=end-of-candidates")))
    r = await post(server, "/v1/realtime/calls", blind)
    assert r.status_code == 201
    call_id = r.headers["location"].rsplit("/", 1)[-1]
    assert call_id in calls(server).live
    started = time.monotonic()
    await settled(server, timeout=TIMEOUT_S + 5)
    assert time.monotonic() - started >= TIMEOUT_S - 0.5
    assert "not connected after" in ended_reason(calls(server), call_id)
    await client.close()


async def test_server_shutdown_ends_live_calls() -> None:
    with ThreadServer(api_keys=(KEY,)) as s:
        client = RtcClient()
        await client.connect(base(s), KEY)
        registry = calls(s)
        call_id = client.call_id
        assert call_id in registry.live
        await asyncio.to_thread(s.__exit__, None, None, None)
    assert not registry.live and call_id in registry.ended
    assert "shutting down" in ended_reason(registry, str(call_id))
    assert not s.state.sessions
    await client.close()
