"""One engine call's failure, in the words a client's ``error`` event uses.

Every call into an engine mid-turn (one ASR transcription, one TTS clause, each LLM token) goes
through :func:`engine_call`: a stall longer than its bound becomes ``EngineError(code=
"engine_timeout")`` and any other exception ``EngineError`` with the stage's code (``asr_failed``,
``llm_failed``, ``tts_failed``), so the reply that waited for it fails with a precise
``error`` event and ``response.done`` (status ``failed``) while the session goes on. Cancellation
passes through untouched (a barge-in is not a fault).

A call running in a worker thread cannot be stopped: after a timeout its thread finishes on its
own (and keeps its CPU-queue slot until then); the turn does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from voicebot.errors import EngineError

#: The codes of engine faults (docs/operations.md "Engine faults").
ASR_FAILED = "asr_failed"
LLM_FAILED = "llm_failed"
TTS_FAILED = "tts_failed"
ENGINE_TIMEOUT = "engine_timeout"


@contextlib.asynccontextmanager
async def engine_call(code: str, what: str, timeout_s: float | None) -> AsyncIterator[None]:
    """The body is one call of an engine (``what`` names it for a person: "the ASR")."""
    try:
        async with asyncio.timeout(timeout_s if timeout_s and timeout_s > 0 else None):
            yield
    except TimeoutError:
        raise EngineError(f"{what} did not answer within {timeout_s:g} s", code=ENGINE_TIMEOUT) from None
    except EngineError as exc:
        if exc.code == "engine_error":  # not classified yet: it failed at this stage
            raise EngineError(str(exc), code=code) from exc
        raise
    except Exception as exc:
        raise EngineError(f"{what} failed: {type(exc).__name__}: {exc}", code=code) from exc
