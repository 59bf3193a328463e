"""Embedded text-to-speech with piper (VITS on onnxruntime, espeak-ng phonemes).

piper normalises every sentence to peak 1.0, so we scale to 0.9 to leave headroom for the
resampler's overshoot, then clip before int16. ``length_scale`` = 1 / speed: the server's
``--tts-speed``, times a call's own ``speed`` (``POST /v1/audio/speech``) when it gives one.

Thread safety: onnxruntime's ``run`` is thread-safe, but piper's espeak-ng phonemizer is a
process-global C library, so phonemization is serialised under a lock (it takes well under
a millisecond per sentence) while the expensive acoustic model runs in parallel.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig

from voicebot.core.types import Int16Array

HEADROOM = 0.9

_phonemize_lock = threading.Lock()


class PiperSynthesizer:
    """Loaded once per process, shared by every session."""

    def __init__(self, model_path: Path, *, speed: float = 1.0, name: str = "piper", threads: int = 1) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.name = name
        self._voice = PiperVoice.load(model_path)
        # One thread per synthesis: the LLM is writing the rest of the reply on the other cores
        # meanwhile, and under that load one thread voiced the first clause faster than two
        # (133 vs 161 ms for "Sure, I can"; idle, two win: 69 vs 95 ms). Sessions synthesize in parallel.
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        self._voice.session = onnxruntime.InferenceSession(str(model_path), sess_options=opts,
                                                           providers=["CPUExecutionProvider"])
        self.sample_rate: int = int(self._voice.config.sample_rate)
        self._length_scale = self._voice.config.length_scale / speed
        self._config = SynthesisConfig(length_scale=self._length_scale, normalize_audio=False)

    def synthesize(self, text: str, speed: float | None = None) -> Int16Array:
        """All sentences of ``text`` as one mono int16 array (empty for text with no speech).

        ``speed``: this call's rate relative to the server's (2.0 = twice as fast); None = as set."""
        text = text.strip()
        if not text:
            return np.zeros(0, dtype=np.int16)
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        config = self._config if speed is None or speed == 1.0 else SynthesisConfig(
            length_scale=self._length_scale / speed, normalize_audio=False)
        with _phonemize_lock:
            sentences = self._voice.phonemize(text)
        pieces = [self._sentence(phonemes, config) for phonemes in sentences if phonemes]
        if not pieces:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(pieces)

    def _sentence(self, phonemes: list[str], config: SynthesisConfig) -> Int16Array:
        ids = self._voice.phonemes_to_ids(phonemes)
        audio = np.asarray(self._voice.phoneme_ids_to_audio(ids, config), dtype=np.float32).reshape(-1)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < 1e-8:
            return np.zeros(audio.shape[0], dtype=np.int16)
        scaled = np.clip(audio * (HEADROOM / peak), -1.0, 1.0)
        pcm: Int16Array = (scaled * 32767.0).astype(np.int16)
        return pcm
