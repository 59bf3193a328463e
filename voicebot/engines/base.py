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

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from voicebot.core.types import ChatMessage, Float32Array, Int16Array, LlmPiece, Tool, ToolChoice, VadScores
from voicebot.engines.cpu_queue import CpuQueues


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


class LanguageModel(Protocol):
    """Streams the assistant's reply token by token (text pieces, not ids)."""

    name: str
    #: Replies waiting for a generation slot of their own (the embedded model's --llm-parallel;
    #: always 0 for a remote server, which queues on its side). /metrics shows it.
    waiting: int

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float,
        tools: Sequence[Tool] = (), tool_choice: ToolChoice = "auto",
    ) -> AsyncGenerator[LlmPiece, None]:
        """An async generator of text pieces and, when ``tools`` are offered, :class:`ToolCallDelta`s.

        ``tool_choice``: ``auto`` (the model decides), ``none`` (no call), ``required`` (at least
        one call) or the name of one function (a call of it). A call's arguments, joined, are
        one JSON object.

        Closing it (``aclose``, e.g. through ``contextlib.aclosing``) or cancelling the task
        that iterates it must stop generation at once, including work in worker threads.
        """
        ...

    async def prefill(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()) -> None:
        """Evaluate ``messages`` into the prompt cache now, so that a reply to a conversation that
        starts with them only evaluates what comes after (the words said since). ``tools``: the
        ones the reply will be offered (they are part of its prompt). A no-op for a backend
        without a cache of its own to warm (a remote server)."""
        ...


class SpeechSynthesizer(Protocol):
    """Blocking, thread-safe text-to-speech."""

    name: str
    sample_rate: int

    def synthesize(self, text: str) -> Int16Array:
        """Mono int16 samples at ``sample_rate`` for one clause or sentence."""
        ...


class EchoCanceller(Protocol):
    """Per-session, stateful: remove from the microphone what the speaker played."""

    frame_samples: int

    def process(self, near: Int16Array, far: Int16Array) -> Int16Array:
        """``near`` (microphone) and ``far`` (speaker), 16 kHz int16, whole frames of ``frame_samples``."""
        ...


class EchoCancellerFactory(Protocol):
    def __call__(self) -> EchoCanceller: ...


class TurnDetector(Protocol):
    """Blocking, thread-safe: does the speech so far sound like a finished turn?"""

    name: str

    def complete_probability(self, audio: Float32Array) -> float:
        """P(complete) for the turn's 16 kHz float32 audio, ending now."""
        ...


@dataclass(frozen=True, slots=True)
class Engines:
    """Everything a Session needs, loaded once by the server's lifespan."""

    vad: VadFactory
    asr: SpeechRecognizer
    llm: LanguageModel
    tts: SpeechSynthesizer
    turn: TurnDetector | None = None  # semantic end of turn; without it, silence alone decides
    echo: EchoCancellerFactory | None = None  # echo cancellation of the microphone; None = off
    #: Admission of every session's ASR and TTS calls, most urgent first (shared by the server).
    cpu: CpuQueues = field(default_factory=CpuQueues.for_cores)
