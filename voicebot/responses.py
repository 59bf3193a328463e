"""The session's responses: create, run, announce, finish — and think ahead during pauses.

One public response at a time per session (as in the hosted API). A response runs as one task
owned by the session; its pipeline (LLM -> chunker -> TTS -> paced audio) lives in reply.py.
A *speculative* response starts during the user's pause, emits nothing, and is either promoted
when the turn ends or dropped without a trace if the user goes on.

:class:`Responses` does not know the Session: it gets a :class:`ResponseContext` with exactly what
it may use (engines, the conversation, the turn tracker, the sink and playout clock, a way to
emit events and to spawn owned tasks), so the dependency runs one way, Session -> Responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from voicebot import logs
from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.audio import OutputAudio
from voicebot.core.conversation import Conversation, Item
from voicebot.core.echo import SpeakerTimeline
from voicebot.core.playout import PlayoutClock
from voicebot.core.turns import TurnTracker
from voicebot.core.types import ChatMessage, Tool
from voicebot.engines.base import Engines
from voicebot.errors import EngineError, ProtocolError
from voicebot.function_calls import FunctionCalls
from voicebot.reply import AudioOut, EchoReference, ReplyPipeline, ReplyTimings
from voicebot.session_config import SessionConfig, check_tool_choice, offered_tools, response_tools
from voicebot.sink import OutputSink

log = logging.getLogger(__name__)

#: Finished replies whose metrics are kept (newest last).
METRICS_KEPT = 20


@dataclass
class Speculation:
    """A transcription started at a pause, reused if the user does not speak again."""

    task: asyncio.Task[str]
    live: bool = True  # False once the user spoke again or the turn ended another way


@dataclass
class ResponseContext:
    """Everything the responses of one session may use; the Session builds it once."""

    session_id: str
    engines: Engines
    settings: Settings
    conversation: Conversation
    turns: TurnTracker
    sink: OutputSink
    clock: PlayoutClock
    speaker: SpeakerTimeline | None  # where to write what the listener plays (echo reference)
    config: Callable[[], SessionConfig]
    emit: Callable[[ev.ServerEvent], None]
    spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]
    #: Wait until every user turn transcribed so far has its text (the reply must see them all).
    transcripts_ready: Callable[[], Awaitable[None]]
    #: Held for the whole life of each of the session's LLM requests (prefills, replies, replies
    #: thought ahead and dropped): the next one waits for the last to end, so it finds this
    #: conversation's prompt in the same cache instead of starting cold on another slot.
    llm_lock: asyncio.Lock
    #: Every reply that ends, with its timings and status (the session's metrics).
    on_reply_done: Callable[[ReplyTimings, str, bool], None] = lambda timings, status, audio: None

    def history(self, instructions: str, *, conversation: Conversation | None = None, before: str | None = None,
                pending: str | None = None) -> list[ChatMessage]:
        """The conversation for the LLM, fitted into its context as the session's ``truncation`` says."""
        history = conversation or self.conversation
        ratio = self.config().retention_ratio
        if ratio is None:  # truncation "disabled": all of it
            return history.chat_messages(instructions, before=before, pending=pending)
        return history.chat_messages(instructions, before=before, pending=pending,
                                     budget_tokens=self.settings.history_budget_tokens, retention_ratio=ratio)


@dataclass
class Reply:
    """One response's bookkeeping around its pipeline."""

    id: str
    pipeline: ReplyPipeline
    config: SessionConfig  # as it was when the response was created
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
    cancel_reason: str = "client_cancelled"
    #: The response's output items in the order they were announced (the message, function calls).
    outputs: list[Item] = field(default_factory=list)
    calls: FunctionCalls | None = None  # when tools are offered
    #: With tools, the message item is announced at the first words, not at once: a response that
    #: only calls a function has no message item at all.
    lazy_item: bool = False

    @property
    def item(self) -> Item:
        return self.pipeline.item

    def ids(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.pipeline.item.id, "output_index": self.pipeline.output_index}


class Responses:
    """The replies of one session: at most one public (``active``) and one speculative."""

    def __init__(self, ctx: ResponseContext) -> None:
        self.ctx = ctx
        self.emit = ctx.emit
        self.active: Reply | None = None
        self.speculative: Reply | None = None  # thinking ahead during a pause, not yet public
        #: The latest reply whose audio reached the listener: what a barge-in cuts, even after
        #: it finished sending (its tail may still be playing).
        self.last_voiced: Reply | None = None
        self.metrics: list[dict[str, Any]] = []  # per finished reply, newest last
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no public response is running."""
        await self._idle.wait()

    def create(self, params: ev.ResponseParams | None, event_id: str | None) -> None:
        """``response.create``, or the end of a turn (``params`` None): promote the speculation if any."""
        if self.active is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response", event_id=event_id,
            )
        if params is not None and (params.tools is not None or params.tool_choice is not None):
            check_tool_choice(*response_tools(self.ctx.config(), params), "response.tool_choice", event_id)
        speculative, self.speculative = self.speculative, None
        if params is None and speculative is not None and not speculative.finished:
            reply = speculative  # already thinking since the pause: just let it speak
        else:
            if speculative is not None:
                self.drop_speculative(speculative)
            reply = self._new_reply(params or ev.ResponseParams())
            reply.task = self.ctx.spawn(self._run(reply), "reply")
        self.active = reply
        self._idle.clear()
        self.ctx.turns.reply_started()
        if reply.params.conversation != "none":
            # Its place in the history is fixed now, after everything said before the response,
            # whatever arrives while it still waits for a transcription or its first step.
            self.ctx.conversation.add(reply.item, by=self.ctx.session_id)
        reply.promoted.set()

    def _new_reply(self, p: ev.ResponseParams) -> Reply:
        ctx = self.ctx
        c = ctx.config()
        modalities = tuple(p.output_modalities or p.modalities or c.output_modalities)
        limit = p.max_output_tokens if p.max_output_tokens is not None else c.max_output_tokens
        cap = ctx.settings.max_response_tokens
        max_tokens = cap if limit == "inf" else min(int(limit), cap)
        audio = "audio" in modalities
        item = Item(ev.new_id("item"), "assistant", "output_audio" if audio else "output_text",
                    text="", status="in_progress")
        # A transport with a fixed media format (a WebRTC track, a phone line) gets audio in it,
        # whatever the client configured; the format is fixed for the whole reply.
        fmt = ctx.sink.audio_format or c.output_format
        audio_out = None
        if audio:
            echo = EchoReference(ctx.speaker, fmt.rate) if ctx.speaker is not None else None
            audio_out = AudioOut(ctx.sink, ctx.clock, OutputAudio(ctx.engines.tts.sample_rate, fmt), echo)
        temperature = p.temperature if p.temperature is not None else c.temperature
        pipeline = ReplyPipeline(
            response_id=ev.new_id("resp"), item=item, engines=ctx.engines, messages=[], audio_out=audio_out,
            emit=ctx.emit, max_tokens=max_tokens, llm_lock=ctx.llm_lock,
            temperature=ctx.settings.temperature if temperature is None else temperature,
            engine_timeout_s=ctx.settings.engine_timeout_s,
            first_token_timeout_s=ctx.settings.llm_first_token_timeout_s,
            token_timeout_s=ctx.settings.llm_token_timeout_s,
        )
        reply = Reply(pipeline.response_id, pipeline, c, modalities, p,
                      p.instructions if p.instructions is not None else c.instructions)
        pipeline.on_audible = lambda: self._on_audible(reply)
        tools, choice = response_tools(c, p)
        if offered_tools(tools, choice):
            pipeline.tools, pipeline.tool_choice = tools, choice
            reply.lazy_item = True
            reply.calls = FunctionCalls(
                reply.id, tools, ctx.conversation if p.conversation != "none" else None, ctx.emit, reply.outputs,
                by=ctx.session_id, after=lambda: reply.outputs[-1].id if reply.outputs else reply.item.id)
            pipeline.on_tool_delta = reply.calls.on_delta
            pipeline.on_text = lambda: self._announce_item(reply)
        return reply

    def _on_audible(self, reply: Reply) -> None:
        self.last_voiced = reply
        self.ctx.turns.reply_audio_started()

    # --- speculative replies ----------------------------------------------------------------------

    async def think_ahead(self, speculation: Speculation) -> None:
        """During the user's pause: once the guessed transcript is ready, start the reply silently.

        If the pause turns into the end of the turn, the reply is promoted and the caller hears it
        about (silence_duration - speculate_after + ASR time) sooner; if the user speaks again,
        it is dropped without a trace. Only the LLM/TTS work is spent.
        """
        try:
            transcript = (await asyncio.shield(speculation.task)).strip()
        except Exception:  # the turn's own reply reports a failed transcription (it reuses this one)
            return
        config = self.ctx.config()
        if not (speculation.live and transcript and config.policy.create_response and self.active is None
                and self.speculative is None and "audio" in config.output_modalities):
            return
        if offered_tools(config.tools, config.tool_choice):
            # A silent reply cannot announce the calls it would make; with tools, replies start
            # at the end of the turn (the turn's transcription is still speculative).
            return
        reply = self._new_reply(ev.ResponseParams())
        reply.speculative = True
        reply.pipeline.messages = self.ctx.history(reply.instructions, pending=transcript)
        self.speculative = reply
        reply.task = self.ctx.spawn(self._run(reply), "speculative-reply")

    def drop_speculative(self, reply: Reply | None = None) -> None:
        reply = reply or self.speculative
        self.speculative = None
        if reply is not None and not reply.public:
            reply.pipeline.halt()
            reply.cancel_reason = "speculation_dropped"
            if reply.task is not None:
                reply.task.cancel()

    # --- running --------------------------------------------------------------------------------

    def _wire(self, reply: Reply, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        config = reply.config
        pipeline = reply.pipeline
        return {
            "id": reply.id, "object": "realtime.response", "status": status,
            "status_details": details, "output": [item.to_wire() for item in reply.outputs],
            "conversation_id": self.ctx.conversation.id, "output_modalities": list(reply.modalities),
            "max_output_tokens": config.max_output_tokens, "metadata": reply.params.metadata,
            "audio": {"output": {"format": config.output_format.to_wire(), "voice": config.voice}},
            "usage": {"total_tokens": pipeline.timings.llm_tokens, "input_tokens": 0,
                      "output_tokens": pipeline.timings.llm_tokens},
        }

    async def _run(self, reply: Reply) -> None:
        logs.bind(response_id=reply.id)  # this task's (and its pipeline's) log lines name the reply
        pipeline = reply.pipeline
        status: str = "completed"
        details: dict[str, Any] | None = None
        try:
            if not reply.speculative:
                self._announce_response(reply)
                pipeline.messages = await self._history_for(reply)
            pipeline.timings.history_ready = time.monotonic()
            async with asyncio.TaskGroup() as group:
                # The pipeline starts thinking at once; it emits nothing until released.
                group.create_task(pipeline.run())
                await reply.promoted.wait()
                if reply.speculative:
                    self._announce_response(reply)
                if not reply.lazy_item:
                    self._announce_item(reply)
                pipeline.timings.released = time.monotonic()
                pipeline.released.set()
            if reply.calls is not None:
                reply.calls.check()
        except asyncio.CancelledError:
            status, details = "cancelled", {"type": "cancelled", "reason": reply.cancel_reason}
            raise
        except Exception as exc:
            errors = _leaves(exc)
            if not all(isinstance(e, EngineError) for e in errors):
                log.error("session %s: reply %s failed", self.ctx.session_id, reply.id, exc_info=exc)
            # The first engine fault names it (asr_failed, llm_failed, tts_failed, engine_timeout).
            code = next((e.code for e in errors if isinstance(e, EngineError)), "engine_error")
            failure = ProtocolError("The response failed: " + "; ".join(str(e) for e in errors),
                                    code=code, type="server_error")
            status = "failed"
            details = {"type": "failed", "error": failure.payload()}
            if reply.public:
                self.emit(ev.error_event(failure))
        finally:
            self._finish(reply, status, details)

    def _announce_response(self, reply: Reply) -> None:
        reply.public = True
        self.emit(ev.server_event("response.created", response=self._wire(reply, "in_progress")))

    async def _history_for(self, reply: Reply) -> list[ChatMessage]:
        params = reply.params
        await self.ctx.transcripts_ready()
        if params.conversation == "none" and params.input is not None:
            history = Conversation("oob")
            for p in params.input:
                if p.type == "function_call":
                    history.add(Item.function_call(ev.new_id("item"), p.call_id or "", p.name or "", p.arguments or ""))
                elif p.type == "function_call_output":
                    history.add(Item.function_call_output(ev.new_id("item"), p.call_id or "", p.output or ""))
                else:
                    part = (p.content or [ev.ContentPart(type="input_text")])[0]
                    history.add(Item(ev.new_id("item"), p.role or "user", "input_text",
                                     text=part.text or part.transcript or ""))
            return self.ctx.history(reply.instructions, conversation=history)
        return self.ctx.history(reply.instructions, before=reply.item.id)

    def _announce_item(self, reply: Reply) -> None:
        if reply.item_started:
            return
        pipeline = reply.pipeline
        item = pipeline.item
        pipeline.output_index = len(reply.outputs)
        reply.outputs.append(item)
        conversation = self.ctx.conversation
        if item.id in conversation:  # placed there by create(); out-of-band replies are not
            self.emit(ev.server_event("conversation.item.added", previous_item_id=conversation.previous_id(item.id),
                                      item=item.to_wire()))
        reply.item_started = True
        self.emit(ev.server_event("response.output_item.added", response_id=reply.id,
                                  output_index=pipeline.output_index, item=item.to_wire()))
        part_key = "transcript" if pipeline.audio_out else "text"
        self.emit(ev.server_event("response.content_part.added", content_index=0,
                                  part={"type": "audio" if pipeline.audio_out else "text", part_key: ""},
                                  **reply.ids()))

    def _finish(self, reply: Reply, status: str, details: dict[str, Any] | None) -> None:
        if reply.finished:
            return
        reply.finished = True
        reply.pipeline.halt()  # before anything else: no stage may send more, even in this loop step
        if self.speculative is reply:
            self.speculative = None
        if self.active is reply:
            self.active = None
            self._idle.set()
            self.ctx.turns.reply_ended()
        conversation = self.ctx.conversation
        if not reply.public:  # never announced (cancelled at once, a dropped speculation): no trace
            if reply.item.id in conversation:
                conversation.delete(reply.item.id)
            return
        pipeline = reply.pipeline
        item = pipeline.item
        item.status = "completed" if status == "completed" else "incomplete"
        item.text = (item.text or "").strip()
        if status == "completed":
            item.llm_text = pipeline.full_text.strip() or None
        if reply.item_started:
            if item.id in conversation:
                conversation.notify("updated", item)
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
                                      output_index=pipeline.output_index, item=item.to_wire()))
            if item.id in conversation:
                self.emit(ev.server_event("conversation.item.done", previous_item_id=conversation.previous_id(item.id),
                                          item=item.to_wire()))
        elif reply.lazy_item and item.id in conversation:  # only function calls: no message item
            conversation.delete(item.id)
        if reply.calls is not None:
            reply.calls.finish(status == "completed")
        if status == "completed" and (item.id in conversation or reply.outputs):
            self.ctx.spawn(self._prefill_next_turn(reply.instructions, pipeline.tools), "prefill-next-turn")
        wire = self._wire(reply, status, details)
        metrics = {**pipeline.timings.as_ms(), "status": status, "audio_sent_ms": round(item.audio_ms),
                   "speculative": reply.speculative}
        self.ctx.on_reply_done(pipeline.timings, status, pipeline.audio_out is not None)
        wire["metrics"] = metrics  # voicebot extension: where the time went (demo page, benchmarks)
        self.metrics.append(metrics)
        del self.metrics[:-METRICS_KEPT]
        # Named explicitly: a barge-in finishes the reply from the session's task, not the reply's.
        log.info("response %s %s after %.2f s: %d tokens, %d ms of audio", reply.id, status,
                 time.monotonic() - pipeline.timings.started, pipeline.timings.llm_tokens, round(item.audio_ms),
                 extra={"response_id": reply.id})
        self.emit(ev.server_event("response.done", response=wire))

    async def _prefill_next_turn(self, instructions: str, tools: Sequence[Tool]) -> None:
        """After a reply: the history with the person's next message begun, into the prompt cache,
        so their next turn evaluates only their words (the chat template's few tokens are done)."""
        async with self.ctx.llm_lock:
            history = self.ctx.history(instructions, pending="")
            await self.ctx.engines.llm.prefill(history, tools)

    def cancel(self, reason: str) -> None:
        """The active reply ends *now*, in this very step (barge-in, response.cancel, a keypad press).

        ``response.done`` (cancelled) is emitted before returning and the task is cancelled in the
        same step, so no audio can follow, and the client never waits for engine cleanup (an LLM
        still evaluating a long prompt only notices its stop flag at the next token). The task
        keeps ownership of that cleanup and the session's ``close()`` still awaits it. The session
        cuts the item to what was heard *before* calling this, so the done events carry the cut.
        """
        reply = self.active
        if reply is None:
            return
        reply.cancel_reason = reason
        if reply.task is not None:
            reply.task.cancel()
        self._finish(reply, "cancelled", {"type": "cancelled", "reason": reason})


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions themselves, out of the (nested) groups of the pipeline's task groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
