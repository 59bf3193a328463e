"""One Session per conversation connection: client events and audio in, server events out.

Every transport (Realtime WebSocket, WebRTC data channel + tracks, telephony) drives a Session
the same way: ``start()``, then ``handle_raw()``/``handle()`` for client events and
``feed_audio()`` for audio in the session's input format, and finally ``close()``. Output goes
through the ``emit`` callback as Realtime server events (audio deltas carry raw bytes).

The session owns every task it starts: one reply at a time, transcriptions, speculative
transcriptions. ``close()`` cancels and awaits them all, so nothing outlives the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat, InputAudio, OutputAudio, int16_to_float32
from voicebot.core.buffer import PcmBuffer
from voicebot.core.conversation import ContentType, Conversation, Item
from voicebot.core.endpoint import (
    EndpointConfig,
    Endpointer,
    PauseStarted,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
)
from voicebot.core.playout import PlayoutClock
from voicebot.core.turns import Action, TurnPolicy, TurnTracker
from voicebot.engines.base import ENGINE_RATE, ChatMessage, Engines, Int16Array
from voicebot.errors import EngineError, ProtocolError
from voicebot.reply import ReplyPipeline

log = logging.getLogger(__name__)

PCM24K = AudioFormat("pcm16", 24_000)
MIN_COMMIT_MS = 100  # the hosted API refuses commits shorter than this too
MAX_MANUAL_BUFFER_MS = 15 * 60 * 1000
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 350}
Modality = Literal["audio", "text"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a client can change with ``session.update``."""

    instructions: str
    output_modalities: tuple[Modality, ...] = ("audio",)
    input_format: AudioFormat = PCM24K
    output_format: AudioFormat = PCM24K
    transcription: dict[str, Any] | None = field(default_factory=lambda: {"model": "whisper", "language": None})
    vad: EndpointConfig | None = field(default_factory=EndpointConfig)
    policy: TurnPolicy = field(default_factory=TurnPolicy)
    vad_type: str = "server_vad"
    voice: str = "joe"
    speed: float = 1.0
    max_output_tokens: int | Literal["inf"] = "inf"
    temperature: float | None = None

    def turn_detection_wire(self) -> dict[str, Any] | None:
        if self.vad is None:
            return None
        return {
            "type": self.vad_type,
            "threshold": self.vad.threshold,
            "prefix_padding_ms": self.vad.prefix_padding_ms,
            "silence_duration_ms": self.vad.silence_duration_ms,
            "create_response": self.policy.create_response,
            "interrupt_response": self.policy.interrupt_response,
            "idle_timeout_ms": None,
        }


@dataclass
class _Reply:
    id: str
    pipeline: ReplyPipeline
    clock: PlayoutClock
    modalities: tuple[str, ...]
    params: ev.ResponseParams
    instructions: str
    task: asyncio.Task[None] | None = None
    item_started: bool = False
    finished: bool = False  # response.done has been emitted (exactly once)
    # A speculative reply starts thinking during the user's pause and stays silent (no event at
    # all) until the pause is confirmed as the end of the turn; then it is promoted.
    speculative: bool = False
    promoted: asyncio.Event = field(default_factory=asyncio.Event)
    public: bool = False  # response.created was emitted
    cut_at: float = field(default_factory=time.monotonic)
    cancel_reason: str = "client_cancelled"

    def ids(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.pipeline.item.id, "output_index": 0}


@dataclass
class _Speculation:
    """A transcription started at a pause, reused if the user does not speak again."""

    upto_ms: float
    task: asyncio.Task[str]


class Session:
    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        emit: Callable[[ev.ServerEvent], None],
        *,
        conversation: Conversation | None = None,
        model: str = "voicebot",
        output_lead_ms: float | None = None,
        input_format: AudioFormat | None = None,
        output_format: AudioFormat | None = None,
    ) -> None:
        self.id = ev.new_id("sess")
        self.engines = engines
        self.settings = settings
        self._emit = emit
        self.model = model
        self.conversation = conversation or Conversation(ev.new_id("conv"))
        self.config = SessionConfig(instructions=self.conversation.instructions or settings.instructions)
        # Transports with a fixed media format (WebRTC tracks, telephony) start the session in it.
        if input_format is not None:
            self.config = replace(self.config, input_format=input_format)
        if output_format is not None:
            self.config = replace(self.config, output_format=output_format)
        self.output_lead_ms = settings.output_lead_ms if output_lead_ms is None else output_lead_ms
        self.turns = TurnTracker()
        self._input = InputAudio(self.config.input_format)
        self._endpointer = Endpointer(self.config.vad or EndpointConfig())
        self._vad = engines.vad()
        self._hop = np.zeros(0, np.int16)
        self._buffer = PcmBuffer()
        self._speech_start_ms: float | None = None
        self._speech_item_id = ev.new_id("item")
        self._speculation: _Speculation | None = None
        self._reply: _Reply | None = None
        self._speculative: _Reply | None = None  # thinking ahead during a pause, not yet public
        self.speculative_replies = settings.speculative_replies
        self._transcriptions: dict[str, asyncio.Task[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.metrics: list[dict[str, Any]] = []  # per finished reply, newest last

    # --- lifecycle -----------------------------------------------------------------------------

    def emit(self, event: ev.ServerEvent) -> None:
        # Other transports sharing this conversation (SSE) see every event, including the final
        # response.done of a reply that close() cancelled, so their view never dangles.
        self.conversation.publish(event)
        if not self._closed:
            self._emit(event)

    def start(self) -> None:
        self.emit(ev.server_event("session.created", session=self.session_wire()))

    async def close(self) -> None:
        """Cancel and await every task this session started; idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._tasks.clear()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=exc)
            self.emit(ev.error_event(ProtocolError(f"Internal error: {exc}", code="server_error",
                                                   type="server_error")))

    @property
    def active_tasks(self) -> int:
        return len(self._tasks)

    # --- client events -------------------------------------------------------------------------

    async def handle_raw(self, raw: str | bytes) -> None:
        try:
            await self.handle(ev.parse_client_event(raw))
        except ProtocolError as err:
            self.emit(ev.error_event(err))

    async def handle(self, event: Any) -> None:
        try:
            await self._dispatch(event)
        except ProtocolError as err:
            if err.event_id is None:
                err.event_id = event.event_id
            self.emit(ev.error_event(err))

    async def _dispatch(self, event: Any) -> None:
        match event:
            case ev.SessionUpdate():
                self._update_session(event.session, event.event_id)
            case ev.InputAudioBufferAppend():
                data = ev.decode_audio(event.audio, param="audio", event_id=event.event_id)
                if self.config.input_format.encoding == "pcm16" and len(data) % 2:
                    raise ProtocolError(f"audio/pcm input must be whole 16-bit samples; got {len(data)} bytes.",
                                        param="audio", event_id=event.event_id)
                self.feed_audio(data, event_id=event.event_id)
            case ev.InputAudioBufferCommit():
                self._commit(event_id=event.event_id)
            case ev.InputAudioBufferClear():
                self._clear_input()
                self.emit(ev.server_event("input_audio_buffer.cleared"))
            case ev.OutputAudioBufferClear():
                reply_id = self._reply.id if self._reply else None
                self._interrupt("client_cancelled")
                self.emit(ev.server_event("output_audio_buffer.cleared", response_id=reply_id))
            case ev.ConversationItemCreate():
                self._create_item(event)
            case ev.ConversationItemDelete():
                self.conversation.delete(event.item_id, event_id=event.event_id)
                self.emit(ev.server_event("conversation.item.deleted", item_id=event.item_id))
            case ev.ConversationItemRetrieve():
                item = self.conversation.get(event.item_id, event_id=event.event_id)
                self.emit(ev.server_event("conversation.item.retrieved", item=item.to_wire()))
            case ev.ConversationItemTruncate():
                self._truncate(event)
            case ev.ResponseCreate():
                self._create_response(event.response, event_id=event.event_id)
            case ev.ResponseCancel():
                if self._reply is None or (event.response_id and event.response_id != self._reply.id):
                    raise ProtocolError("There is no active response to cancel.",
                                        code="response_cancel_not_active", event_id=event.event_id)
                self._interrupt("client_cancelled")

    # --- session configuration -----------------------------------------------------------------

    def session_wire(self) -> dict[str, Any]:
        c = self.config
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(c.output_modalities),
            "instructions": c.instructions,
            "audio": {
                "input": {
                    "format": c.input_format.to_wire(),
                    "transcription": c.transcription,
                    "turn_detection": c.turn_detection_wire(),
                    "noise_reduction": None,
                },
                "output": {"format": c.output_format.to_wire(), "voice": c.voice, "speed": c.speed},
            },
            "max_output_tokens": c.max_output_tokens,
            "tools": [],
            "tool_choice": "auto",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "include": None,
        }

    def _update_session(self, s: ev.SessionConfig, event_id: str | None) -> None:
        c = self.config
        changes: dict[str, Any] = {}
        if s.instructions is not None:
            changes["instructions"] = s.instructions
        modalities = s.output_modalities or s.modalities
        if modalities:
            if len(set(modalities)) > 1:
                raise ProtocolError("output_modalities must be ['audio'] or ['text'], not both.",
                                    param="session.output_modalities", event_id=event_id)
            changes["output_modalities"] = tuple(dict.fromkeys(modalities))
        audio_in = s.audio.input if s.audio else None
        audio_out = s.audio.output if s.audio else None
        in_fmt = audio_in.format if audio_in and audio_in.format is not None else s.input_audio_format
        out_fmt = audio_out.format if audio_out and audio_out.format is not None else s.output_audio_format
        if in_fmt is not None:
            changes["input_format"] = self._parse_format(in_fmt, "session.audio.input.format", event_id)
        if out_fmt is not None:
            changes["output_format"] = self._parse_format(out_fmt, "session.audio.output.format", event_id)
        fields_set = audio_in.model_fields_set if audio_in else set()
        if "transcription" in fields_set or "input_audio_transcription" in s.model_fields_set:
            t = audio_in.transcription if audio_in and "transcription" in fields_set else s.input_audio_transcription
            changes["transcription"] = None if t is None else {"model": t.model or "whisper", "language": t.language}
        if "turn_detection" in fields_set or "turn_detection" in s.model_fields_set:
            td = audio_in.turn_detection if audio_in and "turn_detection" in fields_set else s.turn_detection
            changes.update(self._turn_detection(td, c))
        voice = audio_out.voice if audio_out and audio_out.voice else s.voice
        if voice:
            changes["voice"] = voice
        if audio_out and audio_out.speed is not None:
            changes["speed"] = audio_out.speed
        max_tokens = s.max_output_tokens if s.max_output_tokens is not None else s.max_response_output_tokens
        if max_tokens is not None:
            changes["max_output_tokens"] = max_tokens
        if s.temperature is not None:
            changes["temperature"] = s.temperature
        self.config = replace(c, **changes)
        if "input_format" in changes and changes["input_format"] != c.input_format:
            self._input = InputAudio(self.config.input_format)
        if self.config.vad is not None:
            self._endpointer.update(self.config.vad)
        self.emit(ev.server_event("session.updated", session=self.session_wire()))

    @staticmethod
    def _parse_format(value: object, param: str, event_id: str | None) -> AudioFormat:
        try:
            return AudioFormat.parse(value)
        except Exception as exc:
            raise ProtocolError(str(exc), param=param, event_id=event_id) from None

    @staticmethod
    def _turn_detection(td: ev.TurnDetection | None, c: SessionConfig) -> dict[str, Any]:
        if td is None:
            return {"vad": None}
        base = c.vad or EndpointConfig()
        silence = td.silence_duration_ms
        if td.type == "semantic_vad":
            silence = SEMANTIC_SILENCE_MS[td.eagerness or "auto"]
        vad = replace(
            base,
            threshold=td.threshold if td.threshold is not None else base.threshold,
            prefix_padding_ms=td.prefix_padding_ms if td.prefix_padding_ms is not None else base.prefix_padding_ms,
            silence_duration_ms=silence if silence is not None else base.silence_duration_ms,
        )
        policy = TurnPolicy(
            create_response=td.create_response if td.create_response is not None else True,
            interrupt_response=td.interrupt_response if td.interrupt_response is not None else True,
        )
        return {"vad": vad, "policy": policy, "vad_type": td.type}

    # --- audio in ------------------------------------------------------------------------------

    def feed_audio(self, data: bytes, *, event_id: str | None = None) -> None:
        """Audio in the session's input format (any length): buffer it and run turn detection."""
        try:
            samples = self._input.feed(data)
        except Exception as exc:  # AudioFormatError and friends: the message says what is wrong
            raise ProtocolError(str(exc), param="audio", event_id=event_id) from None
        self.feed_pcm16k(samples)

    def feed_pcm16k(self, samples: Int16Array) -> None:
        self._buffer.append(samples)
        if self.config.vad is None:
            if self._buffer.duration_ms > MAX_MANUAL_BUFFER_MS:
                self._buffer.drop_before(self._buffer.end_ms - MAX_MANUAL_BUFFER_MS)
            return
        hop_size = self._vad.hop_samples
        pending = np.concatenate((self._hop, samples)) if self._hop.size else samples
        usable = pending.size - pending.size % hop_size
        for start in range(0, usable, hop_size):
            scores = self._vad.score(int16_to_float32(pending[start : start + hop_size]))
            for event in self._endpointer.process(scores):
                self._on_endpoint(event)
        self._hop = pending[usable:].copy()
        self._trim_idle_buffer()

    def _trim_idle_buffer(self) -> None:
        if self._speech_start_ms is not None or self.config.vad is None:
            return
        keep_ms = self.config.vad.prefix_padding_ms + 1000
        if self._buffer.duration_ms > keep_ms + 2000:  # trim in batches: compaction copies
            self._buffer.drop_before(self._buffer.end_ms - keep_ms)

    def _on_endpoint(self, event: object) -> None:
        policy = self.config.policy
        match event:
            case SpeechStarted(audio_start_ms=start):
                self._speech_start_ms = float(start)
                self.emit(ev.server_event("input_audio_buffer.speech_started", audio_start_ms=start,
                                          item_id=self._speech_item_id))
                if Action.CANCEL_REPLY in self.turns.speech_started(policy):
                    self._interrupt()
            case PauseStarted(audio_end_ms=end):
                self._speculate(end)
            case SpeechResumed():
                self._speculation = None
                self._drop_speculative_reply()
            case SpeechStopped(audio_end_ms=end):
                self.emit(ev.server_event("input_audio_buffer.speech_stopped", audio_end_ms=end,
                                          item_id=self._speech_item_id))
                actions = self.turns.speech_stopped(policy)
                item = self._commit_speech(end)
                if item is not None and Action.START_REPLY in actions:
                    self._create_response(None, event_id=None)

    def _speech_audio(self) -> Int16Array:
        assert self.config.vad is not None
        start = (self._speech_start_ms or 0.0) - self.config.vad.prefix_padding_ms
        return self._buffer.slice(start)

    def _speculate(self, end_ms: float) -> None:
        audio = self._speech_audio()
        task = self._spawn(self._transcribe(audio), "speculative-asr")
        self._speculation = _Speculation(end_ms, task)
        if self.speculative_replies:
            self._spawn(self._think_ahead(self._speculation), "think-ahead")

    def _commit_speech(self, end_ms: float) -> Item | None:
        speculation, self._speculation = self._speculation, None
        audio = self._speech_audio()
        self._speech_start_ms = None
        transcript = speculation.task if speculation is not None else None
        return self._add_audio_item(audio, transcript)

    def _commit(self, event_id: str | None) -> None:
        if self._buffer.duration_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {self._buffer.duration_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty", event_id=event_id,
            )
        audio = self._buffer.slice(self._buffer.start_ms)
        self._speech_start_ms = None
        self._speculation = None
        self._add_audio_item(audio, None)

    def _clear_input(self) -> None:
        self._buffer.clear()
        self._hop = np.zeros(0, np.int16)
        self._endpointer.reset()
        self._speech_start_ms = None
        self._speculation = None
        self._drop_speculative_reply()
        self.turns.user_speaking = False

    def _add_audio_item(self, audio: Int16Array, transcript: asyncio.Task[str] | None) -> Item:
        item = Item(self._speech_item_id, "user", "input_audio", text=None,
                    audio_ms=audio.size * 1000 / ENGINE_RATE)
        self._speech_item_id = ev.new_id("item")
        self._buffer.clear()
        previous = self.conversation.add(item)
        self.emit(ev.server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id))
        self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        task = transcript if transcript is not None else self._spawn(self._transcribe(audio), "asr")
        self._transcriptions[item.id] = task
        self._spawn(self._finish_transcription(item, task), "asr-result")
        return item

    async def _transcribe(self, audio: Int16Array) -> str:
        language = (self.config.transcription or {}).get("language") or self.settings.asr_language or None
        return await asyncio.to_thread(self.engines.asr.transcribe, int16_to_float32(audio), language)

    async def _finish_transcription(self, item: Item, task: asyncio.Task[str]) -> None:
        started = time.monotonic()
        try:
            transcript = (await asyncio.shield(task)).strip()
        except (EngineError, Exception) as exc:
            log.warning("transcription failed: %s", exc)
            item.text = ""
            if self.config.transcription is not None:
                self.emit(ev.server_event(
                    "conversation.item.input_audio_transcription.failed", item_id=item.id, content_index=0,
                    error={"type": "transcription_error", "code": "asr_failed", "message": str(exc)}))
            return
        finally:
            self._transcriptions.pop(item.id, None)
        item.text = transcript
        self.conversation.notify("updated", item)
        if self.config.transcription is not None:
            ids = {"item_id": item.id, "content_index": 0}
            if transcript:
                self.emit(ev.server_event("conversation.item.input_audio_transcription.delta", delta=transcript, **ids))
            self.emit(ev.server_event(
                "conversation.item.input_audio_transcription.completed", transcript=transcript,
                usage={"type": "duration", "seconds": round(item.audio_ms / 1000, 3)}, **ids))
        self.emit(ev.server_event("conversation.item.done", previous_item_id=self.conversation.previous_id(item.id),
                                  item=item.to_wire()))
        log.debug("transcribed %s in %.0f ms: %r", item.id, (time.monotonic() - started) * 1000, transcript)

    # --- conversation items --------------------------------------------------------------------

    def _create_item(self, event: ev.ConversationItemCreate) -> None:
        param = event.item
        part = param.content[0]
        item_id = param.id or ev.new_id("item")
        if part.type in ("input_audio", "audio") and part.audio is not None:
            pcm = ev.decode_audio(part.audio, param="item.content[0].audio", event_id=event.event_id)
            try:
                samples = InputAudio(self.config.input_format).feed(pcm)
            except Exception as exc:
                raise ProtocolError(str(exc), param="item.content[0].audio", event_id=event.event_id) from None
            item = Item(item_id, param.role, "input_audio", text=part.transcript, audio_ms=samples.size / 16)
            previous = self.conversation.add(item, event.previous_item_id, event_id=event.event_id)
            self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
            task = self._spawn(self._transcribe(samples), "asr")
            self._transcriptions[item.id] = task
            self._spawn(self._finish_transcription(item, task), "asr-result")
            return
        text = part.text if part.text is not None else part.transcript
        if text is None:
            raise ProtocolError("The content part has no text.", code="missing_required_parameter",
                                param="item.content[0].text", event_id=event.event_id)
        content_type: ContentType = "output_text" if param.role == "assistant" else "input_text"
        item = Item(item_id, param.role, content_type, text=text)
        previous = self.conversation.add(item, event.previous_item_id, event_id=event.event_id)
        self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        self.emit(ev.server_event("conversation.item.done", previous_item_id=previous, item=item.to_wire()))

    def _truncate(self, event: ev.ConversationItemTruncate) -> None:
        if event.content_index != 0:
            raise ProtocolError("content_index must be 0 (items have one content part).",
                                param="content_index", event_id=event.event_id)
        self.conversation.truncate(event.item_id, event.audio_end_ms, event_id=event.event_id)
        self.emit(ev.server_event("conversation.item.truncated", item_id=event.item_id, content_index=0,
                                  audio_end_ms=event.audio_end_ms))

    # --- responses -----------------------------------------------------------------------------

    def _create_response(self, params: ev.ResponseParams | None, event_id: str | None) -> None:
        if self._reply is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self._reply.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response", event_id=event_id,
            )
        speculative, self._speculative = self._speculative, None
        if params is None and speculative is not None and not speculative.finished:
            reply = speculative  # already thinking since the pause: just let it speak
        else:
            if speculative is not None:
                self._drop_speculative_reply(speculative)
            reply = self._new_reply(params or ev.ResponseParams())
            reply.promoted.set()
            reply.task = self._spawn(self._run_reply(reply), "reply")
        self._reply = reply
        self.turns.reply_started()
        reply.promoted.set()

    def _new_reply(self, p: ev.ResponseParams) -> _Reply:
        c = self.config
        modalities = tuple(p.output_modalities or p.modalities or c.output_modalities)
        limit = p.max_output_tokens if p.max_output_tokens is not None else c.max_output_tokens
        cap = self.settings.max_response_tokens
        max_tokens = cap if limit == "inf" else min(int(limit), cap)
        audio = "audio" in modalities
        item = Item(ev.new_id("item"), "assistant", "output_audio" if audio else "output_text",
                    text="", status="in_progress")
        clock = PlayoutClock(self.output_lead_ms)
        temperature = p.temperature if p.temperature is not None else c.temperature
        pipeline = ReplyPipeline(
            response_id=ev.new_id("resp"), item=item, engines=self.engines, messages=[],
            audio_out=OutputAudio(self.engines.tts.sample_rate, c.output_format) if audio else None,
            clock=clock, emit=self.emit, max_tokens=max_tokens,
            temperature=self.settings.temperature if temperature is None else temperature,
            on_audible=self.turns.reply_audio_started,
        )
        return _Reply(pipeline.response_id, pipeline, clock, modalities, p,
                      p.instructions if p.instructions is not None else c.instructions)

    # --- speculative replies ----------------------------------------------------------------------

    async def _think_ahead(self, speculation: _Speculation) -> None:
        """During the user's pause: once the guessed transcript is ready, start the reply silently.

        If the pause turns into the end of the turn, the reply is promoted and the caller hears it
        about (silence_duration - speculate_after + ASR time) sooner; if the user speaks again,
        it is dropped without a trace. Only the LLM/TTS work is spent.
        """
        transcript = (await asyncio.shield(speculation.task)).strip()
        still_paused = self._speculation is speculation
        policy = self.config.policy
        if not (still_paused and transcript and policy.create_response and self._reply is None
                and self._speculative is None and "audio" in self.config.output_modalities):
            return
        reply = self._new_reply(ev.ResponseParams())
        reply.speculative = True
        reply.pipeline.messages = [*self.conversation.chat_messages(reply.instructions),
                                   ChatMessage("user", transcript)]
        self._speculative = reply
        reply.task = self._spawn(self._run_reply(reply), "speculative-reply")

    def _drop_speculative_reply(self, reply: _Reply | None = None) -> None:
        reply = reply or self._speculative
        self._speculative = None
        if reply is not None and not reply.public:
            reply.cancel_reason = "speculation_dropped"
            if reply.task is not None:
                reply.task.cancel()

    def _response_wire(self, reply: _Reply, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        pipeline = reply.pipeline
        return {
            "id": reply.id, "object": "realtime.response", "status": status,
            "status_details": details, "output": [pipeline.item.to_wire()] if reply.item_started else [],
            "conversation_id": self.conversation.id, "output_modalities": list(reply.modalities),
            "max_output_tokens": self.config.max_output_tokens, "metadata": reply.params.metadata,
            "audio": {"output": {"format": self.config.output_format.to_wire(), "voice": self.config.voice}},
            "usage": {"total_tokens": pipeline.timings.llm_tokens, "input_tokens": 0,
                      "output_tokens": pipeline.timings.llm_tokens},
        }

    async def _run_reply(self, reply: _Reply) -> None:
        pipeline = reply.pipeline
        status: str = "completed"
        details: dict[str, Any] | None = None
        try:
            if not reply.speculative:
                self._announce_response(reply)
                pipeline.messages = await self._history_for(reply)
            async with asyncio.TaskGroup() as group:
                # The pipeline starts thinking at once; it emits nothing until released.
                group.create_task(pipeline.run())
                await reply.promoted.wait()
                if reply.speculative:
                    self._announce_response(reply)
                self._announce_item(reply)
                pipeline.released.set()
        except asyncio.CancelledError:
            status, details = "cancelled", {"type": "cancelled", "reason": reply.cancel_reason}
            raise
        except Exception as exc:
            errors = list(exc.exceptions) if isinstance(exc, ExceptionGroup) else [exc]
            if not all(isinstance(e, EngineError) for e in errors):
                log.error("session %s: reply %s failed", self.id, reply.id, exc_info=exc)
            message = "; ".join(str(e) for e in errors)
            status = "failed"
            details = {"type": "failed",
                       "error": {"type": "server_error", "code": "engine_error", "message": message}}
            if reply.public:
                self.emit(ev.error_event(ProtocolError(f"The response failed: {message}", code="engine_error",
                                                       type="server_error")))
        finally:
            self._finish_reply(reply, status, details)

    def _announce_response(self, reply: _Reply) -> None:
        reply.public = True
        self.emit(ev.server_event("response.created", response=self._response_wire(reply, "in_progress")))

    async def _history_for(self, reply: _Reply) -> list[ChatMessage]:
        params = reply.params
        # The reply must see every user turn, so wait for transcriptions still running.
        pending = list(self._transcriptions.values())
        if pending:
            await asyncio.wait([asyncio.shield(t) for t in pending])
        if params.conversation == "none" and params.input is not None:
            history = Conversation("oob")
            for p in params.input:
                text = p.content[0].text or p.content[0].transcript or ""
                history.add(Item(ev.new_id("item"), p.role, "input_text", text=text))
            return history.chat_messages(reply.instructions)
        return self.conversation.chat_messages(reply.instructions)

    def _announce_item(self, reply: _Reply) -> None:
        pipeline = reply.pipeline
        item = pipeline.item
        if reply.params.conversation != "none":
            previous = self.conversation.add(item)
            self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        reply.item_started = True
        self.emit(ev.server_event("response.output_item.added", response_id=reply.id,
                                  output_index=0, item=item.to_wire()))
        part_key = "transcript" if pipeline.audio_out else "text"
        self.emit(ev.server_event("response.content_part.added", content_index=0,
                                  part={"type": "audio" if pipeline.audio_out else "text", part_key: ""},
                                  **reply.ids()))

    def _finish_reply(self, reply: _Reply, status: str, details: dict[str, Any] | None) -> None:
        if reply.finished:
            return
        reply.finished = True
        if self._speculative is reply:
            self._speculative = None
        if self._reply is reply:
            self._reply = None
            self.turns.reply_ended()
        if not reply.public:  # never announced (a dropped speculation): nobody knows it existed
            return
        pipeline = reply.pipeline
        item = pipeline.item
        if status == "cancelled" and item.content_type == "output_audio" and item.id in self.conversation:
            # Keep in history only what the listener can have heard by the cut.
            self.conversation.truncate(item.id, min(item.audio_ms, reply.clock.played_ms(reply.cut_at)))
        item.status = "completed" if status == "completed" else "incomplete"
        item.text = (item.text or "").strip()
        if status == "completed":
            item.llm_text = pipeline.full_text.strip() or None
        if reply.item_started:
            if item.id in self.conversation:
                self.conversation.notify("updated", item)
            content = {"content_index": 0, **reply.ids()}
            if pipeline.audio_out is not None:
                self.emit(ev.server_event("response.output_audio.done", **content))
                self.emit(ev.server_event("response.output_audio_transcript.done", transcript=item.text, **content))
                part = {"type": "audio", "transcript": item.text}
            else:
                self.emit(ev.server_event("response.output_text.done", text=item.text, **content))
                part = {"type": "text", "text": item.text}
            self.emit(ev.server_event("response.content_part.done", part=part, **content))
            self.emit(ev.server_event("response.output_item.done", response_id=reply.id,
                                      output_index=0, item=item.to_wire()))
            if item.id in self.conversation:
                self.emit(ev.server_event("conversation.item.done",
                                          previous_item_id=self.conversation.previous_id(item.id),
                                          item=item.to_wire()))
        wire = self._response_wire(reply, status, details)
        metrics = {**pipeline.timings.as_ms(), "status": status, "audio_sent_ms": round(item.audio_ms),
                   "speculative": reply.speculative}
        wire["metrics"] = metrics  # voicebot extension: where the time went (demo page, benchmarks)
        self.metrics.append(metrics)
        del self.metrics[:-20]
        self.emit(ev.server_event("response.done", response=wire))

    def _interrupt(self, reason: str = "turn_detected") -> None:
        """Barge-in / response.cancel: the reply ends *now*, in this very step.

        ``response.done`` (cancelled) is emitted before returning and the task is cancelled in the
        same step, so no audio can follow, and the client never waits for engine cleanup (an LLM
        still evaluating a long prompt only notices its stop flag at the next token). The task
        keeps ownership of that cleanup and the session's ``close()`` still awaits it.
        """
        reply = self._reply
        if reply is None:
            return
        reply.cut_at = time.monotonic()
        reply.cancel_reason = reason
        if reply.task is not None:
            reply.task.cancel()
        self._finish_reply(reply, "cancelled", {"type": "cancelled", "reason": reason})

