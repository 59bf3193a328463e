"""Audio files for the model-server endpoints (``audio_api``): WAV in (any rate, channels and
integer width, to 16 kHz mono for the ASR), subtitles out (SubRip, WebVTT), and speech out as a
stream of bytes in one response format.

Compressed formats (mp3, Ogg Opus, AAC in ADTS, FLAC) are encoded with PyAV, which bundles
FFmpeg's encoders and is already installed for aiortc and faster-whisper: no ffmpeg program, no
new dependency. Every output is 24 kHz mono 16-bit, like OpenAI's.
"""

from __future__ import annotations

import contextlib
import io
import struct
import wave
from collections.abc import Sequence
from typing import Any

import av
import numpy as np
import soxr

from voicebot.core.audio import AudioFormat, OutputAudio, encode
from voicebot.core.types import ENGINE_RATE, Float32Array, Int16Array
from voicebot.errors import HttpError

#: What every speech format carries (``pcm`` is raw): OpenAI's 24 kHz 16-bit mono.
SPEECH_RATE = 24_000
_WAV_WIDTHS = (1, 2, 3, 4)
_RATES = (1_000, 384_000)


# --- WAV in -----------------------------------------------------------------------------------

def _bad_file(detail: str) -> HttpError:
    return HttpError(400, f"{detail} This server decodes WAV files (RIFF/WAVE, integer PCM, 8/16/24/32-bit, "
                     "any sample rate and channel count); convert other formats first.",
                     "invalid_file_format", param="file")


def decode_wav(data: bytes) -> tuple[Float32Array, float]:
    """A WAV file's audio as 16 kHz float32 mono (channels averaged), and its duration in seconds.

    A data chunk longer than the file (a streamed WAV, size 0xFFFFFFFF) is read to the end."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise _bad_file("The file is not a WAV file.")
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, struct.error) as exc:
        raise _bad_file(f"The WAV file cannot be read ({exc}).") from None
    if width not in _WAV_WIDTHS or channels < 1 or not _RATES[0] <= rate <= _RATES[1]:
        raise _bad_file(f"The WAV file's format ({channels} channels, {8 * width}-bit, {rate} Hz) is not supported.")
    frame = channels * width
    raw = raw[:len(raw) - len(raw) % frame]
    if not raw:
        raise _bad_file("The WAV file holds no audio.")
    samples = pcm_to_float(raw, width).reshape(-1, channels).mean(axis=1, dtype=np.float32)
    duration = samples.shape[0] / rate
    if rate != ENGINE_RATE:
        samples = soxr.resample(samples, rate, ENGINE_RATE, quality="HQ").astype(np.float32, copy=False)
    out: Float32Array = np.clip(samples, -1.0, 1.0)
    return out, duration


def pcm_to_float(raw: bytes, width: int) -> Float32Array:
    """Little-endian integer PCM (8-bit unsigned, 16/24/32-bit signed) as float32 in [-1, 1)."""
    if width == 1:
        return ((np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        return (ints / float(1 << 23)).astype(np.float32)
    kind = "<i2" if width == 2 else "<i4"
    return (np.frombuffer(raw, dtype=kind) / float(1 << (8 * width - 1))).astype(np.float32)

# --- Transcripts out ----------------------------------------------------------------------------

def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: Sequence[dict[str, Any]]) -> str:
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""
    return "".join(f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text'].strip()}\n\n"
                   for i, s in enumerate(segments, 1))


def to_vtt(segments: Sequence[dict[str, Any]]) -> str:
    """WebVTT: the ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    return "WEBVTT\n\n" + "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text'].strip()}\n\n"
                                  for s in segments)


def joined_text(segments: Sequence[dict[str, Any]]) -> str:
    return " ".join(t for t in (s["text"].strip() for s in segments) if t)


# --- Speech out -----------------------------------------------------------------------------------

class _Sink:
    """A write-only file for PyAV's muxer: what it wrote since the last :meth:`take` (no ``seek``:
    the muxer then writes a stream, never going back to patch a header)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


#: Compressed formats: PyAV's container, codec and bit rate (PyAV bundles FFmpeg's encoders and is
#: already here for aiortc and faster-whisper, so these cost no new dependency).
CODECS: dict[str, tuple[str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", 64_000), "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000), "flac": ("flac", "flac", None),
}


class Encoder:
    """TTS samples (any rate) -> the bytes of one response format, as a stream. Not thread-safe:
    one clause at a time (each in a worker thread)."""

    def __init__(self, fmt: str, source_rate: int) -> None:
        self.fmt = fmt
        self._out = OutputAudio(source_rate, AudioFormat("pcm16", SPEECH_RATE))
        self._sink: _Sink | None = None
        self._container: Any = None
        self._stream: Any = None
        self._pts = 0
        if fmt in CODECS:
            container, codec, bit_rate = CODECS[fmt]
            self._sink = _Sink()
            self._container = av.open(self._sink, "w", format=container)
            self._stream = self._container.add_stream(codec, rate=SPEECH_RATE, layout="mono")
            if bit_rate:
                self._stream.bit_rate = bit_rate

    def head(self) -> bytes:
        return wav_header(SPEECH_RATE) if self.fmt == "wav" else b""

    def encode(self, samples: Int16Array) -> bytes:
        return self._bytes(self._out.convert(samples))

    def finish(self) -> bytes:
        """The last bytes: the resampler's tail, the encoder's delay, the container's trailer."""
        out = self._bytes(self._out.finish())
        if self._sink is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            out += self._sink.take()
        return out

    def close(self) -> None:
        """Let go of the encoder (a stream that ends early: the client went away, the TTS failed)."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None

    def _bytes(self, samples: Int16Array) -> bytes:
        if self._sink is None:
            return encode(self._out.fmt, samples)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SPEECH_RATE
            frame.pts = self._pts
            self._pts += samples.size
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()


SPEECH_FORMATS = ("mp3", "wav", "pcm", "opus", "aac", "flac")
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg", "opus": "audio/ogg",
               "aac": "audio/aac", "flac": "audio/flac"}


def wav_header(rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A 16-bit PCM WAV header whose sizes say "unknown" (0xFFFFFFFF): the audio follows as it is made."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * width, channels * width, 8 * width)
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", unknown))
