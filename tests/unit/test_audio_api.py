"""The model-server endpoints' audio files: WAV decoding, subtitles, speech encoders, form checks."""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest
from starlette.datastructures import FormData

from voicebot.errors import HttpError
from voicebot.transports.audio_api import _ask, speech_clauses
from voicebot.transports.audio_files import (
    SPEECH_RATE,
    Encoder,
    decode_wav,
    joined_text,
    pcm_to_float,
    to_srt,
    to_vtt,
    wav_header,
)


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * hz * t)


def wav_file(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    x = np.clip(samples, -1, 1)
    if width == 1:
        raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    else:
        ints = np.round(x * ((1 << (8 * width - 1)) - 1)).astype("<i4")
        raw = ints.astype("<i2").tobytes() if width == 2 else (
            ints.reshape(-1, 1).view(np.uint8)[:, :3].tobytes() if width == 3 else ints.tobytes())
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return out.getvalue()


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_every_integer_width_decodes_to_the_same_signal(width: int) -> None:
    audio, seconds = decode_wav(wav_file(tone(16_000), 16_000, width=width))
    assert seconds == pytest.approx(1.0)
    assert audio.dtype == np.float32 and audio.shape == (16_000,)
    tolerance = 0.01 if width == 1 else 1e-4
    assert np.max(np.abs(audio - tone(16_000))) < tolerance


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000])
def test_any_rate_is_resampled_to_16_khz(rate: int) -> None:
    audio, seconds = decode_wav(wav_file(tone(rate, 2.0), rate))
    assert seconds == pytest.approx(2.0)
    assert abs(audio.shape[0] - 32_000) <= 2
    # Still a 440 Hz tone: its spectrum peaks there.
    spectrum = np.abs(np.fft.rfft(audio[4000:-4000]))
    assert np.fft.rfftfreq(audio[4000:-4000].shape[0], 1 / 16_000)[np.argmax(spectrum)] == pytest.approx(440, abs=2)


def test_channels_are_averaged() -> None:
    left = tone(16_000)
    stereo = np.stack([left, -left * 0.5], axis=1).reshape(-1)
    audio, _ = decode_wav(wav_file(stereo, 16_000, channels=2))
    assert np.max(np.abs(audio - left * 0.25)) < 1e-3


def test_24_bit_negative_samples_are_sign_extended() -> None:
    raw = struct.pack("<i", -(1 << 23))[:3] + struct.pack("<i", (1 << 23) - 1)[:3] + struct.pack("<i", -1)[:3]
    assert pcm_to_float(raw, 3).tolist() == pytest.approx([-1.0, 1.0 - 2 ** -23, -(2 ** -23)])


def test_a_streamed_wav_of_unknown_length_is_read_to_the_end() -> None:
    pcm = (tone(24_000, 0.5) * 32767).astype("<i2").tobytes()
    audio, seconds = decode_wav(wav_header(24_000) + pcm)
    assert seconds == pytest.approx(0.5)
    assert abs(audio.shape[0] - 8_000) <= 2


def test_a_dangling_partial_frame_is_dropped() -> None:
    data = wav_file(tone(16_000, 0.1), 16_000)
    audio, _ = decode_wav(data + b"\x01")  # not in the data chunk's size: ignored anyway
    assert audio.shape[0] == 1_600


@pytest.mark.parametrize(("data", "says"), [
    (b"", "not a WAV"),
    (b"ID3\x04" + bytes(100), "not a WAV"),
    (b"OggS" + bytes(100), "not a WAV"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot be read"),
    (b"RIFF\x04\x00\x00\x00WAVE", "cannot be read"),
])
def test_broken_or_foreign_files_are_400(data: bytes, says: str) -> None:
    with pytest.raises(HttpError) as caught:
        decode_wav(data)
    assert caught.value.status == 400 and caught.value.code == "invalid_file_format"
    assert caught.value.param == "file" and says in caught.value.message and "WAV" in caught.value.message


def test_a_float_wav_is_refused_clearly() -> None:
    fmt = struct.pack("<HHIIHH", 3, 1, 16_000, 64_000, 4, 32)  # WAVE_FORMAT_IEEE_FLOAT
    data = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 8) + bytes(8)
    with pytest.raises(HttpError) as caught:
        decode_wav(b"RIFF" + struct.pack("<I", len(data)) + data)
    assert "integer PCM" in caught.value.message


def test_an_empty_wav_is_400() -> None:
    with pytest.raises(HttpError, match="no audio"):
        decode_wav(wav_file(np.zeros(0), 16_000))


SEGMENTS = [
    {"id": 0, "start": 0.0, "end": 2.5, "text": " Hello there."},
    {"id": 1, "start": 2.5, "end": 3661.0015, "text": " A long time later. "},
]


def test_srt() -> None:
    assert to_srt(SEGMENTS) == ("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
                                "2\n00:00:02,500 --> 01:01:01,002\nA long time later.\n\n")


def test_vtt() -> None:
    assert to_vtt(SEGMENTS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
                                "00:00:02.500 --> 01:01:01.002\nA long time later.\n\n")


def test_no_segments() -> None:
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n" and joined_text([]) == ""
    assert joined_text(SEGMENTS) == "Hello there. A long time later."


def test_the_streamed_wav_header() -> None:
    header = wav_header(24_000)
    assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack("<HHIIHH", header[20:36]) == (1, 1, 24_000, 48_000, 2, 16)
    assert header[36:40] == b"data" and header[40:44] == b"\xff\xff\xff\xff"


def test_pcm_is_24_khz_s16le() -> None:
    enc = Encoder("pcm", 22_050)
    data = enc.encode((tone(22_050) * 32767).astype(np.int16)) + enc.finish()
    assert abs(len(data) // 2 - SPEECH_RATE) <= 2 and enc.head() == b""


@pytest.mark.parametrize(("fmt", "container"), [("mp3", "mp3"), ("opus", "ogg"), ("aac", "aac"), ("flac", "flac")])
def test_compressed_formats_stream_and_decode(fmt: str, container: str) -> None:
    enc = Encoder(fmt, 22_050)
    pieces = [enc.encode((tone(22_050, 0.5) * 20_000).astype(np.int16)) for _ in range(4)]
    pieces.append(enc.finish())
    assert sum(map(len, pieces[:-1])) > 0  # bytes leave before the end
    with av.open(io.BytesIO(b"".join(pieces)), format=container) as f:
        decoded = sum(frame.samples for frame in f.decode(audio=0))
        rate = f.streams.audio[0].rate
    assert decoded / rate == pytest.approx(2.0, abs=0.1)


def test_an_encoder_closed_early_lets_go() -> None:
    enc = Encoder("mp3", 22_050)
    enc.encode(np.zeros(2205, dtype=np.int16))
    enc.close()
    enc.close()


def test_speech_is_cut_into_clauses_with_a_short_first_one() -> None:
    text = ("Yes of course, here is a fairly long first sentence that goes on for a while. "
            "Then a second one follows it. And a third sentence ends the text.")
    clauses = speech_clauses(text)
    assert clauses[0] == "Yes of course,"  # the first audio leaves after three words
    assert len(clauses) >= 3
    assert " ".join(clauses).split() == text.split()
    assert speech_clauses("   ") == []


def form(**fields: str | list[str]) -> FormData:
    items = [(k.replace("__", "[]"), v) for k, vs in fields.items() for v in (vs if isinstance(vs, list) else [vs])]
    return FormData(items)


def test_the_form_defaults() -> None:
    ask = _ask(form())
    assert (ask.response_format, ask.language, ask.prompt, ask.temperature, ask.words) == ("json", None, None,
                                                                                           None, False)


def test_the_form_fields() -> None:
    ask = _ask(form(response_format="verbose_json", language="EN", prompt="Dashwood", temperature="0.2",
                    timestamp_granularities__=["word", "segment"]))
    assert (ask.response_format, ask.language, ask.prompt, ask.temperature, ask.words) == (
        "verbose_json", "en", "Dashwood", 0.2, True)


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": "diarized_json"}, "response_format"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": "1.5"}, "temperature"),
    ({"language": "english please"}, "language"),
    ({"language": "zz"}, "language"),
    ({"stream": "true"}, "stream"),
    ({"timestamp_granularities__": ["char"]}, "timestamp_granularities"),
])
def test_bad_form_fields_are_400(fields: dict[str, str], param: str) -> None:
    with pytest.raises(HttpError) as caught:
        _ask(form(**fields))
    assert caught.value.status == 400 and caught.value.param == param
