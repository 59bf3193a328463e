"""Acoustic echo cancellation with WebRTC's AEC3, through pywebrtc-audio (binary wheels, Apache-2.0).

Why this library: it is the echo canceller every browser runs (Chrome's audio processing
module), packaged with prebuilt wheels for Linux x86_64/aarch64 and Python 3.10-3.14, and it
adapts to the echo path's delay and level by itself. Measured on TTS echo fed back 50-150 ms
late at -20 and -10 dB (scripts/bench_latency.py, docs/benchmarks.md): the echo drops by ~25-30
dB within the first second, Silero hears no speech in what is left, and a person talking over it
is kept. It costs ~0.09 ms of CPU per 10 ms frame. One instance per session (it is stateful and
not thread-safe); the session calls it on the event loop, where a frame costs nothing noticeable.
"""

from __future__ import annotations

import numpy as np
from pywebrtc_audio import EchoCanceller

from voicebot.core.types import ENGINE_RATE, Int16Array

FRAME = ENGINE_RATE // 100  # AEC3 works in 10 ms frames


class WebRtcEchoCanceller:
    """``process(near, far)``: the microphone with what matches ``far`` (the speaker) removed."""

    frame_samples = FRAME

    def __init__(self, stream_delay_ms: int = 0) -> None:
        self._aec = EchoCanceller(ENGINE_RATE, 1, stream_delay_ms)

    def process(self, near: Int16Array, far: Int16Array) -> Int16Array:
        """Both int16 at 16 kHz, the same whole number of 10 ms frames."""
        out = np.empty_like(near)
        for i in range(0, near.size, FRAME):
            out[i : i + FRAME] = self._aec.process(near[i : i + FRAME], far[i : i + FRAME])
        return out

    def reset(self) -> None:
        self._aec.reset()
