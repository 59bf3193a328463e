"""Audio formats, G.711 codecs, streaming resampling and framing: bytes in, samples out.

Sans-I/O: nothing here blocks, sleeps or knows about sockets. A transport hands raw bytes to
:class:`InputAudio` and gets 16 kHz int16 samples for the VAD/ASR; the reply path hands TTS
samples to :class:`OutputAudio` and gets bytes in the client's format.

Design notes (measured on the 2-core dev box, see scripts/bench_core.py):

* Resampling uses libsoxr (``soxr.ResampleStream``), quality "HQ" (20-bit, stopband well
  below -100 dB), which costs ~0.1-0.3 % of one core in real time. "VHQ" bought nothing
  audible for speech and doubles the buffering delay.
* soxr's default streaming mode releases output in bursts (it filters in large internal
  blocks): 20 ms input chunks at 8 kHz -> 16 kHz came out up to ~115 ms late. That is
  barge-in latency on telephone lines, so the *input* path uses soxr's variable-rate engine
  (``vr=True``), whose delay is a constant ~10 ms (24 kHz) / ~30 ms (8 kHz) at about 2.5x
  the (still negligible) CPU. The output path keeps the default engine: TTS produces whole
  clauses at once, so burstiness is irrelevant there and ``finish()`` flushes the tail.
* G.711 uses 64 K / 256-entry lookup tables built once at import with the exact integer
  algorithm of CPython's ``audioop`` (removed in Python 3.13), so we are bit-exact with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import soxr

from voicebot.core.types import ENGINE_RATE, Float32Array, Int16Array
from voicebot.errors import VoicebotError

Encoding = Literal["pcm16", "pcmu", "pcma"]
#: Rates we accept for ``audio/pcm``; the GA API itself only defines 24000.
PCM_RATES = (8_000, 16_000, 24_000, 48_000)
G711_RATE = 8_000

_ACCEPTED = (
    "{'type': 'audio/pcm', 'rate': 24000} (rate 8000, 16000, 24000 or 48000), "
    "{'type': 'audio/pcmu'}, {'type': 'audio/pcma'}, "
    "or the legacy strings 'pcm16', 'g711_ulaw', 'g711_alaw'"
)
_LEGACY: dict[str, tuple[Encoding, int]] = {
    "pcm16": ("pcm16", 24_000),
    "g711_ulaw": ("pcmu", G711_RATE),
    "g711_alaw": ("pcma", G711_RATE),
}
_WIRE_TYPES: dict[str, Encoding] = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}


class AudioFormatError(VoicebotError, ValueError):
    """An audio format the server does not speak, or bytes that do not fit the format."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """What a client sends or wants back: the encoding and the sample rate (always mono)."""

    encoding: Encoding
    rate: int

    def __post_init__(self) -> None:
        if self.encoding == "pcm16":
            if self.rate not in PCM_RATES:
                raise AudioFormatError(f"unsupported pcm16 rate {self.rate!r}; accepted: {_ACCEPTED}")
        elif self.encoding in ("pcmu", "pcma"):
            if self.rate != G711_RATE:
                raise AudioFormatError(f"{self.encoding} audio is always 8000 Hz, not {self.rate!r}")
        else:
            raise AudioFormatError(f"unknown audio encoding {self.encoding!r}; accepted: {_ACCEPTED}")

    @classmethod
    def parse(cls, value: object) -> AudioFormat:
        """Read a Realtime GA format dict or a legacy beta string; raise AudioFormatError otherwise."""
        if isinstance(value, AudioFormat):
            return value
        if isinstance(value, str):
            if value in _LEGACY:
                encoding, rate = _LEGACY[value]
                return cls(encoding, rate)
            raise AudioFormatError(f"unsupported audio format {value!r}; accepted: {_ACCEPTED}")
        if not isinstance(value, dict):
            raise AudioFormatError(f"audio format must be an object or a string; accepted: {_ACCEPTED}")
        obj = cast(dict[str, Any], value)
        kind = obj.get("type")
        if not isinstance(kind, str) or kind not in _WIRE_TYPES:
            raise AudioFormatError(f"unsupported audio format type {kind!r}; accepted: {_ACCEPTED}")
        encoding = _WIRE_TYPES[kind]
        default = 24_000 if encoding == "pcm16" else G711_RATE
        rate = obj.get("rate", default)
        # bool is an int subclass; `True` is never a sample rate.
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise AudioFormatError(f"audio format rate must be an integer, not {rate!r}")
        return cls(encoding, rate)

    def to_wire(self) -> dict[str, Any]:
        """The GA dict (``{"type": "audio/pcm", "rate": 24000}``, ``{"type": "audio/pcmu"}``...)."""
        if self.encoding == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": f"audio/{self.encoding}"}

    def to_legacy(self) -> str:
        """The beta string ("pcm16", "g711_ulaw", "g711_alaw"), for clients that sent one."""
        if self.encoding == "pcm16":
            if self.rate != 24_000:
                raise AudioFormatError(f"pcm16 at {self.rate} Hz has no legacy (beta) name")
            return "pcm16"
        return "g711_ulaw" if self.encoding == "pcmu" else "g711_alaw"

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def bytes_for_ms(self, ms: float) -> int:
        """Bytes holding ``ms`` of audio, rounded to whole samples."""
        return round(self.rate * ms / 1000) * self.bytes_per_sample

    def ms_for_bytes(self, n: int) -> float:
        """Duration of ``n`` bytes of audio in milliseconds."""
        return n / self.bytes_per_sample * 1000 / self.rate


PCM16_24K = AudioFormat("pcm16", 24_000)
PCMU = AudioFormat("pcmu", G711_RATE)
PCMA = AudioFormat("pcma", G711_RATE)


# --- G.711 -------------------------------------------------------------------------------
# The tables reproduce CPython's Modules/audioop.c integer code (Sun's g711.c) vectorised;
# tests compare them with audioop for every input.

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # audioop feeds 14-bit values
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + (0x84 >> 2)  # clip, then add the bias
    seg = np.searchsorted(_SEG_UEND, mag, side="left")
    code = (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    table = ((code ^ mask) & 0xFF).astype(np.uint8)
    return np.roll(table, -32768)  # index by the int16 value viewed as uint16


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit values
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_AEND, mag, side="left")
    s = np.minimum(seg, 7)
    quant = np.where(s < 2, (mag >> 1) & 0xF, (mag >> s) & 0xF)
    code = np.where(seg >= 8, 0x7F, (s << 4) | quant)
    table = ((code ^ mask) & 0xFF).astype(np.uint8)
    return np.roll(table, -32768)


def _build_ulaw_decode() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0xF) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_decode() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0xF) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_ENC = _build_ulaw_encode()
_ALAW_ENC = _build_alaw_encode()
_ULAW_DEC = _build_ulaw_decode()
_ALAW_DEC = _build_alaw_decode()


def lin2ulaw(samples: Int16Array) -> bytes:
    """int16 samples -> μ-law bytes (bit-exact with ``audioop.lin2ulaw(data, 2)``)."""
    return _ULAW_ENC[_as_int16(samples).view(np.uint16)].tobytes()


def lin2alaw(samples: Int16Array) -> bytes:
    """int16 samples -> A-law bytes (bit-exact with ``audioop.lin2alaw(data, 2)``)."""
    return _ALAW_ENC[_as_int16(samples).view(np.uint16)].tobytes()


def ulaw2lin(data: bytes) -> Int16Array:
    """μ-law bytes -> int16 samples (bit-exact with ``audioop.ulaw2lin(data, 2)``)."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw2lin(data: bytes) -> Int16Array:
    """A-law bytes -> int16 samples (bit-exact with ``audioop.alaw2lin(data, 2)``)."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]


# --- PCM conversions -----------------------------------------------------------------------


def _as_int16(samples: npt.ArrayLike) -> Int16Array:
    arr = np.asarray(samples)
    if arr.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {arr.dtype}")
    return cast(Int16Array, arr.reshape(-1))


def decode(fmt: AudioFormat, data: bytes) -> Int16Array:
    """Bytes in ``fmt`` -> int16 samples at ``fmt.rate`` (a new, writable array)."""
    if fmt.encoding == "pcmu":
        return ulaw2lin(data)
    if fmt.encoding == "pcma":
        return alaw2lin(data)
    if len(data) % 2:
        raise AudioFormatError("pcm16 audio must have an even number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def encode(fmt: AudioFormat, samples: Int16Array) -> bytes:
    """int16 samples at ``fmt.rate`` -> bytes in ``fmt`` (pcm16 is little-endian)."""
    if fmt.encoding == "pcmu":
        return lin2ulaw(samples)
    if fmt.encoding == "pcma":
        return lin2alaw(samples)
    return _as_int16(samples).astype("<i2", copy=False).tobytes()


def int16_to_float32(x: Int16Array) -> Float32Array:
    """int16 -> float32 in [-1, 1) by /32768 (the convention of Whisper and Silero)."""
    return np.asarray(x, dtype=np.float32) * np.float32(1.0 / 32768.0)


def float32_to_int16(x: npt.ArrayLike) -> Int16Array:
    """float in [-1, 1) -> int16, rounded; out-of-range values clip (a wrap would be a loud click)."""
    y: Float32Array = np.rint(np.asarray(x, dtype=np.float32) * np.float32(32768.0))
    return np.clip(y, -32768, 32767).astype(np.int16)


# --- Resampling ----------------------------------------------------------------------------

_EMPTY_F32: Float32Array = np.zeros(0, dtype=np.float32)


class StreamResampler:
    """Band-limited streaming resampler for one mono stream (state carries across calls).

    ``low_latency`` selects soxr's variable-rate engine: constant ~10-30 ms delay instead of
    bursts up to ~115 ms (see the module docstring); use it where latency matters (input).
    """

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ", low_latency: bool = False):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=quality, vr=low_latency
            )

    def process(self, samples: Int16Array) -> Int16Array:
        """Resample the next piece of the stream; may return fewer samples (filter delay)."""
        x = _as_int16(samples)
        if self._stream is None:
            return x.copy()
        if x.size == 0:
            return np.zeros(0, dtype=np.int16)
        return float32_to_int16(self._stream.resample_chunk(int16_to_float32(x)))

    def flush(self) -> Int16Array:
        """Return the samples still inside the filter and start over (ready for a new stream)."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail = float32_to_int16(self._stream.resample_chunk(_EMPTY_F32, last=True))
        self._stream.clear()
        return tail

    def reset(self) -> None:
        """Drop buffered samples without returning them (after a barge-in)."""
        if self._stream is not None:
            self._stream.clear()


def resample(samples: Int16Array, in_rate: int, out_rate: int) -> Int16Array:
    """One-shot band-limited resampling of a complete int16 signal."""
    x = _as_int16(samples)
    if in_rate == out_rate:
        return x.copy()
    y = soxr.resample(int16_to_float32(x), in_rate, out_rate, quality="HQ")
    return float32_to_int16(y)


# --- Framing -------------------------------------------------------------------------------


class Framer:
    """Cuts a stream of int16 pieces of any length into fixed-size frames (e.g. VAD hops)."""

    def __init__(self, frame_samples: int) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        self.frame_samples = frame_samples
        self._pending: Int16Array = np.zeros(0, dtype=np.int16)

    @property
    def pending(self) -> int:
        """Samples held back until a frame is complete."""
        return int(self._pending.size)

    def push(self, samples: Int16Array) -> list[Int16Array]:
        """Add samples; return every frame completed so far (each a separate array)."""
        x = _as_int16(samples)
        if x.size == 0:
            return []
        buf = np.concatenate((self._pending, x)) if self._pending.size else x
        n = buf.size // self.frame_samples
        frames = [buf[i * self.frame_samples : (i + 1) * self.frame_samples].copy() for i in range(n)]
        self._pending = buf[n * self.frame_samples :].copy()
        return frames

    def flush(self, pad: bool) -> Int16Array | None:
        """The partial frame (zero-padded to full size if ``pad``), or None if nothing is pending."""
        if self._pending.size == 0:
            return None
        rest = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        if pad:
            rest = np.concatenate((rest, np.zeros(self.frame_samples - rest.size, dtype=np.int16)))
        return rest

    def clear(self) -> None:
        """Drop the partial frame."""
        self._pending = np.zeros(0, dtype=np.int16)


# --- Per-session paths ---------------------------------------------------------------------


class InputAudio:
    """Client bytes -> 16 kHz int16 samples for the VAD and ASR (one per session)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        # Latency-critical (it delays speech onset, i.e. barge-in), hence the low-latency engine.
        self._resampler = StreamResampler(fmt.rate, ENGINE_RATE, low_latency=True)
        self._odd = b""

    def feed(self, data: bytes) -> Int16Array:
        """Decode and resample the next bytes; may return fewer samples than fed (filter delay).

        A pcm16 chunk with an odd byte count keeps its last byte for the next call: a
        transport may split a stream anywhere, and dropping a byte would swap every later
        sample's bytes into loud noise.
        """
        if self.fmt.encoding == "pcm16":
            data = self._odd + data
            cut = len(data) - len(data) % 2
            data, self._odd = data[:cut], data[cut:]
        return self._resampler.process(decode(self.fmt, data))

    def flush(self) -> Int16Array:
        """The samples still inside the resampler (end of the input stream); a dangling byte is dropped."""
        self._odd = b""
        return self._resampler.flush()

    def reset(self) -> None:
        """Forget buffered input (``input_audio_buffer.clear``, format change)."""
        self._odd = b""
        self._resampler.reset()


class OutputAudio:
    """TTS int16 samples at ``source_rate`` -> samples at the client format's rate (one per reply).

    It only resamples: the chunk a sink receives is encoded (μ-law, A-law, little-endian PCM) by the
    sink that needs bytes, so a WebRTC track takes the samples as they are, never decoding them.
    """

    def __init__(self, source_rate: int, fmt: AudioFormat) -> None:
        self.source_rate = source_rate
        self.fmt = fmt
        self._resampler = StreamResampler(source_rate, fmt.rate)

    def convert(self, samples: Int16Array) -> Int16Array:
        """Resample the next piece of the reply (state carried across calls)."""
        return self._resampler.process(samples)

    def finish(self) -> Int16Array:
        """The tail still inside the resampler, at the end of a response; ready for the next one."""
        return self._resampler.flush()

    def reset(self) -> None:
        """Drop buffered audio after a barge-in: the next reply starts clean."""
        self._resampler.reset()
