"""Every live media call of the process (WebRTC peers, carrier media streams) and who owns it.

A call is a connection with its own supervising task: a WebRTC call's task is started here and
owned by the registry; a telephony call runs in its WebSocket handler's task, which registers it
for as long as it runs. Either way the registry can end every call at shutdown and wait for its
teardown, and it remembers recently ended calls (why they ended, their statistics) so a late
request about one gets a precise answer ("call … has ended") rather than a 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Ended calls (and the keys of answered requests) remembered to explain a stale request.
REMEMBERED = 1000
#: How long ``end``/``aclose`` wait for a call's teardown.
TEARDOWN_TIMEOUT_S = 10.0


class Call(Protocol):
    id: str
    kind: str  # the transport: "webrtc", "telephony"
    end_reason: str | None

    def stop(self, reason: str) -> None:
        """Ask the call to end (idempotent); its own task tears it down."""
        ...

    def summary(self) -> object:
        """What to remember of the call once it has ended (statistics, or None)."""
        ...


@dataclass(frozen=True, slots=True)
class EndedCall:
    kind: str
    reason: str
    summary: object


class CallRegistry:
    def __init__(self) -> None:
        self.live: dict[str, Call] = {}
        self.ended: OrderedDict[str, EndedCall] = OrderedDict()
        #: Requests that created a call, by a key the transport chooses (a WebRTC offer's ICE
        #: ufrag) -> the call id, so a replayed request is refused with a reason.
        self.requests: OrderedDict[str, str] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def count(self, kind: str) -> int:
        return sum(1 for call in self.live.values() if call.kind == kind)

    def start(self, call: Call, run: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``run`` (the call's supervision and teardown) as a task owned by the registry."""
        task = asyncio.get_running_loop().create_task(run, name=f"{call.id}:run")
        self._add(call, task)
        task.add_done_callback(lambda t: self._done(call, t))
        return task

    async def run(self, call: Call, run: Coroutine[Any, Any, None]) -> None:
        """Run a call in the current task (a WebSocket handler), registered while it runs."""
        task = asyncio.current_task()
        assert task is not None
        self._add(call, task)
        try:
            await run
        finally:
            self._done(call, None)

    def _add(self, call: Call, task: asyncio.Task[Any]) -> None:
        self.live[call.id] = call
        self._tasks[call.id] = task

    def _done(self, call: Call, task: asyncio.Task[None] | None) -> None:
        self.live.pop(call.id, None)
        self._tasks.pop(call.id, None)
        if task is not None and not task.cancelled() and (exc := task.exception()) is not None:
            log.error("call %s failed", call.id, exc_info=exc)
        _remember(self.ended, call.id, EndedCall(call.kind, call.end_reason or "closed", call.summary()))

    def answered(self, key: str, call: Call) -> None:
        """The request known by ``key`` created ``call``: a replay of it can be refused by name."""
        _remember(self.requests, key, call.id)

    def ended_summaries(self, kind: str) -> list[object]:
        """The remembered summaries of ended calls of one transport, oldest first."""
        return [ended.summary for ended in self.ended.values() if ended.kind == kind]

    async def end(self, call: Call, reason: str) -> None:
        """End one call and wait for its teardown."""
        call.stop(reason)
        task = self._tasks.get(call.id)
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait([task], timeout=TEARDOWN_TIMEOUT_S)

    async def aclose(self, reason: str = "server shutting down") -> None:
        """Shutdown: end every call and wait for its teardown."""
        for call in list(self.live.values()):
            call.stop(reason)
        tasks = [t for t in self._tasks.values() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=TEARDOWN_TIMEOUT_S)


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    table[key] = value
    while len(table) > REMEMBERED:
        table.popitem(last=False)
