"""WebRTC's RNN voice detector (the one its AGC2 uses; pywebrtc-audio): the quick, noise-robust third opinion.

Silero is robust but slow to rise at a soft onset (its probability reaches 0.5 100-280 ms after
the first syllable on the pocketsphinx recordings); webrtcvad is instant but says "speech" to hum
and typing. This small recurrent network, run on every 10 ms frame, says "speech" within 10-50 ms
of a voiced onset and stayed under 0.8 on hum, clicks and typing (scripts/bench_latency.py's
noise cases). The endpointer counts a hop as voiced when it and webrtcvad agree. It is stateful,
so each session has its own; ~0.1 ms of CPU per 32 ms hop.
"""

from __future__ import annotations

import numpy as np
from pywebrtc_audio import GainController

from voicebot.core.types import ENGINE_RATE, Float32Array

FRAME = ENGINE_RATE // 100


class RnnVad:
    def __init__(self) -> None:
        self._detector = GainController(ENGINE_RATE, 1)
        self._pending = np.zeros(0, np.float32)

    def probability(self, hop: Float32Array) -> float:
        """The highest speech probability over the 10 ms frames this hop completed."""
        audio = np.concatenate((self._pending, np.asarray(hop, dtype=np.float32)))
        usable = audio.size - audio.size % FRAME
        best = 0.0
        for start in range(0, usable, FRAME):
            self._detector.process(audio[start : start + FRAME])
            best = max(best, float(self._detector.speech_probability))
        self._pending = audio[usable:].copy()
        return best

    def reset(self) -> None:
        self._detector.reset()
        self._pending = np.zeros(0, np.float32)
