"""Fake engines that isolate the session's logic from model speed and accuracy.

They behave like the real ones where the session depends on it: the VAD scores by energy, the
LLM streams pieces with a delay and stops when closed, the TTS returns audio whose length grows
with the text. Real-engine behaviour is proven separately in tests/e2e.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat
from voicebot.core.types import ChatMessage, Float32Array, Int16Array, Tool, ToolChoice, VadScores
from voicebot.engines.base import EchoCancellerFactory, Engines
from voicebot.sink import AudioChunk

RATE = 16_000


class EnergyVad:
    hop_samples = 512

    def score(self, hop: Float32Array) -> VadScores:
        loud = float(np.sqrt(np.mean(hop**2))) > 0.05
        return VadScores(fast=loud, prob=0.95 if loud else 0.02)

    def reset(self) -> None:
        pass


class ScriptedAsr:
    name = "scripted"

    def __init__(self, transcripts: Sequence[str] = ("hello there",)) -> None:
        self.transcripts = list(transcripts)
        self.calls = 0

    def transcribe(self, audio: Float32Array, language: str | None = None) -> str:
        text = self.transcripts[min(self.calls, len(self.transcripts) - 1)]
        self.calls += 1
        return text


class SlowLlm:
    """Streams a fixed reply word by word; records what it was asked and whether it was stopped."""

    name = "slow"

    def __init__(self, reply: str = "Sure, I can help with that. Here is a second sentence for you. "
                 "And a third one to keep talking for a while.", delay: float = 0.01,
                 first_delay: float = 0.0, cleanup_s: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.first_delay = first_delay  # a long prompt evaluation before the first token
        self.cleanup_s = cleanup_s  # how long stopping takes (a C++ loop noticing its stop flag)
        self.requests: list[list[ChatMessage]] = []
        self.prefills: list[list[ChatMessage]] = []
        self.tools_offered: list[tuple[Tool, ...]] = []
        self.active = 0
        self.closed = 0
        self.waiting = 0  # no generation slots to wait for

    async def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int,
                     temperature: float, tools: Sequence[Tool] = (),
                     tool_choice: ToolChoice = "auto") -> AsyncIterator[str]:
        """Says ``reply`` whatever tools are offered (it never calls one)."""
        self.requests.append(list(messages))
        self.tools_offered.append(tuple(tools))
        self.active += 1
        try:
            await asyncio.sleep(self.first_delay)
            for i, word in enumerate(self.reply.split(" ")[:max_tokens]):
                await asyncio.sleep(self.delay)
                yield word if i == 0 else " " + word
        finally:
            if self.cleanup_s:
                await asyncio.shield(asyncio.sleep(self.cleanup_s))
            self.active -= 1
            self.closed += 1

    async def prefill(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()) -> None:
        self.prefills.append(list(messages))
        await asyncio.sleep(self.delay)


class ToneTts:
    name = "tone"
    sample_rate = 22_050

    def __init__(self, ms_per_char: float = 40.0) -> None:
        self.ms_per_char = ms_per_char
        self.texts: list[str] = []

    def synthesize(self, text: str) -> Int16Array:
        self.texts.append(text)
        n = int(len(text) * self.ms_per_char * self.sample_rate / 1000)
        t = np.arange(n) / self.sample_rate
        return (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)


class FixedTurn:
    """A turn model with a fixed opinion; records what it was asked about."""

    name = "fixed"

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.calls: list[int] = []  # samples of audio per call

    def complete_probability(self, audio: Float32Array) -> float:
        self.calls.append(int(audio.size))
        return self.probability


def fake_engines(asr: ScriptedAsr | None = None, llm: SlowLlm | None = None,
                 tts: ToneTts | None = None, turn: FixedTurn | None = None,
                 echo: EchoCancellerFactory | None = None) -> Engines:
    return Engines(vad=EnergyVad, asr=asr or ScriptedAsr(), llm=llm or SlowLlm(), tts=tts or ToneTts(), turn=turn,
                   echo=echo)


class RecordingSink:
    """An in-memory transport: records events, audio chunks (also as delta events), clears.

    ``positions`` plays a transport that knows what the listener played (item id -> ms); without
    it the session must fall back on its playout clock, like a WebSocket.
    """

    chunk_ms = 100.0
    holds_output = True
    kind = "test"

    def __init__(self, audio_format: AudioFormat | None = None, positions: dict[str, float] | None = None) -> None:
        self.audio_format = audio_format
        self.positions = positions
        self.events: list[dict[str, object]] = []
        self.chunks: list[AudioChunk] = []
        self.ended: list[tuple[str, str]] = []
        self.clears = 0
        self.hangups: list[str] = []  # end(reason): the session ended itself

    def send_event(self, event: ev.ServerEvent) -> None:
        self.events.append(event)

    def send_audio(self, chunk: AudioChunk) -> None:
        self.chunks.append(chunk)
        self.events.append(ev.audio_delta(chunk.response_id, chunk.item_id, chunk.encoded()))

    def end_audio(self, response_id: str, item_id: str) -> None:
        self.ended.append((response_id, item_id))

    def clear(self) -> None:
        self.clears += 1
        self.events.append({"type": "sink.clear"})  # where the clear fell among the events

    def playback_position(self, item_id: str) -> float | None:
        return None if self.positions is None else self.positions.get(item_id, 0.0)

    def end(self, reason: str) -> None:
        self.hangups.append(reason)


def tone(ms: float, rate: int = 24_000, amplitude: int = 8000) -> bytes:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (np.sin(2 * np.pi * 300 * t) * amplitude).astype("<i2").tobytes()


def silence(ms: float, rate: int = 24_000) -> bytes:
    return np.zeros(int(rate * ms / 1000), "<i2").tobytes()


# --- fault injection: engines that raise or hang on their first ``faults`` calls -----------------

#: How long a "hang" lasts at most (a stalled engine the turn must not wait for; bounded so the
#: worker thread ends within the test).
HANG_S = 5.0


class _Faults:
    """``mode``: "raise" or "hang"; the first ``faults`` calls misbehave, the rest work."""

    def __init__(self, mode: str, faults: int = 1) -> None:
        assert mode in ("raise", "hang")
        self.mode = mode
        self.faults = faults
        self.release = threading.Event()  # ends a hang early (test teardown)

    def strike(self) -> bool:
        if self.faults <= 0:
            return False
        self.faults -= 1
        return True

    def misbehave(self, what: str) -> None:
        """In a worker thread."""
        if self.mode == "raise":
            raise RuntimeError(f"injected {what} fault")
        self.release.wait(HANG_S)

    async def amisbehave(self, what: str) -> None:
        if self.mode == "raise":
            raise RuntimeError(f"injected {what} fault")
        await asyncio.sleep(HANG_S)


class FaultyAsr(ScriptedAsr):
    def __init__(self, mode: str, faults: int = 1, transcripts: Sequence[str] = ("hello there",)) -> None:
        super().__init__(transcripts)
        self.fault = _Faults(mode, faults)

    def transcribe(self, audio: Float32Array, language: str | None = None) -> str:
        if self.fault.strike():
            self.fault.misbehave("ASR")
        return super().transcribe(audio, language)


class FaultyLlm(SlowLlm):
    """``where``: "first" = before the first token, "mid" = after a few tokens."""

    def __init__(self, mode: str, where: str = "first", faults: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fault = _Faults(mode, faults)
        self.where = where

    async def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int,
                     temperature: float, tools: Sequence[Tool] = (),
                     tool_choice: ToolChoice = "auto") -> AsyncIterator[str]:
        faulty = self.fault.strike()
        if faulty and self.where == "first":
            self.requests.append(list(messages))
            await self.fault.amisbehave("LLM")
        async for i, piece in _enumerate(super().stream(messages, max_tokens=max_tokens, temperature=temperature)):
            if faulty and i == 3:
                await self.fault.amisbehave("LLM")
            yield piece


async def _enumerate(stream: AsyncIterator[str]) -> AsyncIterator[tuple[int, str]]:
    i = 0
    async for piece in stream:
        yield i, piece
        i += 1


class FaultyTts(ToneTts):
    def __init__(self, mode: str, faults: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fault = _Faults(mode, faults)

    def synthesize(self, text: str) -> Int16Array:
        if self.fault.strike():
            self.fault.misbehave("TTS")
        return super().synthesize(text)
