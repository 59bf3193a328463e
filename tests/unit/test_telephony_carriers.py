"""Carrier serializers at the message level: what each carrier sends, what we send back, and
every kind of bad frame raising BadFrame (which the bridge logs and skips)."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.core.audio import PCMA, PCMU, AudioFormat
from voicebot.transports.carriers import CARRIERS
from voicebot.transports.carriers.base import BadFrame, Dtmf, MarkAck, Media, Reorderer, Start, Stop
from voicebot.transports.carriers.telnyx import TelnyxSerializer
from voicebot.transports.carriers.twilio import TwilioSerializer
from voicebot.transports.carriers.vonage import VonageSerializer

SID = "MZ0123456789abcdef"
AUDIO = bytes(range(160))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def twilio_start(**params: str) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
        "streamSid": SID, "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"], "customParameters": params,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


def twilio_media(payload: str, sid: str = SID) -> str:
    return json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": sid,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload}})


# --- Twilio ----------------------------------------------------------------------------------------


def test_twilio_call_in_order() -> None:
    s = TwilioSerializer()
    assert s.parse(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})) == []
    [start] = s.parse(twilio_start(conversation="conv_1", From="+1555"))
    assert start == Start(SID, "CA1", PCMU, {"conversation": "conv_1", "From": "+1555"})
    assert s.parse(twilio_media(b64(AUDIO))) == [Media(AUDIO)]
    assert s.parse(json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track",
                                                                           "digit": "5"}})) == [Dtmf("5")]
    assert s.parse(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "m3"}})) == [MarkAck("m3")]
    assert s.parse(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA1"}})) == [Stop()]


def test_twilio_outbound_messages_carry_the_stream_sid() -> None:
    s = TwilioSerializer()
    s.parse(twilio_start())
    assert json.loads(s.media(AUDIO)) == {"event": "media", "streamSid": SID, "media": {"payload": b64(AUDIO)}}
    assert json.loads(s.mark("m1")) == {"event": "mark", "streamSid": SID, "mark": {"name": "m1"}}
    assert json.loads(s.clear()) == {"event": "clear", "streamSid": SID}


@pytest.mark.parametrize(("message", "why"), [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "JSON object"),
    (b"\x00\x01", "binary"),
    (json.dumps({"event": "bogus", "streamSid": SID}), "unknown event"),
    (twilio_media("%%%not base64%%%"), "base64"),
    (twilio_media(b64(AUDIO)[:-1]), "base64"),  # truncated: odd length, not a whole base64 quantum
    (twilio_media(b64(AUDIO), sid="MZ-someone-else"), "streamSid"),
    (json.dumps({"event": "media", "streamSid": SID}), "'media'"),
    (json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "x"}}), "DTMF"),
    (json.dumps({"event": "mark", "streamSid": SID, "mark": {}}), "mark.name"),
])
def test_twilio_bad_frames_after_start(message: str | bytes, why: str) -> None:
    s = TwilioSerializer()
    s.parse(twilio_start())
    with pytest.raises(BadFrame, match=why):
        s.parse(message)
    assert s.parse(twilio_media(b64(AUDIO))) == [Media(AUDIO)], "the stream goes on"


def test_twilio_media_before_start_and_unsupported_format() -> None:
    s = TwilioSerializer()
    with pytest.raises(BadFrame, match="before 'start'"):
        s.parse(twilio_media(b64(AUDIO)))
    bad = json.loads(twilio_start())
    bad["start"]["mediaFormat"]["encoding"] = "audio/opus"
    with pytest.raises(BadFrame, match="unsupported media format"):
        s.parse(json.dumps(bad))


def test_twilio_outbound_track_media_is_ignored() -> None:
    s = TwilioSerializer()
    s.parse(twilio_start())
    msg = json.loads(twilio_media(b64(AUDIO)))
    msg["media"]["track"] = "outbound"
    assert s.parse(json.dumps(msg)) == []


# --- Telnyx ----------------------------------------------------------------------------------------


def telnyx(kind: str, seq: int, **body: object) -> str:
    return json.dumps({"event": kind, "sequence_number": str(seq), "stream_id": "st-1", **body})


def telnyx_media(chunk: int, payload: bytes, seq: int | None = None) -> str:
    """Media chunk ``chunk``; its sequence_number also counts non-media messages (here: +10)."""
    return telnyx("media", seq or chunk + 10, media={"track": "inbound", "chunk": str(chunk),
                                                     "timestamp": str(chunk * 20), "payload": b64(payload)})


def telnyx_started(encoding: str = "PCMU") -> TelnyxSerializer:
    s = TelnyxSerializer(reorder_depth=3)
    assert s.parse(json.dumps({"event": "connected", "version": "1.0.0"})) == []
    [start] = s.parse(telnyx("start", 1, start={"call_control_id": "v3:abc", "media_format": {
        "encoding": encoding, "sample_rate": 8000, "channels": 1}}))
    assert isinstance(start, Start) and start.call_id == "v3:abc"
    return s


def test_telnyx_formats_and_outbound_shapes() -> None:
    s = telnyx_started()
    assert json.loads(s.media(AUDIO)) == {"event": "media", "media": {"payload": b64(AUDIO)}}
    assert json.loads(s.mark("m2")) == {"event": "mark", "mark": {"name": "m2"}}
    assert json.loads(s.clear()) == {"event": "clear"}
    with pytest.raises(BadFrame, match="unsupported media format"):
        TelnyxSerializer().parse(telnyx("start", 1, start={"media_format": {"encoding": "OPUS",
                                                                              "sample_rate": 48000}}))


def test_telnyx_pcma_start_gives_pcma() -> None:
    s = TelnyxSerializer()
    [start] = s.parse(telnyx("start", 1, start={"media_format": {"encoding": "PCMA", "sample_rate": 8000}}))
    assert isinstance(start, Start) and start.fmt == PCMA


def test_telnyx_out_of_order_frames_are_reordered() -> None:
    s = telnyx_started()
    frames = {n: bytes([n]) * 160 for n in range(2, 8)}
    got: list[object] = []
    for n in (2, 4, 3, 6, 5, 7):
        got += s.parse(telnyx_media(n, frames[n]))
    assert got == [Media(frames[n]) for n in range(2, 8)]


def test_telnyx_lost_frame_is_skipped_after_the_buffer_fills_and_a_late_one_dropped() -> None:
    s = telnyx_started()
    got: list[object] = []
    for n in (1, 2, 4, 5, 6):  # 3 is lost
        got += s.parse(telnyx_media(n, bytes([n])))
    assert got == [Media(b"\x01"), Media(b"\x02")], "4, 5, 6 wait for 3"
    got += s.parse(telnyx_media(7, b"\x07"))  # buffer (depth 3) overflows: give up on 3
    assert got == [Media(bytes([n])) for n in (1, 2, 4, 5, 6, 7)]
    assert s.order.skipped == 1
    with pytest.raises(BadFrame, match="late"):
        s.parse(telnyx_media(3, b"\x03"))
    assert s.parse(telnyx_media(8, b"\x08")) == [Media(b"\x08")]


def test_telnyx_dtmf_mark_stop_and_stream_checks() -> None:
    s = telnyx_started()
    assert s.parse(telnyx_media(1, AUDIO)) == [Media(AUDIO)]
    held = s.parse(telnyx_media(3, AUDIO))  # 2 missing: held
    assert held == []
    # Marks and digits never wait for a media gap, whatever their sequence_number.
    assert s.parse(telnyx("dtmf", 2, dtmf={"digit": "#"})) == [Dtmf("#")]
    assert s.parse(telnyx("mark", 3, mark={"name": "m1"})) == [MarkAck("m1")]
    assert s.parse(telnyx("stop", 6, stop={"call_control_id": "v3:abc"})) == [Media(AUDIO), Stop()]
    with pytest.raises(BadFrame, match="stream_id"):
        s.parse(json.dumps({"event": "media", "sequence_number": "9", "stream_id": "other",
                            "media": {"payload": b64(AUDIO)}}))
    with pytest.raises(BadFrame, match="before 'start'"):
        TelnyxSerializer().parse(telnyx_media(2, AUDIO))


def test_reorderer_duplicates_are_dropped() -> None:
    r: Reorderer[str] = Reorderer(depth=2)
    assert r.push(10, "a") == ["a"]
    assert r.push(10, "a") == []
    assert r.push(12, "c") == []
    assert r.push(12, "c") == []
    assert r.push(11, "b") == ["b", "c"]
    assert r.dropped == 2


# --- Vonage ----------------------------------------------------------------------------------------


def test_vonage_connected_binary_audio_and_actions() -> None:
    s = VonageSerializer()
    with pytest.raises(BadFrame, match="before 'websocket:connected'"):
        s.parse(bytes(640))
    [start] = s.parse(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                                  "conversation": "conv_9", "caller": "447700900000"}))
    assert isinstance(start, Start)
    assert start.fmt == AudioFormat("pcm16", 16_000)
    assert start.params == {"conversation": "conv_9", "caller": "447700900000"}
    assert s.parse(bytes(640)) == [Media(bytes(640))]
    with pytest.raises(BadFrame, match="odd length"):
        s.parse(bytes(641))
    assert s.media(b"\x01\x02") == b"\x01\x02"  # binary frames out
    assert json.loads(s.clear()) == {"action": "clear"}
    assert json.loads(s.mark("m4")) == {"action": "notify", "payload": {"name": "m4"}}
    assert s.parse(json.dumps({"event": "websocket:notify", "payload": {"name": "m4"}})) == [MarkAck("m4")]
    assert s.parse(json.dumps({"event": "websocket:cleared"})) == []
    assert s.parse(json.dumps({"event": "websocket:dtmf", "digit": "7", "duration": 250})) == [Dtmf("7")]
    with pytest.raises(BadFrame, match="unknown event"):
        s.parse(json.dumps({"event": "websocket:weird"}))


def test_vonage_8k_and_bad_content_type() -> None:
    [start] = VonageSerializer().parse(json.dumps({"event": "websocket:connected",
                                                   "content-type": "audio/l16; rate=8000"}))
    assert isinstance(start, Start) and start.fmt == AudioFormat("pcm16", 8000)
    with pytest.raises(BadFrame, match="content-type"):
        VonageSerializer().parse(json.dumps({"event": "websocket:connected", "content-type": "audio/opus"}))


def test_every_carrier_is_registered() -> None:
    assert sorted(CARRIERS) == ["telnyx", "twilio", "vonage"]


# --- hostile frames: a carrier parser raises BadFrame and nothing else -------------------------------

FRAME_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["event", "start", "media", "payload", "streamSid", "stream_id", "media_format",
                         "mediaFormat", "sample_rate", "encoding", "chunk", "dtmf", "digit", "mark", "name",
                         "content-type", "sequence_number"]) | st.text(max_size=6), children, max_size=4),
    max_leaves=14,
)
FRAMES = st.one_of(FRAME_JSON.map(json.dumps), st.text(max_size=100), st.binary(max_size=64),
                   st.integers(1, 5000).map(lambda n: "[" * n + "]" * n))


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
@settings(max_examples=300, deadline=None)
@given(frames=st.lists(FRAMES, max_size=4))
def test_fuzzed_frames_only_ever_raise_bad_frame(carrier: str, frames: list[str | bytes]) -> None:
    serializer = CARRIERS[carrier]()
    started = {"twilio": twilio_start(), "telnyx": telnyx("start", 1, start={"media_format": {"encoding": "PCMU"}}),
               "vonage": json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"})}
    for frame in [started[carrier], *frames]:
        with contextlib.suppress(BadFrame):
            serializer.parse(frame)


@pytest.mark.parametrize("rate", ["abc", [8000], None, {"x": 1}, 8000.5, True])
def test_telnyx_odd_sample_rates_are_bad_frames(rate: object) -> None:
    with pytest.raises(BadFrame, match="unsupported media format"):
        TelnyxSerializer().parse(telnyx("start", 1, start={"media_format": {"encoding": "PCMU", "sample_rate": rate}}))


def test_a_second_start_never_switches_the_stream() -> None:
    s = telnyx_started()
    with pytest.raises(BadFrame, match="second 'start'"):
        s.parse(json.dumps({"event": "start", "stream_id": "st-other",
                            "start": {"media_format": {"encoding": "PCMU"}}}))
    assert s.stream_id == "st-1"
    t = TwilioSerializer()
    t.parse(twilio_start())
    with pytest.raises(BadFrame, match="second 'start'"):
        t.parse(twilio_start())
    v = VonageSerializer()
    v.parse(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}))
    with pytest.raises(BadFrame, match="second"):
        v.parse(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=8000"}))
    assert v.fmt == AudioFormat("pcm16", 16000)
