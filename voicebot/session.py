"""One Session per conversation connection: a typed API in, an output sink out.

Every transport drives a Session the same way. It builds one with its :class:`~voicebot.sink.OutputSink`,
calls ``start()``, then the typed methods — ``feed_audio``, ``update``, ``create_item``,
``truncate``, ``create_response``, ``cancel_response``, ``interrupt`` — or, for transports that
speak the Realtime protocol (the WebSocket, the WebRTC data channel), ``handle_raw`` with the
client's JSON, which parses it into a client event object and calls the same methods. Nothing
inside the process goes through JSON. Finally ``close()``.

Output goes only to the sink: server events, paced audio chunks, and ``clear()`` when the turn
tracker says the listener's buffered audio must go. Barge-in is carried out here, once, for every
transport (:meth:`Session._carry_out`).

The session owns every task it starts: one reply at a time, transcriptions, speculative
transcriptions. ``close()`` cancels and awaits them all, so nothing outlives the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from voicebot import logs
from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.audio import AudioFormat, InputAudio, int16_to_float32
from voicebot.core.conversation import ContentType, Conversation, Item
from voicebot.core.echo import SpeakerTimeline
from voicebot.core.endpoint import (
    EndpointConfig,
    JudgeTurn,
    PauseStarted,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
)
from voicebot.core.limits import Expiry, SessionClock
from voicebot.core.playout import PlayoutClock
from voicebot.core.turns import Action, TurnTracker
from voicebot.core.types import ENGINE_RATE, ChatMessage, Int16Array, Tool
from voicebot.engines.base import EchoCanceller, Engines
from voicebot.errors import ProtocolError
from voicebot.function_calls import client_function_item
from voicebot.hearing import BufferFull, Hearing
from voicebot.metrics import Metrics
from voicebot.reply import ReplyTimings
from voicebot.responses import ResponseContext, Responses, Speculation
from voicebot.session_config import SessionConfig, apply_update, offered_tools, session_wire
from voicebot.sink import OutputSink
from voicebot.tasks import OwnedTasks
from voicebot.transcripts import Transcripts

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # the hosted API refuses commits shorter than this too
#: After this long, close() logs the tasks that are still stopping (engine threads check a stop
#: flag) and goes on waiting for them: a session ends after its last task.
CLOSE_TIMEOUT_S = 5.0


class Session:
    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        sink: OutputSink,
        *,
        conversation: Conversation | None = None,
        model: str = "voicebot",
        output_lead_ms: float | None = None,
        config: SessionConfig | None = None,
        metrics: Metrics | None = None,
        owner: str | None = None,
    ) -> None:
        self.id = ev.new_id("sess")
        self.owner = owner  # the API key (fingerprint) this session counts against, if any
        self.metrics = metrics or Metrics()  # the app's, or one nobody scrapes
        self.engines = engines
        self.settings = settings
        self.sink = sink
        self.model = model
        self.conversation = conversation or Conversation(ev.new_id("conv"), max_items=settings.max_conversation_items,
                                                         max_bytes=settings.max_conversation_bytes)
        # Items evicted by the conversation's caps: the client's copy of the history follows.
        self._unwatch = self.conversation.subscribe(self._conversation_changed)
        #: On every log line of this session: bound in the transport's task that builds it (so its
        #: own lines carry them) and in every task the session starts.
        self.log_ids = {"session_id": self.id, "conversation_id": self.conversation.id, "transport": sink.kind}
        logs.bind(**self.log_ids)
        self.config = self._fixed_media(config or SessionConfig(
            instructions=self.conversation.instructions or settings.instructions))
        self.playout = PlayoutClock(settings.output_lead_ms if output_lead_ms is None else output_lead_ms)
        self.turns = TurnTracker()
        #: What the listener's speaker plays (the reply pipeline writes it, the echo canceller reads it).
        self.speaker: SpeakerTimeline | None = None
        echo: tuple[EchoCanceller, SpeakerTimeline] | None = None
        if engines.echo is not None:
            self.speaker = SpeakerTimeline()
            echo = (engines.echo(), self.speaker)
        self.hearing = Hearing(engines.vad(), self.config.vad, echo, max_turn_ms=settings.max_turn_seconds * 1000)
        #: --max-session-seconds and --idle-timeout-s, armed by start(); ``expired`` once one ran out.
        self.limits = SessionClock(time.monotonic(), settings.max_session_seconds, settings.idle_timeout_s)
        self.expired: Expiry | None = None
        self._speech_item_id = ev.new_id("item")
        self.speculation: Speculation | None = None
        self.turn_complete_probability: float | None = None  # the turn model's last verdict
        self._prefill: asyncio.Task[None] | None = None  # new instructions being prefilled
        self._tasks = OwnedTasks(self.id, self._task_failed)
        self.transcripts = Transcripts(engines, settings, self.conversation, lambda: self.config, self.emit,
                                       self.spawn)
        #: One LLM request of this session at a time (see ResponseContext.llm_lock).
        self.llm_lock = asyncio.Lock()
        self._closed = False
        self._started_at: float | None = None  # start(): a headless session is never started
        self._speech_ended_at: float | None = None  # monotonic end of the voice turn being answered
        self.responses = Responses(ResponseContext(
            session_id=self.id, engines=engines, settings=settings, conversation=self.conversation,
            turns=self.turns, sink=sink, clock=self.playout, speaker=self.speaker, config=lambda: self.config,
            emit=self.emit,
            spawn=self.spawn, transcripts_ready=self.transcripts.ready, llm_lock=self.llm_lock,
            on_reply_done=self._reply_done))

    def _fixed_media(self, config: SessionConfig) -> SessionConfig:
        """A transport with its own media (a WebRTC track, a phone line) fixes both audio formats."""
        fmt = self.sink.audio_format
        return config if fmt is None else replace(config, input_format=fmt, output_format=fmt)

    # --- lifecycle -----------------------------------------------------------------------------

    def emit(self, event: ev.ServerEvent) -> None:
        # Other transports sharing this conversation (SSE) see every event, including the final
        # response.done of a reply that close() cancelled, so their view never dangles.
        self.conversation.publish(event)
        if event["type"] == "error":
            self.metrics.errors.labels(kind=event["error"].get("code") or "unknown").inc()
        if not self._closed:
            self.sink.send_event(event)

    def _reply_done(self, timings: ReplyTimings, status: str, audio: bool) -> None:
        """A reply ended: count it, and time the stages of the voice turn it answered."""
        self._note_assistant(time.monotonic())
        if status != "completed":
            return
        self.metrics.turns.inc()
        speech_end, self._speech_ended_at = self._speech_ended_at, None
        if speech_end is None or not audio:
            return
        # A speculative reply starts once the pause's transcript is there: that is the ASR's stage.
        asr = timings.history_ready or (timings.started if timings.released is not None else None)
        for stage, mark in (("asr", asr), ("llm_first_token", timings.llm_first_token),
                            ("tts_first_audio", timings.tts_first_audio),
                            ("voice_to_voice", timings.first_audio_sent)):
            if mark is not None:
                self.metrics.stage(stage, mark - speech_end)

    def start(self) -> None:
        """``session.created``, and the session's time limits start (a realtime transport calls this;
        a headless text session never does, so it has no limits)."""
        self._started_at = now = time.monotonic()
        log.info("session started (%s, conversation %s)", self.sink.kind, self.conversation.id)
        self.emit(ev.server_event("session.created", session=self.session_wire()))
        self.limits.restart(now)
        if self.limits.next_check(now) is not None:
            self.spawn(self._watch_limits(), "limits")

    async def _watch_limits(self) -> None:
        """Sleep until a limit could run out; when one has, end the session (the task is the
        session's own: close() cancels it)."""
        while (wait := self.limits.next_check(time.monotonic())) is not None:
            await asyncio.sleep(wait + 0.01)
            now = time.monotonic()
            self._note_assistant(now)
            if self.hearing.speech_start_ms is not None:
                self.limits.touch(now)  # someone is talking right now
            if (expiry := self.limits.expired(now)) is not None:
                self.end(expiry)
                return

    def _note_assistant(self, now: float) -> None:
        """The assistant speaking, or its audio still playing at the listener, is not idleness."""
        if self.responses.active is not None:
            self.limits.touch(now)
        if (queued_ms := self.playout.queued_ms(now)) > 0:
            self.limits.touch(now + queued_ms / 1000)  # idle from when the listener's audio runs out

    def end(self, expiry: Expiry) -> None:
        """A limit ran out: say so with an ``error`` event, then the transport closes the connection
        (WebSocket close 1008, a WebRTC or phone hangup) and, as always, calls close(). A reply in
        flight is not waited for: close() cuts it to what was heard."""
        if self.expired is not None or self._closed:
            return
        self.expired = expiry
        log.info("session %s: %s", self.id, expiry.reason)
        self.emit(ev.error_event(ProtocolError(expiry.message, code=expiry.code)))
        self.sink.end(expiry.reason)

    def _conversation_changed(self, kind: str, item: Item) -> None:
        if kind == "evicted":
            self.emit(ev.server_event("conversation.item.deleted", item_id=item.id))
        elif kind == "added" and self.conversation.changed_by != self.id and not self._closed:
            # Someone else's item (a text message posted over HTTP, another session's reply, one
            # from another instance): this client sees the history grow. To its sink only — the
            # conversation's other listeners already heard of it from whoever added it.
            self.sink.send_event(ev.server_event("conversation.item.added",
                                                 previous_item_id=self.conversation.previous_id(item.id),
                                                 item=item.to_wire()))

    async def close(self) -> None:
        """End the reply (cut to what was heard), cancel and await every task; idempotent."""
        if not self._closed:
            self._unwatch()
            self._closed = True
            self._carry_out(self.turns.interrupted(output_playing=self._output_playing()), "session_closed")
            if self._started_at is not None:
                log.info("session closed after %.1f s", time.monotonic() - self._started_at,
                         extra={"session_id": self.id})
        await self._tasks.cancel_all(CLOSE_TIMEOUT_S)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, awaited: bool = False) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name, logs.context(**self.log_ids), awaited=awaited)

    def _task_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        self.emit(ev.error_event(ProtocolError(f"Internal error: {exc}", code="server_error", type="server_error")))

    @property
    def replying(self) -> bool:
        """A reply is being made, or the listener is still hearing one (a graceful shutdown waits)."""
        return self.responses.active is not None or self._output_playing()

    @property
    def active_tasks(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Until no response is running (e.g. to answer a keypad entry after the current reply)."""
        await self.responses.wait_idle()

    # --- Realtime client events ----------------------------------------------------------------

    async def handle_raw(self, raw: str | bytes) -> None:
        """One client message as sent on the wire; a bad one gets an ``error`` event."""
        try:
            event = ev.parse_client_event(raw)
        except ProtocolError as err:
            self.emit(ev.error_event(err))
            return
        except Exception as exc:  # the parser is the boundary: nothing a client sends gets past it
            log.exception("session %s: parsing a client message failed", self.id)
            self.emit(ev.error_event(ProtocolError(f"The server could not parse the message: {type(exc).__name__}.",
                                                   type="server_error", code="internal_error")))
            return
        await self.handle(event)

    async def handle(self, event: ev.ClientEvent) -> None:
        """One parsed client event; whatever goes wrong becomes an ``error`` event naming it, and
        the session goes on (a bug here must cost the client one event, not the conversation)."""
        if not isinstance(event, ev.InputAudioBufferAppend) or self.hearing.endpoint is None:
            # Appended audio is activity only when the client decides what to send (turn detection
            # off, push-to-talk); with turn detection on, only speech heard in it is.
            self.limits.touch(time.monotonic())
        try:
            self._dispatch(event)
        except ProtocolError as err:
            if err.event_id is None:
                err.event_id = event.event_id
            self.emit(ev.error_event(err))
        except Exception as exc:
            log.exception("session %s: %s failed", self.id, event.type)
            self.emit(ev.error_event(ProtocolError(
                f"The server could not handle '{event.type}': {type(exc).__name__}.", type="server_error",
                code="internal_error", event_id=event.event_id)))

    def _dispatch(self, event: ev.ClientEvent) -> None:
        eid = event.event_id
        match event:
            case ev.SessionUpdate():
                self.update(event.session, event_id=eid)
            case ev.InputAudioBufferAppend():
                data = ev.decode_audio(event.audio, param="audio", event_id=eid)
                if self.config.input_format.encoding == "pcm16" and len(data) % 2:
                    raise ProtocolError(f"audio/pcm input must be whole 16-bit samples; got {len(data)} bytes.",
                                        param="audio", event_id=eid)
                self.feed_audio(data, event_id=eid)
            case ev.InputAudioBufferCommit():
                self.commit_audio(event_id=eid)
            case ev.InputAudioBufferClear():
                self.clear_audio()
            case ev.OutputAudioBufferClear():
                self.clear_output(event_id=eid)
            case ev.ConversationItemCreate():
                self.create_item(event.item, event.previous_item_id, event_id=eid)
            case ev.ConversationItemDelete():
                self.delete_item(event.item_id, event_id=eid)
            case ev.ConversationItemRetrieve():
                item = self.conversation.get(event.item_id, event_id=eid)
                self.emit(ev.server_event("conversation.item.retrieved", item=item.to_wire()))
            case ev.ConversationItemTruncate():
                self.truncate(event.item_id, event.audio_end_ms, content_index=event.content_index, event_id=eid)
            case ev.ResponseCreate():
                self.create_response(event.response, event_id=eid)
            case ev.ResponseCancel():
                self.cancel_response(event.response_id, event_id=eid)

    # --- session configuration -----------------------------------------------------------------

    def session_wire(self) -> dict[str, Any]:
        return session_wire(self.config, self.id, self.model)

    def update(self, session: ev.SessionConfig, *, event_id: str | None = None) -> None:
        """``session.update``: change what the client may change; answered with ``session.updated``."""
        old, self.config = self.config, self._fixed_media(apply_update(self.config, session, event_id))
        self.hearing.configure(self.config.vad)
        self.emit(ev.server_event("session.updated", session=self.session_wire()))
        tools = offered_tools(self.config.tools, self.config.tool_choice)
        prompt_changed = (self.config.instructions, tools) != (old.instructions,
                                                               offered_tools(old.tools, old.tool_choice))
        if prompt_changed and (self._prefill is None or self._prefill.done()):
            # New instructions or tools: evaluate them now, not when the first question waits for it.
            history = self.responses.ctx.history(self.config.instructions)
            self._prefill = self.spawn(self._prefill_messages(history, tools), "prefill-instructions")

    # --- audio in ------------------------------------------------------------------------------

    def feed_audio(self, data: bytes, fmt: AudioFormat | None = None, *, event_id: str | None = None) -> None:
        """Input audio of any length, in ``fmt`` (default: the session's input format): buffer it
        and run turn detection. Undecodable audio raises ProtocolError (param ``audio``)."""
        now = time.monotonic()
        self.hearing.guard(self.turns.reply_audible or self.playout.queued_ms(now) > 0)
        try:
            endpoint_events = self.hearing.feed(data, fmt or self.config.input_format, now)
        except BufferFull as full:
            self.metrics.dropped_audio_frames.inc()
            raise ProtocolError(str(full), code="input_audio_buffer_full", param="audio", event_id=event_id) from None
        except ValueError as exc:  # AudioFormatError: the message says what is wrong
            self.metrics.dropped_audio_frames.inc()
            raise ProtocolError(str(exc), param="audio", event_id=event_id) from None
        for event in endpoint_events:
            self._on_endpoint(event)

    async def _prefill_messages(self, messages: list[ChatMessage], tools: tuple[Tool, ...] = ()) -> None:
        async with self.llm_lock:
            await self.engines.llm.prefill(messages, tools)

    def _on_endpoint(self, event: object) -> None:
        policy = self.config.policy
        self.limits.touch(time.monotonic())  # speech (or the end of it) was heard
        match event:
            case SpeechStarted(audio_start_ms=start):
                self.hearing.speech_start_ms = float(start)
                self.emit(ev.server_event("input_audio_buffer.speech_started", audio_start_ms=start,
                                          item_id=self._speech_item_id))
                actions = self.turns.speech_started(policy, output_playing=self._output_playing())
                self._carry_out(actions, "turn_detected")
                if Action.CANCEL_REPLY in actions or Action.CLEAR_OUTPUT in actions:
                    self.metrics.barge_ins.inc()
                    self.metrics.barge_in_seconds.observe(max(0.0, time.monotonic() - self._stream_time(start)))
            case PauseStarted():
                self._speculate()
            case JudgeTurn(pause=pause):
                if self.engines.turn is not None:
                    self.spawn(self._judge(pause, self.hearing.speech_audio()), "judge-turn")
            case SpeechResumed():
                self._drop_speculation()
            case SpeechStopped(audio_end_ms=end):
                self._speech_ended_at = self._stream_time(end)
                self.metrics.stage("endpointing", time.monotonic() - self._speech_ended_at)
                self.emit(ev.server_event("input_audio_buffer.speech_stopped", audio_end_ms=end,
                                          item_id=self._speech_item_id))
                actions = self.turns.speech_stopped(policy)
                speculation, self.speculation = self.speculation, None
                transcript = None
                if speculation is not None:  # the guess from the pause is the turn's transcript
                    speculation.live = False
                    transcript = speculation.task
                self._add_audio_item(self.hearing.take(audio_from_speech=True), transcript)
                if Action.START_REPLY in actions:
                    self.responses.create(None, event_id=None)

    def _stream_time(self, stream_ms: float) -> float:
        """The monotonic time a moment of the input stream was received (the newest audio is now)."""
        return time.monotonic() - max(0.0, self.hearing.buffer.end_ms - stream_ms) / 1000

    def _speculate(self) -> None:
        self._drop_speculation()
        endpoint = self.hearing.endpoint or EndpointConfig()
        # Needed when the pause would end the turn: its silence minus what has passed of it.
        slack_s = max(0, endpoint.silence_duration_ms - endpoint.speculate_after_ms) / 1000
        task = self.transcripts.start(self.hearing.speech_audio(), slack_s=slack_s, name="speculative-asr")
        self.speculation = Speculation(task)
        if self.settings.speculative_replies:
            self.spawn(self.responses.think_ahead(self.speculation), "think-ahead")

    async def _judge(self, pause: int, audio: Int16Array) -> None:
        """Ask the turn model whether the pause ends the turn; the endpointer weighs the answer.

        After the pause's transcription: that one is on the way to the reply, this verdict only
        matters once the base silence is over, and two cores should not split between them.
        """
        assert self.engines.turn is not None
        if self.speculation is not None:
            await asyncio.wait([self.speculation.task])
        probability = await asyncio.to_thread(self.engines.turn.complete_probability, int16_to_float32(audio))
        self.turn_complete_probability = probability
        self.hearing.judged(pause, probability)

    def _drop_speculation(self) -> None:
        if self.speculation is not None:
            self.speculation.live = False
            self.speculation.task.cancel()  # still queued: it never runs; running: its result is ignored
            self.speculation = None
        self.responses.drop_speculative()

    def commit_audio(self, *, event_id: str | None = None) -> Item:
        """``input_audio_buffer.commit``: everything buffered becomes a user audio item."""
        buffered = self.hearing.buffer.duration_ms
        if buffered < MIN_COMMIT_MS:
            raise ProtocolError(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {buffered:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty", event_id=event_id,
            )
        self._drop_speculation()
        return self._add_audio_item(self.hearing.take(audio_from_speech=False), None)

    def clear_audio(self) -> None:
        """``input_audio_buffer.clear``."""
        self.hearing.clear()
        self._drop_speculation()
        self.turns.user_speaking = False
        self.emit(ev.server_event("input_audio_buffer.cleared"))

    def _add_audio_item(self, audio: Int16Array, transcript: asyncio.Task[str] | None) -> Item:
        item = Item(self._speech_item_id, "user", "input_audio", text=None,
                    audio_ms=audio.size * 1000 / ENGINE_RATE)
        self._speech_item_id = ev.new_id("item")
        previous = self.conversation.add(item, by=self.id)
        self.emit(ev.server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id))
        self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        self.transcripts.file(item, transcript or self.transcripts.start(audio))
        return item

    # --- conversation items --------------------------------------------------------------------

    def create_item(self, param: ev.ItemParam, previous_item_id: str | None = None, *,
                    event_id: str | None = None) -> Item:
        """``conversation.item.create``: a text message, or audio (transcribed like speech)."""
        self.limits.touch(time.monotonic())  # a typed message or a keypad entry is activity
        item_id = param.id or ev.new_id("item")
        if param.type != "message":
            item = client_function_item(param, item_id, self.conversation, self.config.tools, event_id)
            return self._add_done(item, previous_item_id, event_id)
        assert param.content is not None and param.role is not None  # ev.check_item
        part = param.content[0]
        if part.type in ("input_audio", "audio") and part.audio is not None:
            pcm = ev.decode_audio(part.audio, param="item.content[0].audio", event_id=event_id)
            try:
                samples = InputAudio(self.config.input_format).feed(pcm)
            except ValueError as exc:
                raise ProtocolError(str(exc), param="item.content[0].audio", event_id=event_id) from None
            item = Item(item_id, param.role, "input_audio", text=part.transcript,
                        audio_ms=samples.size * 1000 / ENGINE_RATE)
            previous = self.conversation.add(item, previous_item_id, event_id=event_id, by=self.id)
            self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
            self.transcripts.file(item, self.transcripts.start(samples))
            return item
        text = part.text if part.text is not None else part.transcript
        if text is None:
            raise ProtocolError("The content part has no text.", code="missing_required_parameter",
                                param="item.content[0].text", event_id=event_id)
        content_type: ContentType = "output_text" if param.role == "assistant" else "input_text"
        return self._add_done(Item(item_id, param.role, content_type, text=text), previous_item_id, event_id)

    def _add_done(self, item: Item, previous_item_id: str | None, event_id: str | None) -> Item:
        previous = self.conversation.add(item, previous_item_id, event_id=event_id, by=self.id)
        self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        self.emit(ev.server_event("conversation.item.done", previous_item_id=previous, item=item.to_wire()))
        return item

    def add_user_text(self, text: str, *, item_id: str | None = None) -> Item:
        """A typed user message (a text client, a keypad entry): ``create_item`` without the wire shape."""
        return self.create_item(ev.ItemParam(id=item_id, role="user",
                                             content=[ev.ContentPart(type="input_text", text=text)]))

    def delete_item(self, item_id: str, *, event_id: str | None = None) -> None:
        self.conversation.delete(item_id, event_id=event_id)
        self.emit(ev.server_event("conversation.item.deleted", item_id=item_id))

    def truncate(self, item_id: str, audio_end_ms: float, *, content_index: int = 0,
                 event_id: str | None = None) -> None:
        """``conversation.item.truncate``: the client says how much of an assistant item it played."""
        if content_index != 0:
            raise ProtocolError("content_index must be 0 (items have one content part).",
                                param="content_index", event_id=event_id)
        self.conversation.truncate(item_id, audio_end_ms, event_id=event_id)
        self.emit(ev.server_event("conversation.item.truncated", item_id=item_id, content_index=0,
                                  audio_end_ms=round(audio_end_ms)))

    # --- responses and barge-in ----------------------------------------------------------------

    def create_response(self, params: ev.ResponseParams | None = None, *, event_id: str | None = None) -> None:
        """``response.create`` (default parameters when None)."""
        self.limits.touch(time.monotonic())
        self.responses.create(params or ev.ResponseParams(), event_id=event_id)

    def cancel_response(self, response_id: str | None = None, *, event_id: str | None = None) -> None:
        """``response.cancel``: the reply stops and its audio is cleared, exactly like a barge-in."""
        active = self.responses.active
        if active is None or (response_id and response_id != active.id):
            raise ProtocolError("There is no active response to cancel.", code="response_cancel_not_active",
                                event_id=event_id)
        self.interrupt("client_cancelled")

    def clear_output(self, *, event_id: str | None = None) -> None:
        """``output_audio_buffer.clear`` (WebRTC): stop what the listener hears now."""
        if not self.sink.holds_output:
            raise ProtocolError("output_audio_buffer.clear is for WebRTC and phone calls; over a WebSocket the "
                                "client clears its own playback (send response.cancel to stop the reply).",
                                code="unsupported_event", event_id=event_id)
        reply_id = self.responses.active.id if self.responses.active else None
        self.interrupt("client_cancelled")
        self.emit(ev.server_event("output_audio_buffer.cleared", response_id=reply_id))

    def interrupt(self, reason: str) -> None:
        """Stop the reply and what the listener hears, cut the history (a keypad press, a cancel)."""
        self._carry_out(self.turns.interrupted(output_playing=self._output_playing()), reason)

    def _output_playing(self) -> bool:
        return self.playout.queued_ms(time.monotonic()) > 0

    def _carry_out(self, actions: list[Action], reason: str) -> None:
        """The turn tracker's actions, through the sink: the one barge-in path of every transport.

        All in one synchronous step, so no audio can slip out between them. The cut is taken first
        (what was heard is measured before the listener's buffer is dropped), so the cancelled
        response's done events already carry the words that were heard.
        """
        now = time.monotonic()
        if Action.TRUNCATE_HISTORY in actions:
            self._cut_to_heard(now)
        if Action.CLEAR_OUTPUT in actions and not self._closed:
            self.sink.clear()
        if Action.CLEAR_OUTPUT in actions:
            self.playout.flush(now)
            if self.speaker is not None:
                self.speaker.flush(now)
        if Action.CANCEL_REPLY in actions:
            self.responses.cancel(reason)

    def _cut_to_heard(self, now: float) -> None:
        reply = self.responses.last_voiced
        if reply is None or reply.pipeline.audio_start_ms is None:
            return
        item = reply.item
        heard = self.sink.playback_position(item.id)
        if heard is None:  # the transport cannot know: the playout clock's estimate
            heard = self.playout.played_ms(now) - reply.pipeline.audio_start_ms
        heard_ms = int(max(0.0, min(heard, item.audio_ms)))  # whole ms, as on the wire
        if item.id not in self.conversation or item.heard_ms is not None:
            return  # out of band, or the client already said what it played
        self.conversation.truncate(item.id, heard_ms)
        if reply.finished:  # its done events are out: tell the client the history changed
            self.emit(ev.server_event("conversation.item.truncated", item_id=item.id, content_index=0,
                                      audio_end_ms=heard_ms))
