"""voicebot as a model server: OpenAI-compatible ``POST /v1/audio/transcriptions`` and
``POST /v1/audio/speech`` on the embedded engines (Whisper, Piper), so the official SDK's
``audio.transcriptions.create`` and ``audio.speech.create`` work unchanged against voicebot.

**Transcriptions.** A multipart upload of a WAV file (any rate, channels, 8/16/24/32-bit PCM),
decoded with the stdlib ``wave`` module and resampled to 16 kHz with soxr: no ffmpeg, so other
containers are refused with 400 ``invalid_file_format``. The model runs in the ASR CPU queue like
every session's turn, one 30 s window per admission, so a long file never keeps a live speaker
waiting for more than one window. ``response_format``: ``json`` ``text`` ``verbose_json`` ``srt``
``vtt``. An ASR without timestamps (a remote one) gives one segment covering the whole file.

**Speech.** The input is cut into clauses by the same chunker as the replies
(:class:`~voicebot.core.chunker.SpeechChunker`), voiced one after another in the TTS CPU queue,
and each clause's audio leaves as soon as it exists: the first bytes arrive after one clause, not
after the whole text. ``response_format``: ``mp3`` (OpenAI's default), ``wav`` (a streamed header
of unknown length, as OpenAI sends), ``pcm`` (raw 24 kHz s16le mono), ``opus`` (Ogg), ``aac``
(ADTS), ``flac``, all 24 kHz mono; the compressed ones are encoded with PyAV, which bundles
FFmpeg's encoders (no ffmpeg program). There is one voice: every ``voice`` name is accepted and
spoken by it. ``speed`` scales the server's ``--tts-speed``; ``instructions`` are accepted and
ignored (Piper has no style control).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from voicebot.core.chunker import SpeechChunker
from voicebot.core.types import Float32Array
from voicebot.engines.base import Engines
from voicebot.engines.faults import ASR_FAILED, TTS_FAILED, engine_call
from voicebot.errors import EngineError, HttpError
from voicebot.state import AppState
from voicebot.transports.access import API, authorize
from voicebot.transports.audio_files import (
    MEDIA_TYPES,
    SPEECH_FORMATS,
    Encoder,
    decode_wav,
    joined_text,
    to_srt,
    to_vtt,
)
from voicebot.transports.http_common import json_errors, limited_stream, read_model

log = logging.getLogger(__name__)

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
#: OpenAI's limit on ``input``, in characters.
MAX_SPEECH_INPUT = 4096
#: Multipart fields other than the file that are read (and their size each, bytes).
_MAX_FIELDS = 32
_MAX_FIELD_BYTES = 64 * 1024
#: The languages Whisper knows (ISO-639-1, and haw, yue): ``language`` must be one of them.
_WHISPER_CODES = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu "
    "hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro "
    "ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue")
WHISPER_LANGUAGES = frozenset(_WHISPER_CODES.split())
#: Whisper's language codes -> the names OpenAI's verbose_json gives (a code not here stays a code).
LANGUAGE_NAMES = {
    "en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "ru": "russian", "zh": "chinese", "ja": "japanese", "ko": "korean", "ar": "arabic",
    "hi": "hindi", "tr": "turkish", "pl": "polish", "uk": "ukrainian", "sv": "swedish", "da": "danish",
    "no": "norwegian", "fi": "finnish", "cs": "czech", "el": "greek", "he": "hebrew", "hu": "hungarian",
    "ro": "romanian", "id": "indonesian", "vi": "vietnamese", "th": "thai", "ca": "catalan", "fa": "persian",
}


@dataclass(frozen=True, slots=True)
class TranscriptionAsk:
    """The form's fields, checked."""

    response_format: str
    language: str | None
    prompt: str | None
    temperature: float | None
    words: bool


@runtime_checkable
class DetailedRecognizer(Protocol):
    """An ASR that also gives segments with timestamps (the embedded Whisper)."""

    def transcribe_detailed(
        self, audio: Float32Array, language: str | None = None, prompt: str | None = None, *,
        temperature: float | None = None, words: bool = False,
    ) -> tuple[Iterator[dict[str, Any]], str]: ...


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, UploadFile):
        return None
    return str(value).strip() or None


def _ask(form: Any) -> TranscriptionAsk:
    fmt = _field(form, "response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise HttpError(400, f"Unsupported response_format {fmt!r}; use one of {', '.join(TRANSCRIPTION_FORMATS)}.",
                        "invalid_value", param="response_format")
    if (_field(form, "stream") or "false").lower() not in ("false", "0"):
        raise HttpError(400, "stream is not supported for transcriptions; send stream=false.", "invalid_value",
                        param="stream")
    temperature: float | None = None
    if (raw := _field(form, "temperature")) is not None:
        try:
            temperature = float(raw)
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise HttpError(400, "temperature must be a number between 0 and 1.", "invalid_value",
                            param="temperature")
    granularities = {str(g) for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in form.getlist(key)}
    if granularities - {"word", "segment"}:
        raise HttpError(400, "timestamp_granularities may hold 'word' and 'segment'.", "invalid_value",
                        param="timestamp_granularities")
    language = (_field(form, "language") or "").lower() or None
    if language is not None and language not in WHISPER_LANGUAGES:
        raise HttpError(400, f"Unsupported language {language[:20]!r}: give an ISO-639-1 code such as 'en'.",
                        "invalid_value", param="language")
    return TranscriptionAsk(fmt, language, _field(form, "prompt"), temperature, "word" in granularities)


async def _upload(request: Request, state: AppState) -> tuple[bytes, Any]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HttpError(400, "Send the audio as multipart/form-data with a 'file' field.", "invalid_value",
                        param="file")
    body = limited_stream(request, state.settings.max_audio_upload_bytes, "The upload")
    parser = MultiPartParser(request.headers, body, max_files=1, max_fields=_MAX_FIELDS, max_part_size=_MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HttpError(400, f"The multipart body cannot be read: {exc.message}", "invalid_value") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HttpError(400, "The 'file' field (the audio file) is missing.", "missing_required_parameter",
                            param="file")
        return await upload.read(), form
    finally:
        await form.close()


async def _asr_step(engines: Engines, timeout_s: float, fn: Any, *args: Any) -> Any:
    """One blocking ASR call in the CPU queue (someone is waiting: deadline now)."""
    async with engine_call(ASR_FAILED, "the ASR", timeout_s):
        return await engines.cpu.asr.run(time.monotonic(), fn, *args)


#: Recordings this short, asked for text only, take the turn path (a window of their own length:
#: ~4x faster than Whisper's fixed 30 s one, which timestamps need) — what a voicebot using
#: another as its --asr-base-url sends for every turn.
PLAIN_MAX_S = 28.0


def _plain(ask: TranscriptionAsk, duration: float) -> bool:
    return (ask.response_format in ("json", "text") and not ask.prompt and not ask.words
            and not ask.temperature and duration <= PLAIN_MAX_S)


async def _segments(state: AppState, audio: Float32Array, duration: float,
                    ask: TranscriptionAsk) -> tuple[list[dict[str, Any]], str]:
    engines, timeout = state.engines, state.settings.engine_timeout_s
    language = ask.language or state.settings.asr_language or None
    asr = engines.asr
    if isinstance(asr, DetailedRecognizer) and not _plain(ask, duration):
        def start() -> tuple[Iterator[dict[str, Any]], str]:
            return asr.transcribe_detailed(audio, language, ask.prompt, temperature=ask.temperature,
                                           words=ask.words)

        found, detected = await _asr_step(engines, timeout, start)
        segments: list[dict[str, Any]] = []
        # One segment (at most one 30 s window of decoding) per admission to the queue.
        while (seg := await _asr_step(engines, timeout, next, found, None)) is not None:
            segments.append(seg)
        return segments, detected
    text = str(await _asr_step(engines, timeout * max(1.0, duration / 30), asr.transcribe, audio, language)).strip()
    whole = {"id": 0, "seek": 0, "start": 0.0, "end": round(duration, 3), "text": text, "tokens": [],
             "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
    return ([whole] if text else []), language or "en"


def _transcription_response(ask: TranscriptionAsk, segments: list[dict[str, Any]], language: str,
                            duration: float) -> Response:
    text = joined_text(segments)
    usage = {"type": "duration", "seconds": int(np.ceil(duration))}
    if ask.response_format == "text":
        return PlainTextResponse(text + "\n")
    if ask.response_format == "srt":
        return PlainTextResponse(to_srt(segments))
    if ask.response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    if ask.response_format == "json":
        return JSONResponse({"text": text, "usage": usage})
    body: dict[str, Any] = {"task": "transcribe", "language": LANGUAGE_NAMES.get(language, language),
                            "duration": round(duration, 3), "text": text,
                            "segments": [{k: v for k, v in s.items() if k != "words"} for s in segments],
                            "usage": usage}
    if ask.words:
        body["words"] = [w for s in segments for w in s.get("words", ())]
    return JSONResponse(body)


@json_errors
async def transcriptions(request: Request) -> Response:
    state = await authorize(request, API)
    data, form = await _upload(request, state)
    ask = _ask(form)
    audio, duration = await asyncio.to_thread(decode_wav, data)
    del data
    try:
        with state.generating():
            segments, language = await _segments(state, audio, duration, ask)
    except EngineError as err:
        raise HttpError(502, str(err), err.code, type="server_error") from None
    return _transcription_response(ask, segments, language, duration)


# --- Speech ---------------------------------------------------------------------------------------

class CustomVoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(max_length=256)


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech``. ``model`` and ``voice`` may name anything: there is one voice."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(default="tts-1", max_length=256)
    input: str = Field(max_length=MAX_SPEECH_INPUT)
    voice: str | CustomVoice = Field(default="alloy")
    response_format: str = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, max_length=MAX_SPEECH_INPUT)
    stream_format: Literal["audio", "sse"] = "audio"


def speech_clauses(text: str) -> list[str]:
    """The input in the order it is spoken: a short first clause (the first audio leaves early),
    then sentences; markdown is not read out."""
    chunker = SpeechChunker(first_min_words=3, min_words=6, max_chars=220)
    return [c for c in (*chunker.push(text), *chunker.flush()) if c.strip()]


def _takes_speed(tts: object) -> bool:
    try:
        return "speed" in inspect.signature(tts.synthesize).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False


class Voicing:
    """One speech request's clauses, voiced and encoded one at a time in the TTS CPU queue."""

    def __init__(self, state: AppState, clauses: list[str], fmt: str, speed: float) -> None:
        self.engines, self.timeout = state.engines, state.settings.engine_timeout_s
        self.clauses = clauses
        self.encoder = Encoder(fmt, self.engines.tts.sample_rate)
        tts = self.engines.tts
        if _takes_speed(tts):
            self._args: tuple[Any, ...] = (speed,)
        else:
            self._args = ()
            if speed != 1.0:
                log.info("the TTS engine %s has no per-call speed; speaking at its own", tts.name)

    def _voice(self, clause: str) -> bytes:  # in a worker thread
        samples = self.engines.tts.synthesize(clause, *self._args)
        return self.encoder.encode(samples)

    async def clause(self, index: int) -> bytes:
        async with engine_call(TTS_FAILED, "the TTS", self.timeout):
            out: bytes = await self.engines.cpu.tts.run(time.monotonic(), self._voice, self.clauses[index])
            return out


async def _stream(voicing: Voicing, first: bytes,
                  in_flight: contextlib.AbstractContextManager[None]) -> AsyncGenerator[bytes, None]:
    with in_flight:
        try:
            yield first
            for index in range(1, len(voicing.clauses)):
                try:
                    data = await voicing.clause(index)
                except EngineError as err:  # headers are gone: end the audio early, say why in the log
                    log.warning("speech stream ended at clause %d of %d: %s", index + 1, len(voicing.clauses), err)
                    return
                if data:
                    yield data
            tail = await asyncio.to_thread(voicing.encoder.finish)
            if tail:
                yield tail
        finally:
            voicing.encoder.close()


@json_errors
async def speech(request: Request) -> Response:
    state = await authorize(request, API)
    body = await read_model(request, SpeechRequest, state.settings.max_text_bytes)
    if body.response_format not in SPEECH_FORMATS:
        raise HttpError(400, f"Unsupported response_format {body.response_format!r}; this server makes "
                        f"{', '.join(SPEECH_FORMATS)}.", "invalid_value", param="response_format")
    if body.stream_format != "audio":
        raise HttpError(400, "stream_format 'sse' is not supported; the audio itself is streamed "
                        "(stream_format 'audio').", "invalid_value", param="stream_format")
    clauses = speech_clauses(body.input)
    if not clauses:
        raise HttpError(400, "input is empty: there is nothing to say.", "invalid_value", param="input")
    voicing = Voicing(state, clauses, body.response_format, body.speed)
    # The first clause before the headers: a failing engine is still answered with a JSON error.
    in_flight = state.generating()
    try:
        with state.generating():
            first = voicing.encoder.head() + await voicing.clause(0)
    except EngineError as err:
        voicing.encoder.close()
        raise HttpError(502, str(err), err.code, type="server_error") from None
    except BaseException:
        voicing.encoder.close()
        raise
    return StreamingResponse(_stream(voicing, first, in_flight), media_type=MEDIA_TYPES[body.response_format])


routes = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/speech", speech, methods=["POST"]),
]
