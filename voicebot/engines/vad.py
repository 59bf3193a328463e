"""The hybrid VAD a session uses: webrtcvad for instant onset, Silero for robust confirmation, and
WebRTC's RNN detector for a quick, noise-robust onset where Silero is slow to rise.

:mod:`voicebot.core.endpoint` decides speech start/stop from both scores (fast onset, confirmed
by ``prob`` to reject echo and noise); this module only produces the scores per 32 ms hop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicebot.core.types import Float32Array, VadScores
from voicebot.engines.base import VadFactory, VoiceActivityDetector
from voicebot.engines.vad_rnn import RnnVad
from voicebot.engines.vad_silero import HOP_SAMPLES, SileroVad, shared_session
from voicebot.engines.vad_webrtc import DEFAULT_AGGRESSIVENESS, WebRtcVad
from voicebot.models import silero_vad_path


class HybridVad:
    """One per session: both detectors fed the same hop, state kept across hops."""

    hop_samples: int = HOP_SAMPLES

    def __init__(self, silero: SileroVad, webrtc: WebRtcVad, rnn: RnnVad) -> None:
        self._silero = silero
        self._webrtc = webrtc
        self._rnn = rnn

    def score(self, hop: Float32Array) -> VadScores:
        hop = np.asarray(hop, dtype=np.float32)
        return VadScores(fast=self._webrtc.is_speech(hop), prob=self._silero.probability(hop),
                         quick=self._rnn.probability(hop))

    def reset(self) -> None:
        self._silero.reset()
        self._webrtc.reset()
        self._rnn.reset()


class HybridVadFactory:
    """Loads the Silero model once; each call makes a fresh per-session detector."""

    def __init__(self, model_path: Path | None = None, aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> None:
        self._session = shared_session(model_path or silero_vad_path())
        self._aggressiveness = aggressiveness

    def __call__(self) -> VoiceActivityDetector:
        return HybridVad(SileroVad(self._session), WebRtcVad(self._aggressiveness), RnnVad())


def make_vad_factory(aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> VadFactory:
    return HybridVadFactory(aggressiveness=aggressiveness)
