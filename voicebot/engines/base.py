"""The four engine roles as small protocols.

A Session only talks to these protocols, so a backend (embedded model or remote
OpenAI-compatible server) can be swapped without touching the conversation logic.
Engines are loaded once per process and shared by every session; anything that
holds per-stream state (the VAD) is created per session through a factory.

Blocking engines (ASR, TTS) are called from worker threads by the session; they
must be safe to call from several threads at once. The LLM is async and must stop
its work (including any worker thread) promptly when its iterator is closed or the
consuming task is cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

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
    prob: float  # silero: speech probability in [0, 1], robust to noise


class VoiceActivityDetector(Protocol):
    """Per-session, stateful: feed consecutive hops of 16 kHz audio."""

    hop_samples: int

    def score(self, hop: Float32Array) -> VadScores:
        """Score exactly ``hop_samples`` float32 samples in [-1, 1]."""
        ...

    def reset(self) -> None:
        """Forget recurrent state (e.g. after a long gap in the stream)."""
        ...


class VadFactory(Protocol):
    def __call__(self) -> VoiceActivityDetector: ...


class SpeechRecognizer(Protocol):
    """Blocking, thread-safe speech-to-text on 16 kHz float32 audio."""

    name: str

    def transcribe(self, audio: Float32Array, language: str | None = None) -> str: ...


Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


class LanguageModel(Protocol):
    """Streams the assistant's reply token by token (text pieces, not ids)."""

    name: str

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        """An async iterator of text pieces.

        Closing the iterator (``aclose``) or cancelling the task that iterates it
        must stop generation at once, including work in worker threads.
        """
        ...


class SpeechSynthesizer(Protocol):
    """Blocking, thread-safe text-to-speech."""

    name: str
    sample_rate: int

    def synthesize(self, text: str) -> Int16Array:
        """Mono int16 samples at ``sample_rate`` for one clause or sentence."""
        ...


@dataclass(frozen=True, slots=True)
class Engines:
    """Everything a Session needs, loaded once by the server's lifespan."""

    vad: VadFactory
    asr: SpeechRecognizer
    llm: LanguageModel
    tts: SpeechSynthesizer
