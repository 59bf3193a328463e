"""``/v1/audio/transcriptions`` and ``/v1/audio/speech`` through the official ``openai`` SDK, on the
real server with the embedded Whisper and Piper, with real human speech (pocketsphinx-testdata)."""

from __future__ import annotations

import io
import time
import wave
from collections.abc import Iterator

import av
import httpx
import numpy as np
import openai
import pytest
import soxr
from openai import OpenAI

from tests.conftest import API_KEY, ServerProcess, scaled
from tests.speech import utterance, wer
from tests.thread_server import ThreadServer

pytestmark = pytest.mark.e2e

SHORT = "sense_and_sensibility_01_austen_64kb-0880"  # "he was not an ill disposed young man"
LONG = "sense_and_sensibility_01_austen_64kb-0870"  # "and mister john dashwood had then leisure ..."
SPOKEN = "The quick brown fox jumps over the lazy dog. Then it runs back home to sleep."
STORY = " ".join([
    "Once upon a time there was a small village at the edge of a great forest.",
    "Every morning the baker opened his shop and the smell of fresh bread filled the street.",
    "The children ran to school, laughing and shouting along the narrow lanes.",
    "In the afternoon the farmers came back from the fields with their tired horses.",
    "When the sun went down, the old men sat by the fountain and told stories of the past.",
    "At night the village was quiet, and only the owls could be heard in the trees.",
    "Years later, people still remembered those peaceful days with a smile.",
])


@pytest.fixture(scope="module")
def sdk(real_server: ServerProcess) -> OpenAI:
    return OpenAI(api_key=API_KEY, base_url=f"{real_server.http}/v1", max_retries=0, timeout=scaled(120))


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    """``samples`` (float in [-1, 1], shape (n,) or (n, channels)) as a WAV file."""
    scale = float(1 << (8 * width - 1)) - 1
    ints = np.round(np.clip(samples, -1, 1) * scale).astype("<i4")
    if width == 2:
        raw = ints.astype("<i2").tobytes()
    elif width == 3:
        raw = ints.reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
    else:
        raw = ints.tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return out.getvalue()


def speech_wav(name: str) -> bytes:
    return utterance(name).path.read_bytes()


def speech_float(name: str) -> np.ndarray:
    return utterance(name).samples().astype(np.float32) / 32768.0


def test_json_is_the_default(sdk: OpenAI) -> None:
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("he.wav", speech_wav(SHORT)))
    assert wer(utterance(SHORT).text, result.text) <= 0.25, result.text


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats(sdk: OpenAI, fmt: str) -> None:
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("he.wav", speech_wav(SHORT)),
                                             response_format=fmt)  # type: ignore[call-overload]
    assert isinstance(result, str)
    if fmt == "srt":
        lines = result.strip().splitlines()
        assert lines[0] == "1" and lines[1].startswith("00:00:00,000 --> 00:00:0"), result
        text = " ".join(lines[2:])
    elif fmt == "vtt":
        assert result.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:0"), result
        text = " ".join(line for line in result.splitlines()[2:] if "-->" not in line)
    else:
        text = result
    assert wer(utterance(SHORT).text, text) <= 0.25, result


def test_verbose_json_has_timed_segments(sdk: OpenAI) -> None:
    audio = utterance(LONG)
    seconds = audio.samples().shape[0] / 16_000
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("long.wav", speech_wav(LONG)),
                                             response_format="verbose_json", timestamp_granularities=["segment"])
    assert result.language == "english"
    assert result.duration == pytest.approx(seconds, abs=0.01)
    assert wer(audio.text, result.text) <= 0.25, result.text
    assert result.segments
    ends = [0.0]
    for i, seg in enumerate(result.segments):
        assert seg.id == i and seg.start >= ends[-1] - 0.01 and seg.end > seg.start
        assert seg.end <= seconds + 1.0 and seg.text.strip() and seg.tokens
        ends.append(seg.end)
    assert " ".join(s.text.strip() for s in result.segments) == result.text


def test_word_timestamps(sdk: OpenAI) -> None:
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("he.wav", speech_wav(SHORT)),
                                             response_format="verbose_json", timestamp_granularities=["word"])
    assert result.words and len(result.words) >= 6
    assert all(w.end >= w.start for w in result.words)


def test_language_prompt_and_temperature_are_accepted(sdk: OpenAI) -> None:
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("long.wav", speech_wav(LONG)),
                                             language="en", prompt="Mr. John Dashwood, from Sense and Sensibility.",
                                             temperature=0.0)
    assert wer(utterance(LONG).text, result.text) <= 0.2, result.text
    assert "Dashwood" in result.text


def test_8khz_mono_wav(sdk: OpenAI) -> None:
    narrow = soxr.resample(speech_float(LONG), 16_000, 8_000)
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("phone.wav", wav_bytes(narrow, 8_000)))
    assert wer(utterance(LONG).text, result.text) <= 0.3, result.text


def test_44k1_stereo_24_bit_wav(sdk: OpenAI) -> None:
    wide = soxr.resample(speech_float(LONG), 16_000, 44_100)
    stereo = np.stack([wide, wide * 0.5], axis=1)
    data = wav_bytes(stereo, 44_100, channels=2, width=3)
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("cd.wav", data),
                                             response_format="verbose_json")
    assert result.duration == pytest.approx(wide.shape[0] / 44_100, abs=0.01)
    assert wer(utterance(LONG).text, result.text) <= 0.25, result.text


@pytest.mark.parametrize("data", [b"ID3\x03\x00 not a wav at all" * 10, b"RIFF\x24\x00\x00\x00WAVEfmt "])
def test_a_file_that_is_not_a_wav_is_400(sdk: OpenAI, data: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=("song.mp3", data))
    assert caught.value.code == "invalid_file_format"
    assert "WAV" in caught.value.message


def test_an_unknown_response_format_is_400(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=("he.wav", speech_wav(SHORT)),
                                        response_format="diarized_json")
    assert caught.value.param == "response_format"


def decode(data: bytes, container: str) -> tuple[np.ndarray, int]:
    """A compressed speech response as float mono samples, decoded by PyAV (FFmpeg)."""
    with av.open(io.BytesIO(data), format=container) as f:
        stream = f.streams.audio[0]
        assert stream.channels == 1
        frames = [frame.to_ndarray().reshape(-1) for frame in f.decode(audio=0)]
        rate = int(stream.rate)
    pcm = np.concatenate(frames)
    if pcm.dtype.kind == "i":
        pcm = pcm / float(np.iinfo(pcm.dtype).max)
    return pcm.astype(np.float32), rate


CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac"}


def as_wav(fmt: str, data: bytes) -> bytes:
    """Speech in ``fmt`` as a WAV file the transcription endpoint reads."""
    if fmt == "wav":
        return data  # the streamed header (unknown length) is read to the end of the file
    if fmt == "pcm":
        return wav_bytes(np.frombuffer(data, dtype="<i2") / 32768.0, 24_000)
    samples, rate = decode(data, CONTAINERS[fmt])
    assert rate in (24_000, 48_000)  # an Opus decoder may answer at 48 kHz
    return wav_bytes(samples, rate)


@pytest.mark.parametrize("fmt", ["mp3", "wav", "pcm", "opus", "aac", "flac"])
def test_speech_round_trip(sdk: OpenAI, fmt: str) -> None:
    """Each format decoded back and transcribed by the endpoint itself: the text survives."""
    audio = sdk.audio.speech.create(model="tts-1", voice="alloy", input=SPOKEN,
                                    response_format=fmt)  # type: ignore[arg-type]
    data = audio.content
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
    elif fmt == "pcm":
        assert len(data) % 2 == 0 and len(data) / 48_000 > 2.0  # seconds of 24 kHz s16
    else:
        magic = {"mp3": (b"ID3", b"\xff\xf3", b"\xff\xfb"), "opus": (b"OggS",), "aac": (b"\xff\xf1", b"\xff\xf9"),
                 "flac": (b"fLaC",)}[fmt]
        assert data.startswith(magic), data[:8]
    heard = sdk.audio.transcriptions.create(model="whisper-1", file=(f"speech.{fmt}.wav", as_wav(fmt, data)))
    assert wer(SPOKEN, heard.text) <= 0.15, heard.text


def test_speech_is_streamed_as_it_is_synthesized(sdk: OpenAI) -> None:
    started = time.monotonic()
    arrivals: list[tuple[float, int]] = []
    with sdk.audio.speech.with_streaming_response.create(model="tts-1", voice="nova", input=STORY,
                                                         response_format="pcm") as response:
        assert response.headers["content-type"].startswith("audio/pcm")
        for chunk in response.iter_bytes():
            arrivals.append((time.monotonic() - started, len(chunk)))
    total = arrivals[-1][0]
    first = arrivals[0][0]
    audio_s = sum(n for _, n in arrivals) / 48_000
    assert audio_s > 20, audio_s  # the whole story was spoken
    assert first < total / 3, (first, total)  # the first clause came long before the last


def test_speed(sdk: OpenAI) -> None:
    def seconds(speed: float) -> float:
        pcm = sdk.audio.speech.create(model="tts-1", voice="alloy", input=SPOKEN, response_format="pcm",
                                      speed=speed).content
        return len(pcm) / 48_000

    normal, fast = seconds(1.0), seconds(2.0)
    assert fast < normal * 0.7, (normal, fast)


@pytest.mark.parametrize("text", ["", "   ", "x" * 4097])
def test_empty_or_oversize_input_is_400(sdk: OpenAI, text: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.speech.create(model="tts-1", voice="alloy", input=text)
    assert caught.value.param == "input"


def test_unsupported_speech_format_names_the_supported_ones(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.speech.create(model="tts-1", voice="alloy", input="Hello.",
                                response_format="ogg_vorbis")  # type: ignore[arg-type]
    assert caught.value.param == "response_format"
    assert "wav" in caught.value.message and "pcm" in caught.value.message


def test_mp3_is_the_default_and_any_voice_is_spoken(sdk: OpenAI) -> None:
    audio = sdk.audio.speech.create(model="gpt-4o-mini-tts", voice={"id": "voice_1234"}, input="Good morning.",
                                    instructions="Speak cheerfully.")
    assert audio.response.headers["content-type"] == "audio/mpeg"
    samples, _rate = decode(audio.content, "mp3")
    assert samples.shape[0] > 0.3 * 24_000


def test_a_wrong_key_is_401(real_server: ServerProcess) -> None:
    bad = OpenAI(api_key="wrong", base_url=f"{real_server.http}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.audio.transcriptions.create(model="whisper-1", file=("he.wav", speech_wav(SHORT)))
    with pytest.raises(openai.AuthenticationError):
        bad.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")


# --- Fake engines (tests/thread_server.py): an ASR without timestamps, a TTS without speed ---------

@pytest.fixture(scope="module")
def fake() -> Iterator[ThreadServer]:
    with ThreadServer(api_keys=(API_KEY,), max_audio_upload_bytes=200_000) as s:
        yield s


def test_an_asr_without_timestamps_gives_one_segment(fake: ThreadServer) -> None:
    client = OpenAI(api_key=API_KEY, base_url=f"{fake.http}/v1", max_retries=0)
    seconds = utterance(SHORT).samples().shape[0] / 16_000
    result = client.audio.transcriptions.create(model="whisper-1", file=("he.wav", speech_wav(SHORT)),
                                                response_format="verbose_json", prompt="ignored here")
    assert result.text == "hello there"
    assert [(s.id, s.start, s.text) for s in result.segments or []] == [(0, 0.0, "hello there")]
    assert result.segments and result.segments[0].end == pytest.approx(seconds, abs=0.01)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("he.wav", speech_wav(SHORT)),
                                             response_format="srt")
    assert srt == f"1\n00:00:00,000 --> 00:00:0{seconds:.3f}".replace(".", ",") + "\nhello there\n\n"


def test_a_tts_without_speed_still_speaks(fake: ThreadServer) -> None:
    client = OpenAI(api_key=API_KEY, base_url=f"{fake.http}/v1", max_retries=0)
    pcm = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="pcm",
                                     speed=2.0).content
    assert len(pcm) > 0.1 * 48_000  # ToneTts: 20 ms per character, resampled to 24 kHz


def test_an_upload_over_the_limit_is_413(fake: ThreadServer) -> None:
    client = OpenAI(api_key=API_KEY, base_url=f"{fake.http}/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", b"RIFF" + bytes(300_000)))
    assert caught.value.status_code == 413


@pytest.mark.parametrize("body", [{"files": {"model": (None, "whisper-1")}},  # multipart without a file
                                  {"json": {"model": "whisper-1"}}])  # not multipart at all
def test_a_request_without_a_file_is_400(fake: ThreadServer, body: dict[str, object]) -> None:
    response = httpx.post(f"{fake.http}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {API_KEY}"},
                          **body)  # type: ignore[arg-type]
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"
