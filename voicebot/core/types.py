"""The few value types every layer shares: sample arrays, the engine rate, VAD scores, chat messages.

They live in the core so that the core never imports the engines (engines import the core, and
a Session speaks both without either knowing the other). Defined once; nothing redefines them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

#: Sample rate of everything that goes into the VAD and the ASR.
ENGINE_RATE = 16_000


@dataclass(frozen=True, slots=True)
class VadScores:
    """One VAD hop (``VoiceActivityDetector.hop_samples`` samples at 16 kHz)."""

    fast: bool  # webrtcvad: cheap, instant onset, fooled by noise
    prob: float  # silero: speech probability in [0, 1], robust to noise, slow to rise
    quick: float = 0.0  # WebRTC's RNN detector: rises within 10-50 ms of a voiced onset


Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the history as the LLM sees it."""

    role: Role
    content: str
