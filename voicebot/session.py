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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat, InputAudio, int16_to_float32
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
from voicebot.core.turns import Action, TurnTracker
from voicebot.engines.base import ENGINE_RATE, Engines, Int16Array
from voicebot.errors import EngineError, ProtocolError
from voicebot.responses import Responses
from voicebot.session_config import SessionConfig, apply_update, session_wire

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # the hosted API refuses commits shorter than this too
MAX_MANUAL_BUFFER_MS = 15 * 60 * 1000


@dataclass
class _Speculation:
    """A transcription started at a pause, reused if the user does not speak again."""

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
        self.speculation: _Speculation | None = None
        self.responses = Responses(self)
        self.speculative_replies = settings.speculative_replies
        self.transcriptions: dict[str, asyncio.Task[str]] = {}
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

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
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
                reply_id = self.responses.active.id if self.responses.active else None
                self.responses.interrupt("client_cancelled")
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
                self.responses.create(event.response, event_id=event.event_id)
            case ev.ResponseCancel():
                active = self.responses.active
                if active is None or (event.response_id and event.response_id != active.id):
                    raise ProtocolError("There is no active response to cancel.",
                                        code="response_cancel_not_active", event_id=event.event_id)
                self.responses.interrupt("client_cancelled")

    # --- session configuration -----------------------------------------------------------------

    def session_wire(self) -> dict[str, Any]:
        return session_wire(self.config, self.id, self.model)

    def _update_session(self, s: ev.SessionConfig, event_id: str | None) -> None:
        old, self.config = self.config, apply_update(self.config, s, event_id)
        if self.config.input_format != old.input_format:
            self._input = InputAudio(self.config.input_format)
        if self.config.vad is not None:
            self._endpointer.update(self.config.vad)
        self.emit(ev.server_event("session.updated", session=self.session_wire()))

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
                    self.responses.interrupt()
            case PauseStarted(audio_end_ms=end):
                self._speculate(end)
            case SpeechResumed():
                self.speculation = None
                self.responses.drop_speculative()
            case SpeechStopped(audio_end_ms=end):
                self.emit(ev.server_event("input_audio_buffer.speech_stopped", audio_end_ms=end,
                                          item_id=self._speech_item_id))
                actions = self.turns.speech_stopped(policy)
                item = self._commit_speech(end)
                if item is not None and Action.START_REPLY in actions:
                    self.responses.create(None, event_id=None)

    def _speech_audio(self) -> Int16Array:
        assert self.config.vad is not None
        start = (self._speech_start_ms or 0.0) - self.config.vad.prefix_padding_ms
        return self._buffer.slice(start)

    def _speculate(self, end_ms: float) -> None:
        audio = self._speech_audio()
        task = self.spawn(self._transcribe(audio), "speculative-asr")
        self.speculation = _Speculation(task)
        if self.speculative_replies:
            self.spawn(self.responses.think_ahead(self.speculation), "think-ahead")

    def _commit_speech(self, end_ms: float) -> Item | None:
        speculation, self.speculation = self.speculation, None
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
        self.speculation = None
        self._add_audio_item(audio, None)

    def _clear_input(self) -> None:
        self._buffer.clear()
        self._hop = np.zeros(0, np.int16)
        self._endpointer.reset()
        self._speech_start_ms = None
        self.speculation = None
        self.responses.drop_speculative()
        self.turns.user_speaking = False

    def _add_audio_item(self, audio: Int16Array, transcript: asyncio.Task[str] | None) -> Item:
        item = Item(self._speech_item_id, "user", "input_audio", text=None,
                    audio_ms=audio.size * 1000 / ENGINE_RATE)
        self._speech_item_id = ev.new_id("item")
        self._buffer.clear()
        previous = self.conversation.add(item)
        self.emit(ev.server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id))
        self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        task = transcript if transcript is not None else self.spawn(self._transcribe(audio), "asr")
        self.transcriptions[item.id] = task
        self.spawn(self._finish_transcription(item, task), "asr-result")
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
            self.transcriptions.pop(item.id, None)
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
            task = self.spawn(self._transcribe(samples), "asr")
            self.transcriptions[item.id] = task
            self.spawn(self._finish_transcription(item, task), "asr-result")
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
