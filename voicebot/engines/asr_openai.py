"""Speech-to-text on a remote OpenAI-compatible server (``--asr-base-url``).

One turn = one ``POST {base_url}/audio/transcriptions``: the turn's 16 kHz audio as a WAV file
(int16 mono, written with the stdlib ``wave`` module), multipart with ``model``, ``language`` and
``response_format=json``, the shape OpenAI's API, another voicebot (``/v1/audio/transcriptions``)
and the OpenAI-compatible Whisper servers all accept. The answer's ``text`` is the transcript.

The calls come from the session's worker threads (the server's ASR queue admits them), so the
client is httpx's synchronous one, shared and pooled: a turn reuses a kept-alive connection.

:class:`OpenAIAudioClient` is the HTTP part both remote audio engines share (this module and
``tts_openai``): timeouts, retries with backoff on a connection that failed or HTTP 408/409/429/5xx,
and an :class:`~voicebot.errors.EngineError` whose message names the server and what it said.
Retrying is safe here (unlike an LLM stream, nothing has reached the listener before the call
returns), but a read timeout is not retried: the server has the request and is slow, and the
turn's own bound (``--engine-timeout-s``) would run out before a second try could answer.
"""

from __future__ import annotations

import io
import logging
import random
import time
import wave
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import numpy as np

from voicebot.core.types import ENGINE_RATE, Float32Array
from voicebot.engines.faults import ASR_FAILED, ENGINE_TIMEOUT
from voicebot.errors import EngineError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A loopback or LAN server that does not accept within this is down, not slow.
CONNECT_TIMEOUT_S = 5.0
#: Statuses worth another try (the ones the ``openai`` client retries too).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Backoff before retry n (0-based): BACKOFF_S * 2**n, at most BACKOFF_MAX_S, with jitter.
BACKOFF_S = 0.25
BACKOFF_MAX_S = 2.0
#: The same guards as the embedded Whisper (asr_whisper.py): shorter than this (seconds) or quieter
#: than this RMS (about -50 dBFS) there is nothing to transcribe, and no request is sent (OpenAI
#: refuses audio under 0.1 s; Whisper hallucinates "Thank you." on near-silence).
MIN_SECONDS = 0.1
SILENCE_RMS = 0.003


class OpenAIAudioClient:
    """A pooled, thread-safe HTTP client for one OpenAI-compatible ``/audio/*`` server.

    ``what`` names the engine in errors ("ASR", "TTS"), ``code`` is the fault code a failure
    carries (``asr_failed``, ``tts_failed``; a timeout is ``engine_timeout``).
    """

    def __init__(self, base_url: str, api_key: str = "", *, what: str, code: str, timeout: float = 30.0,
                 retries: int = 2, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.what = what
        self.code = code
        self.retries = max(0, retries)
        read = timeout if timeout > 0 else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport,
            timeout=httpx.Timeout(read, connect=min(read or CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8, keepalive_expiry=30.0),
        )
        self._timeout = timeout

    def post(self, path: str, read: Callable[[httpx.Response], T], **request: Any) -> T:
        """``read(response)`` of a successful (2xx) streamed response to ``POST path``.

        ``read`` consumes the body; a transport error while it does retries the whole request
        (nothing has been returned yet, so nothing is repeated). Raises :class:`EngineError`.
        """
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                with self._client.stream("POST", path, **request) as response:
                    if response.status_code < 300:
                        return read(response)
                    response.read()
                    if response.status_code in RETRY_STATUSES and not last:
                        self._wait(attempt, f"HTTP {response.status_code}", response)
                        continue
                    raise EngineError(f"the {self.what} server at {url} answered HTTP {response.status_code}: "
                                      f"{_error_message(response)}", code=self.code)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) and not last:
                    self._wait(attempt, "connect timeout", None)
                    continue
                raise EngineError(f"the {self.what} server at {url} did not answer within {self._timeout:g} s "
                                  f"({type(exc).__name__})", code=ENGINE_TIMEOUT) from exc
            except httpx.TransportError as exc:  # refused, reset, closed mid-body, bad HTTP
                if not last:
                    self._wait(attempt, type(exc).__name__, None)
                    continue
                raise EngineError(f"the {self.what} server at {url} is unreachable: {type(exc).__name__}: "
                                  f"{exc or 'connection failed'}", code=self.code) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _wait(self, attempt: int, why: str, response: httpx.Response | None) -> None:
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt) * random.uniform(0.75, 1.0)
        after = _retry_after(response)
        if after is not None:
            delay = min(BACKOFF_MAX_S, after)
        log.info("%s server %s: %s, retry %d/%d in %.2f s", self.what, self.base_url, why, attempt + 1,
                 self.retries, delay)
        time.sleep(delay)

    def close(self) -> None:
        self._client.close()


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
        body = self._http.post("/audio/transcriptions", _read_all, data=fields, files=files)
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


def _read_all(response: httpx.Response) -> bytes:
    return response.read()


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


def _error_message(response: httpx.Response) -> str:
    """The OpenAI error object's ``message`` if there is one, else the start of the body."""
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if parsed.get("detail"):
            return str(parsed["detail"])
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase or "no body"


def _retry_after(response: httpx.Response | None) -> float | None:
    raw = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None  # an HTTP date: use our own backoff

