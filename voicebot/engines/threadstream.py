"""Bridge a blocking, token-by-token producer running in its own thread to an async iterator.

The LLM runtimes are blocking C++ loops. Each generation gets one dedicated thread (not the
default executor, so a long reply never starves ASR/TTS calls). Pieces cross to the event loop
with ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``. When the consumer stops early
(``aclose()``, ``break`` or task cancellation) a ``threading.Event`` is set; the producer checks
it once per token, so generation stops within one token, and we then wait for the thread to
exit: no generation outlives its consumer and no thread leaks.

The queue is bounded: at most ``MAX_AHEAD`` pieces wait for the consumer. A producer that runs
further ahead blocks in ``emit`` (backpressure on the generating thread) until the consumer
takes one, or until ``stop`` is set — then its pieces are dropped and it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from voicebot.core.types import LlmPiece
from voicebot.errors import EngineError, VoicebotError

#: ``producer(emit, stop)``: call ``emit(piece)`` per piece (text or a tool call's); return when done
#: or ``stop`` is set.
Producer = Callable[[Callable[[LlmPiece], None], threading.Event], None]

#: Pieces the producer may be ahead of its consumer (a reply's worth: a healthy consumer takes
#: each piece within milliseconds; only a stalled one makes the producer wait).
MAX_AHEAD = 256
_POLL_S = 0.1  # how often a blocked producer checks ``stop``


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


async def thread_stream(producer: Producer, *, name: str = "voicebot-llm",
                        max_ahead: int = MAX_AHEAD) -> AsyncGenerator[LlmPiece, None]:
    """Run ``producer`` in a new thread and yield its pieces as they arrive."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[LlmPiece | _End] = asyncio.Queue()  # bounded by ``room``, below
    room = threading.Semaphore(max_ahead)  # free places in the queue, taken by the thread
    finished = loop.create_future()
    stop = threading.Event()

    def emit(piece: LlmPiece) -> None:
        while not room.acquire(timeout=_POLL_S):  # backpressure: wait for the consumer
            if stop.is_set():
                return  # nobody will take it
        put(piece)

    def put(item: LlmPiece | _End) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def run() -> None:
        end = _End()
        try:
            producer(emit, stop)
        except BaseException as exc:  # reported to the consumer, never lost in the thread
            end = _End(exc)
        finally:
            put(end)
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(_resolve, finished)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if not isinstance(item, _End):
                room.release()
                yield item
                continue
            if item.error is None:
                return
            if isinstance(item.error, VoicebotError):
                raise item.error
            raise EngineError(f"LLM generation failed: {item.error}") from item.error
    finally:
        stop.set()
        if not finished.done():
            # shield: even if we are cancelled again, the thread still sees ``stop`` and ends.
            await asyncio.shield(finished)
        thread.join()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
