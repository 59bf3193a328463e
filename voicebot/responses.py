"""The session's responses: create, run, announce, finish — and think ahead during pauses.

One public response at a time per session (as in the hosted API). A response runs as one task
owned by the session; its pipeline (LLM -> chunker -> TTS -> paced audio) lives in reply.py.
A *speculative* response starts during the user's pause, emits nothing, and is either promoted
when the turn ends or dropped without a trace if the user goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voicebot.core import events as ev
from voicebot.core.audio import OutputAudio
from voicebot.core.conversation import Conversation, Item
from voicebot.core.playout import PlayoutClock
from voicebot.engines.base import ChatMessage
from voicebot.errors import EngineError, ProtocolError
from voicebot.reply import ReplyPipeline

if TYPE_CHECKING:
    from voicebot.session import Session, _Speculation

log = logging.getLogger(__name__)


@dataclass
class _Reply:
    """One response's bookkeeping around its pipeline."""

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


class Responses:
    """The replies of one session: at most one public (``active``) and one speculative."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.emit = session.emit
        self.active: _Reply | None = None
        self.speculative: _Reply | None = None  # thinking ahead during a pause, not yet public

    def create(self, params: ev.ResponseParams | None, event_id: str | None) -> None:
        """``response.create``, or the end of a turn (``params`` None): promote the speculation if any."""
        if self.active is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response", event_id=event_id,
            )
        speculative, self.speculative = self.speculative, None
        if params is None and speculative is not None and not speculative.finished:
            reply = speculative  # already thinking since the pause: just let it speak
        else:
            if speculative is not None:
                self.drop_speculative(speculative)
            reply = self._new_reply(params or ev.ResponseParams())
            reply.task = self.session.spawn(self._run(reply), "reply")
        self.active = reply
        self.session.turns.reply_started()
        reply.promoted.set()

    def _new_reply(self, p: ev.ResponseParams) -> _Reply:
        c = self.session.config
        modalities = tuple(p.output_modalities or p.modalities or c.output_modalities)
        limit = p.max_output_tokens if p.max_output_tokens is not None else c.max_output_tokens
        cap = self.session.settings.max_response_tokens
        max_tokens = cap if limit == "inf" else min(int(limit), cap)
        audio = "audio" in modalities
        item = Item(ev.new_id("item"), "assistant", "output_audio" if audio else "output_text",
                    text="", status="in_progress")
        clock = PlayoutClock(self.session.output_lead_ms)
        temperature = p.temperature if p.temperature is not None else c.temperature
        pipeline = ReplyPipeline(
            response_id=ev.new_id("resp"), item=item, engines=self.session.engines, messages=[],
            audio_out=OutputAudio(self.session.engines.tts.sample_rate, c.output_format) if audio else None,
            clock=clock, emit=self.session.emit, max_tokens=max_tokens,
            temperature=self.session.settings.temperature if temperature is None else temperature,
            on_audible=self.session.turns.reply_audio_started,
        )
        return _Reply(pipeline.response_id, pipeline, clock, modalities, p,
                      p.instructions if p.instructions is not None else c.instructions)

    # --- speculative replies ----------------------------------------------------------------------

    async def think_ahead(self, speculation: _Speculation) -> None:
        """During the user's pause: once the guessed transcript is ready, start the reply silently.

        If the pause turns into the end of the turn, the reply is promoted and the caller hears it
        about (silence_duration - speculate_after + ASR time) sooner; if the user speaks again,
        it is dropped without a trace. Only the LLM/TTS work is spent.
        """
        transcript = (await asyncio.shield(speculation.task)).strip()
        still_paused = self.session.speculation is speculation
        policy = self.session.config.policy
        if not (still_paused and transcript and policy.create_response and self.active is None
                and self.speculative is None and "audio" in self.session.config.output_modalities):
            return
        reply = self._new_reply(ev.ResponseParams())
        reply.speculative = True
        reply.pipeline.messages = [*self.session.conversation.chat_messages(reply.instructions),
                                   ChatMessage("user", transcript)]
        self.speculative = reply
        reply.task = self.session.spawn(self._run(reply), "speculative-reply")

    def drop_speculative(self, reply: _Reply | None = None) -> None:
        reply = reply or self.speculative
        self.speculative = None
        if reply is not None and not reply.public:
            reply.cancel_reason = "speculation_dropped"
            if reply.task is not None:
                reply.task.cancel()

    def _wire(self, reply: _Reply, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        config = self.session.config
        pipeline = reply.pipeline
        return {
            "id": reply.id, "object": "realtime.response", "status": status,
            "status_details": details, "output": [pipeline.item.to_wire()] if reply.item_started else [],
            "conversation_id": self.session.conversation.id, "output_modalities": list(reply.modalities),
            "max_output_tokens": config.max_output_tokens, "metadata": reply.params.metadata,
            "audio": {"output": {"format": config.output_format.to_wire(), "voice": config.voice}},
            "usage": {"total_tokens": pipeline.timings.llm_tokens, "input_tokens": 0,
                      "output_tokens": pipeline.timings.llm_tokens},
        }

    async def _run(self, reply: _Reply) -> None:
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
                log.error("session %s: reply %s failed", self.session.id, reply.id, exc_info=exc)
            message = "; ".join(str(e) for e in errors)
            status = "failed"
            details = {"type": "failed",
                       "error": {"type": "server_error", "code": "engine_error", "message": message}}
            if reply.public:
                self.emit(ev.error_event(ProtocolError(f"The response failed: {message}", code="engine_error",
                                                       type="server_error")))
        finally:
            self._finish(reply, status, details)

    def _announce_response(self, reply: _Reply) -> None:
        reply.public = True
        self.emit(ev.server_event("response.created", response=self._wire(reply, "in_progress")))

    async def _history_for(self, reply: _Reply) -> list[ChatMessage]:
        params = reply.params
        # The reply must see every user turn, so wait for transcriptions still running.
        pending = list(self.session.transcriptions.values())
        if pending:
            await asyncio.wait([asyncio.shield(t) for t in pending])
        if params.conversation == "none" and params.input is not None:
            history = Conversation("oob")
            for p in params.input:
                text = p.content[0].text or p.content[0].transcript or ""
                history.add(Item(ev.new_id("item"), p.role, "input_text", text=text))
            return history.chat_messages(reply.instructions)
        return self.session.conversation.chat_messages(reply.instructions)

    def _announce_item(self, reply: _Reply) -> None:
        pipeline = reply.pipeline
        item = pipeline.item
        if reply.params.conversation != "none":
            previous = self.session.conversation.add(item)
            self.emit(ev.server_event("conversation.item.added", previous_item_id=previous, item=item.to_wire()))
        reply.item_started = True
        self.emit(ev.server_event("response.output_item.added", response_id=reply.id,
                                  output_index=0, item=item.to_wire()))
        part_key = "transcript" if pipeline.audio_out else "text"
        self.emit(ev.server_event("response.content_part.added", content_index=0,
                                  part={"type": "audio" if pipeline.audio_out else "text", part_key: ""},
                                  **reply.ids()))

    def _finish(self, reply: _Reply, status: str, details: dict[str, Any] | None) -> None:
        if reply.finished:
            return
        reply.finished = True
        if self.speculative is reply:
            self.speculative = None
        if self.active is reply:
            self.active = None
            self.session.turns.reply_ended()
        if not reply.public:  # never announced (a dropped speculation): nobody knows it existed
            return
        pipeline = reply.pipeline
        item = pipeline.item
        if status == "cancelled" and item.content_type == "output_audio" and item.id in self.session.conversation:
            # Keep in history only what the listener can have heard by the cut.
            self.session.conversation.truncate(item.id, min(item.audio_ms, reply.clock.played_ms(reply.cut_at)))
        item.status = "completed" if status == "completed" else "incomplete"
        item.text = (item.text or "").strip()
        if status == "completed":
            item.llm_text = pipeline.full_text.strip() or None
        if reply.item_started:
            if item.id in self.session.conversation:
                self.session.conversation.notify("updated", item)
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
            if item.id in self.session.conversation:
                self.emit(ev.server_event("conversation.item.done",
                                          previous_item_id=self.session.conversation.previous_id(item.id),
                                          item=item.to_wire()))
        wire = self._wire(reply, status, details)
        metrics = {**pipeline.timings.as_ms(), "status": status, "audio_sent_ms": round(item.audio_ms),
                   "speculative": reply.speculative}
        wire["metrics"] = metrics  # voicebot extension: where the time went (demo page, benchmarks)
        self.session.metrics.append(metrics)
        del self.session.metrics[:-20]
        self.emit(ev.server_event("response.done", response=wire))

    def interrupt(self, reason: str = "turn_detected") -> None:
        """Barge-in / response.cancel: the reply ends *now*, in this very step.

        ``response.done`` (cancelled) is emitted before returning and the task is cancelled in the
        same step, so no audio can follow, and the client never waits for engine cleanup (an LLM
        still evaluating a long prompt only notices its stop flag at the next token). The task
        keeps ownership of that cleanup and the session's ``close()`` still awaits it.
        """
        reply = self.active
        if reply is None:
            return
        reply.cut_at = time.monotonic()
        reply.cancel_reason = reason
        if reply.task is not None:
            reply.task.cancel()
        self._finish(reply, "cancelled", {"type": "cancelled", "reason": reason})

