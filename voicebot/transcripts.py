"""A session's transcriptions: one per spoken (or appended-audio) user item, filed onto the item.

Each user item with audio gets a task that waits for its ASR call, writes the text onto the item
and tells the client (``…input_audio_transcription.delta/.completed`` when transcription is on,
``conversation.item.done`` always). A reply first waits for every transcription before it
(:meth:`Transcripts.ready`), bounded by the ASR's own timeout: a stalled ASR fails the reply with
``engine_timeout`` instead of holding the conversation. A transcription that failed fails the
next reply with its error — an answer to a turn nobody heard would be a guess.

The tasks are the session's (its ``spawn``): ``Session.close()`` cancels and awaits them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from voicebot.config import Settings
from voicebot.core import events as ev
from voicebot.core.audio import int16_to_float32
from voicebot.core.conversation import Conversation, Item
from voicebot.core.types import Int16Array
from voicebot.engines.base import Engines
from voicebot.engines.faults import ASR_FAILED, engine_call
from voicebot.errors import EngineError
from voicebot.session_config import SessionConfig

log = logging.getLogger(__name__)

#: A reply waits for the user turns before it to be transcribed at most the ASR's own bound
#: (--engine-timeout-s, which fails the transcription) plus this, so that bound decides first.
TRANSCRIPTS_GRACE_S = 5.0
#: The wait when --engine-timeout-s is 0 (no bound on the ASR call itself).
UNBOUNDED_ASR_WAIT_S = 30.0

Spawn = Callable[..., "asyncio.Task[Any]"]


class Transcripts:
    def __init__(self, engines: Engines, settings: Settings, conversation: Conversation,
                 config: Callable[[], SessionConfig], emit: Callable[[ev.ServerEvent], None], spawn: Spawn) -> None:
        self.engines = engines
        self.settings = settings
        self.conversation = conversation
        self._config = config
        self._emit = emit
        self._spawn = spawn
        #: Item id -> the task that transcribes it and files the result (or the failure).
        self.pending: dict[str, asyncio.Task[None]] = {}
        #: Transcriptions that failed since the last reply looked: that reply fails with their error.
        self._failures: dict[str, EngineError] = {}

    async def transcribe(self, audio: Int16Array, *, slack_s: float = 0.0) -> str:
        """The text of ``audio``; ``slack_s`` = how long until someone waits for it (the server's
        ASR queue serves the most urgent first)."""
        language = (self._config().transcription or {}).get("language") or self.settings.asr_language or None
        async with engine_call(ASR_FAILED, "the ASR", self.settings.engine_timeout_s + slack_s):
            return await self.engines.cpu.asr.run(time.monotonic() + slack_s, self.engines.asr.transcribe,
                                                  int16_to_float32(audio), language)

    def start(self, audio: Int16Array, *, slack_s: float = 0.0, name: str = "asr") -> asyncio.Task[str]:
        """A transcription task of the session's (its failure is reported by whoever awaits it)."""
        coro: Coroutine[Any, Any, str] = self.transcribe(audio, slack_s=slack_s)
        task: asyncio.Task[str] = self._spawn(coro, name, awaited=True)
        return task

    def file(self, item: Item, task: asyncio.Task[str]) -> None:
        """Write ``task``'s text onto ``item`` when it is done (replies wait for it: :meth:`ready`)."""
        self.pending[item.id] = self._spawn(self._finish(item, task), "asr-result")

    async def ready(self) -> None:
        """Until the user turns so far are transcribed; a failed one raises its error."""
        pending = list(self.pending.values())
        if pending:
            bound = self.settings.engine_timeout_s if self.settings.engine_timeout_s > 0 else UNBOUNDED_ASR_WAIT_S
            timeout = bound + TRANSCRIPTS_GRACE_S
            _, late = await asyncio.wait([asyncio.shield(t) for t in pending], timeout=timeout)
            if late:  # a stalled ASR must not stall the conversation: answer with what is there
                log.warning("%d transcription(s) still running after %.0f s; replying without them",
                            len(late), timeout)
        failures, self._failures = self._failures, {}
        if failures:
            raise next(iter(failures.values()))

    async def _finish(self, item: Item, task: asyncio.Task[str]) -> None:
        started = time.monotonic()
        try:
            transcript = (await asyncio.shield(task)).strip()
        except Exception as exc:
            log.warning("transcription of %s failed: %s", item.id, exc)
            item.text = ""
            failure = exc if isinstance(exc, EngineError) else EngineError(str(exc), code=ASR_FAILED)
            self._failures[item.id] = failure
            if self._config().transcription is not None:  # as configured now, not when it started
                self._emit(ev.server_event(
                    "conversation.item.input_audio_transcription.failed", item_id=item.id, content_index=0,
                    error={"type": "transcription_error", "code": failure.code, "message": str(exc)}))
            return
        finally:
            self.pending.pop(item.id, None)
        item.text = transcript
        self.conversation.notify("updated", item)
        if self._config().transcription is not None:
            ids = {"item_id": item.id, "content_index": 0}
            if transcript:
                self._emit(ev.server_event("conversation.item.input_audio_transcription.delta", delta=transcript,
                                           **ids))
            self._emit(ev.server_event(
                "conversation.item.input_audio_transcription.completed", transcript=transcript,
                usage={"type": "duration", "seconds": round(item.audio_ms / 1000, 3)}, **ids))
        self._emit(ev.server_event("conversation.item.done", previous_item_id=self.conversation.previous_id(item.id),
                                   item=item.to_wire()))
        log.debug("transcribed %s in %.0f ms: %r", item.id, (time.monotonic() - started) * 1000, transcript)
