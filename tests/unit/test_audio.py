"""voicebot.core.audio: formats, G.711 (bit-exact vs audioop), resampling, framing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from voicebot.core.audio import (
    ENGINE_RATE,
    PCM16_24K,
    PCMA,
    PCMU,
    AudioFormat,
    AudioFormatError,
    Framer,
    InputAudio,
    OutputAudio,
    StreamResampler,
    alaw2lin,
    decode,
    encode,
    float32_to_int16,
    int16_to_float32,
    lin2alaw,
    lin2ulaw,
    resample,
    ulaw2lin,
)
from voicebot.errors import VoicebotError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13: the reference while it lasts

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def sine(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return float32_to_int16(amp * np.sin(2 * np.pi * freq * t))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def middle(x: np.ndarray) -> np.ndarray:
    """Skip the filter's edge transients."""
    return x[x.size // 8 : -x.size // 8]


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"type": "audio/pcm", "rate": 24000}, AudioFormat("pcm16", 24000)),
        ({"type": "audio/pcm"}, AudioFormat("pcm16", 24000)),
        ({"type": "audio/pcm", "rate": 16000}, AudioFormat("pcm16", 16000)),
        ({"type": "audio/pcm", "rate": 48000}, AudioFormat("pcm16", 48000)),
        ({"type": "audio/pcm", "rate": 8000}, AudioFormat("pcm16", 8000)),
        ({"type": "audio/pcmu"}, PCMU),
        ({"type": "audio/pcma", "rate": 8000}, PCMA),
        ("pcm16", PCM16_24K),
        ("g711_ulaw", PCMU),
        ("g711_alaw", PCMA),
    ],
)
def test_parse_accepted(value: object, expected: AudioFormat) -> None:
    assert AudioFormat.parse(value) == expected
    assert AudioFormat.parse(expected) is expected


@pytest.mark.parametrize(
    "value",
    [
        "pcm24",
        "audio/pcm",
        {"type": "audio/pcm", "rate": 44100},
        {"type": "audio/pcm", "rate": "24000"},
        {"type": "audio/pcm", "rate": True},
        {"type": "audio/pcmu", "rate": 16000},
        {"type": "audio/opus"},
        {"rate": 24000},
        None,
        42,
        ["pcm16"],
    ],
)
def test_parse_rejected(value: object) -> None:
    with pytest.raises(AudioFormatError) as info:
        AudioFormat.parse(value)
    assert isinstance(info.value, VoicebotError)


def test_parse_error_names_accepted_values() -> None:
    with pytest.raises(AudioFormatError, match=r"audio/pcmu.*g711_ulaw"):
        AudioFormat.parse({"type": "audio/flac"})


def test_constructor_validates() -> None:
    with pytest.raises(AudioFormatError):
        AudioFormat("pcmu", 16000)
    with pytest.raises(AudioFormatError):
        AudioFormat("mp3", 24000)  # type: ignore[arg-type]


def test_to_wire_round_trips() -> None:
    assert PCM16_24K.to_wire() == {"type": "audio/pcm", "rate": 24000}
    assert PCMU.to_wire() == {"type": "audio/pcmu"}
    assert PCMA.to_wire() == {"type": "audio/pcma"}
    for fmt in (PCM16_24K, PCMU, PCMA, AudioFormat("pcm16", 16000)):
        assert AudioFormat.parse(fmt.to_wire()) == fmt
    assert [f.to_legacy() for f in (PCM16_24K, PCMU, PCMA)] == ["pcm16", "g711_ulaw", "g711_alaw"]
    with pytest.raises(AudioFormatError):
        AudioFormat("pcm16", 16000).to_legacy()


def test_sizes() -> None:
    assert PCM16_24K.bytes_per_sample == 2
    assert PCMU.bytes_per_sample == 1
    assert PCM16_24K.bytes_for_ms(20) == 960
    assert PCMU.bytes_for_ms(20) == 160
    assert PCM16_24K.ms_for_bytes(960) == pytest.approx(20.0)
    assert PCMA.ms_for_bytes(8000) == pytest.approx(1000.0)


# --- G.711, bit-exact with audioop -------------------------------------------------------


def test_lin2ulaw_matches_audioop_for_every_sample() -> None:
    assert lin2ulaw(ALL_INT16) == audioop.lin2ulaw(ALL_INT16.astype("<i2").tobytes(), 2)


def test_lin2alaw_matches_audioop_for_every_sample() -> None:
    assert lin2alaw(ALL_INT16) == audioop.lin2alaw(ALL_INT16.astype("<i2").tobytes(), 2)


def test_ulaw2lin_matches_audioop_for_every_code() -> None:
    expected = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype="<i2")
    np.testing.assert_array_equal(ulaw2lin(ALL_CODES), expected)


def test_alaw2lin_matches_audioop_for_every_code() -> None:
    expected = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype="<i2")
    np.testing.assert_array_equal(alaw2lin(ALL_CODES), expected)


@pytest.mark.parametrize("fmt", [PCMU, PCMA])
def test_g711_round_trip_is_stable(fmt: AudioFormat) -> None:
    # decode(encode(decode(c))) == decode(c): the codes are fixed points of the quantiser.
    once = decode(fmt, ALL_CODES)
    np.testing.assert_array_equal(decode(fmt, encode(fmt, once)), once)


# --- PCM -------------------------------------------------------------------------------------


def test_pcm16_decode_encode_little_endian() -> None:
    data = b"\x01\x00\xff\xff\x00\x80\xff\x7f"
    samples = decode(PCM16_24K, data)
    assert samples.dtype == np.int16
    assert samples.tolist() == [1, -1, -32768, 32767]
    assert encode(PCM16_24K, samples) == data
    samples[0] = 5  # decode returns a writable copy, not a view of the caller's bytes


def test_pcm16_odd_bytes_rejected() -> None:
    with pytest.raises(AudioFormatError, match="even number of bytes"):
        decode(PCM16_24K, b"\x00\x01\x02")


def test_encode_rejects_non_int16() -> None:
    with pytest.raises(TypeError):
        encode(PCM16_24K, np.zeros(4, dtype=np.float32))


def test_float_conversions_clip_and_round() -> None:
    assert int16_to_float32(np.array([-32768, 0, 16384], dtype=np.int16)).tolist() == [-1.0, 0.0, 0.5]
    out = float32_to_int16(np.array([-2.0, -1.0, 0.99999, 1.0, 5.0, 0.5, 1.4 / 32768], dtype=np.float32))
    assert out.tolist() == [-32768, -32768, 32767, 32767, 32767, 16384, 1]
    np.testing.assert_array_equal(float32_to_int16(int16_to_float32(ALL_INT16)), ALL_INT16)


# --- resampling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(24000, 16000), (22050, 8000), (8000, 16000), (48000, 16000)]
)
@pytest.mark.parametrize("low_latency", [False, True])
def test_sine_keeps_frequency_and_amplitude(in_rate: int, out_rate: int, low_latency: bool) -> None:
    x = sine(1000, in_rate)
    r = StreamResampler(in_rate, out_rate, low_latency=low_latency)
    y = np.concatenate((r.process(x), r.flush()))
    assert abs(y.size - out_rate) <= 2  # 1 s in -> 1 s out
    assert dominant_freq(middle(y), out_rate) == pytest.approx(1000, abs=3)
    assert rms(middle(y)) == pytest.approx(rms(middle(x)), rel=0.01)


@pytest.mark.parametrize(("in_rate", "freq"), [(24000, 6000), (22050, 6000), (24000, 4500), (48000, 10000)])
@pytest.mark.parametrize("low_latency", [False, True])
def test_above_nyquist_is_removed(in_rate: int, freq: float, low_latency: bool) -> None:
    # A tone above the 4 kHz Nyquist of 8 kHz must vanish, not fold back as an alias.
    x = sine(freq, in_rate)
    r = StreamResampler(in_rate, 8000, low_latency=low_latency)
    y = np.concatenate((r.process(x), r.flush()))
    attenuation_db = 20 * np.log10(max(rms(middle(y)), 1e-9) / rms(x))
    assert attenuation_db <= -40


def test_one_shot_resample() -> None:
    x = sine(1000, 22050)
    y = resample(x, 22050, 8000)
    assert abs(y.size - 8000) <= 1
    assert dominant_freq(middle(y), 8000) == pytest.approx(1000, abs=3)
    np.testing.assert_array_equal(resample(x, 22050, 22050), x)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 16000), (8000, 16000), (22050, 24000)])
@pytest.mark.parametrize("low_latency", [False, True])
def test_streaming_in_odd_chunks_equals_one_pass(in_rate: int, out_rate: int, low_latency: bool) -> None:
    rng = np.random.default_rng(1)
    x = float32_to_int16(rng.normal(0, 0.1, in_rate // 2)) + sine(440, in_rate, 0.5)
    whole = StreamResampler(in_rate, out_rate, low_latency=low_latency)
    expected = np.concatenate((whole.process(x), whole.flush()))
    chunked = StreamResampler(in_rate, out_rate, low_latency=low_latency)
    pieces, pos = [], 0
    for size in [1, 7, 13, 160, 333, 1, 2, 4799, 999]:
        pieces.append(chunked.process(x[pos : pos + size]))
        pos += size
    pieces.append(chunked.process(x[pos:]))
    pieces.append(chunked.flush())
    got = np.concatenate(pieces)
    assert abs(got.size - expected.size) <= 1
    n = min(got.size, expected.size)
    assert np.max(np.abs(got[:n].astype(int) - expected[:n])) <= 2


def test_flush_makes_resampler_reusable() -> None:
    x = sine(1000, 24000, 0.25)
    r = StreamResampler(24000, 16000)
    first = np.concatenate((r.process(x), r.flush()))
    second = np.concatenate((r.process(x), r.flush()))
    np.testing.assert_array_equal(first, second)


def test_identity_fast_path_copies() -> None:
    r = StreamResampler(16000, 16000)
    x = sine(1000, 16000, 0.01)
    y = r.process(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    assert r.flush().size == 0


def test_resampler_clips_instead_of_wrapping() -> None:
    # A full-scale square wave overshoots after band-limiting (Gibbs); it must clip.
    x = np.tile(np.array([32767] * 12 + [-32768] * 12, dtype=np.int16), 1000)
    r = StreamResampler(24000, 16000)
    y = np.concatenate((r.process(x), r.flush()))
    assert y.dtype == np.int16
    assert y.max() == 32767
    assert y.min() == -32768
    # A wrap would put large values of the opposite sign next to each other.
    assert np.max(np.abs(np.diff(middle(y).astype(np.int32)))) < 65535


def test_empty_inputs() -> None:
    r = StreamResampler(24000, 16000)
    assert r.process(np.zeros(0, dtype=np.int16)).size == 0
    assert r.flush().size == 0


# --- framing ---------------------------------------------------------------------------------


def test_framer_accumulates_across_pushes() -> None:
    f = Framer(4)
    assert f.push(np.arange(3, dtype=np.int16)) == []
    assert f.pending == 3
    frames = f.push(np.arange(3, 13, dtype=np.int16))
    assert [fr.tolist() for fr in frames] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert f.pending == 1
    assert f.push(np.zeros(0, dtype=np.int16)) == []
    tail = f.flush(pad=True)
    assert tail is not None
    assert tail.tolist() == [12, 0, 0, 0]
    assert f.pending == 0
    assert f.flush(pad=True) is None


def test_framer_exact_multiple_and_unpadded_flush() -> None:
    f = Framer(512)
    frames = f.push(np.ones(1024, dtype=np.int16))
    assert len(frames) == 2
    assert all(fr.size == 512 for fr in frames)
    assert f.flush(pad=False) is None
    f.push(np.ones(5, dtype=np.int16))
    tail = f.flush(pad=False)
    assert tail is not None
    assert tail.size == 5


def test_framer_frames_do_not_alias_input() -> None:
    f = Framer(2)
    x = np.array([1, 2, 3], dtype=np.int16)
    (frame,) = f.push(x)
    x[:] = 0
    assert frame.tolist() == [1, 2]
    f.clear()
    assert f.pending == 0


def test_framer_rejects_bad_size() -> None:
    with pytest.raises(ValueError):
        Framer(0)


# --- session paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt", [PCM16_24K, PCMU, PCMA, AudioFormat("pcm16", 16000), AudioFormat("pcm16", 48000)]
)
def test_input_audio_gives_16k(fmt: AudioFormat) -> None:
    data = encode(fmt, sine(1000, fmt.rate))
    inp = InputAudio(fmt)
    step = fmt.bytes_for_ms(20) + 1  # odd sizes on purpose: pcm16 must carry the odd byte over
    out = [inp.feed(data[i : i + step]) for i in range(0, len(data), step)]
    out.append(inp.flush())
    y = np.concatenate(out)
    assert abs(y.size - ENGINE_RATE) <= 2
    assert dominant_freq(middle(y), ENGINE_RATE) == pytest.approx(1000, abs=3)
    assert rms(middle(y)) == pytest.approx(rms(sine(1000, ENGINE_RATE)), rel=0.05)


def test_input_audio_reset_drops_odd_byte() -> None:
    inp = InputAudio(AudioFormat("pcm16", 16000))
    assert inp.feed(b"\x01").size == 0
    inp.reset()
    assert inp.feed(b"\x02\x00").tolist() == [2]


@pytest.mark.parametrize("fmt", [PCM16_24K, PCMU, PCMA])
def test_output_audio_stream_and_finish(fmt: AudioFormat) -> None:
    out = OutputAudio(22050, fmt)
    x = sine(1000, 22050)

    def stream() -> bytes:
        pieces = [out.convert(x[i : i + 1000]) for i in range(0, x.size, 1000)] + [out.finish()]
        return encode(fmt, np.concatenate(pieces))

    data = stream()
    y = decode(fmt, data)
    assert abs(y.size - fmt.rate) <= 2
    assert dominant_freq(middle(y), fmt.rate) == pytest.approx(1000, abs=3)
    # The next response starts from a clean filter: same input, same bytes.
    assert stream() == data


def test_output_audio_reset_after_barge_in() -> None:
    out = OutputAudio(22050, PCM16_24K)
    out.convert(sine(1000, 22050, 0.3))
    out.reset()
    assert out.finish().size == 0  # nothing of the interrupted reply leaks into the next one
