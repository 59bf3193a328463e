"""Tasks with one owner: a session's or a call's background work, never fire-and-forget.

Every task a Session, a WebRTC call or a phone call starts goes into its :class:`OwnedTasks`:
named after the owner (so a stuck one is identifiable), a failure is logged with its traceback and
handed to the owner (who reports it or ends the call), and ``cancel_all`` cancels and awaits them
all when the owner ends (however long a stuck one takes, logging it), so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class OwnedTasks:
    def __init__(self, owner: str, on_failure: Callable[[asyncio.Task[Any], BaseException], None]) -> None:
        self.owner = owner
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, context: contextvars.Context | None = None, *,
              awaited: bool = False) -> asyncio.Task[Any]:
        """``context``: the contextvars the task runs with (the owner's log ids). ``awaited``: another
        task of the owner awaits this one's result and reports its failure (a transcription whose
        text a reply waits for), so it is not reported twice."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}", context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done_awaited if awaited else self._done)
        return task

    def _done_awaited(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here too: the awaiter may have been cancelled first

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=exc)
            self._on_failure(task, exc)

    async def cancel_all(self, grace_s: float | None = None) -> None:
        """Cancel every task and wait until each has finished.

        A task still running ``grace_s`` seconds after its cancellation (an engine call in a worker
        thread can only be asked to stop) is logged by name, cancelled again and still awaited:
        the owner ends after its last task, never before, so nothing is orphaned.
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        waited = 0.0
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
            if not pending:
                break
            waited += grace_s or 0.0
            for task in pending:
                log.error("%s: task %s still running %.0f s after it was cancelled; still waiting for it",
                          self.owner, task.get_name(), waited)
                task.cancel()
        if waited:
            log.warning("%s: the last task stopped after %.0f s", self.owner, waited)
