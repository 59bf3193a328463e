"""PhonePlayout: 20 ms framing, marks as the playback clock, and what a clear does to them."""

from __future__ import annotations

from voicebot.core.audio import PCMU, AudioFormat
from voicebot.transports.phone_playout import Frame, Mark, PhonePlayout


def drain(p: PhonePlayout) -> list[Frame | Mark]:
    out = []
    while (x := p.pop()) is not None:
        out.append(x)
    return out


def test_reply_is_cut_into_160_byte_frames_with_a_mark_every_100_ms_and_at_the_end() -> None:
    p = PhonePlayout(PCMU)
    p.push("item_a", bytes(300))  # deltas of any size
    p.push("item_a", bytes(700))  # 1000 bytes = 125 ms
    p.end_item()
    out = drain(p)
    frames = [o for o in out if isinstance(o, Frame)]
    marks = [o for o in out if isinstance(o, Mark)]
    assert [len(f.audio) for f in frames] == [160] * 7
    assert frames[-1].audio[-120:] == b"\xff" * 120, "last frame padded with μ-law silence"
    assert [(m.name, m.end_ms) for m in marks] == [("m1", 100.0), ("m2", 140.0)]
    assert isinstance(out[5], Mark), "the mark follows the 5th frame"
    assert p.sent_ms["item_a"] == 140.0


def test_acks_advance_the_heard_clock_in_order() -> None:
    p = PhonePlayout(PCMU)
    p.push("item_a", bytes(160 * 15))
    drain(p)
    assert p.playing, "sent but not acknowledged"
    assert p.ack("m2") is not None  # m1 is implied played
    assert p.heard_ms == {"item_a": 200.0}
    assert p.ack("m1") is None, "already implied"
    assert p.ack("nope") is None
    p.ack("m3")
    assert p.heard_ms["item_a"] == 300.0
    assert not p.playing


def test_clear_drops_the_queue_and_ignores_echoes_of_flushed_marks() -> None:
    p = PhonePlayout(PCMU)
    p.push("item_a", bytes(160 * 20))  # 400 ms, marks m1..m4
    sent = [p.pop() for _ in range(12)]  # 10 frames + m1 + m2 sent
    assert [o.name for o in sent if isinstance(o, Mark)] == ["m1", "m2"]
    p.ack("m1")
    assert p.playing_item() == "item_a"
    p.clear()
    assert p.pop() is None and not p.playing
    assert p.frames_dropped == 10
    assert p.ack("m2") is None, "echoed by the carrier's clear: dropped, not played"
    assert p.heard_ms["item_a"] == 100.0


def test_new_item_starts_a_new_clock_and_l16_pads_with_zeros() -> None:
    fmt = AudioFormat("pcm16", 16_000)
    p = PhonePlayout(fmt)
    assert p.frame_bytes == 640
    p.push("a", bytes([1]) * 700)
    p.push("b", bytes([2]) * 640)  # implies the end of "a"
    p.end_item()
    out = drain(p)
    assert [(o.item_id, o.end_ms) for o in out if isinstance(o, Mark)] == [("a", 40.0), ("b", 20.0)]
    a_frames = [o.audio for o in out if isinstance(o, Frame) and o.item_id == "a"]
    assert a_frames[1] == bytes([1]) * 60 + bytes(580)
