"""Google WebRTC VAD: the cheap, instant-onset half of the hybrid detector.

It decides in microseconds and reacts within one 30 ms frame, which is what barge-in needs, but
it is fooled by low-frequency noise; :mod:`voicebot.engines.vad` pairs it with Silero to confirm.
"""

from __future__ import annotations

import numpy as np
import webrtcvad

from voicebot.core.types import ENGINE_RATE, Float32Array

#: webrtcvad accepts only 10/20/30 ms frames; we score the first 30 ms of each 32 ms hop.
FRAME_SAMPLES = 480

#: 0 (permissive) .. 3 (strict). 3 measured best: same onsets on speech, fewer noise frames
#: (see docs/engines.md).
DEFAULT_AGGRESSIVENESS = 3


class WebRtcVad:
    """Per-session wrapper; webrtcvad keeps a little state between frames."""

    def __init__(self, aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> None:
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0..3, got {aggressiveness}")
        self._aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, hop: Float32Array) -> bool:
        """Score the first 30 ms of ``hop`` (float32 in [-1, 1], 16 kHz)."""
        frame = hop[:FRAME_SAMPLES]
        if frame.shape[0] < FRAME_SAMPLES:
            return False
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2")
        return bool(self._vad.is_speech(pcm.tobytes(), ENGINE_RATE))

    def reset(self) -> None:
        self._vad = webrtcvad.Vad(self._aggressiveness)
