"""Embedded speech-to-text with faster-whisper (CTranslate2, int8 on CPU).

Called from worker threads by sessions. ``num_workers`` replicas let several sessions
transcribe at once; ``cpu_threads`` per call trades throughput for latency. A person waits for
exactly one transcription at the end of their turn, so the default is 2 threads.

**A short window.** faster-whisper pads every input to Whisper's 30 s window, so a 2 s turn costs
the encoder as much as a 30 s one. CTranslate2 accepts shorter encoder inputs, so turns up to
30 s are encoded in a window of their own length (at least ``min_window_s``: below ~10 s the
model starts to loop on short clips, "ten of clubs ten of clubs…", measured in
scripts/bench_asr.py) and decoded directly with ``WhisperModel.model.generate``. A transcript that
still repeats itself (:func:`looped`) is redone with the full window. ``min_window_s=0`` always
uses faster-whisper's 30 s path.

**Timestamps for the model-server endpoint.** :meth:`WhisperRecognizer.transcribe_detailed` (used
by ``POST /v1/audio/transcriptions``) always takes faster-whisper's own path: it needs segment
timestamps, an initial prompt and temperature fallback, none of which the short window has. It
returns the segments lazily, so the caller can decode one window at a time through the CPU queue
instead of holding an ASR slot for the whole of a long file.

Beam size per model, measured on the pocketsphinx utterances (docs/engines.md): tiny.en beam 5
has a lower WER than greedy at little extra time; base gains nothing from beam 5 and gets 1.6x
slower, so it stays greedy.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from voicebot.core.types import ENGINE_RATE, Float32Array

log = logging.getLogger(__name__)

#: Below this RMS (about -50 dBFS) the input is treated as silence and the model is not run:
#: Whisper's worst hallucinations ("Thank you.") come from near-empty windows.
SILENCE_RMS = 0.003
#: A segment is dropped when Whisper itself thinks it is not speech *and* is unsure of the text.
NO_SPEECH_PROB = 0.6
LOW_AVG_LOGPROB = -1.0
#: Shorter than this (seconds) there is nothing worth transcribing.
MIN_SECONDS = 0.1
DEFAULT_BEAM = {"tiny.en": 5, "base": 1}
#: Whisper's window, in seconds and in 10 ms feature frames.
FULL_WINDOW_S = 30
_FRAMES_PER_S = 100
#: Feature frames of silence after the audio in a short window (the model wants to hear the end).
_TAIL_FRAMES = 50
#: faster-whisper's repetition test: gzip ratio of the text above this = the decoder looped.
MAX_COMPRESSION_RATIO = 2.4
#: Tokens a turn may produce per second of audio (fast speech is ~4), plus a floor.
_TOKENS_PER_S = 8
_MIN_TOKENS = 10


#: Whisper's temperatures, tried in turn while a window's transcript looks wrong (loops, low logprob).
TEMPERATURE_LADDER = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

#: Faster than anyone speaks (words per second of audio): the decoder repeated itself.
MAX_WORDS_PER_S = 5.0


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(1, len(zlib.compress(data)))


def looped(text: str, seconds: float) -> bool:
    """A decoder loop: repetitive text (gzip ratio, faster-whisper's test, which misses short
    loops), or more words than the audio can hold ("ten of clubs ten of clubs ten of…" in 1 s)."""
    words = len(text.split())
    return compression_ratio(text) > MAX_COMPRESSION_RATIO or (words > 3 and words > seconds * MAX_WORDS_PER_S)


class WhisperRecognizer:
    """Thread-safe: CTranslate2 queues calls onto its ``num_workers`` replicas."""

    def __init__(
        self, model_dir: Path, *, name: str = "tiny.en", workers: int = 2, threads: int = 2,
        beam_size: int | None = None, min_window_s: float = 10.0,
    ) -> None:
        self.name = name
        self.beam_size = beam_size or DEFAULT_BEAM.get(name, 1)
        self.english_only = name.endswith(".en")
        self.min_window_s = min_window_s
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=max(1, threads),
            num_workers=max(1, workers),
        )
        self._tokenizers: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()
        self.fallbacks = 0  # short-window transcripts redone with the full window (repetition)

    def transcribe(self, audio: Float32Array, language: str | None = None) -> str:
        """Text of one utterance (16 kHz float32 mono); ``""`` for silence or noise."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.shape[0] < MIN_SECONDS * ENGINE_RATE or _rms(audio) < SILENCE_RMS:
            return ""
        if self.english_only:
            language = "en"
        seconds = audio.shape[0] / ENGINE_RATE
        # Language detection needs faster-whisper's own path; so do turns longer than one window.
        if self.min_window_s > 0 and language and seconds < FULL_WINDOW_S - 1:
            text = self._short_window(audio, language)
            if text is not None:
                return text
            self.fallbacks += 1
        return self._full_window(audio, language)

    def transcribe_detailed(
        self, audio: Float32Array, language: str | None = None, prompt: str | None = None, *,
        temperature: float | None = None, words: bool = False,
    ) -> tuple[Iterator[dict[str, Any]], str]:
        """Segments with timestamps of a whole recording (16 kHz float32 mono), and its language.

        Blocking: runs the feature extraction (and language detection, without ``language``).
        The segments are an iterator whose every ``next`` decodes (blocking) up to one 30 s window;
        each is Whisper's own segment dict (``id seek start end text tokens temperature avg_logprob
        compression_ratio no_speech_prob``, plus ``words`` when asked), likely hallucinations
        dropped. ``temperature`` None or 0: Whisper's fallback ladder 0.0 .. 1.0."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if self.english_only:
            language = "en"
        if audio.shape[0] < MIN_SECONDS * ENGINE_RATE or _rms(audio) < SILENCE_RMS:
            return iter(()), language or "en"
        ladder: float | tuple[float, ...] = temperature or TEMPERATURE_LADDER
        segments, info = self._model.transcribe(
            audio, language=language or None, beam_size=self.beam_size, temperature=ladder,
            initial_prompt=prompt or None, condition_on_previous_text=False, vad_filter=False,
            word_timestamps=words,
        )
        return _kept_segments(segments, words), str(info.language)

    def _full_window(self, audio: Float32Array, language: str | None) -> str:
        segments, _info = self._model.transcribe(
            audio,
            language=language or None,
            beam_size=self.beam_size,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        kept: list[str] = []
        for seg in segments:  # lazy generator: the decoding happens here, in the caller's thread
            if seg.no_speech_prob > NO_SPEECH_PROB and seg.avg_logprob < LOW_AVG_LOGPROB:
                log.debug("dropped likely hallucination %r (no_speech=%.2f)", seg.text, seg.no_speech_prob)
                continue
            kept.append(seg.text.strip())
        return " ".join(t for t in kept if t)

    def _tokenizer(self, language: str) -> Tokenizer:
        with self._lock:
            found = self._tokenizers.get(language)
            if found is None:
                found = self._tokenizers[language] = Tokenizer(
                    self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe",
                    language=language)
            return found

    def _short_window(self, audio: Float32Array, language: str) -> str | None:
        """Encode in a window of the audio's own length; None if the decoder looped."""
        model = self._model
        features = model.feature_extractor(audio)
        frames = min(FULL_WINDOW_S * _FRAMES_PER_S,
                     max(round(self.min_window_s * _FRAMES_PER_S), features.shape[-1] + _TAIL_FRAMES))
        encoded = model.encode(pad_or_trim(features, frames))
        tokenizer = self._tokenizer(language)
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        max_new = _MIN_TOKENS + int(audio.shape[0] / ENGINE_RATE * _TOKENS_PER_S)
        result = model.model.generate(
            encoded, [prompt], beam_size=self.beam_size, max_length=len(prompt) + max_new,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
        )[0]
        tokens = result.sequences_ids[0]
        text = str(tokenizer.decode(tokens)).strip()
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_AVG_LOGPROB:
            log.debug("dropped likely hallucination %r (no_speech=%.2f)", text, result.no_speech_prob)
            return ""
        if looped(text, audio.shape[0] / ENGINE_RATE) or len(tokens) >= max_new:
            log.debug("short window looped (%r); using the full window", text)
            return None
        return text


def _kept_segments(segments: Any, words: bool) -> Iterator[dict[str, Any]]:
    """faster-whisper's segments as Whisper's dicts, numbered anew after the dropped ones."""
    number = 0
    for seg in segments:
        text = seg.text.strip()
        if not text or (seg.no_speech_prob > NO_SPEECH_PROB and seg.avg_logprob < LOW_AVG_LOGPROB):
            log.debug("dropped likely hallucination %r (no_speech=%.2f)", seg.text, seg.no_speech_prob)
            continue
        out: dict[str, Any] = {
            "id": number, "seek": seg.seek, "start": round(seg.start, 3), "end": round(seg.end, 3),
            "text": seg.text, "tokens": list(seg.tokens), "temperature": seg.temperature or 0.0,
            "avg_logprob": seg.avg_logprob, "compression_ratio": seg.compression_ratio,
            "no_speech_prob": seg.no_speech_prob,
        }
        if words:
            out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                             "probability": w.probability} for w in seg.words or ()]
        number += 1
        yield out


def _rms(audio: Float32Array) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
