"""Text-to-speech on a remote OpenAI-compatible server (``--tts-base-url``).

One clause = one ``POST {base_url}/audio/speech`` with ``{model, input, voice, response_format:
"pcm", speed}``. ``pcm`` is OpenAI's raw format: 24 kHz, 16-bit signed little-endian, mono, no
header — nothing to decode, and what another voicebot's ``/v1/audio/speech`` streams too. The
body is read as it streams (chunk boundaries may split a sample; only the joined bytes are
interpreted) and the clause's samples are returned whole, as :class:`SpeechSynthesizer` asks: the
reply pipeline already overlaps the next clause's synthesis with this one's playback.

A server that ignores ``response_format`` and sends a WAV (``RIFF`` header) is accepted when the
WAV is 24 kHz 16-bit mono; anything else is an error naming the server. A trailing odd byte (a
server that cut the stream mid-sample) is dropped.

HTTP, retries and errors: :class:`~voicebot.engines.openai_audio.OpenAIAudioClient`.
"""

from __future__ import annotations

import logging
import struct

import httpx
import numpy as np

from voicebot.core.types import Int16Array
from voicebot.engines.faults import TTS_FAILED
from voicebot.engines.openai_audio import OpenAIAudioClient
from voicebot.errors import EngineError

log = logging.getLogger(__name__)

#: OpenAI's ``pcm``: 24 kHz s16le mono.
PCM_RATE = 24_000
#: OpenAI accepts speed 0.25 - 4.0 and refuses the rest.
MIN_SPEED, MAX_SPEED = 0.25, 4.0


class OpenAISynthesizer:
    """Implements :class:`voicebot.engines.base.SpeechSynthesizer` against ``/audio/speech``."""

    sample_rate = PCM_RATE

    def __init__(self, base_url: str, model: str = "tts-1", voice: str = "alloy", api_key: str = "", *,
                 speed: float = 1.0, timeout: float = 30.0, retries: int = 2,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = model or "tts-1"
        self.voice = voice or "alloy"
        self.speed = min(MAX_SPEED, max(MIN_SPEED, speed))
        self.base_url = base_url
        self._http = OpenAIAudioClient(base_url, api_key, what="TTS", code=TTS_FAILED, timeout=timeout,
                                       retries=retries, transport=transport)

    def synthesize(self, text: str) -> Int16Array:
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        body = {"model": self.name, "input": text, "voice": self.voice, "response_format": "pcm",
                "speed": self.speed}
        data = self._http.post("/audio/speech", _read_stream, json=body)
        return self._samples(data)

    def _samples(self, data: bytes) -> Int16Array:
        if data[:4] == b"RIFF":
            data = self._wav_frames(data)
        if len(data) % 2:
            log.warning("TTS server %s sent an odd number of bytes (%d); dropping the last one",
                        self._http.base_url, len(data))
            data = data[:-1]
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    def _wav_frames(self, data: bytes) -> bytes:
        """The samples of a WAV. Its sizes are not trusted: a streamed WAV's header is written before
        the length is known (0 or 0xFFFFFFFF), so everything after the ``data`` chunk's header counts."""
        shape = None
        offset = 12
        while offset + 8 <= len(data):
            chunk, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
            if chunk == b"fmt " and offset + 24 <= len(data):
                fmt, channels, rate = struct.unpack_from("<HHI", data, offset + 8)
                bits = struct.unpack_from("<H", data, offset + 22)[0]
                shape = (fmt, rate, bits, channels)
            elif chunk == b"data":
                break
            offset += 8 + size + (size & 1)
        else:
            raise EngineError(f"the TTS server at {self._http.base_url} sent a WAV without samples",
                              code=TTS_FAILED)
        if shape != (1, PCM_RATE, 16, 1):
            raise EngineError(f"the TTS server at {self._http.base_url} sent a WAV ({shape}: format, rate, "
                              f"bits, channels) instead of response_format pcm ({PCM_RATE} Hz 16-bit mono)",
                              code=TTS_FAILED)
        return data[offset + 8:]

    def close(self) -> None:
        self._http.close()


def _read_stream(response: httpx.Response) -> bytes:
    """The body as it arrives, joined (a sample may straddle two chunks)."""
    parts = bytearray()
    for chunk in response.iter_bytes():
        parts += chunk
    return bytes(parts)
