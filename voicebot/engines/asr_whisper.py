"""Embedded speech-to-text with faster-whisper (CTranslate2, int8 on CPU).

Called from worker threads by sessions. ``num_workers`` replicas let several sessions
transcribe at once; ``cpu_threads`` per call trades throughput for latency. A person waits for
exactly one transcription at the end of their turn, so the default is 2 threads (0.5 s instead
of 0.82 s for a 3 s utterance on 2 cores, measured); ``--asr-threads 1`` favours throughput
when many sessions talk at once (1.8x with 2 workers).

Beam size per model, measured on the 10 pocketsphinx utterances (docs/engines.md): tiny.en
beam 5 has a lower WER (6.5% vs 8.7%) at no measurable extra time (the encoder's fixed 30 s
window dominates tiny's cost; the small decoder's beam is nearly free); base gains nothing from
beam 5 and gets 1.6x slower, so it stays greedy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

from voicebot.core.types import Float32Array

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


class WhisperRecognizer:
    """Thread-safe: CTranslate2 queues calls onto its ``num_workers`` replicas."""

    def __init__(
        self, model_dir: Path, *, name: str = "tiny.en", workers: int = 2, threads: int = 2,
        beam_size: int | None = None,
    ) -> None:
        self.name = name
        self.beam_size = beam_size or DEFAULT_BEAM.get(name, 1)
        self.english_only = name.endswith(".en")
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=max(1, threads),
            num_workers=max(1, workers),
        )

    def transcribe(self, audio: Float32Array, language: str | None = None) -> str:
        """Text of one utterance (16 kHz float32 mono); ``""`` for silence or noise."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.shape[0] < MIN_SECONDS * 16_000 or _rms(audio) < SILENCE_RMS:
            return ""
        if self.english_only:
            language = "en"
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


def _rms(audio: Float32Array) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
