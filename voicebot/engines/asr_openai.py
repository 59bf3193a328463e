"""Speech-to-text on a remote OpenAI-compatible server (``--asr-base-url``).

One turn = one ``POST {base_url}/audio/transcriptions``: the turn's 16 kHz audio as a WAV file
(int16 mono, written with the stdlib ``wave`` module), multipart with ``model``, ``language`` and
``response_format=json``, the shape OpenAI's API, another voicebot (``/v1/audio/transcriptions``)
and the OpenAI-compatible Whisper servers all accept. The answer's ``text`` is the transcript.

The calls come from the session's worker threads (the server's ASR queue admits them), so the
client is httpx's synchronous one, shared and pooled: a turn reuses a kept-alive connection.

The HTTP part (pooling, retries, errors naming the server) is ``openai_audio.OpenAIAudioClient``,
shared with ``tts_openai``.
"""

from __future__ import annotations

import io
import logging
import wave

import httpx
import numpy as np

from voicebot.core.types import ENGINE_RATE, Float32Array
from voicebot.engines.faults import ASR_FAILED
from voicebot.engines.openai_audio import OpenAIAudioClient, read_all
from voicebot.errors import EngineError

log = logging.getLogger(__name__)
#: The same guards as the embedded Whisper (asr_whisper.py): shorter than this (seconds) or quieter
#: than this RMS (about -50 dBFS) there is nothing to transcribe, and no request is sent (OpenAI
#: refuses audio under 0.1 s; Whisper hallucinates "Thank you." on near-silence).
MIN_SECONDS = 0.1
SILENCE_RMS = 0.003


class OpenAITranscriber:
    """Implements :class:`voicebot.engines.base.SpeechRecognizer` against ``/audio/transcriptions``."""

    def __init__(self, base_url: str, model: str = "whisper-1", api_key: str = "", *, timeout: float = 30.0,
                 retries: int = 2, transport: httpx.BaseTransport | None = None) -> None:
        self.name = model or "whisper-1"
        self.base_url = base_url
        self._http = OpenAIAudioClient(base_url, api_key, what="ASR", code=ASR_FAILED, timeout=timeout,
                                       retries=retries, transport=transport)

    def transcribe(self, audio: Float32Array, language: str | None = None) -> str:
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size < MIN_SECONDS * ENGINE_RATE or float(np.sqrt(np.mean(samples**2))) < SILENCE_RMS:
            return ""
        fields = {"model": self.name, "response_format": "json"}
        if language:
            fields["language"] = language
        files = {"file": ("speech.wav", wav_bytes(samples), "audio/wav")}
        body = self._http.post("/audio/transcriptions", read_all, data=fields, files=files)
        return _transcript(body, self._http.base_url)

    def close(self) -> None:
        self._http.close()


def wav_bytes(audio: Float32Array, rate: int = ENGINE_RATE) -> bytes:
    """A WAV file (16-bit mono PCM) of float32 samples in [-1, 1]."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def _transcript(body: bytes, base_url: str) -> str:
    """``{"text": ...}``; a server that ignored ``response_format`` and sent plain text is taken at its word."""
    try:
        parsed = httpx.Response(200, content=body).json()
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    text = parsed.get("text") if isinstance(parsed, dict) else None
    if not isinstance(text, str):
        raise EngineError(f"the ASR server at {base_url} answered without a transcript: {body[:200]!r}",
                          code=ASR_FAILED)
    return text.strip()
