"""The WebRTC transport's pieces without a network: playout track, frame conversion, SDP checks, ICE config."""

from __future__ import annotations

import asyncio
import time

import aioice.ice
import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebot.core.audio import AudioFormat, InputAudio
from voicebot.transports.rtc_audio import FRAME_SAMPLES, RTC_RATE, PlayoutTrack, frame_to_mono, read_track
from voicebot.transports.rtc_ice import (
    IceConfigError,
    candidate_addresses,
    host_addresses,
    parse_ice_server,
    rtc_configuration,
)
from voicebot.transports.rtc_sdp import OfferError, parse_offer

# --- PlayoutTrack ---------------------------------------------------------------------------------


def ramp(n: int) -> np.ndarray:
    return (np.arange(n) % 1000 + 1).astype(np.int16)


async def test_track_plays_queued_audio_then_silence_in_20ms_frames() -> None:
    track = PlayoutTrack()
    track.push(ramp(FRAME_SAMPLES + 100), "resp_1")
    first = (await track.recv()).to_ndarray().reshape(-1)
    second = (await track.recv()).to_ndarray().reshape(-1)
    third = (await track.recv()).to_ndarray().reshape(-1)
    assert first.size == second.size == third.size == FRAME_SAMPLES
    assert np.array_equal(first, ramp(FRAME_SAMPLES + 100)[:FRAME_SAMPLES])
    assert np.array_equal(second[:100], ramp(FRAME_SAMPLES + 100)[FRAME_SAMPLES:])
    assert not second[100:].any()  # the tail is padded with silence, not held back
    assert not third.any()
    assert track.queued_ms == 0


async def test_track_advances_on_a_real_time_clock() -> None:
    track = PlayoutTrack()
    started = time.monotonic()
    frames = [await track.recv() for _ in range(11)]
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 0.5  # 10 frame periods after the first
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(11)]
    assert all(f.sample_rate == RTC_RATE for f in frames)


async def test_clear_drops_everything_queued_at_once() -> None:
    events: list[tuple[str, str | None]] = []
    track = PlayoutTrack(on_started=lambda r: events.append(("started", r)),
                         on_stopped=lambda r: events.append(("stopped", r)))
    track.push(ramp(RTC_RATE * 2), "item_1", "resp_1")  # 2 s
    assert (await track.recv()).to_ndarray().any()
    dropped = track.clear()
    assert 1900 < dropped <= 2000
    assert not (await track.recv()).to_ndarray().any()
    assert events == [("started", "resp_1"), ("stopped", "resp_1")]
    assert track.cleared == 1
    assert track.played_ms("item_1") == 20, "one frame of the item left the track before the clear"


async def test_started_and_stopped_follow_responses_not_underruns() -> None:
    events: list[tuple[str, str | None]] = []
    track = PlayoutTrack(on_started=lambda r: events.append(("started", r)),
                         on_stopped=lambda r: events.append(("stopped", r)))
    track.push(ramp(FRAME_SAMPLES), "item_a", "a")
    track.end("a")
    track.push(ramp(FRAME_SAMPLES), "item_b", "b")
    for _ in range(3):
        await track.recv()
    # b's audio ran out but b has not ended: an underrun is not the end of the buffer.
    assert events == [("started", "a"), ("stopped", "a"), ("started", "b")]
    track.push(ramp(FRAME_SAMPLES // 2), "item_b", "b")
    track.end("b")
    await track.recv()
    assert events[-1] == ("started", "b") and len(events) == 3, "b goes on after the underrun, not restarted"
    await track.recv()
    assert events[-1] == ("stopped", "b")
    assert track.played_ms("item_a") == 20 and track.played_ms("item_b") == 30
    assert track.played_ms("never") == 0


def test_overflow_drops_new_audio_and_counts_it() -> None:
    track = PlayoutTrack(max_queue_ms=100)
    track.push(ramp(RTC_RATE // 20))  # 50 ms
    track.push(ramp(RTC_RATE // 10))  # 100 ms more: over the limit
    assert track.queued_ms == pytest.approx(50)
    assert track.dropped_ms == pytest.approx(100)


async def test_stopped_track_ends_the_stream() -> None:
    from aiortc.mediastreams import MediaStreamError

    track = PlayoutTrack()
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


# --- inbound frames -------------------------------------------------------------------------------


def test_frame_to_mono_downmixes_packed_stereo() -> None:
    left = np.full(960, 1000, np.int16)
    right = np.full(960, 3000, np.int16)
    packed = np.stack([left, right], axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
    assert np.array_equal(frame_to_mono(frame), np.full(960, 2000, np.int16))


def test_frame_to_mono_reads_planar_float() -> None:
    planes = np.stack([np.full(480, 0.5, np.float32), np.full(480, -0.5, np.float32)])
    frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo")
    assert not frame_to_mono(frame).any()
    mono = av.AudioFrame.from_ndarray(np.full((1, 480), 0.25, np.float32), format="fltp", layout="mono")
    assert np.all(frame_to_mono(mono) == 8192)


class FrameTrack(MediaStreamTrack):
    """A remote track that yields the given frames, then ends."""

    kind = "audio"

    def __init__(self, frames: list[av.AudioFrame]) -> None:
        super().__init__()
        self._frames = list(frames)

    async def recv(self) -> av.AudioFrame:
        if not self._frames:
            raise MediaStreamError
        return self._frames.pop(0)


async def test_read_track_hands_mono_pcm_in_the_frames_own_format_to_the_session_path() -> None:
    t = np.arange(RTC_RATE) / RTC_RATE
    tone = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    frames = []
    for i in range(0, tone.size, 960):
        frame = av.AudioFrame.from_ndarray(np.repeat(tone[i : i + 960], 2).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = RTC_RATE
        frames.append(frame)
    received: list[tuple[bytes, AudioFormat]] = []
    await read_track(FrameTrack(frames), lambda pcm, fmt: received.append((pcm, fmt)))
    assert len(received) == len(frames)
    assert {fmt for _, fmt in received} == {AudioFormat("pcm16", RTC_RATE)}
    # The same input path as every transport: 48 kHz mono bytes -> 16 kHz for the VAD and ASR.
    inbound = InputAudio(received[0][1])
    samples = np.concatenate([inbound.feed(pcm) for pcm, _ in received])
    assert abs(samples.size - 16_000) < 800  # the low-latency filter holds back a few ms
    spectrum = np.abs(np.fft.rfft(samples[2000:14000]))
    peak_hz = np.argmax(spectrum) * 16_000 / 12000
    assert abs(peak_hz - 440) < 5


# --- SDP offers -----------------------------------------------------------------------------------

OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=msid-semantic: WMS
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99
a=setup:actpass
a=mid:0
a=sendrecv
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99
a=setup:actpass
a=mid:1
a=sctp-port:5000
"""


def test_a_browser_like_offer_is_accepted() -> None:
    offer = parse_offer(OFFER.encode())
    assert offer.codecs == ("opus", "PCMU", "PCMA")
    assert offer.has_data_channel
    assert offer.key == "abcd"
    assert offer.sdp.endswith("\r\n") and "\r\n" in offer.sdp


@pytest.mark.parametrize(("body", "message"), [
    (b"", "body is empty"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'{"type": "offer"}', "starts with 'v=0'"),
    (b"v=0\r\nm=audio nonsense\r\n", "malformed"),
    (OFFER.split("m=audio")[0].encode() + b"m=application" + OFFER.split("m=application")[1].encode(),
     "no audio section"),
    (OFFER.replace("m=audio 9", "m=audio 0").encode(), "no audio section"),
    (OFFER.replace("opus/48000/2", "ISAC/16000").replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8",
                                                         "m=audio 9 UDP/TLS/RTP/SAVPF 111")
     .replace("a=rtpmap:0 PCMU/8000\n", "").replace("a=rtpmap:8 PCMA/8000\n", "").encode(),
     "no supported audio codec (offered: ISAC"),
    (OFFER.replace("a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa\n", "").encode(), "no ICE credentials"),
    (OFFER.replace("a=setup:actpass\n", "").encode(), "no DTLS parameters"),
    (b"v=0\n" + b"a=x\n" * 20000, "limit"),
])
def test_bad_offers_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(OfferError) as info:
        parse_offer(body)
    assert message in str(info.value)


# --- ICE ------------------------------------------------------------------------------------------


def test_ice_servers_parse_with_and_without_credentials() -> None:
    stun = parse_ice_server("stun:stun.example.org:3478")
    assert stun.urls == "stun:stun.example.org:3478" and stun.username is None
    turn = parse_ice_server("turn:alice:s3cr:et@turn.example.org:3478?transport=tcp")
    assert turn.urls == "turn:turn.example.org:3478?transport=tcp"
    assert (turn.username, turn.credential) == ("alice", "s3cr:et")
    assert rtc_configuration(()).iceServers == []  # never aiortc's public default


@pytest.mark.parametrize("spec", ["stun.example.org", "http://x", "turn:host:3478", "turn:@host:1", "stun:"])
def test_bad_ice_servers_are_refused(spec: str) -> None:
    with pytest.raises(IceConfigError):
        parse_ice_server(spec)


def test_candidates_follow_the_bound_address() -> None:
    assert candidate_addresses("127.0.0.1") == ("127.0.0.1",)
    assert candidate_addresses("localhost") == ("127.0.0.1",)
    assert candidate_addresses("192.0.2.7") == ("192.0.2.7",)
    assert candidate_addresses("0.0.0.0")[-1] == "127.0.0.1"


async def test_host_addresses_override_is_scoped() -> None:
    default = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    assert "127.0.0.1" not in default  # aioice's own behaviour: no loopback
    with host_addresses(["127.0.0.1", "::1"]):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        # tasks started inside the block (aiortc gathers in tasks) see the override too
        inner = await asyncio.create_task(_gather())
        assert inner == ["127.0.0.1", "::1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == default


async def _gather() -> list[str]:
    return list(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))


_LINES = OFFER.strip().split("\n")


@st.composite
def mutated_offers(draw: st.DrawFn) -> bytes:
    """A browser's offer with lines dropped, repeated, swapped or garbled, or plain noise."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    lines = list(_LINES)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "repeat", "swap", "garble", "truncate"]))
        if action == "drop" and len(lines) > 1:
            lines.pop(at)
        elif action == "repeat":
            lines.insert(at, lines[at])
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif action == "garble":
            lines[at] = draw(st.text(max_size=40))
        else:
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
    return "\r\n".join(lines).encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_offers())
def test_any_offer_body_is_an_offer_or_an_offer_error(body: bytes) -> None:
    """The SDP parser is the WebRTC boundary: nothing a client posts gets past it as anything but
    an :class:`OfferError` (a 400 naming the problem)."""
    try:
        offer = parse_offer(body)
    except OfferError as err:
        assert str(err)
        return
    assert offer.codecs and offer.ice_ufrag
