"""Earliest-deadline-first admission of blocking engine calls (ASR, TTS) from every session.

Two cores serve every session's transcriptions and syntheses. Handed to the default executor in
arrival order, ten people's work interleaves: a guess at a paused speaker's words runs while
someone whose turn has ended waits for theirs, and a clause nobody needs for two seconds is
synthesized while another listener's speaker runs dry. A :class:`CpuQueue` runs at most
``slots`` calls at once and starts the waiting call whose result is needed soonest: a deadline
on the monotonic clock that each caller states (now = someone is waiting; the moment a listener's
queued audio runs out; a guess's turn end). Waiting is cancellable, so a guess dropped before
its turn costs nothing; a call that has started runs to the end (a thread cannot be stopped)
and keeps its slot until then.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class QueueStats:
    """What the queue did, for metrics and benchmarks (milliseconds)."""

    calls: int = 0
    dropped: int = 0  # cancelled while waiting: never run
    waited_ms: float = 0.0
    ran_ms: float = 0.0
    longest_wait_ms: float = 0.0


@dataclass(order=True, slots=True)
class _Waiter:
    deadline: float
    order: int
    ready: asyncio.Future[None] = field(compare=False)


class CpuQueue:
    """At most ``slots`` blocking calls at once, the most urgent first."""

    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.slots = max(1, slots)
        self.running = 0
        self._waiting: list[_Waiter] = []
        self._order = itertools.count()
        self.stats = QueueStats()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiting if not w.ready.done())

    async def run(self, deadline: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread once a slot is free and no waiting call is due sooner."""
        queued = time.monotonic()
        await self._admit(deadline)
        started = time.monotonic()
        wait_ms = (started - queued) * 1000
        self.stats.calls += 1
        self.stats.waited_ms += wait_ms
        self.stats.longest_wait_ms = max(self.stats.longest_wait_ms, wait_ms)
        work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        # The slot is given back when the thread is done, not when our caller stops waiting.
        work.add_done_callback(lambda _: self._release(started))
        return await asyncio.shield(work)

    async def _admit(self, deadline: float) -> None:
        if self.running < self.slots:  # then nobody is waiting (a release admits waiters first)
            self.running += 1
            return
        waiter = _Waiter(deadline, next(self._order), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting, waiter)
        try:
            await waiter.ready
        except asyncio.CancelledError:
            if waiter.ready.done() and not waiter.ready.cancelled():
                self._release(None)  # admitted in the same instant: pass the slot on
            else:
                self.stats.dropped += 1
            raise

    def _release(self, started: float | None) -> None:
        if started is not None:
            self.stats.ran_ms += (time.monotonic() - started) * 1000
        self.running -= 1
        while self._waiting and self.running < self.slots:
            waiter = heapq.heappop(self._waiting)
            if waiter.ready.done():  # cancelled while waiting
                continue
            self.running += 1
            waiter.ready.set_result(None)


@dataclass(slots=True)
class CpuQueues:
    """The server's queues, shared by every session (see Engines.cpu)."""

    asr: CpuQueue
    tts: CpuQueue

    @classmethod
    def for_cores(cls, asr_slots: int = 2, tts_slots: int = 2) -> CpuQueues:
        return cls(CpuQueue("asr", asr_slots), CpuQueue("tts", tts_slots))
