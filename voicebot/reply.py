"""One assistant reply as a pipeline: LLM tokens -> speakable clauses -> TTS -> paced audio.

The three stages run concurrently in one TaskGroup so the first clause is spoken while the LLM
is still writing the rest. Cancelling the task that awaits :meth:`ReplyPipeline.run` cancels
every stage at once: the LLM iterator is closed (its engine stops generating within a token),
queued clauses and audio are dropped, and no audio reaches the sink after the cancellation.

Audio leaves through the transport's :class:`~voicebot.sink.OutputSink` in chunks of the sink's
``chunk_ms``, each sent only when the session's playout clock allows it (no more than
``lead_ms`` queued at the listener): the one place output is paced, whatever the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from voicebot.core.audio import OutputAudio, StreamResampler
from voicebot.core.chunker import SpeechChunker
from voicebot.core.conversation import Item
from voicebot.core.echo import SpeakerTimeline
from voicebot.core.events import ServerEvent, server_event
from voicebot.core.playout import PlayoutClock
from voicebot.core.types import ENGINE_RATE, ChatMessage, Int16Array, Tool, ToolCallDelta, ToolChoice
from voicebot.engines.base import Engines
from voicebot.engines.faults import LLM_FAILED, TTS_FAILED, engine_call
from voicebot.sink import AudioChunk, OutputSink

#: The first chunk is spoken after this many words even if no comma came yet: the caller hears
#: the answer start ~0.5 s sooner on a CPU LLM, at the cost of a slightly early first pause.
FIRST_CHUNK_MAX_WORDS = 2
#: When the listener has less than this queued and nothing else is synthesized, the words the LLM
#: has written so far are spoken at once rather than at the end of the sentence (SpeechChunker.hurry).
HURRY_BELOW_MS = 350
#: A silent (speculative) reply's audio is needed when the user's pause ends their turn.
SPECULATIVE_SLACK_S = 0.4
_CLAUSE_QUEUE = 4  # clauses waiting for TTS
_AUDIO_QUEUE = 2  # synthesized clauses waiting to be sent


@dataclass
class ReplyTimings:
    """Wall-clock marks (time.monotonic seconds) of one reply, for metrics and benchmarks."""

    started: float = field(default_factory=time.monotonic)
    history_ready: float | None = None  # every user turn transcribed: the LLM can be asked
    released: float | None = None  # the turn ended (a speculative reply waits for this to be heard)
    llm_started: float | None = None  # the LLM was asked (after the session's previous request ended)
    llm_first_token: float | None = None
    first_clause: float | None = None
    tts_first_audio: float | None = None
    first_audio_sent: float | None = None
    llm_tokens: int = 0

    def as_ms(self) -> dict[str, float | int | None]:
        def since(mark: float | None) -> float | None:
            return None if mark is None else round((mark - self.started) * 1000, 1)

        return {
            "history_ready_ms": since(self.history_ready),
            "released_ms": since(self.released),
            "llm_started_ms": since(self.llm_started),
            "llm_first_token_ms": since(self.llm_first_token),
            "first_clause_ms": since(self.first_clause),
            "tts_first_audio_ms": since(self.tts_first_audio),
            "first_audio_sent_ms": since(self.first_audio_sent),
            "llm_tokens": self.llm_tokens,
        }


class EchoReference:
    """Writes a reply's audio, at 16 kHz, where the listener plays it (for the echo canceller)."""

    def __init__(self, speaker: SpeakerTimeline, rate: int) -> None:
        self.speaker = speaker
        self._resampler = StreamResampler(rate, ENGINE_RATE, low_latency=True)

    def played(self, samples: Int16Array, start_s: float) -> None:
        self.speaker.play(self._resampler.process(samples), start_s)


@dataclass
class AudioOut:
    """Where a reply's audio goes: the transport's sink, paced on the session's playout clock."""

    sink: OutputSink
    clock: PlayoutClock
    converter: OutputAudio  # TTS rate -> the sink's (or the session's) output format
    echo: EchoReference | None = None

    @property
    def chunk_samples(self) -> int:
        return max(1, round(self.converter.fmt.rate * self.sink.chunk_ms / 1000))


@dataclass
class ReplyPipeline:
    response_id: str
    item: Item
    engines: Engines
    messages: Sequence[ChatMessage]
    audio_out: AudioOut | None  # None = text-only reply
    emit: Callable[[ServerEvent], None]
    max_tokens: int
    temperature: float
    llm_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the session's: one LLM request at a time
    on_audible: Callable[[], None] = lambda: None
    timings: ReplyTimings = field(default_factory=ReplyTimings)
    #: Stall bounds (None = none): one TTS clause, the LLM's first token, the gap between tokens.
    engine_timeout_s: float | None = None
    first_token_timeout_s: float | None = None
    token_timeout_s: float | None = None
    #: Functions the model may call (``tool_choice`` says whether it must). Calls do not go to the
    #: listener: each piece goes to ``on_tool_delta``; ``on_text`` runs once, before the first words.
    tools: Sequence[Tool] = ()
    tool_choice: ToolChoice = "auto"
    on_tool_delta: Callable[[ToolCallDelta], None] = lambda delta: None
    on_text: Callable[[], None] = lambda: None
    output_index: int = 0  # the message item's place among the response's output items
    #: Set when the reply may be heard. Until then the stages think and synthesize but emit
    #: nothing (a speculative reply waiting for the end of the user's turn).
    released: asyncio.Event = field(default_factory=asyncio.Event)
    full_text: str = ""  # everything the LLM wrote (the item keeps only what was spoken)
    #: Where this reply's audio begins on the playout clock's timeline (set by the first chunk).
    audio_start_ms: float | None = None
    #: Set when the reply has ended for the listener (cancelled, failed, done): from then on
    #: nothing more leaves, not even from a stage that wakes in the same loop step as the cancel.
    halted: bool = False
    _clauses_unsent: int = 0  # chunks handed to the TTS whose audio has not all been sent yet
    _synthesized_ms: float = 0.0  # synthesized audio not yet sent to the listener

    def halt(self) -> None:
        """Nothing more reaches the listener or the client, from now on.

        Cancelling the reply's task is not enough on its own: the cancellation reaches the
        pipeline's stages only at their next ``await``, and a stage whose sleep ended in the same
        loop step still runs first. After a barge-in has flushed the playout clock, that stage
        would see no pacing delay and send a whole lead's worth of audio in one burst.
        """
        self.halted = True

    def _ids(self) -> dict[str, Any]:
        return {"response_id": self.response_id, "item_id": self.item.id, "output_index": self.output_index,
                "content_index": 0}

    async def run(self) -> None:
        if self.audio_out is None:
            await self._write_text()
            return
        clauses: asyncio.Queue[str | None] = asyncio.Queue(_CLAUSE_QUEUE)
        audio: asyncio.Queue[tuple[str, Int16Array] | None] = asyncio.Queue(_AUDIO_QUEUE)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._think(clauses))
            group.create_task(self._synthesize(clauses, audio))
            group.create_task(self._send(audio))

    async def _tokens(self) -> AsyncGenerator[str, None]:
        # Closing the engine's generator is what stops generation (and its thread) at once; the
        # lock is released only once it has, so the session's next request reuses this cache.
        async with self.llm_lock:
            self.timings.llm_started = time.monotonic()
            stream = self.engines.llm.stream(self.messages, max_tokens=self.max_tokens,
                                             temperature=self.temperature, tools=self.tools,
                                             tool_choice=self.tool_choice)
            held = ""  # blank pieces before the first words: a reply that only calls says nothing
            async with contextlib.aclosing(stream):
                while True:
                    first = self.timings.llm_first_token is None
                    limit = self.first_token_timeout_s if first else self.token_timeout_s
                    async with engine_call(LLM_FAILED, self._llm_name(first), limit):
                        try:
                            piece = await anext(stream)
                        except StopAsyncIteration:
                            break
                    if first:
                        self.timings.llm_first_token = time.monotonic()
                    self.timings.llm_tokens += 1
                    if self.halted:
                        break
                    if isinstance(piece, ToolCallDelta):
                        self.on_tool_delta(piece)
                        continue
                    if not self.full_text:
                        if not piece.strip():
                            held += piece
                            continue
                        piece, held = held + piece, ""
                        self.on_text()
                    self.full_text += piece
                    yield piece

    def _llm_name(self, first: bool) -> str:
        """The LLM as an error message names it: a remote one by its server."""
        base_url = getattr(self.engines.llm, "base_url", None)
        name = f"the LLM server at {base_url}" if base_url else "the LLM"
        return f"{name} (first token)" if first else name

    async def _write_text(self) -> None:
        self.item.text = ""
        await self.released.wait()
        async with contextlib.aclosing(self._tokens()) as tokens:  # closed however we leave
            async for piece in tokens:
                if self.halted:
                    break
                self.item.text += piece
                self.emit(server_event("response.output_text.delta", delta=piece, **self._ids()))
        self.item.text = self.item.text.strip()

    async def _think(self, clauses: asyncio.Queue[str | None]) -> None:
        chunker = SpeechChunker(first_max_words=FIRST_CHUNK_MAX_WORDS)
        async with contextlib.aclosing(self._tokens()) as tokens:  # closed however we leave
            async for piece in tokens:
                ready = chunker.push(piece)
                if not ready and self._starving():
                    ready = chunker.hurry()  # a shorter chunk now beats a gap in the voice
                for clause in ready:
                    await self._put_clause(clauses, clause)
        for clause in chunker.flush():
            await self._put_clause(clauses, clause)
        await clauses.put(None)

    def _needed_at(self) -> float:
        """When the next clause's audio must exist: once the listener has played what is queued
        at it and what is synthesized but not yet sent (a silent, speculative reply: at the end of
        the user's turn, roughly)."""
        now = time.monotonic()
        out = self.audio_out
        if not self.released.is_set():
            return now + SPECULATIVE_SLACK_S
        if out is None or self.audio_start_ms is None:
            return now  # the first words: the listener is waiting
        return now + (out.clock.queued_ms(now) + self._synthesized_ms) / 1000

    def _starving(self) -> bool:
        """The listener is about to hear silence mid-reply: everything synthesized has been sent
        and less than HURRY_BELOW_MS of it is still queued at the listener."""
        out = self.audio_out
        return (out is not None and self.audio_start_ms is not None and self._clauses_unsent == 0
                and out.clock.queued_ms(time.monotonic()) < HURRY_BELOW_MS)

    async def _put_clause(self, clauses: asyncio.Queue[str | None], clause: str) -> None:
        if self.timings.first_clause is None:
            self.timings.first_clause = time.monotonic()
        self._clauses_unsent += 1
        await clauses.put(clause)

    async def _synthesize(self, clauses: asyncio.Queue[str | None],
                          audio: asyncio.Queue[tuple[str, Int16Array] | None]) -> None:
        tts = self.engines.tts
        while (clause := await clauses.get()) is not None:
            async with engine_call(TTS_FAILED, "the TTS", self.engine_timeout_s):
                samples = await self.engines.cpu.tts.run(self._needed_at(), tts.synthesize, clause)
            if self.timings.tts_first_audio is None:
                self.timings.tts_first_audio = time.monotonic()
            if samples.size:
                self._synthesized_ms += samples.size * 1000 / tts.sample_rate
                await audio.put((clause, samples))
            else:
                self._clauses_unsent -= 1  # nothing to say (punctuation only)
        await audio.put(None)

    async def _send(self, audio: asyncio.Queue[tuple[str, Int16Array] | None]) -> None:
        assert self.audio_out is not None
        out = self.audio_out
        rate = self.engines.tts.sample_rate
        self.item.text = ""
        await self.released.wait()
        while (entry := await audio.get()) is not None:
            if self.halted:
                return
            clause, samples = entry
            converted = out.converter.convert(samples)
            clause_ms = samples.size * 1000 / rate
            self._synthesized_ms -= clause_ms  # (while it is sent, the rest of it counts as unheard: urgent)
            # The transcript advances with the audio, so it never runs ahead of what is heard.
            self.item.append_segment(clause, clause_ms)
            self.item.text = f"{self.item.text} {clause}".strip()
            self.emit(server_event("response.output_audio_transcript.delta",
                                   delta=clause if not self.item.segments[:-1] else " " + clause,
                                   **self._ids()))
            await self._send_audio(converted)
            self._clauses_unsent -= 1
        tail = out.converter.finish()
        if self.halted:
            return
        if tail.size:
            await self._send_audio(tail)
        out.sink.end_audio(self.response_id, self.item.id)

    async def _send_audio(self, samples: Int16Array) -> None:
        assert self.audio_out is not None
        out = self.audio_out
        step = out.chunk_samples
        for start in range(0, samples.size, step):
            chunk = AudioChunk(self.response_id, self.item.id, samples[start : start + step], out.converter.fmt)
            delay = out.clock.delay_before_send(time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            if self.halted:
                return
            if self.audio_start_ms is None:
                self.audio_start_ms = out.clock.sent_ms
                self.timings.first_audio_sent = time.monotonic()
                self.on_audible()
            plays_at = out.clock.sent(chunk.duration_ms, time.monotonic())
            self.item.audio_ms += chunk.duration_ms
            out.sink.send_audio(chunk)
            if out.echo is not None:
                out.echo.played(chunk.samples, plays_at)
