"""Semantic end of turn with Smart Turn v3.2: has the speaker finished, or only paused?

Silence alone cannot tell "I'd like to book a table for… four people" from "Book a table." The
Smart Turn v3.2 model (Pipecat, BSD-2; ONNX, 8.7 MB, fetched by ``voicebot models``) hears the
last ≤ 8 s of the turn — zero-padded in front, waveform normalised to zero mean and unit
variance, then Whisper's 80-bin log-mel features (faster-whisper's own ``FeatureExtractor``
computes them: identical to the reference front end within 3e-7) — and answers one probability
that the turn is complete. It costs ~70 ms of one core per call; the session asks it once per
pause, from a worker thread, and ``core.endpoint`` combines its answer with the silence so far.

The front end is loaded from faster-whisper's ``feature_extractor.py`` file alone (numpy only),
not through ``import faster_whisper``: that package's ``__init__`` loads CTranslate2, PyAV and
tokenizers (+36 MB RSS), which an instance whose ASR is remote (``--asr-base-url``) never needs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from voicebot.core.types import ENGINE_RATE, Float32Array
from voicebot.models import package_dir

WINDOW_S = 8
_WINDOW = WINDOW_S * ENGINE_RATE
_NORM_EPS = 1e-7


def whisper_feature_extractor() -> Any:
    """faster-whisper's ``FeatureExtractor`` class, without importing the ``faster_whisper`` package."""
    loaded = sys.modules.get("faster_whisper.feature_extractor")
    if loaded is not None:
        return loaded.FeatureExtractor
    name = "voicebot.engines._whisper_features"
    module = sys.modules.get(name)
    if module is None:
        path = package_dir("faster_whisper", "faster-whisper") / "feature_extractor.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return module.FeatureExtractor


class SmartTurn:
    """Thread-safe (onnxruntime's ``run`` is); one instance per process."""

    name = "smart-turn-v3.2"

    def __init__(self, model_path: Path, *, threads: int = 1) -> None:
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(model_path), sess_options=opts,
                                                     providers=["CPUExecutionProvider"])
        # Called without chunk_length, the extractor only reads its filters: safe from any thread.
        self._features = whisper_feature_extractor()(feature_size=80, chunk_length=WINDOW_S)

    def complete_probability(self, audio: Float32Array) -> float:
        """P(the turn is complete) for 16 kHz float32 audio of the turn so far (its end = now)."""
        x = np.asarray(audio, dtype=np.float32).reshape(-1)[-_WINDOW:]
        if x.size < _WINDOW:
            x = np.concatenate((np.zeros(_WINDOW - x.size, np.float32), x))
        x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
        features = self._features(x, padding=0)
        inputs = np.ascontiguousarray(features[np.newaxis, :, : WINDOW_S * 100], dtype=np.float32)
        (probability,) = self._session.run(None, {"input_features": inputs})
        return float(np.asarray(probability).reshape(-1)[0])
